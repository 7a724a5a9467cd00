"""Supervised pretraining: encoder and linear classifier trained end to end on the labels."""

from __future__ import annotations

import torch

from reprlab.methods.base import RepresentationModule


class Supervised(RepresentationModule):
    # The classifier head's cross-entropy is the whole objective, so it must reach the encoder.
    detach_classifier = False

    def objective(self, images: torch.Tensor, stage: str) -> tuple[None, torch.Tensor]:
        return None, self.encoder(images)
