"""Linear probe: a linear classifier trained on a frozen encoder's features.

When the encoder is frozen and the probe's inputs are not augmented, every epoch would compute
the same features; :func:`extract_features` computes them once and the probe trains on those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from reprlab.steps import StagedSteps, adam_with_cosine

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorms(encoder: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``encoder`` that keep running statistics."""
    return [
        module
        for module in encoder.modules()
        if isinstance(module, _BATCHNORMS) and module.track_running_stats
    ]


def batchnorms_without_statistics(encoder: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers that never saw a training batch (their running stats are the 0/1 init)."""
    return [module for module in batchnorms(encoder) if int(module.num_batches_tracked) == 0]


@torch.no_grad()
def recalibrate_batchnorm(
    encoder: nn.Module, batches: Callable[[], Any], layers: list[nn.modules.batchnorm._BatchNorm]
) -> None:
    """Set ``layers``' running statistics to their average over ``batches``, leaving every weight
    unchanged.

    An untrained encoder's BatchNorms hold mean 0 / variance 1, which in eval mode would pass
    unnormalised activations through and make a "random encoder" baseline depend on the scale of
    its random weights; a trained one's hold averages that lag its final weights. Each batch
    enters the average with the weight of its size (momentum = batch / images so far), so a short
    last batch counts for what it holds: the running mean is the mean over all the images.
    """
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
    was_training = encoder.training
    encoder.train()
    seen = 0
    # Eager even when the encoder was compiled (compile=true): the momentum changes with every
    # batch, and each new value would cost a recompilation (measured: 31 s instead of 2 s).
    with torch.compiler.set_stance("force_eager"):
        for images in batches():
            seen += len(images)
            for layer in layers:
                layer.momentum = len(images) / seen
            encoder(images)
    encoder.train(was_training)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor,
    to_float: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Features of ``images`` (uint8, N x C x H x W) from ``encoder`` in eval mode, on the CPU."""
    encoder.eval()
    outputs = [
        encoder(to_float(images[start : start + batch_size].to(device))).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs)


@torch.no_grad()
def predict(classifier: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Predicted classes of ``features`` (on the CPU)."""
    classifier = classifier.to(features.device).eval()
    return torch.cat([classifier(chunk).argmax(1) for chunk in features.split(4096)])


def group_accuracies(
    predictions: torch.Tensor,
    labels: torch.Tensor,
    masks: dict[str, torch.Tensor],
    prefix: str,
) -> dict[str, float]:
    """``{prefix}acc_{group}``: the accuracy within each non-empty group of ``masks``."""
    correct = (predictions == labels).float()
    return {
        f"{prefix}acc_{name}": float(correct[mask].mean())
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
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

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
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, labels)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,  # the mean over processes under DDP
        )
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adam_with_cosine(
            self.classifier.parameters(),
            hp.lr,
            hp.weight_decay,
            hp.epochs,
            hp.get("cosine_epochs"),
        )
