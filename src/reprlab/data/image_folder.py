"""The user's own images in torchvision's ImageFolder layout, decoded once and cached.

Layout: ``root/<class>/<image>`` (one subfolder per class), or ``root/train/<class>/...`` with
an optional ``root/test/<class>/...`` (the test classes must be training classes too). Files
with torchvision's image extensions count (``IMG_EXTENSIONS``); others are ignored.

Every image is decoded with Pillow in a thread pool (Pillow releases the GIL while decoding and
resizing), converted to grey or RGB, resized so its short side is ``image_size`` and cropped to
the centre square. The result is one uint8 array, cached as an ``.npz`` under ``cache_dir``
together with a fingerprint of the folder (every image's path, size and modification time) and
of the settings: the next run with the same folder loads that file instead of decoding, and a
changed folder (an image added, removed or rewritten) is decoded again.

An image that cannot be decoded: ``on_bad_file="error"`` (the default) stops with its path;
``"skip"`` leaves it out, counts it and logs the first few paths.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from reprlab.data.images import ImageSet
from reprlab.io import atomic_write

log = logging.getLogger(__name__)

BAD_FILE_CHOICES = ("error", "skip")
# Bump when the decoded result for the same files and settings would change.
CACHE_VERSION = 1
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def partitions(root: Path) -> dict[str, Path]:
    """``{"train": folder}`` or ``{"train": root/train, "test": root/test}``."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root={root} is not a folder; data=image_folder expects one subfolder per "
            f"class (root/<class>/<image>), optionally under root/train/ and root/test/"
        )
    if (root / "train").is_dir():
        parts = {"train": root / "train"}
        if (root / "test").is_dir():
            parts["test"] = root / "test"
        return parts
    return {"train": root}


def list_images(
    folder: Path, classes: list[str] | None = None
) -> tuple[list[str], list[Path], list[int]]:
    """Class names (sorted subfolders, or ``classes``), image paths and their class indices."""
    extensions = image_extensions()
    if classes is None:
        classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        class_folder = folder / name
        if not class_folder.is_dir():
            continue
        found = sorted(
            Path(dirpath) / filename
            for dirpath, _, filenames in os.walk(class_folder, followlinks=True)
            for filename in filenames
            if filename.lower().endswith(extensions)
        )
        paths.extend(found)
        labels.extend([index] * len(found))
    return classes, paths, labels


def check_listing(folder: Path, classes: list[str], labels: list[int], needed: int) -> None:
    """A folder must hold images, and every class folder at least ``needed`` of them."""
    extensions = ", ".join(image_extensions())
    if not labels:
        found = ", ".join(classes[:5]) + (" ..." if len(classes) > 5 else "")
        raise ValueError(
            f"no images in {folder}: data=image_folder expects one subfolder per class holding "
            f"image files ({extensions}), e.g. {folder}/cat/0001.png; found "
            f"{f'class folders {found} without images' if classes else 'no subfolders'}"
        )
    counts = np.bincount(np.asarray(labels), minlength=len(classes))
    for name, count in zip(classes, counts, strict=True):
        if count < needed:
            raise ValueError(
                f"class folder {folder / name} has {count} image{'s' * int(count != 1)} "
                f"({extensions}); every class needs at least {needed} (one to train on, one to "
                f"validate or test on): add images to it or remove the folder"
            )


def fingerprint(paths: list[Path], settings: str) -> str:
    """A hash of every image's path, size and modification time, and of the decoding settings."""
    digest = hashlib.sha256(f"{CACHE_VERSION}\n{settings}\n".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode(path: Path, image_size: int, channels: int | None) -> np.ndarray:
    """One image as uint8 (C, S, S): grey or RGB (``channels``, None: as stored), the short side
    resized to S = ``image_size`` (antialiased bilinear) and the centre square cropped."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        grey = image.mode in _GREY_MODES if channels is None else channels == 1
        # JPEG decoding at a reduced scale (a power of two, never below the target size).
        image.draft("L" if grey else "RGB", (image_size, image_size))
        converted = image.convert("L" if grey else "RGB")
        fitted = ImageOps.fit(converted, (image_size, image_size), method=Image.Resampling.BILINEAR)
        pixels = np.asarray(fitted, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _decode_all(
    paths: list[Path], image_size: int, channels: int | None, workers: int | None
) -> list[np.ndarray | Exception]:
    def one(path: Path) -> np.ndarray | Exception:
        try:
            return decode(path, image_size, channels)
        except Exception as error:  # noqa: BLE001 - Pillow raises many kinds on a bad file
            return error

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(one, paths, chunksize=64))


def _stack(decoded: list[np.ndarray], channels: int | None) -> np.ndarray:
    """One (N, C, S, S) array; with ``channels`` None, grey images join colour ones as RGB."""
    if channels is None and any(image.shape[0] == 3 for image in decoded):
        decoded = [
            np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image for image in decoded
        ]
    return np.stack(decoded)


def _cache_path(cache_dir: Path, root: Path, image_size: int, channels: int | None) -> Path:
    where = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"{root.name or 'images'}-{where}-{image_size}px-{channels or 'auto'}ch.npz"


def read_image_folder(
    root: str | os.PathLike,
    image_size: int,
    channels: int | None = 3,
    cache_dir: str | os.PathLike | None = None,
    on_bad_file: str = "error",
    workers: int | None = None,
) -> ImageSet:
    """The images under ``root`` (see the module docstring), from the cache when it is current."""
    if on_bad_file not in BAD_FILE_CHOICES:
        raise ValueError(
            f"unknown data.on_bad_file {on_bad_file!r}; accepted: {', '.join(BAD_FILE_CHOICES)}"
        )
    root = Path(root).expanduser()
    parts = partitions(root)
    classes, train_paths, train_labels = list_images(parts["train"])
    check_listing(parts["train"], classes, train_labels, needed=2)
    test_paths: list[Path] = []
    test_labels: list[int] = []
    if "test" in parts:
        test_classes = sorted(e.name for e in os.scandir(parts["test"]) if e.is_dir())
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise ValueError(
                f"{parts['test']} has class folders {unknown} that {parts['train']} lacks; "
                f"training classes: {classes}"
            )
        _, test_paths, test_labels = list_images(parts["test"], classes)
        if not test_paths:
            check_listing(parts["test"], test_classes, test_labels, needed=1)
    paths = train_paths + test_paths
    settings = f"size={image_size} channels={channels} on_bad_file={on_bad_file}"
    key = fingerprint(paths, settings)
    cache = (
        _cache_path(Path(cache_dir).expanduser(), root, image_size, channels) if cache_dir else None
    )
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as stored:
                if str(stored["fingerprint"]) == key:
                    log.info("image folder %s: decoded images from %s", root, cache)
                    return _image_set(
                        stored["images"],
                        stored["labels"],
                        stored["is_test"],
                        [str(name) for name in stored["class_names"]],
                        [str(name) for name in stored["skipped"]],
                    )
            log.info("image folder %s changed since %s was written: decoding again", root, cache)
        except (OSError, ValueError, KeyError) as error:
            log.warning("ignoring unreadable cache %s (%s): decoding again", cache, error)

    decoded = _decode_all(paths, image_size, channels, workers)
    bad = [
        (path, out) for path, out in zip(paths, decoded, strict=True) if isinstance(out, Exception)
    ]
    if bad and on_bad_file == "error":
        path, error = bad[0]
        raise ValueError(
            f"cannot decode {path} ({type(error).__name__}: {error}); "
            f"{len(bad)} of {len(paths)} images in {root} are unreadable. Remove or replace "
            f"{'it' if len(bad) == 1 else 'them'}, or set data.on_bad_file=skip to leave "
            f"unreadable files out (they are counted and logged)"
        )
    keep = [not isinstance(out, Exception) for out in decoded]
    skipped = [str(path) for path, _ in bad]
    if skipped:
        log.warning(
            "image folder %s: skipped %d unreadable image(s), e.g. %s",
            root,
            len(skipped),
            ", ".join(skipped[:5]),
        )
    labels = np.asarray(train_labels + test_labels, dtype=np.int64)[keep]
    is_test = np.asarray([False] * len(train_paths) + [True] * len(test_paths))[keep]
    images = _stack([out for out in decoded if not isinstance(out, Exception)], channels)
    if skipped:  # a class may have lost the images it needed
        check_listing(parts["train"], classes, labels[~is_test].tolist(), needed=2)
    if cache is not None:
        _write_cache(cache, key, images, labels, is_test, classes, skipped)
    return _image_set(images, labels, is_test, classes, skipped)


def _write_cache(
    cache: Path,
    key: str,
    images: np.ndarray,
    labels: np.ndarray,
    is_test: np.ndarray,
    classes: list[str],
    skipped: list[str],
) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        fingerprint=np.asarray(key),
        images=images,
        labels=labels,
        is_test=is_test,
        class_names=np.asarray(classes, dtype=str),
        skipped=np.asarray(skipped, dtype=str),
    )
    try:
        atomic_write(cache, lambda handle: handle.write(buffer.getbuffer()))
        log.info("image folder: decoded images cached in %s", cache)
    except OSError as error:  # a read-only cache folder costs the next run a decode, no more
        log.warning("could not write the decoded images to %s (%s)", cache, error)


def _image_set(
    images: np.ndarray,
    labels: np.ndarray,
    is_test: np.ndarray,
    classes: list[str],
    skipped: list[str],
) -> ImageSet:
    if is_test.any():
        return ImageSet(
            images[~is_test], labels[~is_test], classes, images[is_test], labels[is_test], skipped
        )
    return ImageSet(images, labels, classes, skipped=skipped)
