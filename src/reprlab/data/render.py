"""A procedural dSprites renderer: the 737,280 images drawn from geometry, no download needed.

DeepMind's dSprites file (``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``) is 737,280 binary
64x64 images of a square, an ellipse or a heart at 6 scales, 40 orientations and 32x32 positions.
This module redraws them from vector shapes, so a fresh clone can train and test with no data
file. The geometry below was fitted to the real images (a least-squares / linear-programming fit
over ~65,000 real images); it reproduces them with a mean IoU of about 0.9996, the remaining
differences being single pixels whose centre lies within ~0.003 px of a shape's outline.

The geometry, in pixels of the 64x64 frame with x to the right, y down and pixel ``(row i,
column j)`` sampled at its centre ``(j + 0.5, i + 0.5)``:

- a pixel is on iff its centre lies inside the shape (no anti-aliasing);
- the shape's centre is at ``16 + 32 * posX`` (x) and ``16 + 32 * posY`` (y): positions span the
  middle half of the frame, posY = 0 at the top;
- the shape is scaled by ``scale`` about its centre, then rotated by ``orientation`` radians
  counter-clockwise as seen on screen;
- at scale 1 the square has side 19.2 (0.3 of the frame), the ellipse semi-axes 12.763 (along x
  at orientation 0) and 7.216, and the heart is the classic curve
  ``(16 sin^3 t, 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t)`` scaled by (0.5997, -0.6620) and
  moved 1.437 up, pointing down at orientation 0 and 19.2 wide, like the square.

Rendering is vectorised with numpy over the batch: each image is evaluated only on a small
window around its shape (up to 29x29 instead of 64x64 pixels), then copied into the frame.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from reprlab.io import atomic_write

log = logging.getLogger(__name__)

LATENT_NAMES = ("shape", "scale", "orientation", "posX", "posY")
LATENT_SIZES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64
NUM_IMAGES = math.prod(LATENT_SIZES)  # 737,280

# Bump when the drawing changes in a way the constants below do not capture (e.g. the sampling
# rule); the cache file name also hashes the constants, so refitting them invalidates caches too.
RENDER_VERSION = 1

# -- geometry, in pixels of the 64x64 frame (fitted to the real images, see the module doc) ------
POSITION_OFFSET = 16.0  # centre (x or y) of a shape at pos = 0
POSITION_RANGE = 32.0  # the centre moves by this much from pos = 0 to pos = 1
SQUARE_HALF_SIDE = 9.6
ELLIPSE_SEMI_AXES = (12.7633, 7.2155)  # along the shape's own x, y axes
HEART_SCALE = (0.59966, 0.66197)  # classic heart curve units -> pixels, x and y
HEART_SHIFT = 1.43669  # the heart's curve origin sits this far above the shape's centre (pixels)

_DEFAULT_CHUNK = 2048  # images per vectorised step: ~25 MB of temporaries


def _latent_grid(size: int, start: float, stop: float) -> np.ndarray:
    """``size`` values from ``start`` to ``stop``, bit-identical to DeepMind's file.

    The file was written with an older numpy ``linspace`` (``arange * delta / div + start``); the
    current ``np.linspace`` differs in the last bit for some values (e.g. 14 of the orientations).
    """
    return np.arange(size, dtype=np.float64) * (stop - start) / (size - 1) + start


# Each latent's values in class order (DeepMind's file has them in its metadata).
LATENT_GRIDS = (
    np.arange(1, LATENT_SIZES[0] + 1, dtype=np.float64),  # shape: 1 square, 2 ellipse, 3 heart
    _latent_grid(LATENT_SIZES[1], 0.5, 1.0),
    _latent_grid(LATENT_SIZES[2], 0.0, 2 * np.pi),
    _latent_grid(LATENT_SIZES[3], 0.0, 1.0),
    _latent_grid(LATENT_SIZES[4], 0.0, 1.0),
)


def _check_classes(classes: np.ndarray) -> np.ndarray:
    """Validated (N, 5) int64 class indices, or a ValueError that says what is wrong."""
    array = np.asarray(classes)  # also takes CPU torch tensors and lists
    if array.ndim != 2 or array.shape[1] != len(LATENT_NAMES):
        raise ValueError(
            f"latent classes must have shape (N, {len(LATENT_NAMES)}) in the order "
            f"{', '.join(LATENT_NAMES)}; got shape {array.shape}"
        )
    kind = array.dtype.kind
    if kind == "f":  # accept whole floats (e.g. classes read back from a float array)
        with np.errstate(invalid="ignore"):
            if not np.all(np.isfinite(array) & (array == np.round(array))):
                raise ValueError(
                    "latent classes must be integer class indices; got a float array with "
                    "non-integer or non-finite values"
                )
    elif kind not in "iu":
        raise ValueError(f"latent classes must be integer class indices, got dtype {array.dtype}")
    for column, (name, size) in enumerate(zip(LATENT_NAMES, LATENT_SIZES, strict=True)):
        bad = np.flatnonzero((array[:, column] < 0) | (array[:, column] >= size))
        if bad.size:
            row = int(bad[0])
            value = array[row, column]
            value = int(value) if float(value).is_integer() else value
            raise ValueError(
                f"latent {name!r} has class index {value} (row {row}, {bad.size} bad rows in "
                f"all); accepted range is 0..{size - 1}"
            )
    return array.astype(np.int64, copy=False)


def latent_values(classes: np.ndarray) -> np.ndarray:
    """The (N, 5) float64 latent values of (N, 5) class indices, exactly as in DeepMind's file.

    shape 1..3, scale 0.5..1 (6 steps), orientation 0..2*pi (40 steps, so 0 and 2*pi are both
    there), posX and posY 0..1 (32 steps): the values the file's ``latents_values`` holds, bit
    for bit, so code written against the real file sees the same numbers.
    """
    array = _check_classes(classes)
    return np.stack([grid[array[:, i]] for i, grid in enumerate(LATENT_GRIDS)], axis=1)


# How far a value may sit from its grid value and still be it: far below the finest step (1/31
# of posX) and far above the last-bit differences between linspace implementations.
GRID_TOLERANCE = 1e-6


def latent_classes(values: np.ndarray) -> np.ndarray:
    """The (N, 5) int64 class indices on DeepMind's grids of (N, 5) latent values.

    The inverse of :func:`latent_values`, for files whose own ``latents_classes`` index a coarser
    grid: a value within :data:`GRID_TOLERANCE` of a grid value gets that value's class; any
    other value is a ValueError naming the latent.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != len(LATENT_NAMES):
        raise ValueError(
            f"latent values must have shape (N, {len(LATENT_NAMES)}) in the order "
            f"{', '.join(LATENT_NAMES)}; got shape {array.shape}"
        )
    classes = np.empty(array.shape, dtype=np.int64)
    for column, (name, grid) in enumerate(zip(LATENT_NAMES, LATENT_GRIDS, strict=True)):
        value = array[:, column]
        above = np.clip(np.searchsorted(grid, value), 1, len(grid) - 1)
        nearest = np.where(value - grid[above - 1] <= grid[above] - value, above - 1, above)
        bad = np.flatnonzero(~(np.abs(grid[nearest] - value) <= GRID_TOLERANCE))  # NaN is bad
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"latent {name!r} has value {float(value[row])!r} (row {row}; {bad.size} of "
                f"{len(value)} rows), which is none of DeepMind's {len(grid)} values "
                f"({grid[0]:.6g}..{grid[-1]:.6g} in even steps)"
            )
        classes[:, column] = nearest
    return classes


def all_latent_classes() -> np.ndarray:
    """All (737280, 5) int64 class combinations, in the full file's order.

    Row ``shape*245760 + scale*40960 + orientation*1024 + posX*32 + posY``, i.e. C order over
    ``LATENT_SIZES``, so the rendered set lines up index for index with DeepMind's file.
    """
    grids = np.indices(LATENT_SIZES, dtype=np.int64)
    return grids.reshape(len(LATENT_SIZES), -1).T.copy()


def _heart_radius() -> float:
    """Largest distance (pixels, scale 1) from the heart's centre to its outline: its window."""
    t = np.linspace(0.0, 2 * np.pi, 20001)
    x = HEART_SCALE[0] * 16 * np.sin(t) ** 3
    y = -HEART_SCALE[1] * (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return float(np.sqrt(x**2 + (y - HEART_SHIFT) ** 2).max())


# Radius (pixels, scale 1) of a disc around the centre that holds the shape at any orientation.
# The 0.01 margin keeps float32 rounding at the window's edge from ever mattering.
_RADII = (
    SQUARE_HALF_SIDE * math.sqrt(2.0) + 0.01,
    max(ELLIPSE_SEMI_AXES) + 0.01,
    _heart_radius() + 0.01,
)


def _shape_mask(
    shape: int, dx: np.ndarray, dy: np.ndarray, cos: np.ndarray, sin: np.ndarray
) -> np.ndarray:
    """Inside-test of pixel centres for one shape: (B, W, W) bool from (B, W) float32 offsets.

    ``dx`` (columns) and ``dy`` (rows) are pixel-centre offsets from each shape's centre divided
    by its scale, so the shape is tested at scale 1. The local coordinates of pixel (i, j) are
    ``u = cos*dx[j] - sin*dy[i]``, ``v = sin*dx[j] + cos*dy[i]`` (the pixel rotated back by the
    orientation); each is an outer sum of a row and a column term, so the per-pixel work is a
    few in-place float32 operations, with all constants folded into the (B, W) terms.
    """
    cos, sin = cos[:, None], sin[:, None]
    if shape == 0:  # square: max(|u|, |v|) <= half side
        u = np.subtract((cos * dx)[:, None, :], (sin * dy)[:, :, None])
        v = np.add((sin * dx)[:, None, :], (cos * dy)[:, :, None])
        np.abs(u, out=u)
        np.abs(v, out=v)
        np.maximum(u, v, out=u)
        return u <= np.float32(SQUARE_HALF_SIDE)
    if shape == 1:  # ellipse: (u/a)^2 + (v/b)^2 <= 1
        a, b = (np.float32(1 / axis) for axis in ELLIPSE_SEMI_AXES)
        u = np.subtract((cos * dx * a)[:, None, :], (sin * dy * a)[:, :, None])
        v = np.add((sin * dx * b)[:, None, :], (cos * dy * b)[:, :, None])
        np.multiply(u, u, out=u)
        np.multiply(v, v, out=v)
        np.add(u, v, out=u)
        return u <= np.float32(1.0)
    # Heart: the curve x = 16 sin^3 t, y = 13cos t - 5cos 2t - 2cos 3t - cos 4t (y up) crosses
    # each vertical line |x| < 16 exactly twice, at cos t = +c and -c with
    # c = sqrt(1 - (|x|/16)^(2/3)). Its y there is E(c) +- O(c), the even and odd parts of the
    # polynomial in cos t: E = 4 - 2c^2 - 8c^4, O = c(19 - 8c^2). A point is inside iff
    # |y - E| <= O (false for |x| > 16, where c^2 < 0 and O is NaN).
    kx = np.float32(1 / (16 * HEART_SCALE[0]))
    ky = np.float32(1 / HEART_SCALE[1])
    shift = np.float32(HEART_SHIFT / HEART_SCALE[1])
    x = np.subtract((cos * dx * kx)[:, None, :], (sin * dy * kx)[:, :, None])  # x / 16
    y = np.subtract((-sin * dx * ky - shift)[:, None, :], (cos * dy * ky)[:, :, None])
    np.abs(x, out=x)
    c2 = np.power(x, np.float32(2.0 / 3.0), out=x)
    np.subtract(np.float32(1.0), c2, out=c2)  # c^2
    even = np.multiply(c2, np.float32(-8.0))
    even += np.float32(-2.0)
    even *= c2
    even += np.float32(4.0)  # E = 4 - 2c^2 - 8c^4
    y -= even
    np.abs(y, out=y)
    odd = np.multiply(c2, np.float32(-8.0), out=even)
    odd += np.float32(19.0)
    with np.errstate(invalid="ignore"):  # c^2 < 0 outside |x| <= 16: NaN, i.e. outside
        np.sqrt(c2, out=c2)
    odd *= c2  # O = c (19 - 8c^2)
    return y <= odd


def _render_group(
    out: np.ndarray,
    rows: np.ndarray,
    shape: int,
    scale: float,
    cx: np.ndarray,
    cy: np.ndarray,
    theta: np.ndarray,
) -> None:
    """Draw images of one shape and scale into ``out[rows]`` (which must be zero there).

    Each image is evaluated on the smallest pixel window that surely holds the shape's disc of
    radius ``_RADII[shape] * scale``, shifted to stay inside the frame (always possible, as the
    window is at most 64 wide). Windows are then placed with slice copies grouped by offset:
    first at their column offset into full-width bands of rows, then the bands at their row
    offset into the frames (at most 32 distinct offsets per axis), which is several times
    faster than scattering pixels through a flat index.
    """
    radius = _RADII[shape] * scale
    width = min(int(math.ceil(2 * radius)) + 2, IMAGE_SIZE)
    x0 = np.clip(np.floor(cx - radius - 0.5), 0, IMAGE_SIZE - width).astype(np.int64)
    y0 = np.clip(np.floor(cy - radius - 0.5), 0, IMAGE_SIZE - width).astype(np.int64)
    steps = np.arange(width, dtype=np.float64) + 0.5
    dx = (((x0[:, None] + steps) - cx[:, None]) / scale).astype(np.float32)
    dy = (((y0[:, None] + steps) - cy[:, None]) / scale).astype(np.float32)
    mask = _shape_mask(
        shape, dx, dy, np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    ).view(np.uint8)
    bands = np.zeros((len(rows), width, IMAGE_SIZE), dtype=np.uint8)
    for left in np.unique(x0):
        chosen = np.flatnonzero(x0 == left)
        bands[chosen, :, left : left + width] = mask[chosen]
    for top in np.unique(y0):
        chosen = np.flatnonzero(y0 == top)
        out[rows[chosen], top : top + width, :] = bands[chosen]


def render(classes: np.ndarray, chunk_size: int = _DEFAULT_CHUNK) -> np.ndarray:
    """Draw dSprites images: (N, 5) class indices -> uint8 (N, 64, 64) images of 0s and 1s.

    Classes are in ``LATENT_NAMES`` order (shape, scale, orientation, posX, posY) and index the
    grids of DeepMind's file, so ``render(latents_classes)`` reproduces the file's ``imgs``.
    Work is grouped by shape and scale (one window size per group) and done ``chunk_size``
    images at a time: numpy on float32 windows of at most 29x29 pixels, single-threaded (on a
    busy machine torch's thread pool was 50x slower for arrays this size), with temporary memory
    of about 30 bytes x chunk_size x 29 x 29.
    """
    array = _check_classes(classes)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    values = latent_values(array)
    n = len(array)
    out = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    centre_x = POSITION_OFFSET + POSITION_RANGE * values[:, 3]
    centre_y = POSITION_OFFSET + POSITION_RANGE * values[:, 4]
    group = array[:, 0] * LATENT_SIZES[1] + array[:, 1]
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for rows in np.split(order, bounds) if n else []:
        shape, scale_class = int(array[rows[0], 0]), int(array[rows[0], 1])
        scale = float(LATENT_GRIDS[1][scale_class])
        for start in range(0, len(rows), chunk_size):
            part = rows[start : start + chunk_size]
            _render_group(out, part, shape, scale, centre_x[part], centre_y[part], values[part, 2])
    return out


def _geometry_key() -> str:
    """Short hash of everything that determines the images: part of the cache file name."""
    spec = repr(
        (
            RENDER_VERSION,
            LATENT_SIZES,
            IMAGE_SIZE,
            POSITION_OFFSET,
            POSITION_RANGE,
            SQUARE_HALF_SIDE,
            ELLIPSE_SEMI_AXES,
            HEART_SCALE,
            HEART_SHIFT,
        )
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def cache_path(cache_dir: str | os.PathLike) -> Path:
    """Where ``render_all`` keeps its cache: versioned, so a renderer change never reuses it."""
    return Path(cache_dir).expanduser() / f"dsprites_render_v{RENDER_VERSION}_{_geometry_key()}.npz"


def _load_cache(path: Path, count: int) -> np.ndarray:
    """The cached images, or an error if the file is unreadable, truncated or not this render.

    The cache is an uncompressed .npz (a zip), whose CRC-32 check catches corrupted bytes.
    """
    with np.load(path, allow_pickle=False) as archive:
        key = str(archive["geometry_key"])
        packed = archive["packed"]
    if key != _geometry_key():
        raise ValueError(f"made by another renderer geometry ({key} != {_geometry_key()})")
    expected = (count, IMAGE_SIZE, IMAGE_SIZE // 8)
    if packed.shape != expected or packed.dtype != np.uint8:
        raise ValueError(f"holds {packed.dtype} {packed.shape}, expected uint8 {expected}")
    return np.unpackbits(packed, axis=-1)


def _save_cache(path: Path, images: np.ndarray) -> None:
    """Write the bit-packed images atomically (temp file in the same folder, then rename)."""
    atomic_write(
        path,
        lambda handle: np.savez(
            handle, packed=np.packbits(images, axis=-1), geometry_key=np.array(_geometry_key())
        ),
    )


def render_all(cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """All 737,280 images (uint8, 3 GB) in the full file's order, cached bit-packed on disk.

    With ``cache_dir`` the images are loaded from ``cache_path(cache_dir)`` (~380 MB) when it is
    there and valid; otherwise they are rendered and the cache is (re)written atomically, so a
    crash mid-write never leaves a half file under the final name. A bad cache is not fatal:
    it is re-rendered with a warning. A failed write only warns, the images are still returned.
    """
    classes = all_latent_classes()
    if cache_dir is None:
        return render(classes)
    path = cache_path(cache_dir)
    if path.is_file():
        try:
            images = _load_cache(path, len(classes))
            log.info("loaded rendered dSprites from %s", path)
            return images
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            warnings.warn(
                f"ignoring bad render cache {path} ({error}); rendering again",
                RuntimeWarning,
                stacklevel=2,
            )
    images = render(classes)
    try:
        _save_cache(path, images)
        log.info("cached rendered dSprites at %s", path)
    except OSError as error:
        warnings.warn(f"could not write render cache {path}: {error}", RuntimeWarning, stacklevel=2)
    return images
