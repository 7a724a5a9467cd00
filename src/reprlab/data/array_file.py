"""Images and labels already in arrays: one ``.npz`` (key names configurable), or an ``.npy`` of
images with an ``.npy`` of labels.

Images: (N, H, W) grey, or (N, C, H, W) / (N, H, W, C) with C of 1 or 3 (``layout``: ``auto``
tells them apart by which axis has 1 or 3 entries; set ``NCHW`` or ``NHWC`` when both could).
uint8 is used as it is; other integer types must lie in 0..255; floats in [0, 1] are scaled to
0..255 and rounded; booleans become 0 / 255. Labels: integers or strings, one per image; their
distinct sorted values become the classes 0..K-1 (the ``class_names`` array, when the file has
one, names the integer labels 0..K-1 instead). The test arrays are optional: without them the
data module draws a seeded, stratified test split.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from reprlab.data.images import ImageSet

LAYOUTS = ("auto", "NCHW", "NHWC")


def to_uint8_images(array: np.ndarray, layout: str, where: str) -> np.ndarray:
    """``array`` as uint8 (N, C, H, W)."""
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim != 4:
        raise ValueError(
            f"{where}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got shape "
            f"{array.shape}"
        )
    if layout == "auto":
        first, last = array.shape[1] in (1, 3), array.shape[3] in (1, 3)
        if first == last:
            raise ValueError(
                f"{where}: cannot tell the channel axis of images of shape {array.shape}; set "
                f"data.layout=NCHW or data.layout=NHWC (1 or 3 channels)"
            )
        layout = "NCHW" if first else "NHWC"
    if layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] not in (1, 3):
        raise ValueError(
            f"{where}: images need 1 or 3 channels, got {array.shape[1]} (shape {array.shape}, "
            f"data.layout={layout})"
        )
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return np.ascontiguousarray(array.astype(np.uint8) * 255)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"{where}: integer pixels must lie in 0..255, got {array.min()}..{array.max()}"
            )
        return np.ascontiguousarray(array.astype(np.uint8))
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"{where}: float pixels must lie in [0, 1], got {array.min()}..{array.max()}; "
                f"store 0..255 values as uint8"
            )
        return np.ascontiguousarray(np.rint(array * 255).astype(np.uint8))
    raise ValueError(f"{where}: images must be numbers, got dtype {array.dtype}")


def encode_labels(
    labels: list[np.ndarray], names: np.ndarray | None, where: str
) -> tuple[list[np.ndarray], list[str]]:
    """Each label array as int64 classes 0..K-1, and the K class names."""
    for array in labels:
        if array.ndim != 1:
            raise ValueError(
                f"{where}: labels must be one value per image, got shape {array.shape}"
            )
    if names is not None:
        classes = [str(name) for name in names]
        for array in labels:
            if not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"{where}: with class names, labels must be integers 0..K-1")
        return [array.astype(np.int64) for array in labels], classes
    if not all(np.issubdtype(a.dtype, np.integer) or a.dtype.kind in "US" for a in labels):
        raise ValueError(
            f"{where}: labels must be integers or strings, got {[str(a.dtype) for a in labels]}"
        )
    values = np.unique(np.concatenate(labels))
    encoded = [np.searchsorted(values, array).astype(np.int64) for array in labels]
    return encoded, [str(value) for value in values]


def read_array_file(
    path: str | os.PathLike,
    keys: Mapping[str, str],
    labels_path: str | os.PathLike | None = None,
    layout: str = "auto",
) -> ImageSet:
    """The images and labels in ``path`` (see the module docstring); ``keys`` maps ``images``,
    ``labels``, ``test_images``, ``test_labels`` and ``class_names`` to the names in the file."""
    path = Path(path).expanduser()
    if layout not in LAYOUTS:
        raise ValueError(f"unknown data.layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
    if not path.is_file():
        raise FileNotFoundError(f"data.path={path} is not a file (an .npz or .npy of images)")
    where = str(path)
    names = None
    test = None
    if path.suffix == ".npy":
        if labels_path is None:
            raise ValueError(
                f"{where} holds images only: set data.labels_path to an .npy of one label per "
                f"image, or store both in an .npz (data.images_key, data.labels_key)"
            )
        images = np.load(path, allow_pickle=False)
        labels = np.load(Path(labels_path).expanduser(), allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as content:
            available = sorted(content.files)
            for option in ("images", "labels"):
                if keys[option] not in content.files:
                    raise ValueError(
                        f"{where} has no array {keys[option]!r} (data.{option}_key); its arrays: "
                        f"{available}"
                    )
            images, labels = content[keys["images"]], content[keys["labels"]]
            has_test = [keys[k] in content.files for k in ("test_images", "test_labels")]
            if any(has_test) and not all(has_test):
                raise ValueError(
                    f"{where} has only one of {keys['test_images']!r} and "
                    f"{keys['test_labels']!r} (data.test_images_key, data.test_labels_key); "
                    f"give both or neither"
                )
            if all(has_test):
                test = (content[keys["test_images"]], content[keys["test_labels"]])
            if keys["class_names"] in content.files:
                names = content[keys["class_names"]]
    else:
        raise ValueError(f"data.path={path} must end in .npz or .npy, got {path.suffix!r}")
    if len(labels) != len(images):
        raise ValueError(f"{where}: {len(labels)} labels for {len(images)} images")
    train_images = to_uint8_images(images, layout, where)
    label_arrays = [np.asarray(labels)]
    test_images = None
    if test is not None:
        if len(test[1]) != len(test[0]):
            raise ValueError(f"{where}: {len(test[1])} test labels for {len(test[0])} test images")
        test_images = to_uint8_images(test[0], layout, f"{where} (test)")
        label_arrays.append(np.asarray(test[1]))
    encoded, classes = encode_labels(label_arrays, names, where)
    return ImageSet(
        train_images,
        encoded[0],
        classes,
        test_images,
        encoded[1] if test is not None else None,
    )
