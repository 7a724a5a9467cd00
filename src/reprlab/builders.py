"""Building a run's parts from their config groups: the datamodule, the encoder, the
pretraining method and the Trainer of each stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from reprlab import encoder_weights, launch
from reprlab.callbacks import PerRankRandomness, RankZeroBuffers
from reprlab.encoders import NormalizedInput
from reprlab.io import AtomicCheckpointIO
from reprlab.perf import apply_model_speedups
from reprlab.run_settings import STAGE_LENGTH_KEYS

# The callbacks (config keys of the callbacks group) that write into the stage's checkpoint folder.
CHECKPOINT_CALLBACKS = ("model_checkpoint", "epoch_snapshots")


def build_datamodule(
    data_cfg: DictConfig, bias_cfg: DictConfig, labelled_only: bool
) -> L.LightningDataModule:
    """The loaded, split datamodule; with ``labelled_only`` the pretraining sees only the
    labelled share of the training split (methods whose encoder learns from the labels)."""
    datamodule = instantiate(data_cfg, bias=bias_cfg.name, bias_control=bias_cfg.control)
    datamodule.prepare_data()
    datamodule.setup()
    if labelled_only:
        datamodule.train_split = "labelled"
    return datamodule


def build_encoder(
    encoder_cfg: DictConfig, datamodule: L.LightningDataModule, channels_last: bool
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The encoder for the datamodule's images, initialised from ``encoder.weights`` when given
    (returned with the record of what was loaded, else None); data kept in [0, 1] pixels
    (CIFAR-10) is normalised on entry by the datamodule's mean and std."""
    encoder = instantiate(
        encoder_weights.architecture_config(encoder_cfg), input_shape=datamodule.input_shape
    )
    # Matched to the bare encoder's own names, before any wrapping.
    record = encoder_weights.load_configured(encoder, encoder_cfg)
    normalization = getattr(datamodule, "normalization", None)
    if normalization is not None:
        encoder = NormalizedInput(encoder, *normalization)
    return apply_model_speedups(encoder, channels_last, compile_encoder=False), record


def build_method(
    method_cfg: DictConfig,
    encoder: nn.Module,
    num_classes: int,
    epochs: int,
    run_config: dict[str, Any],
    channels_last: bool,
    compile_encoder: bool,
) -> L.LightningModule:
    """The pretraining module, training for ``epochs``; ``run_config`` (the resolved config)
    goes into every checkpoint it writes, so ``reprlab-eval`` can rebuild the run."""
    module = instantiate(method_cfg, encoder=encoder, num_classes=num_classes, epochs=epochs)
    module.run_config = run_config
    return apply_model_speedups(module, channels_last, compile_encoder)


def build_trainer(
    trainer_cfg: DictConfig,
    logger_cfg: DictConfig | None,
    callbacks_cfg: DictConfig | None,
    run_dir: Path,
    stage: str,
    max_epochs: int,
    has_val: bool,
) -> L.Trainer:
    """A Trainer for one stage (``pretrain``, ``probe``, ``probe_frac_0.1``, ...): ``max_epochs``
    long, with its own logger version and checkpoint folder in the run folder."""
    checkpoint_dir = (
        run_dir / "checkpoints" if stage == "pretrain" else run_dir / "checkpoints" / stage
    )
    callbacks = []
    for name, callback_cfg in (callbacks_cfg or {}).items():
        if callback_cfg is None:  # `callbacks.<name>=null` switches one callback off
            continue
        overrides: dict[str, Any] = {}
        if name in CHECKPOINT_CALLBACKS:
            overrides["dirpath"] = str(checkpoint_dir)
        if name == "model_checkpoint":
            overrides["enable_version_counter"] = False
            if not has_val:  # nothing to rank by: "best" is simply the latest epoch
                overrides["monitor"] = None
        callbacks.append(instantiate(callback_cfg, **overrides))
    # Not optional under DDP (no-ops in one process): independent random draws per rank, and
    # every rank evaluating rank 0's (the checkpointed) BatchNorm statistics.
    callbacks += [PerRankRandomness(), RankZeroBuffers()]
    logger = instantiate(logger_cfg, save_dir=str(run_dir), version=stage) if logger_cfg else False
    # The stage decides its own length (run_settings.check_stage_lengths refuses these keys).
    trainer_kwargs = OmegaConf.to_container(trainer_cfg, resolve=True)
    for key in STAGE_LENGTH_KEYS:
        trainer_kwargs.pop(key, None)
    return instantiate(
        trainer_kwargs,
        max_epochs=max_epochs,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_checkpointing=any(
            isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks
        ),
        enable_progress_bar=any(isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks),
        plugins=[AtomicCheckpointIO()],
        strategy=launch.trainer_strategy(trainer_cfg),
    )
