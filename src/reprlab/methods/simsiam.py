"""SimSiam: each view's prediction pulled to the other view's projection, which is held fixed
(stop-gradient); no negatives and no momentum network."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from reprlab.heads import mlp
from reprlab.methods.two_view import TwoViewMethod
from reprlab.ssl_losses import NegativeCosineSimilarity


class SimSiam(TwoViewMethod):
    """Encoder + projector (BatchNorm on its output) + bottleneck predictor, trained with
    ``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``, ``D`` the negative cosine similarity
    (:class:`~reprlab.ssl_losses.NegativeCosineSimilarity`)."""

    display_name = "SimSiam"

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        epochs: int,
        augment: Callable[[torch.Tensor], torch.Tensor],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        projector: str = "mlp",
        projector_hidden: int = 512,
        projector_out: int = 512,
        predictor_hidden: int = 128,
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
        self.projector = self.projector_head(
            projector, projector_hidden, projector_out, batchnorm_last=True
        )
        dim = self.projection_dim(projector, projector_out)
        self.predictor = mlp([dim, predictor_hidden, dim])
        self.criterion = NegativeCosineSimilarity()

    @property
    def method_loss_name(self) -> str:
        return "simsiam_loss"

    def objective(self, images: torch.Tensor, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        f1, f2 = self.paired(self.encoder, *self.views(images))  # (N, F) each
        z1, z2 = self.paired(self.projector, f1, f2)  # (N, D) each
        p1, p2 = self.paired(self.predictor, z1, z2)  # (N, D) each
        # The stop-gradient: each projection is a fixed target for the other view's prediction.
        loss = (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach())) / 2
        self.monitor(z1, stage)
        return loss, f1
