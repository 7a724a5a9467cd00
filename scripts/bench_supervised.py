"""Benchmark supervised training: ``reprlab-train``'s pretraining stage vs the tutorial's loop.

Run (from the repository root, with the project's venv; keep the machine otherwise idle)::

    .venv/bin/python scripts/bench_supervised.py --data ../shared/data/dsprites_subset.npz
    .venv/bin/python scripts/bench_supervised.py                      # procedural dSprites
    .venv/bin/python scripts/bench_supervised.py --baseline-epochs 2  # extrapolate the baseline
    .venv/bin/python scripts/bench_supervised.py --device cuda --json supervised.json

Both train the tutorial's core encoder and a linear classifier end to end on dSprites shape
labels with the tutorial's protocol (80:20 split drawn with seed 2021, batch 1000, Adam with a
cosine over 100 epochs, ``--epochs`` epochs), in the same process, on the same images:

* **conventional** (the baseline, first): the Neuromatch tutorial's ``train_classifier`` loop --
  a ``Dataset`` returning one float image and its label per index, a ``DataLoader`` with a
  ``SubsetRandomSampler`` over the training indices, contiguous tensors, ``loss.item()`` every
  step. With ``--baseline-epochs`` below ``--epochs`` its time is extrapolated per epoch.
* **ours**: ``reprlab.train.train`` with ``experiment=tutorial_supervised`` (the run's own
  learning rate, TensorBoard logging and checkpointing included; no analyses); the figure is
  the ``pretrain`` stage of its ``metrics.json`` (the Lightning ``fit``), and the accuracy that
  of the model's own classifier.

Both run on ``--device`` (ours with ``trainer=cpu`` or ``trainer=gpu``); ``--images`` keeps only
the first N training images (ours then trains on as many batches per epoch).

Printed (and with ``--json PATH`` written to a file): seconds for the ``--epochs`` epochs, the
ratio baseline / ours, and the test accuracy of each. The glibc setting that keeps freed memory
(``reprlab.perf.keep_freed_memory``, which ``reprlab-train`` applies) is process-wide and cannot
be undone, so the baseline runs first, without it, as the tutorial's code does.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler

from reprlab.encoders import CoreEncoder
from reprlab.perf import keep_freed_memory

SPLIT_SEED = 2021
BATCH_SIZE = 1000  # the tutorial's


class TutorialDataset(Dataset):
    """One float (1, 64, 64) image and its label per index, as the tutorial's dataset gives."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index].float(), self.labels[index]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_conventional(
    datamodule, epochs: int, seed: int, device: torch.device
) -> tuple[float, float]:
    """(seconds per epoch, test accuracy) of the tutorial's supervised loop on ``device``."""
    torch.manual_seed(seed)
    dataset = TutorialDataset(datamodule.images, datamodule.targets)
    train_loader = DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=SubsetRandomSampler(datamodule.train_idx.tolist()),
        pin_memory=device.type == "cuda",
    )
    encoder = CoreEncoder(datamodule.input_shape).to(device)
    classifier = nn.Linear(encoder.feature_dim, datamodule.num_classes).to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *classifier.parameters()], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    encoder.train()
    start = time.perf_counter()
    for _ in range(epochs):
        total = 0.0
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(classifier(encoder(images)), labels)
            loss.backward()
            optimizer.step()
            total += loss.item()
        scheduler.step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / epochs
    encoder.eval()
    with torch.no_grad():
        test = datamodule.test_idx
        images = datamodule.images[test].float().to(device)
        predictions = classifier(encoder(images)).argmax(dim=1).cpu()
    return seconds, float((predictions == datamodule.targets[test]).float().mean())


def run_ours(
    data: str | None,
    rendered: int,
    epochs: int,
    seed: int,
    run_dir: Path,
    device: torch.device,
    train_batches: int | None,
) -> tuple[float, float]:
    """(seconds of the pretraining stage, the model's own test accuracy) of reprlab-train."""
    from hydra import compose, initialize_config_module

    from reprlab.train import train

    overrides = [
        "experiment=tutorial_supervised",
        f"method.epochs={epochs}",
        f"seed={seed}",
        "analysis=none",
        "callbacks.progress_bar=null",
        "probe.epochs=1",
        "trainer=gpu" if device.type == "cuda" else "trainer=cpu",
    ]
    if train_batches is not None:
        overrides.append(f"trainer.limit_train_batches={train_batches}")
    if data is None:  # procedural images, as many as the baseline's
        overrides += ["data.source=procedural", f"data.num_images={rendered}"]
    else:
        overrides.append(f"data.path={Path(data).resolve()}")
    with initialize_config_module(config_module="reprlab.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    metrics = train(cfg, run_dir)
    return metrics["seconds"]["pretrain"], metrics["pretrain/test/acc"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", default=None, help="dSprites .npz (default: procedural)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--baseline-epochs", type=int, default=None, help="epochs of the baseline (default: all)"
    )
    parser.add_argument("--seed", type=int, default=SPLIT_SEED)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for both loops")
    parser.add_argument(
        "--images", type=int, default=None, help="first N training images only (default: all)"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: expected 'cpu' or 'cuda'")
    if args.images is not None and args.images < BATCH_SIZE:
        parser.error(
            f"--images must be >= {BATCH_SIZE} (one batch of the protocol), got {args.images}"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from reprlab.data import DSpritesDataModule

    # Procedural: the tutorial's 20,000 images, or as many as --images training images need.
    rendered = 20000 if args.images is None else math.ceil(args.images / 0.8)
    source = {"source": "procedural", "num_images": rendered}
    if args.data is not None:
        source = {"source": "file", "path": args.data, "num_images": None}
    datamodule = DSpritesDataModule(
        **source, train_fraction=0.8, val_fraction=0.0, split_seed=SPLIT_SEED, batch_size=BATCH_SIZE
    )
    datamodule.setup()
    train_batches = None
    if args.images is not None:
        datamodule.train_idx = datamodule.train_idx[: args.images]
        train_batches = math.ceil(len(datamodule.train_idx) / BATCH_SIZE)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{len(datamodule.train_idx)} training images ({args.data or 'procedural'}), "
        f"device {device}",
        flush=True,
    )
    baseline_epochs = min(args.baseline_epochs or args.epochs, args.epochs)
    per_epoch, baseline_acc = time_conventional(datamodule, baseline_epochs, args.seed, device)
    baseline = per_epoch * args.epochs
    note = "" if baseline_epochs == args.epochs else f" (from {baseline_epochs} epochs)"
    print(f"conventional: {baseline:7.1f} s for {args.epochs} epochs{note}", flush=True)

    keep_freed_memory()
    with tempfile.TemporaryDirectory() as folder:
        ours, ours_acc = run_ours(
            args.data, rendered, args.epochs, args.seed, Path(folder), device, train_batches
        )
    print(f"reprlab:      {ours:7.1f} s for {args.epochs} epochs")
    print(f"speed-up:     {baseline / ours:.2f}x")
    if baseline_epochs == args.epochs:
        print(f"test accuracy: conventional {baseline_acc:.4f}, reprlab {ours_acc:.4f}")
    else:
        print(f"test accuracy: reprlab {ours_acc:.4f}")
    if args.json:
        figures = {
            "device": str(device),
            "epochs": args.epochs,
            "baseline_epochs": baseline_epochs,
            "train_images": len(datamodule.train_idx),
            "conventional_seconds": baseline,
            "reprlab_seconds": ours,
            "speedup": baseline / ours,
            "reprlab_test_acc": ours_acc,
            "conventional_test_acc": baseline_acc if baseline_epochs == args.epochs else None,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
