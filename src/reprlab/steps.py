"""What every classifier-bearing LightningModule here shares: one ``_step`` per stage, and
Adam with cosine annealing over the run (the tutorial's optimiser)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


def adam_with_cosine(
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    epochs: int,
    cosine_epochs: int | None = None,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: Adam, cosine-annealed per epoch over
    ``cosine_epochs`` (default: the run's ``epochs``, so the rate reaches 0 at the end)."""
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cosine_epochs or epochs)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class StagedSteps:
    """Routes Lightning's train/val/test steps to ``self._step(batch, stage)``."""

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")
