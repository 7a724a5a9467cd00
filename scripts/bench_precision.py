"""Training throughput at fp32 and at bf16 autocast, for each encoder and each method, measured in
the same run.

Run (from the repository root, with the project's venv)::

    python scripts/bench_precision.py                         # every encoder x method
    python scripts/bench_precision.py --encoders core --methods simclr,supervised --steps 5
    python scripts/bench_precision.py --compile --warmup 3    # torch.compile'd encoder
    python scripts/bench_precision.py --json precision.json

What it measures, per case (an encoder's preset with ``method=`` swapped in): the preset's own
module, data batches and augmentation, trained by a Lightning Trainer for ``--warmup`` untimed
and ``--steps`` timed batches, once at ``trainer.precision=32-true`` and once at ``bf16-mixed``;
training images per second over the timed batches (forward, loss, backward and optimiser step,
as ``reprlab-train`` runs them) and the ratio bf16 / fp32. The encoders' presets:

* ``core``: the default job (procedural dSprites, 64x64 grey, the tutorial's core encoder);
* ``simple_cnn``: ``experiment=fashion_mnist_exercise`` (28x28 grey, flattened SimpleCNN);
* ``resnet18``: ``experiment=cifar10_exercise encoder=resnet18`` (32x32 colour, CIFAR stem).

The last two read synthetic images of their datasets' shape (an ``.npz`` for ``data=array_file``
written to a temporary folder): speed does not depend on what the pixels show, and the script
needs no download. Whether bf16 keeps a preset's accuracy is a question for real data, answered
by full runs (README, Benchmarks).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from reprlab import train
from reprlab.perf import keep_freed_memory

ENCODERS = ("core", "simple_cnn", "resnet18")
METHODS = ("supervised", "simclr", "byol", "simsiam", "vicreg", "barlow_twins", "vae")
# The exercise presets set projector widths, which the methods without a projector do not take.
PROJECTOR_KEYS = ("projector", "projector_hidden", "projector_out")
WITHOUT_PROJECTOR = ("supervised", "vae")
PRECISIONS = ("32-true", "bf16-mixed")


def synthetic_npz(folder: Path, shape: tuple[int, int, int], count: int = 8192) -> Path:
    """An ``.npz`` of ``count`` random uint8 images (NHWC) in 10 classes, for data=array_file."""
    generator = np.random.default_rng(0)
    height, width, channels = shape
    path = folder / f"synthetic_{height}x{width}x{channels}.npz"
    np.savez(
        path,
        images=generator.integers(0, 256, (count, height, width, channels), dtype=np.uint8),
        labels=generator.integers(0, 10, count),
    )
    return path


def preset_overrides(encoder: str, folder: Path) -> list[str]:
    if encoder == "core":
        return []
    if encoder == "simple_cnn":
        path = synthetic_npz(folder, (28, 28, 1))
        return ["experiment=fashion_mnist_exercise", "data=array_file", f"data.path={path}"]
    if encoder == "resnet18":
        path = synthetic_npz(folder, (32, 32, 3))
        return [
            "experiment=cifar10_exercise",
            "encoder=resnet18",
            "data=array_file",
            f"data.path={path}",
        ]
    raise SystemExit(f"--encoders: unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")


class StepClock(L.Callback):
    """Wall time of each training batch after the first ``warmup``."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx >= self.warmup:
            self.seconds.append(time.perf_counter() - self._start)


def compose_case(overrides: list[str]) -> DictConfig:
    with initialize_config_module(config_module="reprlab.conf", version_base="1.3"):
        return train.with_pretrain_epochs(compose(config_name="train", overrides=overrides))


def images_per_second(
    cfg: DictConfig, precision: str, warmup: int, steps: int, run_dir: Path
) -> tuple[float, int]:
    """(training images per second, batch size) of one case at one precision, from a freshly
    built module (the same seed for both precisions)."""
    run = train.start(cfg, run_dir)
    module = train.build_method(run)
    clock = StepClock(warmup)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=precision,
        max_epochs=1,
        limit_train_batches=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        callbacks=[clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=run.datamodule)
    if len(clock.seconds) < steps:
        raise SystemExit(
            f"only {len(clock.seconds)} timed batches ran (an epoch has fewer than "
            f"--warmup + --steps = {warmup + steps}); lower them"
        )
    batch = int(cfg.data.batch_size)
    return batch * len(clock.seconds) / sum(clock.seconds), batch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per case")
    parser.add_argument("--steps", type=int, default=5, help="timed batches per case")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each preset's")
    parser.add_argument("--compile", action="store_true", help="compile=true (raise --warmup)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    args.encoders = [e for e in args.encoders.split(",") if e]
    args.methods = [m for m in args.methods.split(",") if m]
    for name, values, accepted in (
        ("--encoders", args.encoders, ENCODERS),
        ("--methods", args.methods, METHODS),
    ):
        unknown = [v for v in values if v not in accepted]
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(accepted)}")
    if args.warmup < 0 or args.steps < 1:
        parser.error(f"--warmup must be >= 0 and --steps >= 1, got {args.warmup} and {args.steps}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    rows: list[dict[str, Any]] = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| encoder | method | batch | fp32 img/s | bf16 img/s | bf16 / fp32 |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for encoder in args.encoders:
            base = preset_overrides(encoder, folder)
            for method in args.methods:
                overrides = [*base, f"method={method}", "logger=csv", "callbacks=none"]
                if base and method in WITHOUT_PROJECTOR:
                    overrides += [f"~method.{key}" for key in PROJECTOR_KEYS]
                overrides += [f"compile={str(args.compile).lower()}"]
                if args.batch_size:
                    overrides.append(f"data.batch_size={args.batch_size}")
                cfg = compose_case(overrides)
                rates = {}
                for precision in PRECISIONS:
                    run_dir = folder / f"{encoder}_{method}_{precision}"
                    rates[precision], batch = images_per_second(
                        cfg, precision, args.warmup, args.steps, run_dir
                    )
                ratio = rates["bf16-mixed"] / rates["32-true"]
                rows.append(
                    {"encoder": encoder, "method": method, "batch": batch, **rates, "ratio": ratio}
                )
                print(
                    f"| {encoder} | {method} | {batch} | {rates['32-true']:.0f} | "
                    f"{rates['bf16-mixed']:.0f} | {ratio:.2f}x |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
