"""BatchNorm running statistics: finding the layers that keep them, and re-estimating them over
a split's un-augmented images before an encoder is tested or probed.

Two reasons to re-estimate. An untrained encoder's layers hold mean 0 / variance 1, which in
eval mode would pass unnormalised activations through and make a "random encoder" baseline
depend on the scale of its random weights. A trained one's hold an exponential average over the
last ~10 batches, taken while the weights were still moving, so in eval mode the network can
normalise with statistics its final weights never produce ("precise BatchNorm", Wu & Johnson
2021, "Rethinking 'Batch' in BatchNorm"; README, "Precise BatchNorm statistics").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorms(encoder: nn.Module) -> list[BatchNorm]:
    """The BatchNorm layers of ``encoder`` that keep running statistics."""
    return [
        module
        for module in encoder.modules()
        if isinstance(module, _BATCHNORMS) and module.track_running_stats
    ]


def batchnorms_without_statistics(encoder: nn.Module) -> list[BatchNorm]:
    """BatchNorm layers that never saw a training batch (their running stats are the 0/1 init)."""
    return [module for module in batchnorms(encoder) if int(module.num_batches_tracked) == 0]


@torch.no_grad()
def recalibrate_batchnorm(
    encoder: nn.Module, batches: Callable[[], Iterable[torch.Tensor]], layers: list[BatchNorm]
) -> None:
    """Set ``layers``' running statistics to their average over ``batches``, leaving every weight
    unchanged.

    Each batch enters the average with the weight of its size (momentum = batch / images so far),
    so a short last batch counts for what it holds: the running mean is the mean over all the
    images.
    """
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
    was_training = encoder.training
    encoder.train()
    seen = 0
    # Eager even when the encoder was compiled (compile=true): the momentum changes with every
    # batch, and each new value would cost a recompilation.
    with torch.compiler.set_stance("force_eager"):
        for images in batches():
            seen += len(images)
            for layer in layers:
                layer.momentum = len(images) / seen
            encoder(images)
    encoder.train(was_training)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum


def reestimate_batchnorm(
    encoder: nn.Module,
    images: torch.Tensor,
    index: torch.Tensor,
    to_float: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    device: torch.device,
    seed: int,
    all_layers: bool,
) -> int:
    """Re-estimate ``encoder``'s BatchNorm statistics over ``images[index]`` (uint8,
    un-augmented, in batches of ``batch_size`` on ``device``): every layer with ``all_layers``
    (precise BatchNorm), else only the layers that never saw a batch. Returns how many layers
    were re-estimated.

    The batches are a shuffle seeded with ``seed``: files sorted by latents would otherwise give
    batches of one shape each, and an average of within-batch variances that misses the variance
    between them.
    """
    layers = batchnorms(encoder) if all_layers else batchnorms_without_statistics(encoder)
    if not layers:
        return 0
    if all_layers:
        log.info("precise BatchNorm: recomputing the statistics of %d layers", len(layers))
    else:
        log.info("estimating running statistics of %d untrained BatchNorm layers", len(layers))
    order = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))]
    recalibrate_batchnorm(
        encoder.to(device),
        lambda: (
            to_float(images[order[i : i + batch_size]].to(device))
            for i in range(0, len(order), batch_size)
        ),
        layers,
    )
    return len(layers)
