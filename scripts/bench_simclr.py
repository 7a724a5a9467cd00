"""Benchmark SimCLR pretraining epochs: reprlab's batched pipeline vs the tutorial's way.

Run (from the repository root, with the project's venv)::

    .venv/bin/python scripts/bench_simclr.py                      # full size: 16,000 images
    .venv/bin/python scripts/bench_simclr.py --data /work/shared/data/dsprites_subset.npz
    .venv/bin/python scripts/bench_simclr.py --images 2000 --epochs 1 --baseline-batches 1
    .venv/bin/python scripts/bench_simclr.py --threads 1 --no-channels-last --compile

What it measures: seconds per SimCLR pretraining epoch on ``--images`` dSprites training images
(default 16,000: the Neuromatch tutorial's 80% of 20,000) with the tutorial's settings -- core
encoder, identity projector, NT-Xent at temperature 0.5, batch 1000, Adam lr 1e-3, one optimiser
step per batch, two views per image made by RandomAffine(degrees=90, translate=(0.2, 0.2),
scale=(0.8, 1.2)) -- for two pipelines on the same images, in the same process:

* **ours**: the uint8 images stay in memory; each batch is fetched by fancy indexing, converted
  to float and augmented as a whole batch by ``reprlab.augment.RandomAffine`` (two independent
  draws), both views are encoded in one forward pass (as ``reprlab.methods.SimCLR.objective``
  does) and the loss is ``reprlab.losses.NTXentLoss``. Timed over ``--epochs`` full epochs after
  one untimed warm-up step. A separate short instrumented pass (``--profile-batches``) times the
  phases with wall-clock timers and scales them to an epoch: *aug* = index fetch + float
  conversion + both augmentations (+ memory-format change), *forward* = encoder, *loss* =
  NT-Xent, *backward+step* = zero_grad + backward + Adam step. The main timing has no timers
  inside the loop.
* **conventional** (the tutorial's way, the baseline): a ``Dataset`` whose ``__getitem__``
  converts one image to a (1, 64, 64) float tensor and applies
  ``torchvision.transforms.RandomAffine`` twice; ``DataLoader(batch_size=1000, shuffle=True,
  num_workers=0)``; each view encoded separately (as the tutorial does); the loss built from a
  2N x 2N x D broadcast of ``F.cosine_similarity``, a ``torch.roll(torch.eye(2N), N, 1)``
  positive mask and a ones-minus-eye negatives mask. It is slow (minutes per epoch), so only
  ``--baseline-batches`` batches are timed (after an untimed model warm-up) and the time is
  extrapolated to a full epoch by the number of images. Its phases (*data* = DataLoader with
  the per-image transforms, forward, loss, backward+step) are timed in that same loop. (With
  equal projections this loss equals ``NTXentLoss``; only the cost differs.)

Also reported: whether ``channels_last`` helps the encoder (a short interleaved A/B on training
steps, ``--ab-batches``; our main timing uses channels_last unless ``--no-channels-last``, as it
was 1.15-1.7x faster per step on the 2-core dev CPU), and, with ``--compile``,
``torch.compile`` of our encoder: two warm-up steps per batch shape, timed and reported
separately from the epochs (the first includes compiling forward and backward; inductor caches
its work under /tmp, so a second run compiles much faster); a failure is caught and reported,
and the run continues in eager mode.

Data: ``--data PATH`` reads a dSprites ``.npz`` file (e.g. the tutorial's 20,000-image subset)
through ``DSpritesDataModule``; without it the datamodule renders procedural dSprites. Either
way the training split (seed 2021) is used. If ``reprlab.data`` cannot be imported (e.g. the
renderer is not written yet) the script falls back to reading ``--data`` with numpy, or to random
binary blobs, and says so.

Also printed: user/system CPU time and minor page faults of our timed epochs. On glibc, tensors
above the malloc mmap threshold (32 MiB at most; one 2000 x 6 x 60 x 60 float activation is
173 MB) are mmap-ed and unmapped on every step, so each step re-faults its activations: on the
2-core dev box that was ~20% of a step in system time (and most of the conventional loss's
backward, whose 2N x 2N x D tensors are 1.3 GB each). Running with
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` (environment variables, set before
Python starts) keeps freed memory in the heap and removes most of it; compare both pipelines
under the same environment.

Keep the machine otherwise idle for the full-size run: the baseline alone takes minutes.
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from reprlab.augment import RandomAffine
from reprlab.encoders import CoreEncoder
from reprlab.losses import NTXentLoss
from reprlab.perf import keep_freed_memory

IMAGE_SHAPE = (1, 64, 64)
TRAIN_FRACTION = 0.8  # DSpritesDataModule's default: 80% train, 20% test
DEGREES, TRANSLATE, SCALE = 90.0, (0.2, 0.2), (0.8, 1.2)
TEMPERATURE = 0.5
LR = 1e-3


# --------------------------------------------------------------------------------------
# Set-up helpers (shared with bench_vae.py)
# --------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timers measure it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_blobs(num_images: int, seed: int) -> np.ndarray:
    """Binary ellipses at random positions, sizes and orientations: a stand-in for dSprites."""
    rng = np.random.default_rng(seed)
    size = IMAGE_SHAPE[-1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((num_images, size, size), dtype=np.uint8)
    for i in range(num_images):
        cx, cy = rng.uniform(12, size - 12, size=2)
        a, b = rng.uniform(3, 10, size=2)
        angle = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        images[i] = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return images


def _total_for_train(num_train: int) -> int:
    """Images to load so that the 80% training split holds at least ``num_train`` of them."""
    return -(-num_train * 5 // 4)  # ceil(num_train / 0.8) in integer arithmetic


def make_datamodule(num_train: int, data: str | None, batch_size: int) -> Any:
    """A set-up ``DSpritesDataModule`` whose training split holds >= ``num_train`` images.

    Raises ``ImportError`` when ``reprlab.data`` cannot be imported.
    """
    from reprlab.data import DSpritesDataModule

    if data is not None:
        module = DSpritesDataModule(
            source="file",
            path=data,
            num_images=_total_for_train(num_train),
            val_fraction=0.0,
            batch_size=batch_size,
        )
    else:
        module = DSpritesDataModule(
            source="procedural",
            num_images=_total_for_train(num_train),
            val_fraction=0.0,
            batch_size=batch_size,
        )
    module.setup()
    return module


def load_train_images(
    num_train: int, data: str | None, seed: int, try_datamodule: bool = True
) -> tuple[Tensor, str]:
    """uint8 (N, 1, 64, 64) training images and a line saying where they came from.

    Through ``DSpritesDataModule`` when ``reprlab.data`` imports (and ``try_datamodule``), else
    the fallback: ``data`` read with numpy, or random binary blobs.
    """
    if try_datamodule:
        try:
            module = make_datamodule(num_train, data, batch_size=1000)
        except ImportError as error:
            print(f"note: reprlab.data not importable ({error}); using a fallback", file=sys.stderr)
        else:
            images = module.images[module.split_index("train")][:num_train]
            source = f"file {data}" if data is not None else "procedural dSprites"
            return images.contiguous(), f"{source} (DSpritesDataModule training split)"

    if data is not None:
        with np.load(Path(data).expanduser(), allow_pickle=False) as archive:
            all_images = archive["imgs"]
        total = len(all_images)
        order = np.random.default_rng(2021).permutation(total)  # the datamodule's split seed
        train = np.sort(order[: int(round(TRAIN_FRACTION * total))])[:num_train]
        images_np = all_images[train].astype(np.uint8)
        source = f"file {data} (read with numpy, 80% split)"
    else:
        images_np = _random_blobs(num_train, seed)
        source = "RANDOM BINARY BLOBS (procedural renderer unavailable; give --data for real data)"
    if len(images_np) < num_train:
        print(f"note: only {len(images_np)} training images available", file=sys.stderr)
    return torch.from_numpy(images_np).unsqueeze(1).contiguous(), source


def batch_indices(num: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """A shuffled epoch of index batches (last one partial, like the datamodule's loader)."""
    order = torch.randperm(num, generator=generator)
    yield from order.split(batch_size)


# --------------------------------------------------------------------------------------
# Ours: batched, index-based, device-side augmentation, reprlab NT-Xent
# --------------------------------------------------------------------------------------
@dataclass
class Ours:
    encoder: nn.Module
    step_encoder: nn.Module  # the encoder as called (compiled or not)
    optimizer: torch.optim.Optimizer
    augment: RandomAffine
    criterion: NTXentLoss
    channels_last: bool
    generator: torch.Generator
    device: torch.device


def build_ours(channels_last: bool, device: torch.device, seed: int) -> Ours:
    torch.manual_seed(seed)
    encoder = CoreEncoder(IMAGE_SHAPE, feature_dim=84).to(device)
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    encoder.train()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return Ours(
        encoder=encoder,
        step_encoder=encoder,
        optimizer=torch.optim.Adam(encoder.parameters(), lr=LR),
        augment=RandomAffine(DEGREES, TRANSLATE, SCALE),
        criterion=NTXentLoss(temperature=TEMPERATURE),
        channels_last=channels_last,
        generator=generator,
        device=device,
    )


def ours_views(ours: Ours, images: Tensor, index: Tensor) -> Tensor:
    """Fetch a batch by index, float it on the device, make both views (2B, 1, 64, 64)."""
    batch = images[index].to(ours.device, non_blocking=True).float()
    views = torch.cat(
        [
            ours.augment(batch, generator=ours.generator),
            ours.augment(batch, generator=ours.generator),
        ]
    )
    if ours.channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    return views


def ours_step(ours: Ours, images: Tensor, index: Tensor) -> None:
    views = ours_views(ours, images, index)
    features = ours.step_encoder(views)  # identity projector
    loss = ours.criterion(features[: len(index)], features[len(index) :])
    ours.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ours.optimizer.step()  # no .item(): no per-step device sync


class CpuUsage:
    """User/system CPU seconds and minor page faults of this process over a ``with`` block."""

    def __enter__(self) -> CpuUsage:
        self._start = resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc: object) -> None:
        end = resource.getrusage(resource.RUSAGE_SELF)
        self.user = end.ru_utime - self._start.ru_utime
        self.system = end.ru_stime - self._start.ru_stime
        self.minor_faults = end.ru_minflt - self._start.ru_minflt

    def describe(self, per: int = 1) -> str:
        return (
            f"CPU user {self.user / per:.2f} s, sys {self.system / per:.2f} s, "
            f"{self.minor_faults / per:,.0f} minor page faults"
        )


def time_ours_epochs(ours: Ours, images: Tensor, batch_size: int, epochs: int) -> list[float]:
    times = []
    for _ in range(epochs):
        synchronize(ours.device)
        start = time.perf_counter()
        for index in batch_indices(len(images), batch_size, ours.generator):
            ours_step(ours, images, index)
        synchronize(ours.device)
        times.append(time.perf_counter() - start)
    return times


@dataclass
class Phases:
    """Accumulated wall-clock seconds per phase and the number of images they covered."""

    names: tuple[str, ...] = ("aug", "forward", "loss", "backward+step")
    seconds: dict[str, float] = field(init=False)
    images: int = 0

    def __post_init__(self) -> None:
        self.seconds = dict.fromkeys(self.names, 0.0)

    def per_epoch(self, num_images: int) -> dict[str, float]:
        return {k: v * num_images / max(self.images, 1) for k, v in self.seconds.items()}


def profile_ours(ours: Ours, images: Tensor, batch_size: int, num_batches: int) -> Phases:
    """A short pass with a wall-clock timer (and a device sync) around each phase."""
    phases = Phases()
    clock = PhaseClock(ours.device, phases)
    done = 0
    while done < num_batches:
        for index in batch_indices(len(images), batch_size, ours.generator):
            if done == num_batches:
                break
            clock.start()
            views = ours_views(ours, images, index)
            clock.lap("aug")
            features = ours.step_encoder(views)
            clock.lap("forward")
            loss = ours.criterion(features[: len(index)], features[len(index) :])
            clock.lap("loss")
            ours.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ours.optimizer.step()
            clock.lap("backward+step")
            phases.images += len(index)
            done += 1
    return phases


class PhaseClock:
    def __init__(self, device: torch.device, phases: Phases) -> None:
        self.device = device
        self.phases = phases
        self.last = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.phases.seconds[name] += now - self.last
        self.last = now


def channels_last_ab(
    images: Tensor, batch_size: int, num_batches: int, device: torch.device, seed: int
) -> dict[bool, float]:
    """Median seconds per training step, contiguous vs channels_last, interleaved."""
    runs = {flag: build_ours(flag, device, seed) for flag in (False, True)}
    index = next(batch_indices(len(images), batch_size, torch.Generator().manual_seed(seed)))
    for ours in runs.values():  # warm-up: kernel selection, allocator
        ours_step(ours, images, index)
    samples: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(num_batches):
        for flag, ours in runs.items():
            synchronize(device)
            start = time.perf_counter()
            ours_step(ours, images, index)
            synchronize(device)
            samples[flag].append(time.perf_counter() - start)
    return {flag: statistics.median(values) for flag, values in samples.items()}


def try_compile(ours: Ours, images: Tensor, batch_size: int) -> str:
    """``torch.compile`` the encoder and warm it up: two steps per batch shape.

    Returns a line giving the first step's time (tracing + compiling forward and backward) and
    the second's (steady state). On failure the encoder stays eager and the line says why.
    """
    shapes = [min(batch_size, len(images))]
    if len(images) % batch_size and len(images) > batch_size:
        shapes.append(len(images) % batch_size)  # the partial last batch is a second shape
    timings = []
    try:
        ours.step_encoder = torch.compile(ours.encoder)
        for size in shapes:
            for _ in range(2):
                synchronize(ours.device)
                start = time.perf_counter()
                ours_step(ours, images, torch.arange(size))
                synchronize(ours.device)
                timings.append(time.perf_counter() - start)
    except Exception as error:  # any compiler failure is reported, not fatal
        ours.step_encoder = ours.encoder
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"torch.compile FAILED ({type(error).__name__}: {first_line[:200]}); eager"
    parts = [
        f"batch {size}: first step {timings[2 * i]:.2f} s (incl. compile), "
        f"second {timings[2 * i + 1]:.2f} s"
        for i, size in enumerate(shapes)
    ]
    return "torch.compile: " + "; ".join(parts) + " (not part of the epoch times)"


# --------------------------------------------------------------------------------------
# Conventional: per-image torchvision transforms in a Dataset, tutorial's loss
# --------------------------------------------------------------------------------------
class TwoViewDataset(Dataset):
    """Per image: a (1, 64, 64) float tensor, augmented twice by a torchvision transform."""

    def __init__(self, images: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.images = images  # uint8 (N, 1, 64, 64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor]:
        image = self.images[idx].float()
        return self.transform(image), self.transform(image)


def tutorial_contrastive_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent written the tutorial's way: broadcast cosine similarity and dense masks."""
    device = z1.device
    n = len(z1)
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    representations = torch.cat([z1, z2], dim=0)
    similarity = F.cosine_similarity(
        representations.unsqueeze(1), representations.unsqueeze(0), dim=2
    )  # (2N, 2N), through a (2N, 2N, D) intermediate
    positives = torch.roll(torch.eye(2 * n), n, 1).to(device)
    negatives = (torch.ones(2 * n, 2 * n) - torch.eye(2 * n)).to(device)
    exp_similarity = torch.exp(similarity / temperature)
    numerator = torch.sum(exp_similarity * positives, dim=1)
    denominator = torch.sum(exp_similarity * negatives, dim=1)
    return torch.mean(-torch.log(numerator / denominator))


def time_conventional(
    images: Tensor, batch_size: int, num_batches: int, device: torch.device, seed: int
) -> tuple[Phases, float, int]:
    """Time ``num_batches`` tutorial-style steps; (phases incl. 'data', wall seconds, batches)."""
    from torchvision import transforms

    torch.manual_seed(seed)
    encoder = CoreEncoder(IMAGE_SHAPE, feature_dim=84).to(device).train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=LR)
    transform = transforms.RandomAffine(degrees=DEGREES, translate=TRANSLATE, scale=SCALE)
    loader = DataLoader(
        TwoViewDataset(images, transform), batch_size=batch_size, shuffle=True, num_workers=0
    )

    # Untimed warm-up of the model on un-augmented images of the right shape.
    warm = images[:batch_size].float().to(device)
    z1, z2 = encoder(warm), encoder(warm)
    tutorial_contrastive_loss(z1, z2, TEMPERATURE).backward()
    optimizer.zero_grad(set_to_none=True)

    phases = Phases(names=("data", "forward", "loss", "backward+step"))
    clock = PhaseClock(device, phases)
    done = 0
    synchronize(device)
    wall_start = time.perf_counter()
    clock.start()
    iterator = iter(loader)
    while done < num_batches:
        try:
            view1, view2 = next(iterator)
        except StopIteration:
            break
        view1, view2 = view1.to(device), view2.to(device)
        clock.lap("data")
        z1, z2 = encoder(view1), encoder(view2)
        clock.lap("forward")
        loss = tutorial_contrastive_loss(z1, z2, TEMPERATURE)
        clock.lap("loss")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        clock.lap("backward+step")
        phases.images += len(view1)
        done += 1
    wall = time.perf_counter() - wall_start
    return phases, wall, done


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=16000, help="training images")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs of ours")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--baseline-batches",
        type=int,
        default=3,
        help="batches of the conventional pipeline to time (extrapolated to an epoch); 0 skips",
    )
    parser.add_argument("--profile-batches", type=int, default=5, help="instrumented batches")
    parser.add_argument(
        "--ab-batches",
        type=int,
        default=5,
        help="steps per layout in the channels_last A/B; 0 skips",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last encoder for our main timing",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile our encoder")
    parser.add_argument(
        "--data", default=None, help="dSprites .npz file (omitted: procedural images)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("images", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("baseline_batches", "profile_batches", "ab_batches"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up as they happen
    set_threads(args.threads)
    # The allocator setting reprlab-train uses; it applies to both pipelines alike.
    print(f"keep freed memory (glibc mallopt): {keep_freed_memory()}")
    seed_everything(args.seed)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    images, source = load_train_images(args.images, args.data, args.seed)
    num = len(images)
    batches_per_epoch = math.ceil(num / args.batch_size)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(f"data: {num} training images from {source}")
    print(f"batch {args.batch_size} ({batches_per_epoch} batches/epoch), 2 views per image\n")

    # 1. channels_last A/B (short, interleaved, its own models).
    if args.ab_batches:
        ab = channels_last_ab(images, args.batch_size, args.ab_batches, device, args.seed)
        ratio = ab[False] / ab[True]
        verdict = "helps" if ratio > 1.05 else ("hurts" if ratio < 0.95 else "no clear difference")
        print(
            f"channels_last A/B ({args.ab_batches} steps each, median): contiguous "
            f"{ab[False] * 1e3:.0f} ms/step, channels_last {ab[True] * 1e3:.0f} ms/step "
            f"-> {verdict} ({ratio:.2f}x)"
        )

    # 2. Ours: full epochs, then a short instrumented pass.
    seed_everything(args.seed)
    ours = build_ours(args.channels_last, device, args.seed)
    compile_note = "torch.compile: off"
    if args.compile:
        compile_note = try_compile(ours, images, args.batch_size)
    else:
        ours_step(ours, images, torch.arange(min(args.batch_size, num)))  # untimed warm-up
    print(compile_note)
    layout = "channels_last" if args.channels_last else "contiguous"
    with CpuUsage() as usage:
        epoch_times = time_ours_epochs(ours, images, args.batch_size, args.epochs)
    ours_epoch = statistics.median(epoch_times)
    listed = ", ".join(f"{t:.2f}" for t in epoch_times)
    print(f"ours ({layout}): epoch times {listed} s (median {ours_epoch:.2f} s)")
    print(f"ours per epoch: {usage.describe(per=args.epochs)}")
    phases = profile_ours(ours, images, args.batch_size, args.profile_batches or 1)
    per_epoch = phases.per_epoch(num)
    print(
        f"ours instrumented pass: {phases.images} images, phases sum to "
        f"{sum(per_epoch.values()):.2f} s/epoch when scaled"
    )

    # 3. Conventional: a few batches, extrapolated.
    conv_epoch: float | None = None
    conv_note = ""
    if args.baseline_batches:
        seed_everything(args.seed)
        conv, wall, done = time_conventional(
            images, args.batch_size, args.baseline_batches, device, args.seed
        )
        conv_epoch = wall * num / max(conv.images, 1)
        conv_phases = conv.per_epoch(num)
        full = done >= batches_per_epoch
        conv_note = (
            "measured over a full epoch"
            if full
            else f"extrapolated from {done} batch{'es' if done != 1 else ''} = {conv.images} images"
        )
        breakdown = ", ".join(f"{k} {v:.2f}" for k, v in conv_phases.items())
        print(f"conventional: {wall:.2f} s for {done} batches; per epoch: {breakdown}")

    print()
    print(
        f"ours:          {ours_epoch:.2f} s/epoch  (aug {per_epoch['aug']:.2f}, forward "
        f"{per_epoch['forward']:.2f}, loss {per_epoch['loss']:.2f}, backward+step "
        f"{per_epoch['backward+step']:.2f})"
    )
    if conv_epoch is not None:
        print(f"conventional:  {conv_epoch:.2f} s/epoch  ({conv_note})")
        print(f"speed-up:      {conv_epoch / ours_epoch:.1f}x")
    else:
        print("conventional:  skipped (--baseline-batches 0)")


if __name__ == "__main__":
    main()
