"""CIFAR-10: a preset of the natural-image data module (torchvision's ``CIFAR10`` reads it).

The files are the pickled batches of the official ``cifar-10-python.tar.gz`` unpacked under
``<root>/cifar-10-batches-py/`` (what ``torchvision.datasets.CIFAR10(root, download=True)``
leaves there): ``data_batch_1`` .. ``data_batch_5`` (50,000 training images), ``test_batch``
(10,000 test images) and ``batches.meta`` (the class names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reprlab.data import torchvision_datasets
from reprlab.data.images import TorchvisionDataModule

CIFAR10_URL = torchvision_datasets.SPECS["CIFAR10"].url
CIFAR10_FOLDER = torchvision_datasets.SPECS["CIFAR10"].folder
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
# Per-channel mean and standard deviation of the 50,000 training images, pixels scaled to [0, 1]
# (the values the CIFAR literature normalises with, so runs stay comparable with it).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def missing_files(root: str | Path) -> list[str]:
    return torchvision_datasets.missing_files("CIFAR10", root)


def load_cifar10(
    root: str | Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Training images and labels, test images and labels, and the class names under ``root``."""
    data = torchvision_datasets.read("CIFAR10", root)
    assert data.test_images is not None and data.test_labels is not None
    return (
        data.train_images,
        data.train_labels,
        data.test_images,
        data.test_labels,
        data.class_names,
    )


def download_cifar10(root: str | Path) -> None:
    """Fetch and unpack the official archive into ``root`` unless its files are all there."""
    torchvision_datasets.download("CIFAR10", root)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 (32x32 colour images, 10 classes): :class:`TorchvisionDataModule` with
    ``dataset="CIFAR10"``, normalised by the published per-channel statistics.

    The official training images come first in ``images``, the official test images after them;
    ``val_fraction`` of the training images (seeded by ``split_seed``) are held out for
    validation. ``on_device=True`` keeps the whole uint8 dataset (184 MB) on the training device.
    """

    def __init__(
        self, root: str = "~/.cache/reprlab", download: bool = False, **options: Any
    ) -> None:
        super().__init__(dataset="CIFAR10", root=root, download=download, **options)

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.channels == 1:  # converted to grey: the training split's own statistics
            return super().normalization
        return CIFAR10_MEAN, CIFAR10_STD
