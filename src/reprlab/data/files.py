"""Reading (and optionally fetching) DeepMind's dSprites npz file, with clear errors.

Files cut from DeepMind's (the Neuromatch subsets) index ``latents_classes`` in their own grid:
the downsampled file's posX classes run 0..15 for DeepMind's 0, 2, .., 30. The loader checks a
file's classes against its values and metadata and returns classes on DeepMind's grid, so a
class index means the same latent value on every file and on the procedural renderer.
"""

from __future__ import annotations

import os
import pickle
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from reprlab.data import render
from reprlab.io import atomic_write

DSPRITES_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = "https://github.com/google-deepmind/dsprites-dataset/raw/master/" + DSPRITES_FILENAME
REQUIRED_KEYS = ("imgs", "latents_classes", "latents_values")
# DeepMind's own file has a sixth latent first, 'color', with a single value (white sprites).
COLOR = "color"

# The only globals the metadata's pickle may name: a dict of tuples, strings and numpy arrays
# needs no more, and refusing the rest keeps a crafted file from running code when read.
_METADATA_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _METADATA_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":  # numpy 1 pickles; numpy 2 moved the module
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_metadata(archive: np.lib.npyio.NpzFile) -> dict | None:
    """The archive's pickled ``metadata`` dict, unpickled with only numpy's array globals."""
    if "metadata" not in archive.files:
        return None
    with archive.zip.open("metadata.npy") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(handle)
        if dtype.kind != "O":
            raise ValueError(f"'metadata' must be a pickled dict, got a {dtype} array")
        # numpy writes an object array as a pickle after its header; latin1 reads Python 2's.
        array = _MetadataUnpickler(handle, encoding="latin1").load()
    metadata = array.item() if isinstance(array, np.ndarray) and array.shape == () else array
    if not isinstance(metadata, dict):
        raise ValueError(f"'metadata' must be a pickled dict, got {type(metadata).__name__}")
    return metadata


def _metadata_grids(metadata: dict, names: tuple[str, ...]) -> list[np.ndarray]:
    """Each latent's possible values, in class order, as the metadata lists them."""
    listed = tuple(str(name) for name in metadata.get("latents_names", ()))
    if listed != names:
        raise ValueError(
            f"metadata 'latents_names' is {listed}; expected {names}, the order of the "
            f"latents' columns"
        )
    sizes = np.asarray(metadata.get("latents_sizes", ())).ravel()
    possible = metadata.get("latents_possible_values", {})
    grids = []
    for column, name in enumerate(names):
        if name not in possible:
            raise ValueError(f"latent {name!r} has no entry in metadata 'latents_possible_values'")
        grid = np.asarray(possible[name], dtype=np.float64).ravel()
        size = int(sizes[column]) if column < len(sizes) else None
        if size != len(grid):
            raise ValueError(
                f"latent {name!r}: metadata 'latents_sizes' says {size} classes but "
                f"'latents_possible_values' lists {len(grid)} values"
            )
        grids.append(grid)
    return grids


def _check_classes_match_values(
    classes: np.ndarray,
    values: np.ndarray,
    names: tuple[str, ...],
    grids: list[np.ndarray],
    what: str,
) -> None:
    """Every class index must name its row's value in ``grids`` (the file's own grid, ``what``)."""
    for column, (name, grid) in enumerate(zip(names, grids, strict=True)):
        own, value = classes[:, column], values[:, column]
        outside = np.flatnonzero((own < 0) | (own >= len(grid)))
        if outside.size:
            row = int(outside[0])
            raise ValueError(
                f"latent {name!r} has class index {own[row]} (row {row}; {outside.size} of "
                f"{len(own)} rows); {what} has classes 0..{len(grid) - 1}"
            )
        wrong = np.flatnonzero(~(np.abs(grid[own] - value) <= render.GRID_TOLERANCE))
        if wrong.size:
            row = int(wrong[0])
            raise ValueError(
                f"latent {name!r}: row {row} has class {own[row]} but value {float(value[row])!r}, "
                f"and {what} gives class {own[row]} the value {float(grid[own[row]])!r} "
                f"({wrong.size} of {len(own)} rows disagree)"
            )


def _drop_color(
    classes: np.ndarray, values: np.ndarray, names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """DeepMind's 6-latent layout without its constant 'color' column."""
    if names[0] != COLOR:
        return classes, values
    if len(np.unique(values[:, 0])) > 1 or len(np.unique(classes[:, 0])) > 1:
        raise ValueError("latent 'color' takes more than one value; dSprites sprites are all white")
    return classes[:, 1:], values[:, 1:]


def checked_latents(
    classes: np.ndarray,
    values: np.ndarray,
    metadata: dict | None = None,
    original_indices: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Checked latents of a dSprites file: (classes on DeepMind's grid, values), both (N, 5).

    ``classes`` and ``values`` are the file's arrays, (N, 5) or DeepMind's (N, 6) with 'color'
    first. Each class must name its value in the file's own grid: its metadata's
    ``latents_possible_values`` when it has them, DeepMind's grid otherwise; every value must be
    on DeepMind's grid; and ``original_indices`` (the image's index in DeepMind's file), when
    given, must point at the same latents. Anything else is a ValueError naming the latent.
    """
    if classes.ndim != 2 or classes.shape[1] not in (5, 6):
        raise ValueError(
            f"'latents_classes' must have shape (N, 5) ({', '.join(render.LATENT_NAMES)}) or "
            f"DeepMind's (N, 6) with {COLOR!r} first; got {classes.shape}"
        )
    names = ((COLOR,) if classes.shape[1] == 6 else ()) + render.LATENT_NAMES
    if metadata is not None:
        grids = _metadata_grids(metadata, names)
        what = "the file's metadata"
    else:
        white = (np.array([1.0]),) if names[0] == COLOR else ()
        grids = [*white, *render.LATENT_GRIDS]
        what = "DeepMind's grid (the file has no readable metadata)"
    _check_classes_match_values(classes, values, names, grids, what)
    classes, values = _drop_color(classes, values, names)
    full = render.latent_classes(values)
    if original_indices is not None:
        _check_original_indices(full, original_indices)
    return full, values


def _check_original_indices(full: np.ndarray, original_indices: np.ndarray) -> None:
    """The full file's latents at ``original_indices`` must be the rows' own latents."""
    if original_indices.shape != (len(full),):
        raise ValueError(
            f"'original_dataset_indices' must have shape ({len(full)},), got "
            f"{original_indices.shape}"
        )
    outside = np.flatnonzero((original_indices < 0) | (original_indices >= render.NUM_IMAGES))
    if outside.size:
        row = int(outside[0])
        raise ValueError(
            f"'original_dataset_indices' has {original_indices[row]} at row {row}; DeepMind's "
            f"file has images 0..{render.NUM_IMAGES - 1}"
        )
    expected = np.stack(np.unravel_index(original_indices, render.LATENT_SIZES), axis=1)
    for column, name in enumerate(render.LATENT_NAMES):
        wrong = np.flatnonzero(expected[:, column] != full[:, column])
        if wrong.size:
            row = int(wrong[0])
            raise ValueError(
                f"latent {name!r}: row {row} has DeepMind class {full[row, column]} by its "
                f"value, but its 'original_dataset_indices' ({original_indices[row]}) gives "
                f"class {expected[row, column]} ({wrong.size} of {len(full)} rows disagree)"
            )


def load_dsprites_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8, latent classes (N, 5) int64 on DeepMind's grid (shape 3, scale 6,
    orientation 40, posX 32, posY 32, whatever grid the file's own classes index) and latent
    values (N, 5) float64, checked by :func:`checked_latents`.

    The pickled ``metadata`` entry is read with an unpickler that loads only numpy arrays; one
    it cannot read that way is skipped with a warning (the classes are then held to DeepMind's
    grid).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"dSprites file not found: {path}. Give data.path=<file.npz>, set data.download=true "
            "to fetch DeepMind's file, or use data.source=procedural (no file needed)."
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable .npz file: {error}") from error
    with archive:
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single array, not an .npz archive of dSprites arrays")
        missing = [key for key in REQUIRED_KEYS if key not in archive.files]
        if missing:
            raise ValueError(
                f"{path} lacks {missing}; a dSprites file needs {list(REQUIRED_KEYS)}, "
                f"found {archive.files}"
            )
        try:
            images, classes, values = (archive[key] for key in REQUIRED_KEYS)
            original = archive.get("original_dataset_indices")
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise ValueError(f"{path} is corrupt (could not read its arrays): {error}") from error
        try:
            metadata = _read_metadata(archive)
        except (OSError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
            # Not fatal: the latents are then held to DeepMind's grid, which a file cut to its
            # own grid fails with a message naming the latent, so nothing wrong gets through.
            warnings.warn(
                f"{path}: could not read its 'metadata' safely ({error}); checking the latents "
                "against DeepMind's grid instead",
                RuntimeWarning,
                stacklevel=2,
            )
            metadata = None
    if images.ndim != 3:
        raise ValueError(
            f"{path}: 'imgs' must have shape (N, height, width), got shape {images.shape}"
        )
    for name, array in (("latents_classes", classes), ("latents_values", values)):
        if array.ndim != 2 or len(array) != len(images):
            raise ValueError(
                f"{path}: {name!r} must have shape ({len(images)}, 5), got {array.shape}"
            )
    if classes.shape != values.shape:
        raise ValueError(
            f"{path}: 'latents_classes' {classes.shape} and 'latents_values' {values.shape} "
            "must have the same shape"
        )
    try:
        classes, values = checked_latents(
            classes.astype(np.int64),
            values.astype(np.float64),
            metadata,
            None if original is None else original.astype(np.int64),
        )
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    return images.astype(np.uint8, copy=False), classes, values


def download_dsprites(cache_dir: str | os.PathLike, timeout: float = 30.0) -> Path:
    """Fetch DeepMind's full dSprites file into ``cache_dir`` (once) and return its path."""
    target = Path(cache_dir).expanduser() / DSPRITES_FILENAME
    if target.is_file():
        return target
    try:
        with urllib.request.urlopen(DSPRITES_URL, timeout=timeout) as response:
            atomic_write(target, lambda handle: handle.write(response.read()))
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise RuntimeError(
            f"could not download dSprites from {DSPRITES_URL} ({error}). Offline? Copy "
            f"{DSPRITES_FILENAME} to {target} by hand, give data.path=<file.npz>, or use "
            "data.source=procedural."
        ) from error
    return target
