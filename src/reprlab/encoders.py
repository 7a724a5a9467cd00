"""Encoders: modules mapping a batch of images (B, C, H, W) to flat features (B, feature_dim).

Every encoder takes the image shape from the data (``input_shape``) and exposes ``feature_dim``,
so the heads built on top of it never hard-code a size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from reprlab import few_channel_layers


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (channels, height, width), got {tuple(input_shape)}")
    return shape  # type: ignore[return-value]


class CoreEncoder(nn.Module):
    """The Neuromatch tutorial's encoder.

    conv(C->6, 5x5) ReLU avgpool2 BN, conv(6->16, 5x5) ReLU avgpool2 BN, then three fully
    connected layers (->120, ->84, ->feature_dim), each followed by ReLU and BatchNorm1d. The
    BatchNorms have no affine parameters, as in the tutorial. The pooling and BatchNorm2d layers
    are ``few_channel_layers``' (PyTorch's, with a faster CPU path: pooling at 6 and 16
    channels, BatchNorm at 6), and each ReLU + pooling pair runs as one step there
    (``few_channel_layers.run_sequential``; the module hooks of ``self.features`` and of the
    fused pairs' modules are not called).
    """

    def __init__(self, input_shape: Sequence[int], feature_dim: int = 84) -> None:
        super().__init__()
        channels, height, width = _check_input_shape(input_shape)
        # Each block: a 5x5 valid convolution (-4 pixels) then a 2x2 average pool (halves).
        conv_h, conv_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        if conv_h < 1 or conv_w < 1:
            raise ValueError(
                f"CoreEncoder needs images of at least 16x16 pixels, got input_shape="
                f"{tuple(input_shape)}; raise data.image_size or use encoder=simple_cnn"
            )
        self.input_shape = (channels, height, width)
        self.feature_dim = int(feature_dim)
        self.hidden_dim = 84  # the second fully connected block's width (see forward_hidden)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5),
            nn.ReLU(),
            few_channel_layers.AvgPool2d(2),
            few_channel_layers.BatchNorm2d(6, affine=False),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            few_channel_layers.AvgPool2d(2),
            few_channel_layers.BatchNorm2d(16, affine=False),
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
        return few_channel_layers.run_sequential(self.features, images)

    def forward_hidden(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, the 84-d output of the second fully connected block): the tutorial's VAE
        computes its log-variance from the latter, beside the features (the posterior mean)."""
        hidden = few_channel_layers.run_sequential(self.features[:15], images)
        return self.features[15:](hidden), hidden


class IdentityEncoder(nn.Module):
    """Raw pixels, flattened: the baseline that learns nothing."""

    def __init__(self, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.input_shape = _check_input_shape(input_shape)
        self.feature_dim = math.prod(self.input_shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(start_dim=1)


class SimpleCNN(nn.Module):
    """The CIFAR-10 exercise's encoder: two conv blocks, flattened.

    conv(C->64, 3x3, pad 1) ReLU maxpool2, conv(64->128, 3x3, pad 1) ReLU maxpool2, flatten:
    128 * (H/4) * (W/4) features (8,192 for 32x32 images). ``global_pool=True`` averages each
    channel instead (128 features), for a probe on far fewer dimensions.
    """

    def __init__(self, input_shape: Sequence[int], global_pool: bool = False) -> None:
        super().__init__()
        channels, height, width = _check_input_shape(input_shape)
        if height < 4 or width < 4:
            raise ValueError(
                f"SimpleCNN needs images of at least 4x4 pixels, got input_shape="
                f"{tuple(input_shape)}; raise data.image_size"
            )
        self.input_shape = (channels, height, width)
        self.feature_dim = 128 if global_pool else 128 * (height // 4) * (width // 4)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity(),
            nn.Flatten(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class ResNet18Encoder(nn.Module):
    """torchvision's ResNet-18 (random init) with the CIFAR stem, 512 features.

    The ImageNet stem (7x7 stride-2 convolution and a max-pool) would shrink a 32x32 image to 8x8
    before the first block; the usual CIFAR variant uses a 3x3 stride-1 convolution and no
    max-pool instead. The classification layer is dropped: the output is the globally pooled
    512-d feature vector.
    """

    def __init__(self, input_shape: Sequence[int]) -> None:
        super().__init__()
        from torchvision.models import resnet18

        channels, height, width = _check_input_shape(input_shape)
        self.input_shape = (channels, height, width)
        self.feature_dim = 512
        network = resnet18(weights=None)
        network.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        network.maxpool = nn.Identity()
        network.fc = nn.Identity()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


class NormalizedInput(nn.Module):
    """An encoder whose inputs are first normalised per channel: ``(x - mean) / std``.

    The pipeline wraps the encoder in this when the data defines a normalisation (CIFAR-10), so
    the data and the augmentations stay in [0, 1] pixels and everything that calls the encoder
    (the method, the probe, BatchNorm recalibration) normalises the same way, on the encoder's
    device.
    """

    def __init__(self, encoder: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        channels = encoder.input_shape[0]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(
                f"normalisation needs {channels} means and {channels} positive stds, got "
                f"mean={tuple(mean)}, std={tuple(std)}"
            )
        self.encoder = encoder
        self.input_shape = encoder.input_shape
        self.feature_dim = encoder.feature_dim
        # Constants of the dataset, rebuilt from the config: not part of the state dict.
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # In the input's dtype, so a model cast to bf16/fp16 as a whole keeps one dtype.
        mean, std = self.mean.to(images.dtype), self.std.to(images.dtype)
        return self.encoder((images - mean) / std)
