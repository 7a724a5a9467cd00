"""The stages a run goes through, shared by ``reprlab-train`` and ``reprlab-eval``.

config -> datamodule -> encoder -> (pretraining method) -> frozen linear probe -> metrics.json
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from reprlab import __version__, distributed
from reprlab.callbacks import PerRankRandomness, RankZeroBuffers
from reprlab.data.dsprites import batch_loader
from reprlab.io import AtomicCheckpointIO, atomic_write, write_json
from reprlab.perf import apply_model_speedups
from reprlab.probe import (
    LinearProbe,
    batchnorms_without_statistics,
    extract_features,
    recalibrate_batchnorm,
)

log = logging.getLogger(__name__)


class StageTimer:
    """Wall-clock seconds per named stage, for metrics.json."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(
                self.seconds.get(stage, 0.0) + time.perf_counter() - start, 3
            )


def prepare(cfg: DictConfig, run_dir: Path) -> tuple[L.LightningDataModule, nn.Module, StageTimer]:
    """Check the devices, write the run files, seed, load the data and build the encoder."""
    distributed.check_devices(cfg.trainer)
    distributed.check_strategy(cfg.trainer)
    distributed.check_launched(cfg.trainer)
    if distributed.is_global_zero():
        write_run_files(cfg, run_dir)
    L.seed_everything(cfg.seed, workers=True)
    timer = StageTimer()
    with timer("data"):
        datamodule = build_datamodule(cfg)
    return datamodule, build_encoder(cfg, datamodule), timer


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    datamodule = instantiate(cfg.data, bias=cfg.bias.name, bias_control=cfg.bias.control)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def build_encoder(cfg: DictConfig, datamodule: L.LightningDataModule) -> nn.Module:
    encoder = instantiate(cfg.encoder, input_shape=datamodule.input_shape)
    return apply_model_speedups(encoder, cfg.get("channels_last", False), compile_encoder=False)


def has_pretraining(cfg: DictConfig) -> bool:
    return cfg.method.get("_target_") is not None


def build_method(
    cfg: DictConfig, encoder: nn.Module, datamodule: L.LightningDataModule
) -> L.LightningModule:
    module = instantiate(cfg.method, encoder=encoder, num_classes=datamodule.num_classes)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return apply_model_speedups(module, cfg.get("channels_last", False), cfg.get("compile", False))


def build_trainer(
    cfg: DictConfig, run_dir: Path, stage: str, max_epochs: int, has_val: bool
) -> L.Trainer:
    """A Trainer for one stage: its own logger version and checkpoint folder in the run folder."""
    checkpoint_dir = (
        run_dir / "checkpoints" if stage == "pretrain" else run_dir / "checkpoints" / stage
    )
    callbacks = []
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        overrides: dict[str, Any] = {}
        if name == "model_checkpoint":
            overrides["dirpath"] = str(checkpoint_dir)
            overrides["enable_version_counter"] = False
            if not has_val:  # nothing to rank by: "best" is simply the latest epoch
                overrides["monitor"] = None
        callbacks.append(instantiate(callback_cfg, **overrides))
    # Not optional under DDP (no-ops in one process): independent random draws per rank, and
    # every rank evaluating rank 0's (the checkpointed) BatchNorm statistics.
    callbacks += [PerRankRandomness(), RankZeroBuffers()]
    logger = (
        instantiate(cfg.logger, save_dir=str(run_dir), version=stage)
        if cfg.get("logger")
        else False
    )
    return instantiate(
        cfg.trainer,
        max_epochs=max_epochs,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_checkpointing=any(
            isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks
        ),
        enable_progress_bar=any(isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks),
        plugins=[AtomicCheckpointIO()],
        strategy=distributed.trainer_strategy(cfg.trainer),
    )


def compute_device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", distributed.local_gpu_index(cfg.trainer))
    return torch.device("cpu")


def scalar_metrics(metrics: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    return {prefix + key: float(value) for key, value in metrics.items() if "_step" not in key}


def run_probe(
    cfg: DictConfig, encoder: nn.Module, datamodule: L.LightningDataModule, run_dir: Path
) -> dict[str, Any]:
    """Fit a linear probe on the frozen encoder and test it; returns its metrics."""
    probe_cfg = cfg.probe
    device = compute_device(cfg)
    encoder = encoder.to(device)
    encoder.requires_grad_(False)
    batch_size = int(probe_cfg.batch_size)

    stale = batchnorms_without_statistics(encoder)
    if stale:
        log.info("estimating running statistics of %d untrained BatchNorm layers", len(stale))
        train_images = datamodule.images[datamodule.split_index("train")]
        recalibrate_batchnorm(
            encoder,
            lambda: (
                datamodule.to_float(train_images[i : i + batch_size].to(device))
                for i in range(0, len(train_images), batch_size)
            ),
            stale,
        )

    labelled = datamodule.label_subset(float(probe_cfg.label_fraction), int(probe_cfg.label_seed))
    train_index = datamodule.split_index("train")[labelled]
    splits = {
        "train": train_index,
        "val": datamodule.split_index("val"),
        "test": datamodule.split_index("test"),
    }

    probe = LinearProbe(
        encoder.feature_dim,
        datamodule.num_classes,
        probe_cfg.epochs,
        probe_cfg.lr,
        probe_cfg.weight_decay,
        # Without the cache the probe runs the frozen encoder on every batch itself.
        encoder=None if probe_cfg.cache_features else _FloatInputs(encoder, datamodule.to_float),
    )
    if probe_cfg.cache_features:
        loaders = {}
        for split, index in splits.items():
            if len(index) == 0:
                continue
            features = extract_features(
                encoder, datamodule.images[index], datamodule.to_float, batch_size, device
            )
            loaders[split] = batch_loader(
                torch.arange(len(index)),
                features,
                datamodule.targets[index],
                batch_size=batch_size,
                shuffle=split == "train",
            )
    else:
        encoder.eval()
        loaders = {
            split: batch_loader(
                index,
                datamodule.images,
                datamodule.targets,
                batch_size=batch_size,
                shuffle=split == "train",
            )
            for split, index in splits.items()
            if len(index) > 0
        }

    trainer = build_trainer(cfg, run_dir, "probe", int(probe_cfg.epochs), has_val="val" in loaders)
    trainer.fit(probe, train_dataloaders=loaders["train"], val_dataloaders=loaders.get("val", []))
    fit_metrics = scalar_metrics(trainer.callback_metrics)
    test_metrics = scalar_metrics(
        trainer.test(probe, dataloaders=loaders["test"], verbose=False)[0]
    )
    metrics = {
        key: value for key, value in fit_metrics.items() if key.startswith(("train/acc", "val/"))
    }
    metrics.update(test_metrics)
    metrics["num_labelled"] = len(train_index)
    return metrics


class _FloatInputs(nn.Module):
    """An encoder taking the datamodule's uint8 batches (the uncached probe path)."""

    def __init__(self, encoder: nn.Module, to_float: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.to_float = to_float

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.to_float(images))


def chance_levels(datamodule: L.LightningDataModule) -> dict[str, float]:
    test_labels = datamodule.targets[datamodule.split_index("test")]
    counts = torch.bincount(test_labels, minlength=datamodule.num_classes)
    return {
        "chance": 1.0 / datamodule.num_classes,
        "chance_majority": float(counts.max() / counts.sum()),
    }


def git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def write_run_files(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config and the software versions, so a run folder explains itself."""
    atomic_write(
        run_dir / "config.yaml",
        lambda handle: handle.write(OmegaConf.to_yaml(cfg, resolve=True).encode()),
    )
    import hydra
    import lightning
    import numpy
    import torchvision

    write_json(
        run_dir / "run_info.json",
        {
            "reprlab": __version__,
            "git_commit": git_commit(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightning": lightning.__version__,
            "hydra": hydra.__version__,
            "numpy": numpy.__version__,
            "cuda_available": torch.cuda.is_available(),
        },
    )


def describe(cfg: DictConfig, datamodule: L.LightningDataModule) -> dict[str, Any]:
    """The facts about a run that a results table needs beside its numbers."""
    return {
        "method": cfg.method.get("_target_", "none") or "none",
        "encoder": cfg.encoder._target_,
        "data": cfg.data._target_,
        "data_source": cfg.data.get("source"),
        "target": cfg.data.get("target"),
        "bias": cfg.bias.name,
        "bias_control": bool(cfg.bias.control),
        "label_fraction": float(cfg.probe.label_fraction),
        "seed": cfg.seed,
        "num_train": len(datamodule.split_index("train")),
        "num_val": len(datamodule.split_index("val")),
        "num_test": len(datamodule.split_index("test")),
    }


def finish(
    metrics: dict[str, Any],
    cfg: DictConfig,
    datamodule: L.LightningDataModule,
    run_dir: Path,
    timer: StageTimer,
) -> dict[str, Any]:
    """Add the run's facts and timings to ``metrics``, write metrics.json, print the summary."""
    metrics.update(chance_levels(datamodule))
    metrics.update(describe(cfg, datamodule))
    metrics["seconds"] = timer.seconds
    if distributed.is_global_zero():  # one metrics.json per run, however many processes
        write_json(run_dir / "metrics.json", metrics)
        print_summary(metrics, run_dir)
    return metrics


def print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    seconds = ", ".join(f"{stage} {value:.1f}s" for stage, value in metrics["seconds"].items())
    lines = [
        f"reprlab: probe test/acc {metrics['test/acc']:.4f} (chance {metrics['chance']:.4f})",
    ]
    if "pretrain/test/acc" in metrics:
        lines.append(f"         pretrained model's own test/acc {metrics['pretrain/test/acc']:.4f}")
    lines += [f"         time: {seconds}", f"         run folder: {run_dir}"]
    print("\n".join(lines), flush=True)
