"""Training guards, and what keeps the processes of a multi-process (DDP) run consistent."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(L.Callback):
    """Stop the run as soon as the training loss is NaN or infinite.

    Checkpoints are only written at epoch ends from finite weights, so stopping here keeps the
    last good ``last.ckpt`` instead of overwriting it with a diverged model.
    """

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        diverged_here = loss is not None and not bool(torch.isfinite(loss).all())
        diverged = diverged_here
        if getattr(trainer, "world_size", 1) > 1:
            # Every rank must stop at the same step, or the others wait for it in a collective.
            diverged = trainer.strategy.reduce_boolean_decision(diverged_here, all=False)
        if diverged:
            value = float(loss) if diverged_here else "non-finite on another rank"
            raise NonFiniteLossError(
                f"training loss is {value} at epoch {trainer.current_epoch}, "
                f"global step {trainer.global_step} (batch {batch_idx}); stopping. "
                "The last checkpoint written before this step is kept. Lower method.lr, or "
                "raise the temperature for SimCLR."
            )


class EpochSnapshots(L.Callback):
    """Keep a checkpoint every ``every_n_epochs`` epochs, named by the epochs trained so far
    (``epoch010.ckpt`` holds the weights after 10 epochs), to follow a run's trajectory later;
    ``every_n_epochs=0`` keeps none. Written through the Trainer, so atomically, like last.ckpt.
    """

    def __init__(self, every_n_epochs: int = 0, dirpath: str | None = None) -> None:
        if (
            isinstance(every_n_epochs, bool)
            or not isinstance(every_n_epochs, int)
            or (every_n_epochs < 0)
        ):
            raise ValueError(
                f"callbacks.epoch_snapshots.every_n_epochs must be a whole number >= 0 (0: none "
                f"kept), got {every_n_epochs!r}"
            )
        self.every_n_epochs = every_n_epochs
        self.dirpath = dirpath

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epochs_done = trainer.current_epoch + 1
        if self.every_n_epochs and epochs_done % self.every_n_epochs == 0:
            folder = Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints")
            trainer.save_checkpoint(folder / f"epoch{epochs_done:03d}.ckpt")


class PerRankRandomness(L.Callback):
    """Gives each process of a multi-process run its own random stream for training.

    Every rank starts from the same seed, so all build the same model; left alone they would then
    draw the same augmentations, VAE noise and sampled negatives for their different images. At
    the start of fitting each rank reseeds Python, NumPy and torch with a number drawn from the
    shared stream plus its rank: reproducible, and independent across ranks. The order of the
    data is unaffected (the loaders shuffle with their own per-epoch seed). One process: no-op.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        seed = int(torch.randint(0, 2**31 - 1, ()).item()) + trainer.global_rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


class RankZeroBuffers(L.Callback):
    """Copies rank 0's buffers (BatchNorm running statistics) to every rank before evaluating.

    DDP keeps the weights equal across ranks and broadcasts rank 0's buffers at each training
    step, but then every rank updates its running statistics from its own share of the batch, so
    after a step they differ slightly. Rank 0's are the ones saved in checkpoints; copying them
    before validation and testing and when training ends makes every rank evaluate (and the probe
    encode with) exactly the saved model. One process: no-op.
    """

    def _broadcast(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size < 2 or not dist.is_initialized():
            return
        for buffer in pl_module.buffers():
            dist.broadcast(buffer.data, src=0)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._broadcast(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._broadcast(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._broadcast(trainer, pl_module)
