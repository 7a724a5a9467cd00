"""What a run folder records about its run: the resolved config and software versions at the
start, seconds per stage, and at the end metrics.json with the run's facts, and the printed
summary. One process writes them, however many a run has."""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from reprlab import __version__
from reprlab.dist import is_global_zero
from reprlab.io import atomic_write, write_json
from reprlab.metric_keys import PRETRAIN


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
    if not is_global_zero():
        return
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


def chance_levels(datamodule: L.LightningDataModule) -> dict[str, float]:
    test_labels = datamodule.targets[datamodule.split_index("test")]
    counts = torch.bincount(test_labels, minlength=datamodule.num_classes)
    return {
        "chance": 1.0 / datamodule.num_classes,
        "chance_majority": float(counts.max() / counts.sum()),
    }


def describe(cfg: DictConfig, datamodule: L.LightningDataModule) -> dict[str, Any]:
    """The facts about a run that a results table needs beside its numbers."""
    return {
        "method": cfg.method.get("_target_") or "none",  # method=none has no target
        "encoder": cfg.encoder._target_,
        "data": cfg.data._target_,
        "data_source": OmegaConf.select(cfg, "data.source"),  # dSprites' only
        "target": OmegaConf.select(cfg, "data.target"),
        "bias": cfg.bias.name,
        "bias_control": bool(cfg.bias.control),
        # The share of the training split's labels the probe saw; data.label_fraction alone is the
        # share the whole run could use.
        "label_fraction": datamodule.label_fraction * float(cfg.probe.label_fraction),
        "data_label_fraction": datamodule.label_fraction,
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
    """``metrics`` with the run's facts and timings; written to metrics.json and summarised."""
    metrics = {**metrics, **chance_levels(datamodule), **describe(cfg, datamodule)}
    metrics["seconds"] = timer.seconds
    if is_global_zero():  # one metrics.json per run, however many processes
        write_json(run_dir / "metrics.json", metrics)
        print(summary(metrics, run_dir), flush=True)
    return metrics


def summary(metrics: dict[str, Any], run_dir: Path) -> str:
    seconds = ", ".join(f"{stage} {value:.1f}s" for stage, value in metrics["seconds"].items())
    lines = [f"reprlab: probe test/acc {metrics['test/acc']:.4f} (chance {metrics['chance']:.4f})"]
    if f"{PRETRAIN}test/acc" in metrics:
        lines.append(
            f"         pretrained model's own test/acc {metrics[f'{PRETRAIN}test/acc']:.4f}"
        )
    lines += [f"         time: {seconds}", f"         run folder: {run_dir}"]
    return "\n".join(lines)


def hparams_table(cfg: DictConfig, datamodule: L.LightningDataModule) -> dict[str, Any]:
    """The run's settings for TensorBoard's hparams table: its facts and the groups' keys."""
    params: dict[str, Any] = dict(describe(cfg, datamodule))
    for group in ("method", "encoder", "probe", "data"):
        section = OmegaConf.to_container(cfg[group], resolve=True)
        for key, value in (section or {}).items():
            if isinstance(value, bool | int | float | str) and not key.startswith("_"):
                params[f"{group}.{key}"] = value
    return params
