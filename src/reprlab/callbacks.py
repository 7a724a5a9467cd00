"""Training guards."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


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
        if loss is not None and not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"training loss is {float(loss)} at epoch {trainer.current_epoch}, "
                f"global step {trainer.global_step} (batch {batch_idx}); stopping. "
                "The last checkpoint written before this step is kept. Lower method.lr, or "
                "raise the temperature for SimCLR."
            )
