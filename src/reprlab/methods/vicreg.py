"""VICReg: two views' projections kept invariant, spread (variance) and decorrelated
(covariance) over the batch; no negatives, no predictor, no momentum network."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from reprlab.methods.two_view import TwoViewMethod
from reprlab.ssl_losses import VICRegLoss


class VICReg(TwoViewMethod):
    """Encoder + expander MLP trained with :class:`~reprlab.ssl_losses.VICRegLoss`."""

    display_name = "VICReg"

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        epochs: int,
        augment: Callable[[torch.Tensor], torch.Tensor],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        projector: str = "mlp",
        projector_hidden: int = 512,
        projector_out: int = 512,
        encode_views: str = "together",
        collapse_std: float = 0.01,
        neg_pairs: Any = None,
        cosine_epochs: int | None = None,
        optim: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            encoder, num_classes, epochs, augment, lr, weight_decay, encode_views, collapse_std,
            neg_pairs, cosine_epochs, optim,
        )  # fmt: skip
        self.criterion = VICRegLoss(invariance_weight, variance_weight, covariance_weight)
        self.projector = self.projector_head(projector, projector_hidden, projector_out)

    @property
    def method_loss_name(self) -> str:
        return "vicreg_loss"

    def objective(self, images: torch.Tensor, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        f1, f2 = self.paired(self.encoder, *self.views(images))  # (N, F) each
        z1, z2 = self.paired(self.projector, f1, f2)  # (N, D) each
        terms = self.criterion(z1, z2)
        self.log_terms(terms, stage)
        self.monitor(z1, stage)
        return terms["loss"], f1
