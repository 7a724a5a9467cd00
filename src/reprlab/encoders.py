"""Encoders: modules mapping a batch of images (B, C, H, W) to flat features (B, feature_dim).

Every encoder takes the image shape from the data (``input_shape``) and exposes ``feature_dim``,
so the heads built on top of it never hard-code a size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (channels, height, width), got {tuple(input_shape)}")
    return shape  # type: ignore[return-value]


class CoreEncoder(nn.Module):
    """The Neuromatch tutorial's encoder.

    conv(C->6, 5x5) ReLU avgpool2 BN, conv(6->16, 5x5) ReLU avgpool2 BN, then three fully
    connected layers (->120, ->84, ->feature_dim), each followed by ReLU and BatchNorm1d. The
    BatchNorms have no affine parameters, as in the tutorial.
    """

    def __init__(self, input_shape: Sequence[int], feature_dim: int = 84) -> None:
        super().__init__()
        channels, height, width = _check_input_shape(input_shape)
        # Each block: a 5x5 valid convolution (-4 pixels) then a 2x2 average pool (halves).
        conv_h, conv_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        if conv_h < 1 or conv_w < 1:
            raise ValueError(
                f"CoreEncoder needs images of at least 16x16 pixels, got input_shape={input_shape}"
            )
        self.input_shape = (channels, height, width)
        self.feature_dim = int(feature_dim)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.BatchNorm2d(6, affine=False),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.BatchNorm2d(16, affine=False),
            nn.Flatten(),
            nn.Linear(16 * conv_h * conv_w, 120),
            nn.ReLU(),
            nn.BatchNorm1d(120, affine=False),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.BatchNorm1d(84, affine=False),
            nn.Linear(84, self.feature_dim),
            nn.ReLU(),
            nn.BatchNorm1d(self.feature_dim, affine=False),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class IdentityEncoder(nn.Module):
    """Raw pixels, flattened: the baseline that learns nothing."""

    def __init__(self, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.input_shape = _check_input_shape(input_shape)
        self.feature_dim = math.prod(self.input_shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(start_dim=1)
