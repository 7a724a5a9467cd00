"""Natural images as one LightningDataModule, fed by a source: torchvision's datasets, an image
folder, or an array file.

Every source returns an :class:`ImageSet` (uint8 images, integer labels, class names, and the
source's own test partition when it has one); :class:`ImageDataModule` does the rest the same
way for all of them: channel conversion, resizing, a seeded subset, the seeded splits, the
normalisation statistics, and CIFAR-10's batching (the uint8 images stay in memory as one tensor,
batches are slices by index converted to [0, 1] floats on the device, normalisation happens in
front of the encoder).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from reprlab.data.dsprites import InMemoryBatches, check_fraction

log = logging.getLogger(__name__)

# ITU-R BT.601 luma, the weights of torchvision's rgb_to_grayscale and Pillow's convert("L").
LUMA = (0.299, 0.587, 0.114)
CHANNELS = (1, 3)
# Images are converted this many at a time (resizing and statistics), to bound the float memory.
CHUNK = 4096


@dataclass
class ImageSet:
    """What a source reads: uint8 images (N, C, H, W), int64 labels (N,) in 0..K-1, the K class
    names, and the source's test partition (None: the data module draws a seeded one)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    class_names: list[str]
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    # Files a source left out (an image folder's undecodable files, with data.on_bad_file=skip).
    skipped: list[str] = field(default_factory=list)

    def partitions(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        parts = [("training", self.train_images, self.train_labels)]
        if self.test_images is not None and self.test_labels is not None:
            parts.append(("test", self.test_images, self.test_labels))
        return parts


def check_image_set(data: ImageSet, where: str) -> None:
    """Shapes, dtypes and labels a source must deliver; ``where`` names the source."""
    if (data.test_images is None) != (data.test_labels is None):
        raise ValueError(f"{where}: test images and test labels come together or not at all")
    shape = None
    for part, images, labels in data.partitions():
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in CHANNELS:
            raise ValueError(
                f"{where}: {part} images must be uint8 (N, C, H, W) with C in {CHANNELS}, got "
                f"{images.dtype} {images.shape}"
            )
        if shape is not None and images.shape[1:] != shape:
            raise ValueError(
                f"{where}: test images are {images.shape[1:]}, training images {shape}"
            )
        shape = images.shape[1:]
        if labels.shape != (len(images),) or labels.dtype != np.int64:
            raise ValueError(
                f"{where}: {part} labels must be int64 of shape ({len(images)},), got "
                f"{labels.dtype} {labels.shape}"
            )
        if len(images) == 0:
            raise ValueError(f"{where}: no {part} images")
        if labels.min() < 0 or labels.max() >= len(data.class_names):
            raise ValueError(
                f"{where}: {part} labels must be in [0, {len(data.class_names) - 1}] (one per "
                f"class name), got {labels.min()}..{labels.max()}"
            )
    counts = np.bincount(data.train_labels, minlength=len(data.class_names))
    # A class the probe can train on and be tested on needs two images; say which one has fewer.
    for name, count in zip(data.class_names, counts, strict=True):
        if count < 2:
            raise ValueError(
                f"{where}: class {name!r} has {count} training image{'s' * int(count != 1)}; every "
                f"class needs at least 2 (one to train on, one to validate or test on): add "
                f"images to it or remove it"
            )


def convert_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """(N, C, H, W) uint8 to ``channels`` (1: BT.601 luma, 3: grey repeated); None keeps C."""
    if channels is None or images.shape[1] == channels:
        return images
    if channels == 3 and images.shape[1] == 1:
        return np.repeat(images, 3, axis=1)
    if channels == 1 and images.shape[1] == 3:
        grey = np.empty((len(images), 1, *images.shape[2:]), dtype=np.uint8)
        weights = np.asarray(LUMA, dtype=np.float32).reshape(1, 3, 1, 1)
        for start in range(0, len(images), CHUNK):
            chunk = images[start : start + CHUNK].astype(np.float32)
            grey[start : start + CHUNK] = np.clip(
                np.rint((chunk * weights).sum(axis=1, keepdims=True)), 0, 255
            )
        return grey
    raise ValueError(f"data.channels must be 1, 3 or null, got {channels}")


def fit_size(images: np.ndarray, size: int | None) -> np.ndarray:
    """Resize the short side to ``size`` (antialiased bilinear) and crop the centre square;
    None or images already ``size`` x ``size`` are returned as they are."""
    if size is None or images.shape[2:] == (size, size):
        return images
    from torchvision.transforms.v2 import functional as F

    height, width = images.shape[2:]
    short = min(height, width)
    target = (
        (size, max(size, round(width * size / short)))
        if height <= width
        else (
            max(size, round(height * size / short)),
            size,
        )
    )
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), CHUNK):
        chunk = torch.from_numpy(images[start : start + CHUNK])
        resized = F.resize(chunk, list(target), antialias=True)
        out[start : start + CHUNK] = F.center_crop(resized, [size, size]).numpy()
    return out


def channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1]."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), CHUNK):
        chunk = images[start : start + CHUNK].to(torch.float64).div_(255)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = len(images) * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    # A constant channel (all one grey) would divide by zero; leave such a channel unscaled.
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a seeded ``fraction`` of ``labels`` drawn class by class, each class
    giving ``round(fraction * count)`` but keeping at least one image on either side."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, math.floor(fraction * len(members) + 0.5)))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


class ImageDataModule(InMemoryBatches, L.LightningDataModule):
    """Natural images (a source's uint8 images and labels) for image classification.

    The images stay in memory as one uint8 tensor (N, C, H, W): the training partition first,
    the test partition after it. Sources with a test partition of their own (torchvision's
    official splits, an image folder's ``test/``, an array file's test arrays) keep it as the
    test split; otherwise a stratified, seeded ``test_fraction`` of the images is. Then
    ``val_fraction`` of the training partition (seeded by ``split_seed``) is held out for
    validation. ``num_images`` keeps a seeded random subset of both partitions in their ratio.

    ``channels`` converts grey and colour images (BT.601 luma; grey repeated in 3 channels);
    ``image_size`` resizes the short side and crops the centre square, once, when loading.

    Normalisation (``normalization``: the training split's per-channel mean and std) is not
    applied here: the pipeline puts it in front of the encoder, so augmentations act on [0, 1]
    pixels. ``on_device=True`` moves the whole uint8 dataset to the training device when
    Lightning sets the module up, so batches are gathered there.

    ``label_fraction`` labels only a stratified, seeded share of the training split (the
    ``labelled`` split), as on dSprites: methods whose encoder learns from labels train on it.

    Subclasses are the sources: they set ``name`` (for messages) and implement :meth:`read`.
    """

    name = "images"

    def __init__(
        self,
        num_images: int | None = None,
        subset_seed: int = 0,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        split_seed: int = 2021,
        batch_size: int = 512,
        num_workers: int = 0,
        on_device: bool = False,
        image_size: int | None = None,
        channels: int | None = None,
        label_fraction: float = 1.0,
        label_seed: int = 0,
        bias: str = "none",
        bias_control: bool = False,
    ) -> None:
        super().__init__()
        # Everything is checked here, before any data is read or any training starts.
        if bias != "none":
            raise ValueError(
                f"bias={bias} is defined on dSprites latents; {self.name} has no latents and "
                f"accepts only bias=none"
            )
        if num_images is not None and num_images < 2:
            raise ValueError(f"data.num_images must be >= 2 or null (all), got {num_images}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if image_size is not None and image_size < 1:
            raise ValueError(
                f"data.image_size must be a positive number of pixels or null, got {image_size}"
            )
        if channels is not None and channels not in CHANNELS:
            raise ValueError(f"data.channels must be 1, 3 or null (as stored), got {channels}")
        self.num_images = num_images
        self.subset_seed = subset_seed
        self.test_fraction = check_fraction("data.test_fraction", test_fraction, allow_one=False)
        self.val_fraction = check_fraction(
            "data.val_fraction", val_fraction, allow_zero=True, allow_one=False
        )
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.num_workers = num_workers  # accepted for config compatibility; batches need none
        self.on_device = on_device
        self.image_size = image_size
        self.channels = channels
        self.label_fraction = check_fraction("data.label_fraction", label_fraction)
        self.label_seed = label_seed
        # Methods that learn from labels train on "labelled" (the pipeline switches it).
        self.train_split = "train"
        self.images: torch.Tensor | None = None
        self.class_names: list[str] = []
        self.skipped: list[str] = []
        self._normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    # -- what a source provides ------------------------------------------------------------------
    def read(self) -> ImageSet:
        """The source's images; called once, in ``setup``."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where the images come from, for the log and error messages."""
        return self.name

    def declared(self) -> tuple[tuple[int, int, int], int] | None:
        """(image shape, number of classes) as the source stores them, when known before
        reading (torchvision's datasets); None when only the files tell."""
        return None

    # -- what the rest of the pipeline asks of a datamodule ------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        if self.images is not None:
            return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]
        declared = self.declared()
        if declared is None:
            raise RuntimeError(f"{self.describe()}: call setup() before asking for the input shape")
        channels, height, width = declared[0]
        if self.image_size is not None:
            height = width = self.image_size
        return (self.channels or channels, height, width)

    @property
    def num_classes(self) -> int:
        if self.images is not None:
            return len(self.class_names)
        declared = self.declared()
        if declared is None:
            raise RuntimeError(f"{self.describe()}: call setup() before asking for the classes")
        return declared[1]

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) of the training split, the encoder's inputs normalised by."""
        if self._normalization is None:
            if self.images is None:
                raise RuntimeError("call setup() before asking for the normalisation")
            training = torch.cat([self.train_idx, self.val_idx]).sort().values
            self._normalization = channel_statistics(self.images.cpu()[training])
        return self._normalization

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels to floats in [0, 1] (normalisation happens in front of the encoder)."""
        return images.float().div_(255)

    # -- loading --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.images is None:  # Lightning calls setup once per stage; load once
            self._load_and_split()
        if self.on_device and self.trainer is not None:
            self.move_to(self.trainer.strategy.root_device)

    def move_to(self, device: torch.device | str) -> None:
        """Keep the images and labels on ``device``; batches are then gathered there.

        The split indices stay on the CPU (they are small and index either way).
        """
        if self.images is None:
            raise RuntimeError("call setup() before moving the data")
        self.images = self.images.to(device)
        self.targets = self.targets.to(device)

    def _load_and_split(self) -> None:
        data = self.read()
        where = self.describe()
        check_image_set(data, where)
        self.class_names = list(data.class_names)
        self.skipped = list(data.skipped)
        parts = []
        for _, images, labels in data.partitions():
            parts.append(
                (fit_size(convert_channels(images, self.channels), self.image_size), labels)
            )
        if len(parts) == 1:
            parts = self._draw_test_partition(*parts[0])
        (train_images, train_labels), (test_images, test_labels) = parts
        train_keep, test_keep = self._subset(len(train_images), len(test_images))
        if train_keep is not None and test_keep is not None:
            train_images, train_labels = train_images[train_keep], train_labels[train_keep]
            test_images, test_labels = test_images[test_keep], test_labels[test_keep]
        n_train, n_test = len(train_images), len(test_images)
        self.images = torch.from_numpy(
            np.ascontiguousarray(np.concatenate([train_images, test_images]))
        )
        self.targets = torch.from_numpy(np.concatenate([train_labels, test_labels]))

        order = np.random.default_rng(self.split_seed).permutation(n_train)
        n_val = int(round(self.val_fraction * n_train))
        if n_train - n_val < 1 or n_test < 1:
            raise ValueError(
                f"{where}: {n_train} training and {n_test} test images with "
                f"val_fraction={self.val_fraction} leave an empty split"
            )
        if self.batch_size > n_train - n_val:
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the training split "
                f"({n_train - n_val} images); lower data.batch_size or raise data.num_images"
            )
        self.train_idx = torch.from_numpy(np.sort(order[n_val:]))
        self.val_idx = torch.from_numpy(order[:n_val].copy())
        self.test_idx = torch.arange(n_train, n_train + n_test)
        self.labelled_idx = self.train_idx[
            self.label_subset(self.label_fraction, self.label_seed, name="data.label_fraction")
        ]
        log.info(
            "%s: %s images, %d classes; train %d (labelled %d), val %d, test %d%s",
            where,
            "x".join(str(s) for s in self.images.shape[1:]),
            self.num_classes,
            len(self.train_idx),
            len(self.labelled_idx),
            len(self.val_idx),
            len(self.test_idx),
            f"; {len(self.skipped)} unreadable files skipped" if self.skipped else "",
        )

    def _draw_test_partition(
        self, images: np.ndarray, labels: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """A stratified, seeded ``test_fraction`` of a source without a test partition."""
        test = stratified_split(labels, self.test_fraction, self.split_seed + 1)
        train = np.setdiff1d(np.arange(len(labels)), test, assume_unique=True)
        return [(images[train], labels[train]), (images[test], labels[test])]

    def _subset(self, n_train: int, n_test: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Seeded random subsets of both partitions, ``num_images`` in all, in their ratio."""
        total = n_train + n_test
        if self.num_images is None or self.num_images >= total:
            if self.num_images is not None and self.num_images > total:
                log.warning("data.num_images=%d > %d available: using all", self.num_images, total)
            return None, None
        keep_train = max(1, min(n_train, int(round(n_train / total * self.num_images))))
        keep_test = max(1, min(n_test, self.num_images - keep_train))
        rng = np.random.default_rng(self.subset_seed)
        return (
            np.sort(rng.choice(n_train, size=keep_train, replace=False)),
            np.sort(rng.choice(n_test, size=keep_test, replace=False)),
        )


class TorchvisionDataModule(ImageDataModule):
    """One of torchvision's labelled image datasets (``dataset``), read by torchvision's own
    dataset class from ``root`` (:mod:`reprlab.data.torchvision_datasets`), with its official
    train / test split. ``download=True`` fetches missing files with torchvision's downloader."""

    def __init__(
        self,
        dataset: str = "FashionMNIST",
        root: str = "~/.cache/reprlab",
        download: bool = False,
        **options: Any,
    ) -> None:
        from reprlab.data.torchvision_datasets import spec_for

        self.spec = spec_for(dataset)
        self.name = self.spec.title
        super().__init__(**options)
        self.dataset = self.spec.name
        self.root = Path(root).expanduser()
        self.download = download

    def describe(self) -> str:
        return f"{self.spec.title} ({self.root})"

    def declared(self) -> tuple[tuple[int, int, int], int] | None:
        return self.spec.shape, self.spec.num_classes

    def prepare_data(self) -> None:
        if self.download:
            from reprlab.data.torchvision_datasets import download

            download(self.dataset, self.root)

    def read(self) -> ImageSet:
        from reprlab.data.torchvision_datasets import read

        return read(self.dataset, self.root)


class ImageFolderDataModule(ImageDataModule):
    """The user's own images in torchvision's ImageFolder layout under ``root`` (one subfolder
    per class; optional ``train/`` and ``test/`` folders), decoded once to ``image_size`` and
    cached (:mod:`reprlab.data.image_folder`)."""

    name = "image folder"

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        channels: int | None = 3,
        cache_dir: str | None = "~/.cache/reprlab/image_folders",
        on_bad_file: str = "error",
        decode_workers: int | None = None,
        **options: Any,
    ) -> None:
        from reprlab.data.image_folder import BAD_FILE_CHOICES

        if on_bad_file not in BAD_FILE_CHOICES:
            raise ValueError(
                f"unknown data.on_bad_file {on_bad_file!r}; accepted: {', '.join(BAD_FILE_CHOICES)}"
            )
        if image_size is None or image_size < 1:
            raise ValueError(
                f"data.image_size must be a positive number of pixels, got "
                f"{image_size} (an image folder's images are resized to it)"
            )
        super().__init__(image_size=image_size, channels=channels, **options)
        self.root = Path(root).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.on_bad_file = on_bad_file
        self.decode_workers = decode_workers

    def describe(self) -> str:
        return f"image folder {self.root}"

    def declared(self) -> tuple[tuple[int, int, int], int] | None:
        # The shape is the settings' (channels null: known once decoded); the classes are the
        # folder's subfolders.
        if self.channels is None or not self.root.is_dir():
            return None
        from reprlab.data.image_folder import partitions

        folder = partitions(self.root)["train"]
        classes = [entry for entry in folder.iterdir() if entry.is_dir()]
        return (self.channels, int(self.image_size), int(self.image_size)), len(classes)  # type: ignore[arg-type]

    def read(self) -> ImageSet:
        from reprlab.data.image_folder import read_image_folder

        return read_image_folder(
            self.root,
            image_size=int(self.image_size),  # type: ignore[arg-type]
            channels=self.channels,
            cache_dir=self.cache_dir,
            on_bad_file=self.on_bad_file,
            workers=self.decode_workers,
        )


class ArrayFileDataModule(ImageDataModule):
    """Images and labels already in arrays: an ``.npz`` (key names configurable) or an ``.npy``
    of images with an ``.npy`` of labels (:mod:`reprlab.data.array_file`)."""

    name = "array file"

    def __init__(
        self,
        path: str,
        images_key: str = "images",
        labels_key: str = "labels",
        test_images_key: str = "test_images",
        test_labels_key: str = "test_labels",
        class_names_key: str = "class_names",
        labels_path: str | None = None,
        layout: str = "auto",
        **options: Any,
    ) -> None:
        from reprlab.data.array_file import LAYOUTS

        if layout not in LAYOUTS:
            raise ValueError(f"unknown data.layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
        super().__init__(**options)
        self.path = Path(path).expanduser()
        self.keys = {
            "images": images_key,
            "labels": labels_key,
            "test_images": test_images_key,
            "test_labels": test_labels_key,
            "class_names": class_names_key,
        }
        self.labels_path = Path(labels_path).expanduser() if labels_path else None
        self.layout = layout

    def describe(self) -> str:
        return f"array file {self.path}"

    def read(self) -> ImageSet:
        from reprlab.data.array_file import read_array_file

        return read_array_file(self.path, self.keys, self.labels_path, self.layout)
