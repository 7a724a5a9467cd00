"""Reading (and optionally fetching) DeepMind's dSprites npz file, with clear errors."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from reprlab.io import atomic_write

DSPRITES_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = "https://github.com/google-deepmind/dsprites-dataset/raw/master/" + DSPRITES_FILENAME
REQUIRED_KEYS = ("imgs", "latents_classes", "latents_values")


def load_dsprites_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8, latent classes (N, 5) int64 and latent values (N, 5) float64.

    Reads only the three arrays it needs, so the pickled ``metadata`` entry is never unpickled.
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
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise ValueError(f"{path} is corrupt (could not read its arrays): {error}") from error
    if images.ndim != 3:
        raise ValueError(
            f"{path}: 'imgs' must have shape (N, height, width), got shape {images.shape}"
        )
    for name, array in (("latents_classes", classes), ("latents_values", values)):
        if array.shape != (len(images), 5):
            raise ValueError(
                f"{path}: {name!r} must have shape ({len(images)}, 5), got {array.shape}"
            )
    return images.astype(np.uint8, copy=False), classes.astype(np.int64), values.astype(np.float64)


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
