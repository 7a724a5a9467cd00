"""What the non-contrastive objectives (BYOL, SimSiam, VICReg, Barlow Twins) share: two views of
every image made by ``augment``, encoded as SimCLR encodes them, projector heads, collapse
monitoring, and the settings they refuse."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from reprlab.heads import mlp
from reprlab.methods.base import RepresentationModule
from reprlab.methods.monitoring import log_collapse

# together: both views in one forward pass (one set of BatchNorm statistics); separately: one
# pass per view, each with its own statistics (the tutorial's code for SimCLR).
VIEW_ENCODINGS = ("together", "separately")
PROJECTORS = ("mlp", "identity")


class TwoViewMethod(RepresentationModule):
    """Base of a two-view objective without negatives; subclasses define :meth:`objective`.

    Both views are independent draws of ``augment`` (made on the module's device); the online
    probe sees the encoder features of the first view, detached.
    """

    #: Name in messages and warnings.
    display_name = "TwoViewMethod"

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        epochs: int,
        augment: Callable[[torch.Tensor], torch.Tensor],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        encode_views: str = "together",
        collapse_std: float = 0.01,
        neg_pairs: Any = None,
        cosine_epochs: int | None = None,
        optim: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            encoder, num_classes, epochs, lr, weight_decay, cosine_epochs=cosine_epochs, optim=optim
        )
        if neg_pairs is not None:
            raise ValueError(
                f"method.neg_pairs={neg_pairs!r}: {self.display_name} has no negative pairs "
                "(it compares each image's two views only); leave neg_pairs null, or use "
                "method=simclr"
            )
        if encode_views not in VIEW_ENCODINGS:
            raise ValueError(
                f"unknown encode_views {encode_views!r}; accepted: {', '.join(VIEW_ENCODINGS)}"
            )
        if not collapse_std >= 0:
            raise ValueError(f"collapse_std must be >= 0, got {collapse_std!r}")
        self.augment = augment
        self.encode_views = encode_views
        self.collapse_std = float(collapse_std)

    def projector_head(
        self, kind: str, hidden: int, out: int, batchnorm_last: bool = False
    ) -> nn.Module:
        """``identity`` or a two-layer ``mlp`` (feature_dim -> hidden -> out) on the encoder."""
        if kind == "identity":
            return nn.Identity()
        if kind == "mlp":
            return mlp([self.encoder.feature_dim, hidden, out], batchnorm_last=batchnorm_last)
        raise ValueError(f"unknown projector kind {kind!r}; accepted: {', '.join(PROJECTORS)}")

    def projection_dim(self, kind: str, out: int) -> int:
        return self.encoder.feature_dim if kind == "identity" else out

    def on_fit_start(self) -> None:
        # Checked before the first step, so a bad batch size costs seconds, not an epoch.
        batch_size = getattr(self.trainer.datamodule, "batch_size", None)
        if batch_size is not None and batch_size < 2:
            raise ValueError(
                f"{self.display_name} needs data.batch_size >= 2 (its batch statistics, "
                f"BatchNorm and the loss's, span the images of a batch), got {batch_size}"
            )

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent augmentations of every image, (N, C, H, W) each."""
        return self.augment(images), self.augment(images)

    def paired(
        self, network: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``network`` on both views, in one pass or one per view (``encode_views``)."""
        if self.encode_views == "separately":
            return network(a), network(b)
        out = network(torch.cat([a, b]))
        return out[: len(a)], out[len(a) :]

    def monitor(self, z: torch.Tensor, stage: str) -> None:
        """Projection spread and collapse flag of one view's projections (N, D)."""
        log_collapse(self, z.detach(), stage, self.collapse_std, self.display_name)

    def log_terms(self, terms: Mapping[str, torch.Tensor], stage: str) -> None:
        """The loss's parts, e.g. ``{stage}/vicreg/variance``."""
        prefix = self.method_loss_name.removesuffix("_loss")
        for name, value in terms.items():
            if name != "loss":
                self.log_value(stage, f"{prefix}/{name}", value)
