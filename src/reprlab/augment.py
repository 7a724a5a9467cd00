"""Batched, device-side image augmentations for (B, C, H, W) float batches.

Every image in a batch gets its own random parameters; all work happens on the batch's
device (no per-image Python loop, no PIL round trip), so augmenting the two SimCLR views of a
1000-image batch is a couple of tensor ops.

All augmentations are parameter-free ``nn.Module`` s called as ``aug(images, generator=None)``.
The random ones also offer ``sample_params`` and ``apply(images, params)``, so a test (or a
caller that wants the same draw twice) can fix the parameters.

* :class:`RandomAffine` -- dSprites' views (``augment=affine``).
* :class:`SimCLRAugmentation` -- SimCLR's views of colour images (``augment=simclr_cifar``):
  :class:`RandomResizedCrop`, :class:`RandomHorizontalFlip`, :class:`ColorJitter` (applied with
  probability p) and :class:`RandomGrayscale`, each with torchvision's parametrisation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ColorJitter",
    "Identity",
    "RandomAffine",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "SimCLRAugmentation",
]

Interpolation = Literal["nearest", "bilinear"]


def _as_batch(images: Tensor) -> tuple[Tensor, bool]:
    """Accept (B, C, H, W) or a single (C, H, W) image; return a 4-D batch and a squeeze flag."""
    if images.ndim == 3:
        return images.unsqueeze(0), True
    if images.ndim != 4:
        raise ValueError(
            f"expected images of shape (B, C, H, W) or (C, H, W), got {tuple(images.shape)}"
        )
    return images, False


def _affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """Same result as ``F.affine_grid(theta, (B, C, H, W), align_corners=False)``, but faster.

    On CPU ``F.affine_grid`` for 1000 x 64 x 64 took ~70-140 ms (it dominated the transform);
    one (2B, 3) @ (3, HW) matmul takes ~15 ms and is just as device-agnostic.
    """
    dtype, device = theta.dtype, theta.device
    # Pixel centres in normalised coordinates (align_corners=False convention).
    xs = (torch.arange(width, dtype=dtype, device=device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=dtype, device=device) * 2 + 1) / height - 1
    base = torch.stack(
        [
            xs.expand(height, width),
            ys[:, None].expand(height, width),
            torch.ones(height, width, dtype=dtype, device=device),
        ]
    ).reshape(3, height * width)
    batch = theta.shape[0]
    grid = theta.reshape(batch * 2, 3) @ base  # (2B, HW): rows alternate x, y per image
    return grid.reshape(batch, 2, height, width).permute(0, 2, 3, 1)


def _uniform(
    batch_size: int,
    low: float,
    high: float,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    # Draw on the generator's own device (a CPU generator cannot fill CUDA tensors), then move:
    # results then depend only on the seed, not on where the images live.
    gen_device = generator.device if generator is not None else device
    out = torch.empty(batch_size, device=gen_device).uniform_(low, high, generator=generator)
    return out.to(device)


class _GeometricAugmentation(nn.Module):
    """Draws each image's parameters for the batch's height and width (``sample_params``), then
    warps the batch with them (``apply``); subclasses define both."""

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, _ = _as_batch(images)
        params = self.sample_params(
            batch.shape[0], (batch.shape[-2], batch.shape[-1]), batch.device, generator
        )
        return self.apply(images, params)


class RandomAffine(_GeometricAugmentation):
    """Batched equivalent of ``torchvision.transforms.RandomAffine(degrees, translate, scale)``.

    Per image, independently (same sampling as torchvision's ``get_params``):

    * angle ~ U[-degrees, degrees] (degrees; positive = counter-clockwise on screen, as in
      torchvision),
    * translation (tx, ty) ~ U[-translate[0] * W, translate[0] * W] x U[-translate[1] * H,
      translate[1] * H] pixels, **rounded to integer pixels** like torchvision (set
      ``round_translation=False`` for sub-pixel shifts),
    * scale ~ U[scale[0], scale[1]],

    applied about the image centre with zero fill. ``interpolation`` defaults to ``"nearest"``
    (torchvision's default; keeps dSprites images binary); ``"bilinear"`` is available.

    Implementation: one sampling grid (an ``F.affine_grid``-equivalent matmul) and one
    ``F.grid_sample`` call for the whole batch, with the inverse matrix built exactly as
    ``torchvision.transforms.functional.affine`` builds it for tensors, so with equal
    parameters the outputs agree up to floating-point ties. (For ``"bilinear"`` torchvision
    additionally multiplies by a resampled validity mask when filling; we rely on
    ``grid_sample``'s zero padding, which differs only on border pixels.)

    Why not kornia: on the CPU its general warp, and ``F.affine_grid`` itself, cost several
    times this class's sampling grid (:func:`_affine_grid`); the plain version needs no extra
    dependency on the hot path and matches torchvision's parametrisation exactly (README,
    "Benchmarks", for the measured figures and the script that repeats them).
    """

    def __init__(
        self,
        degrees: float = 90.0,
        translate: tuple[float, float] = (0.2, 0.2),
        scale: tuple[float, float] = (0.8, 1.2),
        interpolation: Interpolation = "nearest",
        round_translation: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(degrees, int | float) or isinstance(degrees, bool) or not degrees >= 0:
            raise ValueError(f"degrees must be a non-negative number, got {degrees!r}")
        translate = tuple(translate)  # type: ignore[assignment]  # Hydra gives ListConfig
        if len(translate) != 2 or not all(0.0 <= float(t) <= 1.0 for t in translate):
            raise ValueError(f"translate must be two fractions in [0, 1], got {translate!r}")
        scale = tuple(scale)  # type: ignore[assignment]
        if len(scale) != 2 or not (0.0 < float(scale[0]) <= float(scale[1])):
            raise ValueError(f"scale must be a range (lo, hi) with 0 < lo <= hi, got {scale!r}")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(
                f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}"
            )
        self.degrees = float(degrees)
        self.translate = (float(translate[0]), float(translate[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.interpolation: Interpolation = interpolation
        self.round_translation = round_translation

    def extra_repr(self) -> str:
        return (
            f"degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
            f"interpolation={self.interpolation!r}, round_translation={self.round_translation}"
        )

    def sample_params(
        self,
        batch_size: int,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Independent parameters for ``batch_size`` images of size ``image_size = (H, W)``.

        Returns ``angle`` (B,) in degrees, ``translate`` (B, 2) as (tx, ty) in pixels
        (x to the right, y down) and ``scale`` (B,), all float32 on ``device``.
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        height, width = image_size
        angle = _uniform(batch_size, -self.degrees, self.degrees, device, generator)
        max_dx = self.translate[0] * width
        max_dy = self.translate[1] * height
        tx = _uniform(batch_size, -max_dx, max_dx, device, generator)
        ty = _uniform(batch_size, -max_dy, max_dy, device, generator)
        translate = torch.stack([tx, ty], dim=1)
        if self.round_translation:
            # torch.round is round-half-to-even, exactly like Python's round() in torchvision.
            translate = translate.round()
        scale = _uniform(batch_size, self.scale[0], self.scale[1], device, generator)
        return {"angle": angle, "translate": translate, "scale": scale}

    @staticmethod
    def theta(
        params: dict[str, Tensor], image_size: tuple[int, int], dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """(B, 2, 3) ``affine_grid`` matrices (output -> input, normalised coords).

        torchvision's inverse matrix in pixel coordinates centred on the image (y down) is
        ``p_in = R(angle)^-1 / scale @ (p_out - t)`` with ``R^-1 = [[cos, sin], [-sin, cos]]``.
        ``affine_grid(align_corners=False)`` works in coordinates ``p / (W/2, H/2)``, so the
        linear part is conjugated by ``diag(W/2, H/2)`` and the shift divided by it.
        """
        height, width = image_size
        # float32 by default (float64 is unsupported on some accelerators, e.g. MPS).
        rad = torch.deg2rad(params["angle"].to(dtype))
        cos, sin = torch.cos(rad), torch.sin(rad)
        inv_s = 1.0 / params["scale"].to(dtype)
        tx, ty = params["translate"].to(dtype).unbind(dim=1)
        a, b = cos * inv_s, sin * inv_s
        c, d = -sin * inv_s, cos * inv_s
        shift_x = -(a * tx + b * ty)
        shift_y = -(c * tx + d * ty)
        row0 = torch.stack([a, b * height / width, shift_x * 2.0 / width], dim=1)
        row1 = torch.stack([c * width / height, d, shift_y * 2.0 / height], dim=1)
        return torch.stack([row0, row1], dim=1)

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Warp ``images`` (B, C, H, W) with given per-image ``params`` (see ``sample_params``)."""
        batch, squeeze = _as_batch(images)
        if not batch.is_floating_point():
            raise TypeError(f"RandomAffine needs a floating-point batch, got {batch.dtype}")
        size = (batch.shape[-2], batch.shape[-1])
        dtype = torch.float64 if batch.dtype == torch.float64 else torch.float32
        theta = self.theta({k: v.to(batch.device) for k, v in params.items()}, size, dtype)
        grid = _affine_grid(theta.to(batch.dtype), size[0], size[1])
        out = F.grid_sample(
            batch, grid, mode=self.interpolation, padding_mode="zeros", align_corners=False
        )
        return out.squeeze(0) if squeeze else out


class Identity(nn.Module):
    """No-op augmentation (``augment=none``); returns the input tensor itself."""

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return images


# ---------------------------------------------------------------------------------------------
# SimCLR's colour-image augmentations
# ---------------------------------------------------------------------------------------------
def _range(name: str, value: object, low: float, high: float) -> tuple[float, float]:
    """A (lo, hi) pair with low <= lo <= hi <= high, from a pair (Hydra gives a ListConfig)."""
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi), got {value!r}") from None
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name} must satisfy {low} <= lo <= hi <= {high}, got ({lo}, {hi})")
    return lo, hi


def _probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _bernoulli(
    batch_size: int, p: float, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    return _uniform(batch_size, 0.0, 1.0, device, generator) < p


def _check_floating(images: Tensor, name: str) -> None:
    if not images.is_floating_point():
        raise TypeError(f"{name} needs a floating-point batch in [0, 1], got {images.dtype}")


class RandomResizedCrop(_GeometricAugmentation):
    """Batched ``torchvision.transforms.RandomResizedCrop(size, scale, ratio)``, bilinear.

    Per image, independently (torchvision's ``get_params``): up to ``attempts`` draws of an area
    fraction ~ U[scale] and a log aspect ratio ~ U[log ratio]; width and height are rounded
    (``w = round(sqrt(area * aspect))``, ``h = round(sqrt(area / aspect))``) and the first draw
    that fits is placed uniformly at random; if none fits, the largest central crop whose aspect
    lies in ``ratio`` is taken. The crops are resampled to ``size`` by one ``F.grid_sample`` over
    the whole batch, with the sampling grid clamped to each crop box: the same values as
    torchvision's bilinear resize of the crop (``antialias=False``; resizing up, as on CIFAR-10,
    never aliases).
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 32,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        attempts: int = 10,
    ) -> None:
        super().__init__()
        sizes = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(sizes) != 2 or min(sizes) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        self.size: tuple[int, int] = sizes  # type: ignore[assignment]
        self.scale = _range("scale", scale, 1e-6, 1.0)
        self.ratio = _range("ratio", ratio, 1e-6, float("inf"))
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.attempts = attempts

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, ratio={self.ratio}"

    def sample_params(
        self,
        batch_size: int,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Crop boxes for ``batch_size`` images of ``image_size = (H, W)``: ``top``, ``left``,
        ``height``, ``width`` in whole pixels, each (B,) float32 on ``device``."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        height, width = image_size
        draws = batch_size * self.attempts
        area = height * width * _uniform(draws, *self.scale, device, generator)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(_uniform(draws, log_lo, log_hi, device, generator))
        crop_w = torch.sqrt(area * aspect).round().view(batch_size, self.attempts)
        crop_h = torch.sqrt(area / aspect).round().view(batch_size, self.attempts)
        fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
        # The first attempt that fits (argmax of a bool picks the first True).
        first = fits.float().argmax(dim=1, keepdim=True)
        crop_w = crop_w.gather(1, first).squeeze(1)
        crop_h = crop_h.gather(1, first).squeeze(1)
        fallback_w, fallback_h = self._central_fallback(height, width)
        found = fits.any(dim=1)
        crop_w = torch.where(found, crop_w, torch.full_like(crop_w, fallback_w))
        crop_h = torch.where(found, crop_h, torch.full_like(crop_h, fallback_h))
        # randint(0, H - h + 1): floor of a uniform draw over the H - h + 1 positions.
        top = (_uniform(batch_size, 0.0, 1.0, device, generator) * (height - crop_h + 1)).floor()
        left = (_uniform(batch_size, 0.0, 1.0, device, generator) * (width - crop_w + 1)).floor()
        top = torch.where(found, top.clamp(max=height - crop_h), (height - crop_h) // 2)
        left = torch.where(found, left.clamp(max=width - crop_w), (width - crop_w) // 2)
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def _central_fallback(self, height: int, width: int) -> tuple[float, float]:
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            return float(width), float(round(width / self.ratio[0]))
        if in_ratio > self.ratio[1]:
            return float(round(height * self.ratio[1])), float(height)
        return float(width), float(height)

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Crop ``images`` (B, C, H, W) to the given boxes and resize them to ``size``."""
        batch, squeeze = _as_batch(images)
        _check_floating(batch, "RandomResizedCrop")
        height, width = batch.shape[-2:]
        dtype = torch.float64 if batch.dtype == torch.float64 else torch.float32
        top, left, crop_h, crop_w = (
            params[key].to(device=batch.device, dtype=dtype)
            for key in ("top", "left", "height", "width")
        )
        # Output pixel centre u (normalised, align_corners=False) reads the input at
        # u * crop/size + centre of the crop box, in the same normalised coordinates.
        zeros = torch.zeros_like(top)
        theta = torch.stack(
            [
                torch.stack([crop_w / width, zeros, (2 * left + crop_w) / width - 1], dim=1),
                torch.stack([zeros, crop_h / height, (2 * top + crop_h) / height - 1], dim=1),
            ],
            dim=1,
        )
        grid = _affine_grid(theta, *self.size)
        # Clamp to the centres of the box's edge pixels, as a resize of the cut-out crop does.
        bounds_x = ((2 * left + 1) / width - 1, (2 * (left + crop_w) - 1) / width - 1)
        bounds_y = ((2 * top + 1) / height - 1, (2 * (top + crop_h) - 1) / height - 1)
        grid = torch.stack(
            [
                grid[..., 0].clamp(bounds_x[0].view(-1, 1, 1), bounds_x[1].view(-1, 1, 1)),
                grid[..., 1].clamp(bounds_y[0].view(-1, 1, 1), bounds_y[1].view(-1, 1, 1)),
            ],
            dim=-1,
        )
        out = F.grid_sample(
            batch, grid.to(batch.dtype), mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.squeeze(0) if squeeze else out


class _WithProbability(nn.Module):
    """An augmentation applied to each image independently with probability ``p``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = _probability("p", p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class RandomHorizontalFlip(_WithProbability):
    """Mirrors each image left-right with probability ``p``, independently."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, squeeze = _as_batch(images)
        flip = _bernoulli(batch.shape[0], self.p, batch.device, generator)
        out = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return out.squeeze(0) if squeeze else out


# torchvision's rgb_to_grayscale weights (ITU-R 601 luma, as its tensor path rounds them).
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
# RGB -> YIQ (NTSC). Y is the luma; a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.596, -0.274, -0.322),
    (0.211, -0.523, 0.312),
)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def _gray_weights(channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    weights = _GRAY_WEIGHTS if channels == 3 else (1.0,)
    return torch.tensor(weights, dtype=dtype, device=device)


class ColorJitter(nn.Module):
    """Batched ``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)``.

    Per image, independently: applied with probability ``p``; factors brightness ~ U[max(0,
    1 - b), 1 + b], contrast and saturation likewise, hue ~ U[-h, h]; the four adjustments in a
    random order of their own (torchvision draws one order per image too), each clamped to
    [0, 1]. Brightness, contrast and saturation are torchvision's formulas exactly (blends with
    black, the mean grey level and the per-pixel grey level).

    Every adjustment is an affine map of the RGB vector of each pixel (contrast's offset depends
    on the image's mean grey, taken at that step), so a step is one batched (3x3) matrix product
    plus an offset for the whole batch, whichever adjustment each image gets at that step: four
    steps, no per-image Python work. For that the hue shift is a rotation of the chroma plane in
    YIQ space, which keeps the luma Y exactly, rather than torchvision's shift in HSV space; the
    angle is ``2 pi h`` with torchvision's direction (red towards green for h > 0). One-channel
    images get brightness and contrast only (saturation and hue leave grey images unchanged).
    """

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        p: float = 0.8,
    ) -> None:
        super().__init__()
        for name, value in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if isinstance(value, bool) or not float(value) >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if isinstance(hue, bool) or not 0 <= float(hue) <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue!r}")
        self.brightness = (max(0.0, 1 - float(brightness)), 1 + float(brightness))
        self.contrast = (max(0.0, 1 - float(contrast)), 1 + float(contrast))
        self.saturation = (max(0.0, 1 - float(saturation)), 1 + float(saturation))
        self.hue = (-float(hue), float(hue))
        self.p = _probability("p", p)
        yiq = torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)
        yiq_inv = torch.linalg.inv(yiq)
        # Hue rotation by theta in RGB: I + (cos theta - 1) * cos_part + sin theta * sin_part,
        # which is exactly the identity at theta = 0.
        cos_part = yiq_inv @ torch.diag(torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)) @ yiq
        rotate = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        sin_part = yiq_inv @ rotate.double() @ yiq
        self.register_buffer("_hue_cos", cos_part.float(), persistent=False)
        self.register_buffer("_hue_sin", sin_part.float(), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue}, p={self.p}"
        )

    def sample_params(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """``brightness``, ``contrast``, ``saturation``, ``hue`` (B,) factors, ``order`` (B, 4)
        (a permutation of BRIGHTNESS, CONTRAST, SATURATION, HUE per image) and ``apply`` (B,)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        params = {
            name: _uniform(batch_size, *getattr(self, name), device, generator)
            for name in ("brightness", "contrast", "saturation", "hue")
        }
        # A uniformly random permutation per image: the ranks of four uniform draws.
        keys = _uniform(batch_size * 4, 0.0, 1.0, device, generator).view(batch_size, 4)
        params["order"] = keys.argsort(dim=1)
        params["apply"] = _bernoulli(batch_size, self.p, device, generator)
        return params

    def step_matrices(self, params: dict[str, Tensor], channels: int) -> Tensor:
        """(B, 5, C, C): each image's matrix for brightness, contrast (its linear part),
        saturation, hue, and the identity (for "not applied")."""
        brightness = params["brightness"]
        device, dtype = brightness.device, brightness.dtype
        eye = torch.eye(channels, dtype=dtype, device=device)
        gray = _gray_weights(channels, dtype, device)
        # Blend with the per-pixel grey level: s * x + (1 - s) * (w . x) in every channel.
        to_gray = gray.expand(channels, channels)

        def scaled(factor: Tensor, matrix: Tensor) -> Tensor:
            return factor.view(-1, 1, 1) * matrix

        if channels == 3:
            theta = -2 * math.pi * params["hue"]  # YIQ angles run red -> blue -> green
            hue = (
                eye
                + scaled(torch.cos(theta) - 1, self._hue_cos.to(dtype))
                + scaled(torch.sin(theta), self._hue_sin.to(dtype))
            )
        else:
            hue = eye.expand(len(brightness), channels, channels)
        saturation = scaled(params["saturation"], eye) + scaled(1 - params["saturation"], to_gray)
        return torch.stack(
            [
                scaled(brightness, eye),
                scaled(params["contrast"], eye),
                saturation,
                hue,
                eye.expand(len(brightness), channels, channels),
            ],
            dim=1,
        )

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        batch, squeeze = _as_batch(images)
        _check_floating(batch, "ColorJitter")
        size, channels = batch.shape[:2]
        if channels not in (1, 3):
            raise ValueError(f"ColorJitter needs 1 or 3 channels, got {channels}")
        dtype = torch.float64 if batch.dtype == torch.float64 else torch.float32
        params = {k: v.to(batch.device) for k, v in params.items()}
        factors = {k: v.to(dtype) for k, v in params.items() if k not in ("order", "apply")}
        matrices = self.step_matrices(factors, channels)  # (B, 5, C, C)
        gray = _gray_weights(channels, dtype, batch.device)
        pixels = batch.to(dtype).reshape(size, channels, -1)
        rows = torch.arange(size, device=batch.device)
        not_applied = torch.full_like(params["order"][:, 0], matrices.shape[1] - 1)
        for step in range(4):
            op = torch.where(params["apply"], params["order"][:, step], not_applied)
            # Contrast blends with the mean grey level of the image as it is at this step.
            mean_gray = pixels.mean(dim=2) @ gray
            offset = torch.where(op == CONTRAST, (1 - factors["contrast"]) * mean_gray, 0.0)
            pixels = torch.baddbmm(offset.view(-1, 1, 1), matrices[rows, op], pixels)
            pixels = pixels.clamp_(0.0, 1.0)
        out = pixels.view_as(batch).to(batch.dtype)
        return out.squeeze(0) if squeeze else out

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, _ = _as_batch(images)
        return self.apply(images, self.sample_params(batch.shape[0], batch.device, generator))


class RandomGrayscale(_WithProbability):
    """Replaces each image by its grey level (in every channel) with probability ``p``,
    with torchvision's ``rgb_to_grayscale`` weights. One-channel images are left as they are."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__(p)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, squeeze = _as_batch(images)
        _check_floating(batch, "RandomGrayscale")
        if batch.shape[1] == 1:
            return images
        if batch.shape[1] != 3:
            raise ValueError(f"RandomGrayscale needs 1 or 3 channels, got {batch.shape[1]}")
        to_gray = _bernoulli(batch.shape[0], self.p, batch.device, generator)
        weights = _gray_weights(3, batch.dtype, batch.device).view(1, 3, 1, 1)
        gray = (batch * weights).sum(dim=1, keepdim=True).expand_as(batch)
        out = torch.where(to_gray.view(-1, 1, 1, 1), gray, batch)
        return out.squeeze(0) if squeeze else out


class SimCLRAugmentation(nn.Module):
    """SimCLR's views of colour images (Chen et al. 2020, CIFAR-10 setting, no blur):
    RandomResizedCrop -> RandomHorizontalFlip -> ColorJitter (with probability ``jitter_p``)
    -> RandomGrayscale, every parameter drawn per image.

    Acts on float images in [0, 1] (the encoder normalises after it) and runs in float32 even
    inside a bf16/fp16 autocast region, so mixed precision never rounds the pixels.

    Why not kornia: its colour jitter goes through HSV conversions and a per-batch order, which
    cost the CPU more than this class's whole view; ``scripts/bench_throughput.py
    --compare-augment`` measures both on any device.
    """

    def __init__(
        self,
        size: int = 32,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
    ) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(
            [
                RandomResizedCrop(size, scale, ratio),
                RandomHorizontalFlip(flip_p),
                ColorJitter(brightness, contrast, saturation, hue, p=jitter_p),
                RandomGrayscale(grayscale_p),
            ]
        )

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_floating(images, "SimCLRAugmentation")
        with torch.autocast(images.device.type, enabled=False):
            out = images if images.dtype == torch.float64 else images.float()
            for transform in self.transforms:
                out = transform(out, generator=generator)
        return out
