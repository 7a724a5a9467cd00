"""Collapse monitoring shared by the self-supervised methods: the spread of the projections."""

from __future__ import annotations

import warnings

import lightning as L
import torch

from reprlab.losses import projection_std


def log_collapse(
    module: L.LightningModule, z: torch.Tensor, stage: str, threshold: float, method: str
) -> torch.Tensor | None:
    """Log ``{stage}/proj_std`` (see :func:`projection_std`; about 1/sqrt(D) when spread, 0 when
    every image maps to one point) and ``{stage}/collapsed`` (1 when below ``threshold``, the
    epoch's maximum), and warn when a training batch collapses. Returns the std, or None for a
    batch of one image, which has no spread (the last batch of a split can be that short: the
    epoch's values then come from the other batches)."""
    if len(z) < 2:
        return None
    std = projection_std(z)
    module.log_value(stage, "proj_std", std)
    collapsed = bool(std < threshold)
    module.log_value(stage, "collapsed", float(collapsed), reduce_fx="max")
    if stage == "train" and collapsed:
        warnings.warn(
            f"{method} projections are collapsing: per-dimension std {float(std):.2e} < "
            f"{threshold} (healthy is about 1/sqrt(dim))",
            stacklevel=3,
        )
    return std
