"""Pretraining methods: one LightningModule per method on a shared base."""

from reprlab.methods.base import RepresentationModule
from reprlab.methods.simclr import SimCLR
from reprlab.methods.supervised import Supervised
from reprlab.methods.vae import VAE

__all__ = ["VAE", "RepresentationModule", "SimCLR", "Supervised"]
