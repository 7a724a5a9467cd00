"""SimCLR's colour-image views: crop, flip, colour jitter, grayscale, batched per image."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import compose_train
from hydra.utils import instantiate
from torchvision.transforms import InterpolationMode

from reprlab.augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    ColorJitter,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    SimCLRAugmentation,
)


def colour_images(batch: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def jitter_params(batch: int, first: int, **factors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Neutral factors (1, 1, 1, hue 0), every image jittered, ``first`` applied first."""
    params = {
        "brightness": torch.ones(batch),
        "contrast": torch.ones(batch),
        "saturation": torch.ones(batch),
        "hue": torch.zeros(batch),
        "order": torch.tensor([[first] + [op for op in range(4) if op != first]] * batch),
        "apply": torch.ones(batch, dtype=torch.bool),
    }
    params.update(factors)
    return params


# -- RandomResizedCrop ------------------------------------------------------------------------
def test_crop_boxes_follow_the_area_and_aspect_ranges() -> None:
    # On a large frame the rounding to whole pixels is negligible.
    crop = RandomResizedCrop(32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    params = crop.sample_params(20000, (1000, 1000), generator=seeded())
    top, left, height, width = (params[k] for k in ("top", "left", "height", "width"))
    area = height * width / 1e6
    aspect = width / height
    assert area.min() >= 0.08 - 2e-3 and area.max() <= 1.0
    assert area.min() < 0.09 and area.max() > 0.95  # the whole range is drawn
    assert aspect.min() >= 3 / 4 - 5e-3 and aspect.max() <= 4 / 3 + 5e-3
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 1000).all() and (left + width <= 1000).all()
    assert torch.equal(top, top.round()) and torch.equal(width, width.round())
    # log-uniform aspect: as many crops wider than tall as taller than wide
    assert abs((aspect > 1).float().mean() - 0.5) < 0.02


def test_crop_falls_back_to_the_central_crop_when_no_draw_fits() -> None:
    # No box of aspect 2..3 and area fraction >= 0.9 fits a square image: the fallback is the
    # widest central box of aspect 2 (torchvision's rule).
    crop = RandomResizedCrop(32, scale=(0.9, 1.0), ratio=(2.0, 3.0))
    params = crop.sample_params(50, (32, 32), generator=seeded())
    assert (params["width"] == 32).all() and (params["height"] == 16).all()
    assert (params["top"] == 8).all() and (params["left"] == 0).all()


def test_crop_resamples_like_torchvision() -> None:
    images = colour_images()
    crop = RandomResizedCrop(32)
    params = crop.sample_params(len(images), (32, 32), generator=seeded(1))
    out = crop.apply(images, params)
    for i in range(len(images)):
        box = [int(params[k][i]) for k in ("top", "left", "height", "width")]
        expected = TF.resized_crop(
            images[i], *box, [32, 32], InterpolationMode.BILINEAR, antialias=False
        )
        assert torch.allclose(out[i], expected, atol=1e-5)


def test_full_image_crop_is_the_identity_and_size_is_honoured() -> None:
    images = colour_images(4)
    full = {k: torch.full((4,), v) for k, v in (("top", 0.0), ("left", 0.0))}
    full.update({k: torch.full((4,), 32.0) for k in ("height", "width")})
    assert torch.allclose(RandomResizedCrop(32).apply(images, full), images, atol=1e-6)
    assert RandomResizedCrop((24, 16))(images).shape == (4, 3, 24, 16)


# -- flip -------------------------------------------------------------------------------------
def test_flip_mirrors_exactly_or_leaves_the_image() -> None:
    images = colour_images(400)
    out = RandomHorizontalFlip(0.5)(images, generator=seeded())
    mirrored = torch.tensor([torch.equal(o, x.flip(-1)) for o, x in zip(out, images, strict=True)])
    kept = torch.tensor([torch.equal(o, x) for o, x in zip(out, images, strict=True)])
    assert (mirrored ^ kept).all()
    assert 0.4 < mirrored.float().mean() < 0.6
    assert torch.equal(RandomHorizontalFlip(1.0)(images), images.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(images), images)


# -- colour jitter ----------------------------------------------------------------------------
def test_neutral_jitter_is_the_identity() -> None:
    images = colour_images()
    for first in range(4):
        assert torch.equal(ColorJitter().apply(images, jitter_params(8, first)), images)


@pytest.mark.parametrize(
    ("op", "name", "reference"),
    [
        (BRIGHTNESS, "brightness", TF.adjust_brightness),
        (CONTRAST, "contrast", TF.adjust_contrast),
        (SATURATION, "saturation", TF.adjust_saturation),
    ],
)
def test_brightness_contrast_saturation_match_torchvision(op, name, reference) -> None:
    images = colour_images()
    factors = torch.linspace(0.5, 1.5, 8)
    out = ColorJitter().apply(images, jitter_params(8, op, **{name: factors}))
    expected = torch.stack([reference(x, float(f)) for x, f in zip(images, factors, strict=True)])
    assert torch.allclose(out, expected, atol=1e-6)


def test_hue_rotation_keeps_luma_and_turns_red_towards_green() -> None:
    # Low-chroma colours, so the rotation never leaves [0, 1] (no clamping).
    images = 0.4 + 0.2 * colour_images()
    shift = torch.linspace(-0.1, 0.1, 8)
    out = ColorJitter().apply(images, jitter_params(8, HUE, hue=shift))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((out * luma).sum(1), (images * luma).sum(1), atol=1e-5)
    assert not torch.allclose(out[0], images[0], atol=1e-2)
    red = torch.tensor([0.8, 0.2, 0.2]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    turned = ColorJitter().apply(red, jitter_params(2, HUE, hue=torch.tensor([1 / 3, -1 / 3])))
    assert turned[0, :, 0, 0].argmax() == 1  # +1/3 of the hue circle: green, as torchvision
    assert turned[1, :, 0, 0].argmax() == 2  # -1/3: blue


def test_jitter_draws_per_image_factors_orders_and_application() -> None:
    jitter = ColorJitter(brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1, p=0.8)
    params = jitter.sample_params(20000, generator=seeded())
    for name, (low, high) in (
        ("brightness", (0.6, 1.4)),
        ("contrast", (0.7, 1.3)),
        ("saturation", (0.8, 1.2)),
        ("hue", (-0.1, 0.1)),
    ):
        values = params[name]
        assert values.min() >= low and values.max() <= high
        assert values.min() < low + 0.01 and values.max() > high - 0.01
    assert torch.equal(params["order"].sort(dim=1).values, torch.arange(4).expand(20000, 4))
    assert abs((params["order"][:, 0] == HUE).float().mean() - 0.25) < 0.02
    assert abs(params["apply"].float().mean() - 0.8) < 0.02
    # Not applied: the image is untouched whatever its factors.
    images = colour_images(4)
    skipped = jitter_params(4, BRIGHTNESS, brightness=torch.full((4,), 1.4))
    skipped["apply"] = torch.zeros(4, dtype=torch.bool)
    assert torch.equal(jitter.apply(images, skipped), images)


def test_grey_images_get_brightness_and_contrast_only() -> None:
    grey = colour_images(8)[:, :1]
    out = ColorJitter().apply(
        grey, jitter_params(8, SATURATION, saturation=torch.zeros(8), hue=torch.full((8,), 0.3))
    )
    assert torch.equal(out, grey)
    out = ColorJitter().apply(grey, jitter_params(8, BRIGHTNESS, brightness=torch.full((8,), 0.5)))
    assert torch.allclose(out, grey * 0.5)


# -- grayscale --------------------------------------------------------------------------------
def test_grayscale_gives_equal_channels_with_torchvision_weights() -> None:
    images = colour_images(400)
    out = RandomGrayscale(0.2)(images, generator=seeded())
    grey = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert 0.15 < grey.float().mean() < 0.25
    assert torch.equal(out[~grey], images[~grey])
    expected = TF.rgb_to_grayscale(images[grey], num_output_channels=3)
    assert torch.allclose(out[grey], expected, atol=1e-6)


# -- the composition --------------------------------------------------------------------------
def test_views_keep_shape_dtype_device_and_range() -> None:
    augment = SimCLRAugmentation()
    for images in (colour_images(), colour_images().double(), colour_images()[:, :1]):
        out = augment(images, generator=seeded())
        assert out.shape == images.shape and out.dtype == images.dtype
        assert out.device == images.device
        assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(TypeError, match="floating-point"):
        augment(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_every_image_gets_its_own_view() -> None:
    same = colour_images(1).expand(16, 3, 32, 32).contiguous()
    out = SimCLRAugmentation()(same, generator=seeded())
    distinct = {tuple(view.flatten()[:64].tolist()) for view in out}
    assert len(distinct) == 16
    again = SimCLRAugmentation()(same, generator=seeded())
    assert torch.equal(out, again)  # the same generator state gives the same views


def test_views_stay_float32_under_mixed_precision() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = SimCLRAugmentation()(colour_images())
    assert out.dtype == torch.float32


def test_config_group_builds_the_paper_settings() -> None:
    cfg = compose_train("augment=simclr_cifar")
    augment = instantiate(cfg.augment)
    crop, flip, jitter, grey = augment.transforms
    assert crop.size == (32, 32) and crop.scale == (0.08, 1.0)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert flip.p == 0.5 and grey.p == 0.2 and jitter.p == 0.8
    assert jitter.brightness == pytest.approx((0.6, 1.4)) and jitter.hue == (-0.1, 0.1)
    assert isinstance(augment, SimCLRAugmentation)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RandomResizedCrop(32, scale=(0.5, 0.1)), r"scale must satisfy .*\(0.5, 0.1\)"),
        (lambda: RandomResizedCrop(0), "size must be a positive int"),
        (lambda: ColorJitter(hue=0.7), r"hue must be in \[0, 0.5\], got 0.7"),
        (lambda: ColorJitter(brightness=-1), "brightness must be a non-negative number"),
        (lambda: RandomGrayscale(1.5), r"p must be a probability in \[0, 1\], got 1.5"),
    ],
)
def test_bad_settings_are_refused(build, message) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_hue_angle_is_a_fraction_of_the_circle() -> None:
    # A half-turn (hue 0.5) twice is the identity rotation (up to rounding, without clamping).
    images = 0.45 + 0.1 * colour_images(2)
    jitter = ColorJitter(hue=0.5)
    half = jitter_params(2, HUE, hue=torch.full((2,), 0.5))
    twice = jitter.apply(jitter.apply(images, half), half)
    assert torch.allclose(twice, images, atol=1e-5)
    assert math.isclose(jitter.hue[1], 0.5)
