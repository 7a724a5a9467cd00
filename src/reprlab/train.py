"""``reprlab-train``: pretrain an encoder, fit a linear probe on its frozen features, test.

reprlab-train                                      # the default job
reprlab-train method=none encoder=identity         # raw-pixel baseline
reprlab-train -m method=supervised,none seed=1,2   # a sweep, one folder per job

A run is a straight list of stages (:func:`train`):
config -> datamodule -> encoder -> method (pretraining) -> BatchNorm re-estimation -> probes
-> analyses -> metrics.json. ``reprlab-eval`` (:mod:`reprlab.eval`) runs the same stages on a
saved encoder, without the pretraining.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from reprlab import builders, encoder_weights, launch, probing, run_record, run_settings
from reprlab.analysis import RepresentationAnalysis, build_analysis
from reprlab.batchnorm import reestimate_batchnorm
from reprlab.checkpoints import (
    check_compatible,
    load_checkpoint,
    resave_last_checkpoint,
    resolve_checkpoint,
)
from reprlab.cli import reported_errors
from reprlab.dist import compute_device
from reprlab.features import SplitFeatures, labelled_positions
from reprlab.metric_keys import PRETRAIN, fitted_metrics, scalar_metrics
from reprlab.names import short_name
from reprlab.perf import keep_freed_memory
from reprlab.probe import group_accuracies, predict
from reprlab.run_record import StageTimer

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What every stage of a job works with once the data and the encoder exist."""

    cfg: DictConfig
    run_dir: Path
    datamodule: L.LightningDataModule
    encoder: nn.Module
    analysis: RepresentationAnalysis | None
    timer: StageTimer
    # Positions, in the labelled split, of the probe's training images (probe.label_fraction):
    # the analyses' reference set.
    probe_positions: torch.Tensor

    def trainer_factory(self) -> probing.TrainerFactory:
        cfg = self.cfg
        return functools.partial(
            builders.build_trainer, cfg.trainer, cfg.logger, cfg.callbacks, self.run_dir
        )


def start(cfg: DictConfig, run_dir: Path) -> Run:
    """Check the config, seed, load the data, build the encoder (from ``encoder.weights`` when
    given) and the analysis (its settings checked against the data before any training), and
    write the run files, which record the weights."""
    run_settings.check_run(cfg)
    L.seed_everything(cfg.seed, workers=True)
    timer = StageTimer()
    with timer("data"):
        datamodule = builders.build_datamodule(
            cfg.data, cfg.bias, labelled_only=run_settings.uses_labels(cfg.method)
        )
    encoder, weights = builders.build_encoder(cfg.encoder, datamodule, cfg.channels_last)
    cfg = encoder_weights.with_record(cfg, weights)
    run_record.write_run_files(cfg, run_dir)
    positions = labelled_positions(datamodule, cfg.probe.label_fraction, cfg.probe.label_seed)
    analysis = build_analysis(cfg.analysis, datamodule, num_train=len(positions))
    return Run(cfg, run_dir, datamodule, encoder, analysis, timer, positions)


def with_pretrain_epochs(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``pretrain_epochs``, the epochs the method trains for, decided once
    (:func:`reprlab.run_settings.decide_pretrain_epochs`) and kept in the run's config.yaml."""
    if not run_settings.has_pretraining(cfg.method):
        return cfg
    epochs = run_settings.decide_pretrain_epochs(cfg.method, cfg.data)
    with open_dict(cfg):
        cfg.pretrain_epochs = epochs
    return cfg


def pretrain_steps(
    datamodule: L.LightningDataModule, epochs: int, limit_train_batches: int | float | None
) -> int:
    """Optimiser steps of a pretraining of ``epochs``: the batches of an epoch (as
    ``trainer.limit_train_batches`` shortens it) times the epochs."""
    batches = len(datamodule.train_dataloader())
    if isinstance(limit_train_batches, int) and not isinstance(limit_train_batches, bool):
        batches = min(batches, limit_train_batches)
    elif isinstance(limit_train_batches, float):
        batches = int(batches * limit_train_batches)
    return epochs * batches


def build_method(run: Run) -> L.LightningModule:
    cfg = run.cfg
    return builders.build_method(
        cfg.method,
        run.encoder,
        run.datamodule.num_classes,
        epochs=int(cfg.pretrain_epochs),
        run_config=OmegaConf.to_container(cfg, resolve=True),
        channels_last=cfg.channels_last,
        compile_encoder=run_settings.decide_compile(
            cfg.compile,
            pretrain_steps(
                run.datamodule, int(cfg.pretrain_epochs), cfg.trainer.get("limit_train_batches")
            ),
            on_cpu=compute_device(cfg.trainer).type == "cpu",
        ),
    )


def reestimate(run: Run, all_layers: bool) -> int:
    """BatchNorm statistics over the pretraining split's un-augmented images (what the probe
    and the test feed the encoder): every layer with ``all_layers``, else the untrained ones."""
    datamodule = run.datamodule
    return reestimate_batchnorm(
        run.encoder,
        datamodule.images,
        datamodule.split_index(datamodule.train_split),
        datamodule.to_float,
        int(run.cfg.feature_batch_size),
        compute_device(run.cfg.trainer),
        run.cfg.seed,
        all_layers,
    )


def test_pretrained(
    trainer: L.Trainer, module: L.LightningModule, run: Run, features: SplitFeatures
) -> dict[str, Any]:
    """The pretraining module's own test metrics, with its head's per-group accuracies."""
    datamodule = run.datamodule
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    metrics = scalar_metrics(tested, prefix=PRETRAIN)
    if hasattr(datamodule, "group_masks"):
        metrics.update(
            group_accuracies(
                predict(module.classifier, features("test")),
                datamodule.targets[datamodule.split_index("test")],
                datamodule.group_masks("test"),
                metric=f"{PRETRAIN}test/acc",
            )
        )
    metrics["pretrain_epochs"] = int(run.cfg.pretrain_epochs)
    metrics["num_pretrain"] = len(datamodule.split_index(datamodule.train_split))
    return metrics


def split_features(run: Run) -> SplitFeatures:
    return SplitFeatures(
        run.encoder,
        run.datamodule,
        int(run.cfg.feature_batch_size),
        compute_device(run.cfg.trainer),
    )


def probe_and_analyse(run: Run, features: SplitFeatures) -> dict[str, Any]:
    """The probes (one per label fraction) and the analyses of the frozen encoder."""
    cfg, datamodule = run.cfg, run.datamodule
    # The probe starts from its own seed, whatever came before (pretraining, a resume, loading).
    L.seed_everything(cfg.seed + 1, workers=True)
    title = f"{short_name(cfg.method.get('_target_'))} / {short_name(cfg.encoder._target_)}"
    with run.timer("probe"):
        metrics = probing.run_probes(
            features,
            cfg.probe,
            run.trainer_factory(),
            datamodule.label_fraction,
            seed=cfg.seed + 1,
            plot_path=run.run_dir / "label_fractions.png",
            plot_title=title,
        )
    metrics["feature_dim"] = run.encoder.feature_dim
    if run.analysis is not None:
        logger = (
            instantiate(cfg.logger, save_dir=str(run.run_dir), version="analysis")
            if cfg.logger
            else None
        )
        metrics.update(
            run.analysis.run(
                features,
                run.probe_positions,
                run.run_dir / "analysis",
                run.timer,
                logger=logger,
                run_metrics=metrics,
                hparams=run_record.hparams_table(cfg, datamodule),
            )
        )
    return metrics


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run every stage of one job and write its metrics.json; returns the metrics."""
    resume_from = resolve_checkpoint(cfg.ckpt_path, run_dir)
    if resume_from is not None:
        check_compatible(load_checkpoint(resume_from), resume_from, cfg.method, cfg.encoder)
    run = start(with_pretrain_epochs(cfg), run_dir)
    metrics: dict[str, Any] = {}
    pretraining = run_settings.has_pretraining(cfg.method)
    if pretraining:
        module = build_method(run)
        trainer = run.trainer_factory()(
            "pretrain", int(cfg.pretrain_epochs), run.datamodule.has_val
        )
        with run.timer("pretrain"):
            trainer.fit(module, datamodule=run.datamodule, ckpt_path=resume_from)
        metrics.update(fitted_metrics(trainer.callback_metrics, prefix=PRETRAIN))
        run.encoder = module.encoder
    with run.timer("batchnorm"):
        reestimated = reestimate(run, all_layers=cfg.precise_bn and pretraining)
    features = split_features(run)
    if pretraining:
        if reestimated:  # last.ckpt then holds what is tested and probed
            resave_last_checkpoint(trainer)
        with run.timer("pretrain_test"):
            metrics.update(test_pretrained(trainer, module, run, features))
    metrics.update(probe_and_analyse(run, features))
    return finish(metrics, run)


def finish(metrics: dict[str, Any], run: Run) -> dict[str, Any]:
    """The run's metrics.json and summary, with the record of any weights it started from."""
    weights = encoder_weights.recorded(run.cfg)
    if weights is not None:
        metrics = {**metrics, "encoder_weights": weights}
    return run_record.finish(metrics, run.cfg, run.datamodule, run.run_dir, run.timer)


@hydra.main(version_base="1.3", config_path="pkg://reprlab.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for sweepers."""
    keep_freed_memory()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with (
        reported_errors("reprlab-train", run_dir),
        launch.local_processes(cfg.trainer, "reprlab.train"),
    ):
        metrics = train(cfg, run_dir)
    value = metrics.get(cfg.optimized_metric)
    if value is None:
        log.warning(
            "optimized_metric=%s was not measured (no validation split?); returning None",
            cfg.optimized_metric,
        )
    return value


if __name__ == "__main__":
    main()
