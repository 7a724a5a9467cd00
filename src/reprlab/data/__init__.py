"""Datasets as LightningDataModules holding uint8 images in memory, batched by index."""

from reprlab.data.cifar10 import CIFAR10DataModule
from reprlab.data.dsprites import DSpritesDataModule
from reprlab.data.images import (
    ArrayFileDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    TorchvisionDataModule,
)

__all__ = [
    "ArrayFileDataModule",
    "CIFAR10DataModule",
    "DSpritesDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "TorchvisionDataModule",
]
