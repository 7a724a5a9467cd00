"""Tests for reprlab.augment: batched RandomAffine (vs torchvision), Identity."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from reprlab.augment import Identity, RandomAffine


def _shapes(batch: int = 6, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Binary dSprites-like images: an off-centre rectangle plus a random blob per image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, 1, size, size)
    x[:, :, 10:30, 20:50] = 1.0
    x[:, :, 40:56, 8:16] = (torch.rand(batch, 1, 16, 8, generator=g) > 0.5).float()
    return x


# ---------------------------------------------------------------------------------------
# Shapes, dtypes, devices
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 1, 64, 64), (3, 3, 32, 48), (1, 64, 64)])
def test_affine_preserves_shape_dtype_device(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, dtype=dtype)
    out = RandomAffine()(x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device


@pytest.mark.cuda
def test_affine_on_cuda_with_cpu_generator() -> None:
    x = _shapes().cuda()
    out = RandomAffine()(x, generator=torch.Generator().manual_seed(0))
    ref = RandomAffine()(x.cpu(), generator=torch.Generator().manual_seed(0))
    assert out.device == x.device
    assert (out.cpu() != ref).float().mean() < 0.01  # same params; float ties may differ


def test_nearest_keeps_images_binary() -> None:
    out = RandomAffine()(_shapes())
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_integer_images_rejected() -> None:
    with pytest.raises(TypeError, match="floating"):
        RandomAffine()(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------
# Parameter distribution
# ---------------------------------------------------------------------------------------
def test_param_ranges_and_spread() -> None:
    aug = RandomAffine(degrees=90, translate=(0.2, 0.1), scale=(0.8, 1.2))
    p = aug.sample_params(20000, (64, 32), generator=torch.Generator().manual_seed(0))
    angle, tr, scale = p["angle"], p["translate"], p["scale"]
    assert angle.shape == (20000,) and tr.shape == (20000, 2) and scale.shape == (20000,)

    assert angle.min() >= -90 and angle.max() <= 90
    # Spread over the whole range: each of 6 equal bins holds roughly 1/6 of the draws.
    hist = torch.histc(angle, bins=6, min=-90, max=90) / angle.numel()
    assert torch.all((hist - 1 / 6).abs() < 0.02)

    # |tx| <= 0.2 * W = 6.4 px, |ty| <= 0.1 * H = 6.4 px, rounded to integers like torchvision.
    assert torch.equal(tr, tr.round())
    assert tr[:, 0].abs().max() <= 6 and tr[:, 1].abs().max() <= 6
    assert tr[:, 0].min() == -6 and tr[:, 0].max() == 6
    assert tr[:, 0].mean().abs() < 0.1 and tr[:, 1].mean().abs() < 0.1

    assert scale.min() >= 0.8 and scale.max() <= 1.2
    assert scale.min() < 0.81 and scale.max() > 1.19


def test_unrounded_translation() -> None:
    aug = RandomAffine(translate=(0.25, 0.25), round_translation=False)
    tr = aug.sample_params(5000, (64, 64), generator=torch.Generator().manual_seed(1))["translate"]
    assert tr.abs().max() <= 16 and tr.abs().max() > 15.9
    assert not torch.equal(tr, tr.round())


def test_per_image_independence() -> None:
    aug = RandomAffine()
    p = aug.sample_params(64, (64, 64), generator=torch.Generator().manual_seed(2))
    assert p["angle"].unique().numel() == 64 and p["scale"].unique().numel() == 64

    # A batch of identical images must come out different image by image.
    x = _shapes(batch=1).expand(16, -1, -1, -1).contiguous()
    out = aug(x, generator=torch.Generator().manual_seed(3))
    flat = out.flatten(1)
    distinct = {tuple(row.tolist()) for row in flat}
    assert len(distinct) == 16


def test_determinism_with_generator() -> None:
    aug = RandomAffine()
    x = _shapes()
    a = aug(x, generator=torch.Generator().manual_seed(7))
    b = aug(x, generator=torch.Generator().manual_seed(7))
    c = aug(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The global RNG is honoured when no generator is given.
    torch.manual_seed(5)
    d = aug(x)
    torch.manual_seed(5)
    assert torch.equal(d, aug(x))


# ---------------------------------------------------------------------------------------
# Agreement with torchvision (direction of rotation/translation, centre, scale)
# ---------------------------------------------------------------------------------------
_FIXED = [
    (30.0, (5, -3), 1.1),
    (-75.0, (-12, 8), 0.85),
    (90.0, (0, 0), 1.0),
    (0.0, (3, 7), 1.0),
    (45.3, (2, 2), 1.2),
]


@pytest.mark.parametrize("angle,translate,scale", _FIXED)
@pytest.mark.parametrize("size", [(64, 64), (40, 56)])
def test_matches_torchvision_affine(
    angle: float, translate: tuple[int, int], scale: float, size: tuple[int, int]
) -> None:
    g = torch.Generator().manual_seed(11)
    x = (torch.rand(4, 1, *size, generator=g) > 0.6).float()
    x[:, :, 5:15, 8:30] = 1.0  # an asymmetric solid block makes direction errors obvious
    b = x.shape[0]
    params = {
        "angle": torch.full((b,), angle),
        "translate": torch.tensor([translate] * b, dtype=torch.float32),
        "scale": torch.full((b,), scale),
    }
    ours = RandomAffine().apply(x, params)
    ref = torch.stack(
        [
            TF.affine(
                img,
                angle=angle,
                translate=list(translate),
                scale=scale,
                shear=[0.0, 0.0],
                interpolation=InterpolationMode.NEAREST,
                fill=[0.0],
            )
            for img in x
        ]
    )
    # Same inverse matrix and sampling grid as torchvision; only float ties could differ.
    assert (ours != ref).float().mean() <= 0.005


def test_matches_torchvision_bilinear_interior() -> None:
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(12))
    angle, translate, scale = 37.0, (4, -5), 0.9
    params = {
        "angle": torch.full((2,), angle),
        "translate": torch.tensor([translate] * 2, dtype=torch.float32),
        "scale": torch.full((2,), scale),
    }
    ours = RandomAffine(interpolation="bilinear").apply(x, params)
    ref = torch.stack(
        [
            TF.affine(
                img,
                angle=angle,
                translate=list(translate),
                scale=scale,
                shear=[0.0, 0.0],
                interpolation=InterpolationMode.BILINEAR,
                fill=[0.0],
            )
            for img in x
        ]
    )
    # torchvision multiplies by a resampled validity mask when filling, which changes only
    # pixels whose footprint touches the border; elsewhere the outputs are identical.
    close = (ours - ref).abs() < 1e-5
    assert close.float().mean() > 0.97


def test_random_affine_matches_torchvision_transform_distribution() -> None:
    # Same parameter semantics as torchvision.transforms.RandomAffine.get_params.
    from torchvision.transforms import RandomAffine as TVRandomAffine

    torch.manual_seed(0)
    tv = [
        TVRandomAffine.get_params([-90.0, 90.0], [0.2, 0.2], [0.8, 1.2], None, [64, 64])
        for _ in range(3000)
    ]
    tv_tx = torch.tensor([p[1][0] for p in tv], dtype=torch.float32)
    ours = RandomAffine().sample_params(3000, (64, 64), generator=torch.Generator().manual_seed(0))
    assert ours["translate"][:, 0].abs().max() == tv_tx.abs().max() == 13  # round(12.8)
    assert abs(ours["translate"][:, 0].std() - tv_tx.std()) < 0.5


# ---------------------------------------------------------------------------------------
# Identity, validation
# ---------------------------------------------------------------------------------------
def test_identity() -> None:
    x = _shapes()
    assert Identity()(x) is x
    assert Identity()(x, generator=torch.Generator()) is x


@pytest.mark.parametrize(
    "kwargs,value",
    [
        ({"degrees": -5}, "-5"),
        ({"translate": (0.2, 1.5)}, "1.5"),
        ({"translate": (-0.1, 0.2)}, "-0.1"),
        ({"scale": (1.2, 0.8)}, "(1.2, 0.8)"),
        ({"scale": (0.0, 1.0)}, "(0.0, 1.0)"),
        ({"interpolation": "bicubic"}, "bicubic"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], value: str) -> None:
    with pytest.raises(ValueError) as info:
        RandomAffine(**kwargs)  # type: ignore[arg-type]
    assert value in str(info.value)
