"""Encoders for colour images: SimpleCNN, ResNet-18 with the CIFAR stem, input normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reprlab.encoders import CoreEncoder, NormalizedInput, ResNet18Encoder, SimpleCNN


@pytest.mark.parametrize(
    ("shape", "pooled", "features"),
    [((3, 32, 32), False, 8192), ((3, 32, 32), True, 128), ((1, 64, 64), False, 32768)],
)
def test_simple_cnn_features(shape, pooled, features) -> None:
    encoder = SimpleCNN(shape, global_pool=pooled)
    out = encoder(torch.rand(2, *shape))
    assert encoder.feature_dim == features and out.shape == (2, features)
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (shape[0], 64, (3, 3)),
        (64, 128, (3, 3)),
    ]


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 64, 64)])
def test_resnet18_has_the_cifar_stem_and_512_features(shape) -> None:
    encoder = ResNet18Encoder(shape)
    stem = encoder.network.conv1
    assert (stem.in_channels, stem.kernel_size, stem.stride) == (shape[0], (3, 3), (1, 1))
    assert isinstance(encoder.network.maxpool, nn.Identity)
    assert isinstance(encoder.network.fc, nn.Identity)
    encoder.eval()
    with torch.no_grad():
        out = encoder(torch.rand(2, *shape))
    assert encoder.feature_dim == 512 and out.shape == (2, 512)
    # No stride-2 stem: the last stage still sees a 4x4 map of a 32x32 input, not 1x1.
    seen = []
    encoder.network.layer4.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        encoder(torch.rand(1, shape[0], 32, 32))
    assert seen == [4]


def test_normalized_input_normalises_per_channel_before_the_encoder() -> None:
    inner = CoreEncoder((3, 32, 32))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    encoder = NormalizedInput(inner, mean, std)
    assert encoder.feature_dim == 84 and encoder.input_shape == (3, 32, 32)
    images = torch.rand(4, 3, 32, 32)
    inner.eval()
    normalised = (images - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    expected = inner(normalised)
    assert torch.allclose(encoder(images), expected, atol=1e-6)
    assert set(encoder.state_dict()) == {f"encoder.{key}" for key in inner.state_dict()}
    with pytest.raises(ValueError, match="3 means and 3 positive stds"):
        NormalizedInput(inner, (0.5,), (0.2,))
