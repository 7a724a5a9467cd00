"""A frozen encoder's features: computed once per split and shared by the probe and the
analyses (the encoder is frozen and their inputs are not augmented, so every pass over a split
would compute the same features)."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn


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


def labelled_positions(
    datamodule: L.LightningDataModule, fraction: float, seed: int
) -> torch.Tensor:
    """Positions, into the ``labelled`` split, of the stratified ``fraction`` of its images that
    the probe trains on (``probe.label_fraction``, ``probe.label_seed``)."""
    return datamodule.label_subset(fraction, seed, split="labelled")


class SplitFeatures:
    """The features of ``encoder`` for each split of ``datamodule``, each computed on first use
    in batches of ``batch_size`` on ``device``, and kept."""

    def __init__(
        self,
        encoder: nn.Module,
        datamodule: L.LightningDataModule,
        batch_size: int,
        device: torch.device,
    ) -> None:
        self.encoder = encoder
        self.datamodule = datamodule
        self.batch_size = batch_size
        self.device = device
        self._features: dict[str, torch.Tensor] = {}

    def __call__(self, split: str) -> torch.Tensor:
        if split not in self._features:
            index = self.datamodule.split_index(split)
            self._features[split] = extract_features(
                self.encoder.to(self.device),
                self.datamodule.images[index],
                self.datamodule.to_float,
                self.batch_size,
                self.device,
            )
        return self._features[split]
