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
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from reprlab import distributed, encoder_weights, pipeline
from reprlab.analysis import build_analysis
from reprlab.checkpoints import load_checkpoint, resolve_checkpoint
from reprlab.perf import keep_freed_memory

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
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def load_run(
    composed: DictConfig, overrides: list[str], run_dir: Path
) -> tuple[DictConfig, dict[str, Any] | None, Path | None]:
    """The run config to evaluate with, the checkpoint and its path; without ``ckpt_path``, the
    command line's config (an encoder from ``encoder.weights``) and no checkpoint."""
    if encoder_weights.eval_source(composed.ckpt_path, composed.encoder) == "weights":
        return encoder_weights.eval_config(composed), None, None
    path = resolve_checkpoint(composed.ckpt_path, run_dir)
    checkpoint = load_checkpoint(path)
    cfg = encoder_weights.drop_weights(run_config(checkpoint, overrides, composed))
    return cfg, checkpoint, path


def evaluate(
    cfg: DictConfig, checkpoint: dict[str, Any] | None, path: Path | None, run_dir: Path
) -> dict[str, Any]:
    datamodule, encoder, timer = pipeline.prepare(cfg, run_dir)
    analysis = build_analysis(cfg, datamodule)
    module = (
        pipeline.build_method(cfg, encoder, datamodule) if pipeline.has_pretraining(cfg) else None
    )
    if checkpoint is not None:
        module.load_state_dict(checkpoint["state_dict"])
    encoder = encoder if module is None else module.encoder
    with timer("precise_bn"):
        pipeline.precise_batchnorm(cfg, encoder, datamodule)
    features: dict[str, torch.Tensor] = {}
    with timer("probe"):
        metrics = pipeline.run_probes(cfg, encoder, datamodule, run_dir, features)
    metrics["checkpoint"] = None if path is None else str(path)
    if module is not None:  # the VAE's reconstructions, its decoder's weights
        metrics.update(encoder_weights.method_outputs(cfg, module, datamodule, run_dir))
    if analysis is not None:
        metrics.update(analysis.run(cfg, encoder, datamodule, run_dir, timer, features, metrics))
    return pipeline.finish(metrics, cfg, datamodule, run_dir, timer)


@hydra.main(version_base="1.3", config_path="pkg://reprlab.conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    keep_freed_memory()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    run_cfg, checkpoint, path = load_run(cfg, list(hydra_cfg.overrides.task), run_dir)
    # The trainer is the checkpoint's run's (or the command line's): it decides the processes.
    with distributed.local_processes(run_cfg.trainer, "reprlab.eval"):
        metrics = evaluate(run_cfg, checkpoint, path, run_dir)
    return metrics.get("test/acc")


if __name__ == "__main__":
    main()
