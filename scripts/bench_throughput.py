"""SimCLR training throughput on CIFAR-10-sized images: reprlab's pipeline vs the usual one.

Run (from the repository root, with the project's venv)::

    .venv/bin/python scripts/bench_throughput.py                          # cuda if present
    .venv/bin/python scripts/bench_throughput.py --precision bf16 --compile --steps 50
    .venv/bin/python scripts/bench_throughput.py --device cpu --batch-size 64 --steps 3

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
alike, so the ratio measures the data path. Each pipeline runs ``--warmup-steps`` untimed steps
(compilation, cuDNN autotuning, worker start-up) and then ``--steps`` timed ones; the rate is
images over the total time of the timed steps, so data stalls count.

``--compare-augment`` also times the augmentation alone (one batch, both views) for ours and for
kornia's ``AugmentationSequential`` with the same settings.

On a CPU the ResNet-18 step dominates whatever the data path does, so the two pipelines come out
close; the data path matters on a GPU, where the step is fast enough for per-image PIL work in a
few worker processes to become the bottleneck.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
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


class Trainer:
    """One SimCLR optimisation step on a batch of two-view pairs, with the model settings."""

    def __init__(self, args: argparse.Namespace, device: torch.device, normalize_inside: bool):
        torch.manual_seed(args.seed)
        self.device = device
        self.model = SimCLRModel(normalize_inside).to(device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.step_model: Callable[[Tensor], Tensor] = self.model
        if args.compile:
            self.step_model = torch.compile(self.model)
        self.criterion = NTXentLoss(temperature=TEMPERATURE)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.channels_last = args.channels_last
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if args.precision == "bf16"
            else contextlib.nullcontext()
        )

    def step(self, view1: Tensor, view2: Tensor) -> None:
        views = torch.cat([view1, view2])
        if self.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            projections = self.step_model(views)
        # The loss in float32: bf16 logits would round the similarities to ~3 digits.
        loss = self.criterion(*projections.float().chunk(2))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


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
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
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
    if args.warmup_steps < 0 or args.workers < 0:
        parser.error("--warmup-steps and --workers must be >= 0")
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
        f"(2 views each); precision {args.precision}, channels_last {args.channels_last}, "
        f"compile {args.compile}; {args.warmup_steps} warm-up + {args.steps} timed steps"
    )
    images_np = synthetic_images(args.images, args.seed)

    images = torch.from_numpy(images_np).to(device)  # ours: the whole dataset on the device
    ours = Trainer(args, device, normalize_inside=True)
    augment = SimCLRAugmentation().to(device)
    ours_times = time_steps(
        ours,
        ours_batches(images, args.batch_size, augment, args.seed),
        args.warmup_steps,
        args.steps,
    )
    # Throughput over all timed steps (not a median): periodic data stalls count too.
    ours_step = sum(ours_times) / len(ours_times)
    ours_rate = args.batch_size / ours_step
    print(f"ours:          {ours_rate:9.1f} images/s  ({ours_step * 1e3:.0f} ms/step)")

    if args.baseline:
        baseline = Trainer(args, device, normalize_inside=False)
        loader = conventional_loader(
            images_np, args.batch_size, args.workers, pin=device.type == "cuda"
        )
        conv_times = time_steps(baseline, endless(loader, device), args.warmup_steps, args.steps)
        conv_step = sum(conv_times) / len(conv_times)
        conv_rate = args.batch_size / conv_step
        print(
            f"conventional:  {conv_rate:9.1f} images/s  "
            f"({conv_step * 1e3:.0f} ms/step, {args.workers} workers)"
        )
        print(f"ratio:         {ours_rate / conv_rate:9.2f}x (ours / conventional)")

    if args.compare_augment:
        for label, ms in time_augmentations(images, args.batch_size, device).items():
            print(f"augmentation, both views of one batch: {label} {ms:.1f} ms")


if __name__ == "__main__":
    main()
