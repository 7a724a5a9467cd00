"""``reprlab-train``: pretrain an encoder, fit a linear probe on its frozen features, test.

reprlab-train                                      # the default job
reprlab-train method=none encoder=identity         # raw-pixel baseline
reprlab-train -m method=supervised,none seed=1,2   # a sweep, one folder per job
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from reprlab import distributed, pipeline
from reprlab.analysis import build_analysis
from reprlab.checkpoints import check_compatible, load_checkpoint, resolve_checkpoint
from reprlab.perf import keep_freed_memory

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run every stage of one job and write its metrics.json; returns the metrics."""
    resume_from = resolve_checkpoint(cfg.get("ckpt_path"), run_dir)
    if resume_from is not None:
        check_compatible(load_checkpoint(resume_from), resume_from, cfg.method, cfg.encoder)
    datamodule, encoder, timer = pipeline.prepare(cfg, run_dir)
    analysis = build_analysis(cfg, datamodule)  # its settings checked before any training
    metrics: dict[str, Any] = {}

    if pipeline.has_pretraining(cfg):
        module = pipeline.build_method(cfg, encoder, datamodule)
        trainer = pipeline.build_trainer(
            cfg, run_dir, "pretrain", int(module.hparams.epochs), datamodule.has_val
        )
        with timer("pretrain"):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        fitted = pipeline.scalar_metrics(trainer.callback_metrics, prefix="pretrain/")
        metrics.update(
            {
                k: v
                for k, v in fitted.items()
                if k.startswith(("pretrain/val/", "pretrain/train/acc"))
            }
        )
        with timer("precise_bn"):
            if pipeline.precise_batchnorm(cfg, module.encoder, datamodule):
                pipeline.resave_last_checkpoint(trainer)
        with timer("pretrain_test"):
            tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
        metrics.update(pipeline.scalar_metrics(tested, prefix="pretrain/"))
        metrics.update(pipeline.pretrained_group_accuracies(cfg, module, datamodule))
        metrics["pretrain_epochs"] = int(module.hparams.epochs)
        metrics["num_pretrain"] = len(datamodule.split_index(datamodule.train_split))
        encoder = module.encoder

    # The probe starts from its own seed, whatever pretraining drew (or whether it was resumed).
    L.seed_everything(cfg.seed + 1, workers=True)
    features: dict[str, torch.Tensor] = {}
    with timer("probe"):
        metrics.update(pipeline.run_probes(cfg, encoder, datamodule, run_dir, features))
    metrics["feature_dim"] = encoder.feature_dim
    if analysis is not None:
        metrics.update(analysis.run(cfg, encoder, datamodule, run_dir, timer, features, metrics))
    return pipeline.finish(metrics, cfg, datamodule, run_dir, timer)


@hydra.main(version_base="1.3", config_path="pkg://reprlab.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for sweepers."""
    keep_freed_memory()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with distributed.local_processes(cfg.trainer, "reprlab.train"):
            metrics = train(cfg, run_dir)
    except Exception:
        # In a multirun Hydra finishes the other jobs before re-raising; say which one failed.
        log.exception("reprlab-train failed; the job's folder (config, log) is %s", run_dir)
        raise
    value = metrics.get(cfg.optimized_metric)
    if value is None:
        log.warning(
            "optimized_metric=%s was not measured (no validation split?); returning None",
            cfg.optimized_metric,
        )
    return value


if __name__ == "__main__":
    main()
