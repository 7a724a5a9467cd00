"""What every classifier-bearing LightningModule here shares (the pretraining methods and the
linear probe): one ``_step`` per stage, and one accuracy metric and one set of logged keys per
stage (``{stage}/loss``, ``{stage}/acc``, ...; see :mod:`reprlab.metric_keys`)."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy

from reprlab.metric_keys import STAGES

Batch = tuple[torch.Tensor, torch.Tensor]


class StagedSteps:
    """Routes Lightning's train/val/test steps to ``self._step(batch, stage)`` and logs what
    every stage reports. Mixed into a LightningModule, which provides ``log``."""

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def add_accuracies(self, num_classes: int) -> None:
        """One accuracy metric per stage (``train_acc``, ``val_acc``, ``test_acc``): a metric
        object keeps its own running state, so the stages must not share one."""
        for stage in STAGES:
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro"))

    def log_accuracy(self, stage: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, labels)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)  # type: ignore[attr-defined]

    def log_value(
        self, stage: str, name: str, value: torch.Tensor, per_step: bool = False, **kwargs
    ) -> None:
        """``{stage}/{name}``, averaged over the epoch (and over processes under DDP); with
        ``per_step`` also every training step."""
        self.log(  # type: ignore[attr-defined]
            f"{stage}/{name}",
            value,
            on_step=per_step and stage == "train",
            on_epoch=True,
            sync_dist=True,
            **kwargs,
        )
