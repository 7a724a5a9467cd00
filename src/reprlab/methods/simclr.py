"""SimCLR: two views of every image, pulled together against all other images."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from reprlab.losses import NTXentLoss, alignment_uniformity, negatives_count
from reprlab.methods.base import RepresentationModule
from reprlab.methods.monitoring import log_collapse


def build_projector(kind: str, feature_dim: int, hidden: int = 512, out: int = 128) -> nn.Module:
    """``identity`` (the tutorial's choice on dSprites) or a two-layer ``mlp`` head."""
    if kind == "identity":
        return nn.Identity()
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, out),
        )
    raise ValueError(f"unknown projector kind {kind!r}; accepted: identity, mlp")


# two_augmented: SimCLR as published, and the tutorial's code. original_and_augmented: each
# image with one augmentation of itself, whose first view matches what the probe sees.
VIEW_PAIRS = ("two_augmented", "original_and_augmented")
# together: both views in one forward pass, so BatchNorm normalises them with one set of batch
# statistics. separately: one pass per view, each with its own statistics (the tutorial's code).
VIEW_ENCODINGS = ("together", "separately")


class SimCLR(RepresentationModule):
    """Encoder + projection head trained with NT-Xent on two views made by ``augment``.

    The views are made here, on the batch after it reached the module's device, with independent
    random parameters per image. The classifier head is an online probe on detached features.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        epochs: int,
        augment: Callable[[torch.Tensor], torch.Tensor],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        temperature: float = 0.5,
        neg_pairs: int | float | str = "all",
        decoupled: bool = False,
        projector: str = "identity",
        projector_hidden: int = 512,
        projector_out: int = 128,
        collapse_std: float = 0.01,
        views: str = "two_augmented",
        encode_views: str = "together",
        cosine_epochs: int | None = None,
        optim: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            encoder, num_classes, epochs, lr, weight_decay, cosine_epochs=cosine_epochs, optim=optim
        )
        self.augment = augment
        self.projector = build_projector(
            projector, encoder.feature_dim, projector_hidden, projector_out
        )
        self.criterion = NTXentLoss(
            temperature=temperature, neg_pairs=neg_pairs, decoupled=decoupled
        )
        self.collapse_std = collapse_std
        if views not in VIEW_PAIRS:
            raise ValueError(f"unknown views {views!r}; accepted: {', '.join(VIEW_PAIRS)}")
        self.views = views
        if encode_views not in VIEW_ENCODINGS:
            raise ValueError(
                f"unknown encode_views {encode_views!r}; accepted: {', '.join(VIEW_ENCODINGS)}"
            )
        self.encode_views = encode_views

    @property
    def method_loss_name(self) -> str:
        return "nt_xent"

    def on_fit_start(self) -> None:
        # Checked before the first step, so a bad batch size costs seconds, not an epoch.
        batch_size = getattr(self.trainer.datamodule, "batch_size", None)
        if batch_size is None:
            return
        if batch_size < 2:
            raise ValueError(
                f"SimCLR needs data.batch_size >= 2 (each image's negatives are the other images "
                f"of its batch), got {batch_size}"
            )
        negatives_count(self.criterion.neg_pairs, 2 * batch_size - 2)

    def objective(self, images: torch.Tensor, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        batch = len(images)
        first = self.augment(images) if self.views == "two_augmented" else images
        second = self.augment(images)
        if self.encode_views == "together":
            features = self.encoder(torch.cat([first, second]))
        else:
            features = torch.cat([self.encoder(first), self.encoder(second)])
        projections = self.projector(features)
        z1, z2 = projections[:batch], projections[batch:]
        loss = self.criterion(z1, z2)
        self._log_geometry(z1.detach(), z2.detach(), stage)
        return loss, features[:batch]

    def _log_geometry(self, z1: torch.Tensor, z2: torch.Tensor, stage: str) -> None:
        if log_collapse(self, z1, stage, self.collapse_std, "SimCLR") is None:
            return  # a batch of one pair: nothing to measure the geometry on
        alignment, uniformity = alignment_uniformity(z1, z2)
        self.log_value(stage, "alignment", alignment)
        self.log_value(stage, "uniformity", uniformity)
