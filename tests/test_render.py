"""The procedural dSprites renderer: API, geometry sanity, agreement with the real images, cache."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

from reprlab.data import render

# Real data beside the checkout (../shared/data), or wherever REPRLAB_SHARED_DATA points.
SHARED_DATA = Path(
    os.environ.get("REPRLAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def _real(name: str) -> dict[str, np.ndarray]:
    """Images and full-file class indices of a real dSprites npz, or skip the test."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real dSprites file not found at {path} (set REPRLAB_SHARED_DATA)")
    return _read_real(path)


@functools.cache
def _read_real(path: Path) -> dict[str, np.ndarray]:
    """Read once per session: several tests use the same file."""
    with np.load(path, allow_pickle=False) as archive:
        data = {key: archive[key] for key in ("imgs", "latents_values")}
        # The downsampled file's latents_classes index its own smaller grids: go through the
        # index into the full file instead, which both files carry.
        data["classes"] = render.all_latent_classes()[archive["original_dataset_indices"]]
    return data


def _one(shape: int = 0, scale: int = 5, orientation: int = 0, x: int = 16, y: int = 16):
    return np.array([[shape, scale, orientation, x, y]])


def _centroid(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(image)
    return float(cols.mean()), float(rows.mean())


# -- API --------------------------------------------------------------------------------------
def test_constants() -> None:
    assert render.LATENT_NAMES == ("shape", "scale", "orientation", "posX", "posY")
    assert render.LATENT_SIZES == (3, 6, 40, 32, 32)
    assert render.SHAPE_NAMES == ("square", "ellipse", "heart")
    assert render.IMAGE_SIZE == 64


def test_all_latent_classes_in_file_order() -> None:
    classes = render.all_latent_classes()
    assert classes.shape == (737280, 5) and classes.dtype == np.int64
    weights = np.array([245760, 40960, 1024, 32, 1])
    np.testing.assert_array_equal(classes @ weights, np.arange(737280))
    np.testing.assert_array_equal(classes.max(axis=0), np.array(render.LATENT_SIZES) - 1)


def test_latent_values_grids() -> None:
    last = np.array(render.LATENT_SIZES) - 1
    values = render.latent_values(np.stack([np.zeros(5, dtype=int), last]))
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, [[1, 0.5, 0, 0, 0], [3, 1, 2 * np.pi, 1, 1]])
    all_values = render.latent_values(render.all_latent_classes()[::997])
    for column, (start, stop) in enumerate([(1, 3), (0.5, 1), (0, 2 * np.pi), (0, 1), (0, 1)]):
        grid = np.linspace(start, stop, render.LATENT_SIZES[column])
        np.testing.assert_allclose(np.unique(all_values[:, column]), grid, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["dsprites_subset.npz", "dsprites_downsampled.npz"])
def test_latent_values_equal_the_real_files(name: str) -> None:
    data = _real(name)
    np.testing.assert_array_equal(render.latent_values(data["classes"]), data["latents_values"])


def test_render_shapes_dtype_binary() -> None:
    rng = np.random.default_rng(0)
    classes = render.all_latent_classes()[rng.choice(737280, size=300, replace=False)]
    images = render.render(classes)
    assert images.shape == (300, 64, 64) and images.dtype == np.uint8
    assert set(np.unique(images)) == {0, 1}
    assert images.reshape(300, -1).sum(axis=1).min() > 50  # every image shows its sprite
    # Shapes never touch the frame's border (centres span 16..48, radius <= 13.6).
    assert not images[:, [0, -1], :].any() and not images[:, :, [0, -1]].any()
    np.testing.assert_array_equal(render.render(classes, chunk_size=7), images)
    np.testing.assert_array_equal(render.render(classes[::-1]), images[::-1])
    np.testing.assert_array_equal(render.render(classes.tolist()), images)
    np.testing.assert_array_equal(render.render(classes.astype(np.float64)), images)


def test_render_empty() -> None:
    images = render.render(np.zeros((0, 5), dtype=np.int64))
    assert images.shape == (0, 64, 64) and images.dtype == np.uint8


# -- agreement with the real images ---------------------------------------------------------
@pytest.mark.parametrize("name", ["dsprites_subset.npz", "dsprites_downsampled.npz"])
def test_iou_with_real_images(name: str) -> None:
    data = _real(name)
    ours = render.render(data["classes"]).astype(bool)
    real = data["imgs"].astype(bool)
    iou = (ours & real).sum(axis=(1, 2)) / (ours | real).sum(axis=(1, 2))
    assert iou.mean() >= 0.9  # the requirement
    for shape, shape_name in enumerate(render.SHAPE_NAMES):
        # What the fitted geometry reaches (~0.9996): guards against a silent regression.
        mean = iou[data["classes"][:, 0] == shape].mean()
        assert mean >= 0.995, f"{shape_name}: mean IoU {mean:.4f}"


# -- geometry sanity --------------------------------------------------------------------------
def test_orientation_zero_and_two_pi_are_the_same_image() -> None:
    classes = render.all_latent_classes()
    start = classes[(classes[:, 2] == 0) & (classes[:, 3] % 5 == 0)]
    end = start.copy()
    end[:, 2] = 39
    np.testing.assert_array_equal(render.render(start), render.render(end))


def test_orientation_k_mirrors_orientation_39_minus_k() -> None:
    # All three shapes are symmetric about their vertical axis, so turning by -theta is the
    # mirror image of turning by theta; at posX = 0 the centre (x = 16) is on a pixel border,
    # so the mirror maps column j to column 31 - j exactly.
    classes = render.all_latent_classes()
    chosen = classes[(classes[:, 3] == 0) & (classes[:, 4] == 9)]
    mirrored = chosen.copy()
    mirrored[:, 2] = 39 - chosen[:, 2]
    left = render.render(chosen)[:, :, :32]
    right = render.render(mirrored)[:, :, 31::-1]
    np.testing.assert_array_equal(left, right)


def test_rotation_is_counter_clockwise_on_screen() -> None:
    # The heart points down at orientation 0, so its lobes (most of its area) lie above its
    # centre; a quarter turn counter-clockwise on screen (orientation 10 = 92 degrees) puts
    # them on the left.
    centre = 16 + 32 * 16 / 31 - 0.5  # pixel-index coordinates of the sprite's centre
    x, y = _centroid(render.render(_one(shape=2))[0])
    assert y < centre - 1 and abs(x - centre) < 0.5
    x, y = _centroid(render.render(_one(shape=2, orientation=10))[0])
    assert x < centre - 1 and abs(y - centre) < 0.5
    # The ellipse is wide at orientation 0 and tall a quarter turn later.
    wide, tall = render.render(np.concatenate([_one(shape=1), _one(shape=1, orientation=10)]))
    assert wide.any(axis=0).sum() > 1.5 * wide.any(axis=1).sum()
    assert tall.any(axis=1).sum() > 1.5 * tall.any(axis=0).sum()


def test_scale_grows_area() -> None:
    for shape in range(3):
        for orientation in (0, 7):
            classes = np.concatenate([_one(shape, s, orientation) for s in range(6)])
            areas = render.render(classes).sum(axis=(1, 2))
            assert np.all(np.diff(areas) > 0), (shape, orientation, areas)
    # The square's side is 19.2 px at scale 1: 20 pixel centres when centred on a pixel border.
    assert render.render(_one(0, 5, 0, 0, 0))[0].sum() == 20 * 20


def test_position_moves_the_centroid() -> None:
    for shape in range(3):
        xs = [_centroid(render.render(_one(shape, 3, 5, x, 12))[0]) for x in (0, 10, 20, 31)]
        assert np.all(np.diff([cx for cx, _ in xs]) > 5), xs  # posX moves right
        assert np.ptp([cy for _, cy in xs]) < 0.5  # and not down
        ys = [_centroid(render.render(_one(shape, 3, 5, 12, y))[0]) for y in (0, 10, 20, 31)]
        assert np.all(np.diff([cy for _, cy in ys]) > 5), ys  # posY moves down
    # One posX step is 32/31 px: the sprite moves by 32 px across the range.
    first, last = (_centroid(render.render(_one(0, 5, 0, x, 0))[0])[0] for x in (0, 31))
    assert last - first == pytest.approx(32, abs=0.5)


# -- invalid input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("classes", "match"),
    [
        (np.zeros((3, 4), dtype=int), r"shape \(N, 5\).*got shape \(3, 4\)"),
        (np.zeros(5, dtype=int), r"got shape \(5,\)"),
        ([[0, 0, 40, 0, 0]], r"'orientation' has class index 40 .*0\.\.39"),
        ([[0, 0, 0, -1, 0]], r"'posX' has class index -1 .*0\.\.31"),
        ([[0, 0, 0, 0, 32]], r"'posY' has class index 32 .*0\.\.31"),
        ([[3, 0, 0, 0, 0]], r"'shape' has class index 3 .*0\.\.2"),
        ([[0, 6, 0, 0, 0]], r"'scale' has class index 6 .*0\.\.5"),
        ([[0, 0.5, 0, 0, 0]], r"non-integer"),
        ([[0, np.nan, 0, 0, 0]], r"non-finite"),
        (np.zeros((1, 5), dtype=bool), r"integer class indices, got dtype bool"),
    ],
)
def test_invalid_classes_raise(classes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render.render(classes)
    with pytest.raises(ValueError, match=match):
        render.latent_values(classes)


def test_invalid_chunk_size_raises() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        render.render(_one(), chunk_size=0)


# -- render_all and its cache -----------------------------------------------------------------
@pytest.fixture
def small_full_set(monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """Make render_all work on 500 images instead of 737,280."""
    classes = render.all_latent_classes()[::1474][:500]
    monkeypatch.setattr(render, "all_latent_classes", lambda: classes.copy())
    return classes


def test_render_all_cache_round_trip(
    small_full_set: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = render.render(small_full_set)
    np.testing.assert_array_equal(render.render_all(None), expected)

    images = render.render_all(tmp_path / "cache")
    np.testing.assert_array_equal(images, expected)
    path = render.cache_path(tmp_path / "cache")
    assert path.is_file() and f"_v{render.RENDER_VERSION}_" in path.name
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    assert path.stat().st_size < expected.size // 8 + 4096  # bit-packed

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered although the cache was valid")

    monkeypatch.setattr(render, "render", no_rendering)
    cached = render.render_all(tmp_path / "cache")
    assert cached.dtype == np.uint8
    np.testing.assert_array_equal(cached, expected)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "other_count"])
def test_render_all_rerenders_a_bad_cache(
    small_full_set: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    expected = render.render(small_full_set)
    render.render_all(tmp_path)
    path = render.cache_path(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # a flipped bit in the packed images: the zip's CRC catches it
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file")
    else:  # a cache of another set size, e.g. written by a test run
        monkeypatch.setattr(render, "all_latent_classes", lambda: small_full_set[:10].copy())
        path.unlink()
        render.render_all(tmp_path)
        monkeypatch.setattr(render, "all_latent_classes", lambda: small_full_set.copy())
    with pytest.warns(RuntimeWarning, match="bad render cache"):
        images = render.render_all(tmp_path)
    np.testing.assert_array_equal(images, expected)
    # The cache was rewritten and is good again.
    np.testing.assert_array_equal(render._load_cache(path, len(expected)), expected)


def test_cache_name_changes_with_the_geometry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = render.cache_path(tmp_path)
    monkeypatch.setattr(render, "SQUARE_HALF_SIDE", render.SQUARE_HALF_SIDE + 0.1)
    assert render.cache_path(tmp_path) != before
    monkeypatch.undo()
    monkeypatch.setattr(render, "RENDER_VERSION", render.RENDER_VERSION + 1)
    assert render.cache_path(tmp_path) != before


@pytest.mark.slow
def test_render_all_full(tmp_path: Path) -> None:
    images = render.render_all(tmp_path)
    assert images.shape == (737280, 64, 64) and images.dtype == np.uint8
    rng = np.random.default_rng(2)
    index = rng.choice(737280, size=2000, replace=False)
    np.testing.assert_array_equal(images[index], render.render(render.all_latent_classes()[index]))
    del images
    cached = render.render_all(
        tmp_path
    )  # from the cache this time (speed: scripts/bench_render.py)
    np.testing.assert_array_equal(cached[index], render.render(render.all_latent_classes()[index]))
