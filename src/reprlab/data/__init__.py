"""Datasets as LightningDataModules holding uint8 images in memory, batched by index."""

from reprlab.data.cifar10 import CIFAR10DataModule
from reprlab.data.dsprites import DSpritesDataModule

__all__ = ["CIFAR10DataModule", "DSpritesDataModule"]
