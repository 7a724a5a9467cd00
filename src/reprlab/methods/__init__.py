"""Pretraining methods: one LightningModule per method on a shared base."""

from reprlab.methods.barlow_twins import BarlowTwins
from reprlab.methods.base import RepresentationModule
from reprlab.methods.byol import BYOL
from reprlab.methods.simclr import SimCLR
from reprlab.methods.simsiam import SimSiam
from reprlab.methods.supervised import Supervised
from reprlab.methods.vae import VAE
from reprlab.methods.vicreg import VICReg

__all__ = [
    "BYOL",
    "VAE",
    "BarlowTwins",
    "RepresentationModule",
    "SimCLR",
    "SimSiam",
    "Supervised",
    "VICReg",
]
