"""Linear probe: a linear classifier trained on a frozen encoder's features, and the accuracy of
a classifier's predictions within groups of test images."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from reprlab.metric_keys import group_key
from reprlab.optim import adam_with_cosine
from reprlab.steps import StagedSteps


@torch.no_grad()
def predict(classifier: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Predicted classes of ``features`` (on the CPU)."""
    classifier = classifier.to(features.device).eval()
    return torch.cat([classifier(chunk).argmax(1) for chunk in features.split(4096)])


def group_accuracies(
    predictions: torch.Tensor,
    labels: torch.Tensor,
    masks: dict[str, torch.Tensor],
    metric: str,
) -> dict[str, float]:
    """``<metric>_<group>`` (e.g. ``test/acc_shape_square``): the accuracy within each non-empty
    group of ``masks``."""
    correct = (predictions == labels).float()
    return {
        group_key(metric, name): float(correct[mask].mean())
        for name, mask in masks.items()
        if mask.any()
    }


class LinearProbe(StagedSteps, L.LightningModule):
    """Linear classifier on features. ``encoder``, when given, is frozen and applied per batch;
    without it the batches are already features (the cached path)."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        epochs: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        encoder: nn.Module | None = None,
        cosine_epochs: int | None = None,
    ) -> None:
        super().__init__()
        if epochs < 1:
            raise ValueError(f"probe.epochs must be >= 1, got {epochs}")
        if cosine_epochs is not None and cosine_epochs < 1:
            raise ValueError(f"probe.cosine_epochs must be >= 1 or null, got {cosine_epochs}")
        if lr <= 0:
            raise ValueError(f"probe.lr must be > 0, got {lr}")
        self.save_hyperparameters(ignore=["encoder"])
        self.encoder = encoder
        if encoder is not None:
            encoder.requires_grad_(False)
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.add_accuracies(num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            self.encoder.eval()  # frozen: BatchNorm uses its running statistics
            with torch.no_grad():
                inputs = self.encoder(inputs)
        return self.classifier(inputs)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits, labels)
        self.log_value(stage, "loss", loss, per_step=True, prog_bar=True)
        self.log_accuracy(stage, logits, labels)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adam_with_cosine(
            self.classifier.parameters(), hp.lr, hp.weight_decay, hp.epochs, hp.cosine_epochs
        )
