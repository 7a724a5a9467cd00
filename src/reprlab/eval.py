"""``reprlab-eval ckpt_path=PATH [key=value ...]``: probe and test a saved encoder.

The run's config comes from the checkpoint; overrides on the command line apply on top of it,
e.g. ``reprlab-eval ckpt_path=outputs/.../checkpoints/last.ckpt probe.label_fraction=0.1``, or
``probe.label_fractions=[0.05,0.1,0.2,0.4,0.75,1.0]`` for one probe per fraction and a plot.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from reprlab import launch, run_record, run_settings
from reprlab.checkpoints import load_checkpoint, resolve_checkpoint
from reprlab.cli import reported_errors
from reprlab.perf import keep_freed_memory
from reprlab.train import build_method, probe_and_analyse, reestimate, split_features, start

log = logging.getLogger(__name__)


def run_config(
    checkpoint: dict[str, Any], overrides: list[str], composed: DictConfig
) -> DictConfig:
    """The checkpoint's run config, with the keys (or whole groups) named in ``overrides`` taken
    from ``composed``, the config Hydra built from the same command line."""
    saved = checkpoint["reprlab"].get("config")
    if not saved:
        raise ValueError("the checkpoint carries no run config; was it written by reprlab-train?")
    cfg = OmegaConf.create(saved)
    with open_dict(cfg):
        for key in composed:  # groups newer than the checkpoint (e.g. analysis): their defaults
            if key not in cfg:
                cfg[key] = composed[key]
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key == "ckpt_path" or key.startswith("hydra"):
            continue
        with open_dict(cfg):
            OmegaConf.update(cfg, key, OmegaConf.select(composed, key), merge=False)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if OmegaConf.select(cfg, "pretrain_epochs") is None:  # a checkpoint from before it was kept
        cfg.pretrain_epochs = run_settings.decide_pretrain_epochs(cfg.method, cfg.data)
    return cfg


def load_run(
    composed: DictConfig, overrides: list[str], run_dir: Path
) -> tuple[DictConfig, dict[str, Any], Path]:
    """The run config to evaluate with, the checkpoint and its path."""
    path = resolve_checkpoint(composed.ckpt_path, run_dir)
    checkpoint = load_checkpoint(path)
    return run_config(checkpoint, overrides, composed), checkpoint, path


def evaluate(
    cfg: DictConfig, checkpoint: dict[str, Any], path: Path, run_dir: Path
) -> dict[str, Any]:
    """The stages of ``reprlab-train`` after its pretraining, on the checkpoint's encoder."""
    run = start(cfg, run_dir)
    module = build_method(run)
    module.load_state_dict(checkpoint["state_dict"])
    run.encoder = module.encoder
    with run.timer("batchnorm"):
        reestimate(run, all_layers=cfg.precise_bn)
    metrics = probe_and_analyse(run, split_features(run))
    metrics["checkpoint"] = str(path)
    return run_record.finish(metrics, cfg, run.datamodule, run_dir, run.timer)


@hydra.main(version_base="1.3", config_path="pkg://reprlab.conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    keep_freed_memory()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with reported_errors("reprlab-eval", run_dir):
        run_cfg, checkpoint, path = load_run(cfg, list(hydra_cfg.overrides.task), run_dir)
        # The trainer is the checkpoint's run's (or the command line's): it decides the processes.
        with launch.local_processes(run_cfg.trainer, "reprlab.eval"):
            metrics = evaluate(run_cfg, checkpoint, path, run_dir)
    return metrics["test/acc"]


if __name__ == "__main__":
    main()
