"""SimCLR training throughput on CIFAR-10-sized images: reprlab's pipeline vs the usual one.

Run (from the repository root, with the project's venv)::

    .venv/bin/python scripts/bench_throughput.py                          # cuda if present
    .venv/bin/python scripts/bench_throughput.py --precision bf16 --compile --steps 50
    .venv/bin/python scripts/bench_throughput.py --device cpu --batch-size 64 --steps 3
    .venv/bin/python scripts/bench_throughput.py --ours bf16+compile,32 --profile-steps 5 \
        --json throughput.json                 # two settings of ours vs one conventional run

What it measures: training images per second (each image gives two views) of SimCLR steps with
the recipe's model -- ResNet-18 with the CIFAR stem, MLP projector 512 -> 2048 -> 128, NT-Xent
at temperature 0.5 (``reprlab.losses.NTXentLoss``), SGD with momentum -- on synthetic uint8
images of CIFAR-10's shape (no download), for two data pipelines, in the same process:

* **ours**: the whole dataset is one uint8 tensor on the device; a batch is one index gather,
  converted to float there, and both views are made by ``reprlab.augment.SimCLRAugmentation``
  on the whole batch at once (per-image parameters); normalisation is the encoder's first step
  (``NormalizedInput``) and both views go through the encoder in one forward pass.
* **conventional**: a ``Dataset`` of HWC uint8 images whose ``__getitem__`` makes a PIL image
  and applies torchvision's (v1) ``RandomResizedCrop(32)``, ``RandomHorizontalFlip``,
  ``RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)``, ``RandomGrayscale(0.2)``,
  ``ToTensor`` and ``Normalize`` twice, in a ``DataLoader`` with ``--workers`` worker
  processes (pinned memory on a GPU); the same model, loss and optimiser.

Model settings (``--precision``, ``--channels-last``, ``--compile``) apply to both pipelines
alike, so the ratio measures the data path. ``--ours`` runs ours several times with its own
model settings each (``bf16+compile``, ``32``, ...: precision, then ``+compile``), all against the
one conventional run with ``--precision`` / ``--compile``, so a fast-path figure and an eager fp32
one come out of the same process. Each pipeline runs ``--warmup-steps`` untimed steps
(compilation, cuDNN autotuning, worker start-up) and then ``--steps`` timed ones; the rate is
images over the total time of the timed steps, so data stalls count.

``--profile-steps N`` times N more steps of the first setting of ours phase by phase, with a
device synchronisation between phases (data: the gather and the float conversion; augmentation:
both views; forward; loss; backward; optimiser), and lists the operators that took the most
device time (``torch.profiler``). ``--json PATH`` writes every figure to a file.

``--compare-augment`` also times the augmentation alone (one batch, both views) for ours and for
kornia's ``AugmentationSequential`` with the same settings.

On a CPU the ResNet-18 step dominates whatever the data path does, so the two pipelines come out
close; the data path matters on a GPU, where the step is fast enough for per-image PIL work in a
few worker processes to become the bottleneck.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from reprlab.augment import SimCLRAugmentation
from reprlab.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from reprlab.encoders import NormalizedInput, ResNet18Encoder
from reprlab.losses import NTXentLoss
from reprlab.methods.simclr import build_projector
from reprlab.perf import keep_freed_memory

IMAGE_SHAPE = (3, 32, 32)
TEMPERATURE = 0.5
LR, MOMENTUM = 0.1, 0.9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_images(count: int, seed: int) -> np.ndarray:
    """uint8 (N, 3, 32, 32) images: smooth random colour fields plus noise, CIFAR's shape."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(count, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)
    return np.clip(coarse + rng.normal(0, 20, size=coarse.shape), 0, 255).astype(np.uint8)


class SimCLRModel(nn.Module):
    """Encoder + projector: projections of a batch of views."""

    def __init__(self, normalize_inside: bool) -> None:
        super().__init__()
        encoder: nn.Module = ResNet18Encoder(IMAGE_SHAPE)
        if normalize_inside:
            encoder = NormalizedInput(encoder, CIFAR10_MEAN, CIFAR10_STD)
        self.encoder = encoder
        self.projector = build_projector("mlp", 512, 2048, 128)

    def forward(self, views: Tensor) -> Tensor:
        return self.projector(self.encoder(views))


@dataclass(frozen=True)
class ModelSettings:
    """How the model runs: ``precision`` "32" or "bf16" (autocast), and torch.compile or not."""

    precision: str
    compile: bool

    @property
    def label(self) -> str:
        return self.precision + ("+compile" if self.compile else "")

    @classmethod
    def parse(cls, text: str) -> ModelSettings:
        """``"bf16+compile"`` -> ModelSettings("bf16", True); ``"32"`` -> ("32", False)."""
        precision, *flags = text.strip().split("+")
        if precision not in PRECISIONS or any(flag != "compile" for flag in flags):
            raise ValueError(
                f"model setting {text!r}: expected a precision ({' or '.join(PRECISIONS)}), "
                "optionally followed by '+compile', e.g. 'bf16+compile' or '32'"
            )
        return cls(precision, bool(flags))


PRECISIONS = ("32", "bf16")


class Trainer:
    """One SimCLR optimisation step on a batch of two-view pairs, with the model settings."""

    def __init__(
        self,
        settings: ModelSettings,
        channels_last: bool,
        seed: int,
        device: torch.device,
        normalize_inside: bool,
    ) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.model = SimCLRModel(normalize_inside).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.step_model: Callable[[Tensor], Tensor] = self.model
        if settings.compile:
            self.step_model = torch.compile(self.model)
        self.criterion = NTXentLoss(temperature=TEMPERATURE)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.channels_last = channels_last
        self.autocast: Any = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if settings.precision == "bf16"
            else contextlib.nullcontext()
        )

    def step(self, view1: Tensor, view2: Tensor, lap: Callable[[str], None] | None = None) -> None:
        """One step; ``lap(phase)``, if given, is called at the end of each phase."""
        lap = lap or (lambda phase: None)
        views = torch.cat([view1, view2])
        if self.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            projections = self.step_model(views)
        lap("forward")
        # The loss in float32: bf16 logits would round the similarities to ~3 digits.
        loss = self.criterion(*projections.float().chunk(2))
        lap("loss")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lap("backward")
        self.optimizer.step()
        lap("optimiser")


# -- ours ---------------------------------------------------------------------------------------
def ours_batches(
    images: Tensor, batch_size: int, augment: nn.Module, seed: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled epochs of (view1, view2) made on the device holding ``images``."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - batch_size + 1, batch_size):
            batch = images[order[start : start + batch_size].to(images.device)].float().div_(255)
            yield augment(batch), augment(batch)


# -- conventional -------------------------------------------------------------------------------
class TwoViewPIL(Dataset):
    """Per image: a PIL image, augmented twice by a torchvision (v1) transform."""

    def __init__(self, images_hwc: np.ndarray, transform: Callable[[Any], Tensor]) -> None:
        self.images = images_hwc
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        image = Image.fromarray(self.images[index])
        return self.transform(image), self.transform(image)


def conventional_loader(images: np.ndarray, batch_size: int, workers: int, pin: bool) -> DataLoader:
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    return DataLoader(
        TwoViewPIL(images.transpose(0, 2, 3, 1).copy(), transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
    )


def endless(loader: DataLoader, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        for view1, view2 in loader:
            yield (
                view1.to(device, non_blocking=True),
                view2.to(device, non_blocking=True),
            )


# -- timing -------------------------------------------------------------------------------------
PHASES = ("data", "augmentation", "forward", "loss", "backward", "optimiser")


def time_phases(
    trainer: Trainer, images: Tensor, batch_size: int, augment: nn.Module, steps: int, seed: int
) -> dict[str, float]:
    """Milliseconds per step of each phase of ours, synchronising the device between phases (so
    the sum is a little above the free-running step time)."""
    generator = torch.Generator().manual_seed(seed)
    totals = dict.fromkeys(PHASES, 0.0)
    clock = [0.0]

    def lap(phase: str) -> None:
        synchronize(trainer.device)
        now = time.perf_counter()
        totals[phase] += now - clock[0]
        clock[0] = now

    for _ in range(steps):
        synchronize(trainer.device)
        clock[0] = time.perf_counter()
        index = torch.randperm(len(images), generator=generator)[:batch_size]
        batch = images[index.to(images.device)].float().div_(255)
        lap("data")
        views = augment(batch), augment(batch)
        lap("augmentation")
        trainer.step(*views, lap=lap)
    return {phase: seconds / steps * 1e3 for phase, seconds in totals.items()}


def top_device_ops(
    trainer: Trainer, batches: Iterator[tuple[Tensor, Tensor]], steps: int, count: int = 10
) -> list[dict[str, Any]]:
    """The operators with the most self time on the device (CPU time on a CPU) over ``steps``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if trainer.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            trainer.step(*next(batches))
        synchronize(trainer.device)
    on_device = trainer.device.type == "cuda"
    rows = []
    for event in profiler.key_averages():
        self_us = event.self_device_time_total if on_device else event.self_cpu_time_total
        rows.append({"name": event.key, "ms_per_step": self_us / 1e3 / steps, "calls": event.count})
    rows.sort(key=lambda row: row["ms_per_step"], reverse=True)
    return rows[:count]


def time_steps(
    trainer: Trainer, batches: Iterator[tuple[Tensor, Tensor]], warmup: int, steps: int
) -> list[float]:
    for _ in range(warmup):
        trainer.step(*next(batches))
    synchronize(trainer.device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.step(*next(batches))
        synchronize(trainer.device)
        times.append(time.perf_counter() - start)
    return times


def time_augmentations(
    images: Tensor, batch_size: int, device: torch.device, repeats: int = 20
) -> dict[str, float]:
    """Median milliseconds to make both views of one batch, ours and kornia's."""
    batch = images[:batch_size].to(device).float().div_(255)
    candidates: dict[str, Callable[[Tensor], Tensor]] = {"ours": SimCLRAugmentation().to(device)}
    try:
        import kornia.augmentation as K

        candidates["kornia"] = K.AugmentationSequential(
            K.RandomResizedCrop((32, 32), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        ).to(device)
    except ImportError:
        pass
    results = {}
    for name, augment in candidates.items():
        augment(batch)
        samples = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            augment(batch), augment(batch)
            synchronize(device)
            samples.append(time.perf_counter() - start)
        results[name] = statistics.median(samples) * 1e3
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--batch-size", type=int, default=512, help="images per step (2 views)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per pipeline")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
    parser.add_argument("--images", type=int, default=10000, help="synthetic dataset size")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader worker processes of the conventional pipeline",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="32")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--ours",
        default=None,
        help="comma-separated model settings for ours, e.g. 'bf16+compile,32' "
        "(default: --precision and --compile, as the conventional run)",
    )
    parser.add_argument(
        "--profile-steps", type=int, default=0, help="steps of ours timed by phase and profiled"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--compare-augment", action="store_true", help="also time ours vs kornia's augmentation"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_steps < 0 or args.workers < 0 or args.profile_steps < 0:
        parser.error("--warmup-steps, --workers and --profile-steps must be >= 0")
    conventional = ModelSettings(args.precision, args.compile)
    try:
        args.ours = (
            [ModelSettings.parse(text) for text in args.ours.split(",")]
            if args.ours
            else [conventional]
        )
    except ValueError as error:
        parser.error(f"--ours: {error}")
    args.conventional = conventional
    if args.images < args.batch_size:
        parser.error(f"--images ({args.images}) must be at least --batch-size ({args.batch_size})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    print(f"torch {torch.__version__}, device {device} ({name})")
    print(
        f"ResNet-18 (CIFAR stem) + MLP projector, NT-Xent; batch {args.batch_size} images "
        f"(2 views each); channels_last {args.channels_last}; "
        f"{args.warmup_steps} warm-up + {args.steps} timed steps"
    )
    images_np = synthetic_images(args.images, args.seed)
    results: dict[str, Any] = {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "channels_last": args.channels_last,
        "ours": {},
    }

    images = torch.from_numpy(images_np).to(device)  # ours: the whole dataset on the device
    augment = SimCLRAugmentation().to(device)
    for settings in args.ours:
        ours = Trainer(settings, args.channels_last, args.seed, device, normalize_inside=True)
        ours_times = time_steps(
            ours,
            ours_batches(images, args.batch_size, augment, args.seed),
            args.warmup_steps,
            args.steps,
        )
        # Throughput over all timed steps (not a median): periodic data stalls count too.
        ours_step = sum(ours_times) / len(ours_times)
        ours_rate = args.batch_size / ours_step
        results["ours"][settings.label] = {
            "images_per_s": ours_rate,
            "ms_per_step": ours_step * 1e3,
        }
        print(
            f"ours ({settings.label}): {ours_rate:9.1f} images/s  ({ours_step * 1e3:.0f} ms/step)"
        )
        if args.profile_steps and settings == args.ours[0]:
            phases = time_phases(
                ours, images, args.batch_size, augment, args.profile_steps, args.seed
            )
            results["phases_ms"] = {"settings": settings.label, **phases}
            listed = ", ".join(f"{phase} {ms:.1f}" for phase, ms in phases.items())
            print(f"  phases of one step, ms (synchronised): {listed}")
            top = top_device_ops(
                ours,
                ours_batches(images, args.batch_size, augment, args.seed),
                args.profile_steps,
            )
            results["top_ops"] = {"settings": settings.label, "ops": top}
            print("  top operators by self device time, ms/step:")
            for row in top:
                print(f"    {row['ms_per_step']:8.2f}  {row['calls']:6d}x  {row['name'][:80]}")
        del ours

    if args.baseline:
        baseline = Trainer(
            args.conventional, args.channels_last, args.seed, device, normalize_inside=False
        )
        loader = conventional_loader(
            images_np, args.batch_size, args.workers, pin=device.type == "cuda"
        )
        conv_times = time_steps(baseline, endless(loader, device), args.warmup_steps, args.steps)
        conv_step = sum(conv_times) / len(conv_times)
        conv_rate = args.batch_size / conv_step
        results["conventional"] = {
            "settings": args.conventional.label,
            "workers": args.workers,
            "images_per_s": conv_rate,
            "ms_per_step": conv_step * 1e3,
        }
        print(
            f"conventional ({args.conventional.label}): {conv_rate:9.1f} images/s  "
            f"({conv_step * 1e3:.0f} ms/step, {args.workers} workers)"
        )
        results["ratio"] = {}
        for label, figures in results["ours"].items():
            ratio = figures["images_per_s"] / conv_rate
            results["ratio"][label] = ratio
            print(f"ratio ({label}): {ratio:9.2f}x (ours / conventional)")

    if args.compare_augment:
        augment_ms = time_augmentations(images, args.batch_size, device)
        results["augmentation_ms"] = augment_ms
        for label, ms in augment_ms.items():
            print(f"augmentation, both views of one batch: {label} {ms:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
