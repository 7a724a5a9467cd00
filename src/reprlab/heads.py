"""Projector and predictor MLPs of the two-view objectives, with BatchNorm over the global batch.

BYOL, SimSiam, VICReg and Barlow Twins normalise their projector (and predictor) layers with the
statistics of the whole batch, all processes together. torch's SyncBatchNorm needs GPUs;
:class:`GlobalBatchNorm1d` does the same on any backend by gathering the rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist
from torch import Tensor, nn

# The gather helpers move to reprlab.dist with the orchestration refactor.
from reprlab.dist import gather_sizes, gather_with_grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics span every process's rows (one process: plain
    BatchNorm1d).

    In training under DDP the (N_r, D) input of every rank is gathered (with gradients), the
    global batch normalised as BatchNorm1d does (running statistics updated from it, so equal on
    every rank), and this rank's rows returned. The gather's backward sums every rank's gradient
    into the rows it owns, so DDP's averaged parameter gradients are those of the global batch.
    """

    def forward(self, x: Tensor) -> Tensor:
        distributed = dist.is_available() and dist.is_initialized()
        if not (self.training and distributed and dist.get_world_size() > 1):
            return super().forward(x)
        sizes = gather_sizes(x.shape[0], x.device)
        start = sum(sizes[: dist.get_rank()])
        everyone = gather_with_grad(x, sizes)  # (N_global, D), ranks in order
        return super().forward(everyone)[start : start + x.shape[0]]


def mlp(dims: Sequence[int], batchnorm_last: bool = False) -> nn.Sequential:
    """Linear layers through ``dims`` (input, hidden..., output); every hidden layer is followed
    by a global-batch BatchNorm and a ReLU, the output layer by a BatchNorm (without affine
    parameters) only if ``batchnorm_last`` (SimSiam's projector)."""
    if len(dims) < 2 or min(dims) < 1:
        raise ValueError(f"an MLP needs an input and an output size >= 1, got sizes {list(dims)}")
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        last = i == len(dims) - 2
        # No bias before a BatchNorm: it would be normalised away.
        layers.append(nn.Linear(width_in, width_out, bias=last and not batchnorm_last))
        if not last:
            layers += [GlobalBatchNorm1d(width_out), nn.ReLU()]
        elif batchnorm_last:
            layers.append(GlobalBatchNorm1d(width_out, affine=False))
    return nn.Sequential(*layers)
