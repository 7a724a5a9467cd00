"""Datasets as LightningDataModules holding uint8 images in memory, batched by index."""

from reprlab.data.dsprites import DSpritesDataModule

__all__ = ["DSpritesDataModule"]
