"""``reprlab-eval ckpt_path=PATH [key=value ...]``: probe and test a saved encoder.

``reprlab-eval encoder.weights=PATH [key=value ...]`` (no ckpt_path) evaluates an encoder whose
weights were trained elsewhere, with the command line's config, e.g. the tutorial's published
encoders: ``reprlab-eval experiment=tutorial encoder=core encoder.weights=FILE data.path=...``.

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

from reprlab import encoder_weights, launch, run_settings
from reprlab.checkpoints import load_checkpoint, resolve_checkpoint
from reprlab.cli import reported_errors
from reprlab.perf import keep_freed_memory
from reprlab.train import (
    build_method,
    finish,
    probe_and_analyse,
    reestimate,
    split_features,
    start,
    with_pretrain_epochs,
)

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
) -> tuple[DictConfig, dict[str, Any] | None, Path | None]:
    """The run config to evaluate with, the checkpoint and its path; without ``ckpt_path``, the
    command line's config (an encoder from ``encoder.weights``) and no checkpoint."""
    if encoder_weights.eval_source(composed.ckpt_path, composed.encoder) == "weights":
        return with_pretrain_epochs(encoder_weights.eval_config(composed)), None, None
    path = resolve_checkpoint(composed.ckpt_path, run_dir)
    checkpoint = load_checkpoint(path)
    cfg = encoder_weights.drop_weights(run_config(checkpoint, overrides, composed))
    return cfg, checkpoint, path


def evaluate(
    cfg: DictConfig, checkpoint: dict[str, Any] | None, path: Path | None, run_dir: Path
) -> dict[str, Any]:
    """The stages of ``reprlab-train`` after its pretraining, on the checkpoint's encoder or
    on weights trained elsewhere (``encoder.weights``, no checkpoint)."""
    run = start(cfg, run_dir)
    module = build_method(run) if run_settings.has_pretraining(run.cfg.method) else None
    if checkpoint is not None:
        module.load_state_dict(checkpoint["state_dict"])
    if module is not None:
        run.encoder = module.encoder
    with run.timer("batchnorm"):
        reestimate(run, all_layers=cfg.precise_bn)
    metrics = probe_and_analyse(run, split_features(run))
    metrics["checkpoint"] = None if path is None else str(path)
    if module is not None:  # the VAE's reconstructions, its decoder's weights
        metrics.update(encoder_weights.method_outputs(run.cfg, module, run.datamodule, run_dir))
    return finish(metrics, run)


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
