"""BYOL: an online network predicts, for each view, a momentum (moving-average) target
network's projection of the other view; no negatives."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from reprlab.heads import mlp
from reprlab.methods.two_view import TwoViewMethod
from reprlab.ssl_losses import BYOLLoss


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's target momentum after ``step`` of ``total_steps`` optimiser steps (Grill et al.
    2020, section 3.2): ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``, so
    ``base`` at the start rising to ``final`` at the end."""
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def update_moving_average(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online``, parameter by parameter. Buffers
    (BatchNorm's running statistics) are the target's own, from its forward passes."""
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)


class BYOL(TwoViewMethod):
    """Online encoder + projector + predictor; target encoder + projector, a moving average of
    the online ones with a momentum rising from ``base_momentum`` to ``final_momentum`` over the
    run (cosine). Loss: :class:`~reprlab.ssl_losses.BYOLLoss` of each view's prediction against
    the target's projection of the other view, summed over the two directions."""

    display_name = "BYOL"

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        epochs: int,
        augment: Callable[[torch.Tensor], torch.Tensor],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
        projector: str = "mlp",
        projector_hidden: int = 512,
        projector_out: int = 128,
        projector_batchnorm_last: bool = False,
        predictor_hidden: int = 512,
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
        for name, value in (("base_momentum", base_momentum), ("final_momentum", final_momentum)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"method.{name} must lie in [0, 1], got {value!r}")
        self.base_momentum = float(base_momentum)
        self.final_momentum = float(final_momentum)
        self.projector = self.projector_head(
            projector, projector_hidden, projector_out, batchnorm_last=projector_batchnorm_last
        )
        dim = self.projection_dim(projector, projector_out)
        self.predictor = mlp([dim, predictor_hidden, dim])
        # The target starts as a copy of the online network and is never trained by the loss.
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.criterion = BYOLLoss()
        self._total_steps = 1

    @property
    def method_loss_name(self) -> str:
        return "byol_loss"

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))

    def target(self, view: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_encoder(view))

    def objective(self, images: torch.Tensor, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        v1, v2 = self.views(images)
        f1, f2 = self.paired(self.encoder, v1, v2)  # (N, F) each
        z1, z2 = self.paired(self.projector, f1, f2)  # (N, D) each
        q1, q2 = self.paired(self.predictor, z1, z2)  # (N, D) each
        with torch.no_grad():
            t1, t2 = self.paired(self.target, v1, v2)  # (N, D) each
        loss = self.criterion(q1, t2) + self.criterion(q2, t1)
        self.monitor(z1, stage)
        return loss, f1

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After the optimiser step: global_step counts the steps taken so far.
        momentum = cosine_momentum(
            self.trainer.global_step, self._total_steps, self.base_momentum, self.final_momentum
        )
        update_moving_average(self.target_encoder, self.encoder, momentum)
        update_moving_average(self.target_projector, self.projector, momentum)
        self.log("train/momentum", momentum, on_step=False, on_epoch=True)
