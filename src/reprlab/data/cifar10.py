"""CIFAR-10 as a LightningDataModule, in torchvision's on-disk layout, batched by index.

The files are the pickled batches of the official ``cifar-10-python.tar.gz`` unpacked under
``<root>/cifar-10-batches-py/`` (what ``torchvision.datasets.CIFAR10(root, download=True)``
leaves there): ``data_batch_1`` .. ``data_batch_5`` (50,000 training images), ``test_batch``
(10,000 test images) and ``batches.meta`` (the class names).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from reprlab.data.dsprites import InMemoryBatches, check_fraction

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
# Per-channel mean and standard deviation of the 50,000 training images, pixels scaled to [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The official split is 50,000 : 10,000; a subset (num_images) keeps that ratio.
TRAIN_SHARE = 5 / 6


def missing_files(root: str | Path) -> list[str]:
    folder = Path(root).expanduser() / CIFAR10_FOLDER
    return [name for name in (*TRAIN_FILES, TEST_FILE, META_FILE) if not (folder / name).is_file()]


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            # The official batches were pickled by Python 2: latin1 keeps the byte strings.
            content = pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"{path} is not a readable CIFAR-10 batch file: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a {type(content).__name__}, not a CIFAR-10 batch dict")
    return content


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    content = _unpickle(path)
    if "data" not in content or "labels" not in content:
        raise ValueError(f"{path} lacks 'data' or 'labels'; found keys {sorted(content)}")
    data = np.asarray(content["data"])
    labels = np.asarray(content["labels"], dtype=np.int64)
    pixels = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise ValueError(
            f"{path}: 'data' must be uint8 of shape (N, {pixels}), got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"{path}: labels must be in [0, {NUM_CLASSES - 1}], got {labels.min()}..{labels.max()}"
        )
    return data.reshape(-1, *IMAGE_SHAPE), labels


def load_cifar10(
    root: str | Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Training images and labels, test images and labels, and the class names under ``root``."""
    folder = Path(root).expanduser() / CIFAR10_FOLDER
    missing = missing_files(root)
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: looked in {folder} for {', '.join(missing)}. Set "
            f"data.download=true to fetch it into data.root={root} (torchvision's downloader, "
            f"{CIFAR10_URL}, 163 MB), or download and unpack that archive into data.root by "
            f"hand, or point data.root at the folder that holds {CIFAR10_FOLDER}/."
        )
    train = [read_batch(folder / name) for name in TRAIN_FILES]
    test_images, test_labels = read_batch(folder / TEST_FILE)
    meta = _unpickle(folder / META_FILE)
    names = [str(name) for name in meta.get("label_names", [])]
    if len(names) != NUM_CLASSES:
        raise ValueError(
            f"{folder / META_FILE}: 'label_names' must list {NUM_CLASSES} classes, got {names}"
        )
    return (
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
        names,
    )


def download_cifar10(root: str | Path) -> None:
    """Fetch and unpack the official archive into ``root`` unless its files are all there."""
    if not missing_files(root):
        return
    from torchvision.datasets import CIFAR10

    target = Path(root).expanduser()
    try:
        CIFAR10(str(target), train=True, download=True)
    except Exception as error:  # URLError, OSError, RuntimeError (bad checksum), ...
        raise RuntimeError(
            f"could not download CIFAR-10 from {CIFAR10_URL} into {target} ({error}). Offline? "
            f"Download that archive elsewhere and unpack it into {target} (it holds "
            f"{CIFAR10_FOLDER}/), then set data.download=false."
        ) from error


class CIFAR10DataModule(InMemoryBatches, L.LightningDataModule):
    """CIFAR-10 (32x32 colour images, 10 classes) for image classification.

    Like the dSprites module, the images stay in memory as one uint8 tensor (N, 3, 32, 32): the
    official training images first, the official test images after them. Splits are index
    tensors into it: ``val_fraction`` of the training images (seeded by ``split_seed``) are held
    out for validation and the official test set is the test split. Batches are slices of that
    tensor, converted to float in [0, 1] on the device (``on_after_batch_transfer``).

    Normalisation by the training set's per-channel mean and std (``normalization``) is not
    applied here: the pipeline puts it in front of the encoder, so augmentations act on [0, 1]
    pixels and the VAE reconstructs [0, 1] pixels, while every encoder sees normalised inputs.

    ``on_device=True`` moves the whole uint8 dataset to the training device when Lightning sets
    the module up (184 MB for all 60,000 images), so batches are gathered there and nothing
    crosses the bus per step.
    """

    def __init__(
        self,
        root: str = "~/.cache/reprlab",
        download: bool = False,
        num_images: int | None = None,
        subset_seed: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 2021,
        batch_size: int = 512,
        num_workers: int = 0,
        on_device: bool = False,
        bias: str = "none",
        bias_control: bool = False,
    ) -> None:
        super().__init__()
        if bias != "none":
            raise ValueError(
                f"bias={bias} is defined on dSprites latents; CIFAR-10 accepts only bias=none"
            )
        if num_images is not None and num_images < 2:
            raise ValueError(f"data.num_images must be >= 2 or null (all), got {num_images}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.root = Path(root).expanduser()
        self.download = download
        self.num_images = num_images
        self.subset_seed = subset_seed
        self.val_fraction = check_fraction(
            "data.val_fraction", val_fraction, allow_zero=True, allow_one=False
        )
        self.split_seed = split_seed
        self.batch_size = batch_size
        # Methods that learn from labels train on "labelled"; on CIFAR-10 it is the training split.
        self.train_split = "train"
        self.num_workers = num_workers  # accepted for config compatibility; batches need none
        self.on_device = on_device
        self.images: torch.Tensor | None = None
        self.class_names: list[str] = []

    # -- what the rest of the pipeline asks of a datamodule ------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return IMAGE_SHAPE

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) the encoder's inputs are normalised with."""
        return CIFAR10_MEAN, CIFAR10_STD

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels to floats in [0, 1] (normalisation happens in front of the encoder)."""
        return images.float().div_(255)

    # -- loading --------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.download:
            download_cifar10(self.root)

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
        train_images, train_labels, test_images, test_labels, names = load_cifar10(self.root)
        train_keep, test_keep = self._subset(len(train_images), len(test_images))
        if train_keep is not None:
            train_images, train_labels = train_images[train_keep], train_labels[train_keep]
            test_images, test_labels = test_images[test_keep], test_labels[test_keep]
        n_train, n_test = len(train_images), len(test_images)
        self.class_names = names
        self.images = torch.from_numpy(np.concatenate([train_images, test_images]))
        self.targets = torch.from_numpy(np.concatenate([train_labels, test_labels]))

        order = np.random.default_rng(self.split_seed).permutation(n_train)
        n_val = int(round(self.val_fraction * n_train))
        if n_train - n_val < 1 or n_test < 1:
            raise ValueError(
                f"{n_train} training and {n_test} test images with "
                f"val_fraction={self.val_fraction} leave an empty split"
            )
        if self.batch_size > n_train - n_val:
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the training split "
                f"({n_train - n_val} images); lower data.batch_size or raise data.num_images"
            )
        self.train_idx = torch.from_numpy(np.sort(order[n_val:]))
        self.labelled_idx = self.train_idx  # CIFAR-10 has no data.label_fraction
        self.val_idx = torch.from_numpy(order[:n_val].copy())
        self.test_idx = torch.arange(n_train, n_train + n_test)
        log.info(
            "CIFAR-10 (%s): train %d, val %d, test %d",
            self.root,
            len(self.train_idx),
            len(self.val_idx),
            len(self.test_idx),
        )

    def _subset(self, n_train: int, n_test: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Seeded random subsets of both official splits, ``num_images`` in all, 5:1 like them."""
        total = n_train + n_test
        if self.num_images is None or self.num_images >= total:
            if self.num_images is not None and self.num_images > total:
                log.warning("data.num_images=%d > %d available: using all", self.num_images, total)
            return None, None
        keep_train = max(1, min(n_train, int(round(TRAIN_SHARE * self.num_images))))
        keep_test = max(1, min(n_test, self.num_images - keep_train))
        rng = np.random.default_rng(self.subset_seed)
        return (
            np.sort(rng.choice(n_train, size=keep_train, replace=False)),
            np.sort(rng.choice(n_test, size=keep_test, replace=False)),
        )
