"""Collapse monitoring shared by the self-supervised methods: the spread of the projections."""

from __future__ import annotations

import warnings

import lightning as L
import torch

from reprlab.losses import projection_std


def log_collapse(
    module: L.LightningModule, z: torch.Tensor, stage: str, threshold: float, method: str
) -> torch.Tensor:
    """Log ``{stage}/proj_std`` (see :func:`projection_std`; about 1/sqrt(D) when spread, 0 when
    every image maps to one point) and ``{stage}/collapsed`` (1 when below ``threshold``, the
    epoch's maximum), and warn when a training batch collapses. Returns the std."""
    std = projection_std(z)
    module.log(f"{stage}/proj_std", std, on_step=False, on_epoch=True, sync_dist=True)
    collapsed = bool(std < threshold)
    module.log(
        f"{stage}/collapsed",
        float(collapsed),
        on_step=False,
        on_epoch=True,
        reduce_fx="max",
        sync_dist=True,
    )
    if stage == "train" and collapsed:
        warnings.warn(
            f"{method} projections are collapsing: per-dimension std {float(std):.2e} < "
            f"{threshold} (healthy is about 1/sqrt(dim))",
            stacklevel=3,
        )
    return std
