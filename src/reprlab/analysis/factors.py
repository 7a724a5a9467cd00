"""The per-image variables an analysis sorts and colours by: the label, and on dSprites each of
its five latents (shape, scale, orientation, posX, posY)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from reprlab.data import render

LABEL = "label"


@dataclass(frozen=True)
class Factor:
    """One value per image, names for the values when they are class indices, and whether the
    values wrap around (an angle)."""

    name: str
    values: np.ndarray
    value_names: Sequence[str] | None = None
    cyclic: bool = False

    def subset(self, positions: np.ndarray) -> Factor:
        return Factor(self.name, self.values[positions], self.value_names, self.cyclic)


def latent_names(datamodule: L.LightningDataModule) -> tuple[str, ...]:
    """Names of the latents the datamodule knows for every image (none for plain labelled data).

    A datamodule lists them in ``latent_names``; one with dSprites' ``latents_classes`` table and
    no list has dSprites' five.
    """
    names = getattr(datamodule, "latent_names", None)
    if names is not None:
        return tuple(names)
    return render.LATENT_NAMES if hasattr(datamodule, "latents_classes") else ()


def available_factors(datamodule: L.LightningDataModule) -> tuple[str, ...]:
    return (*latent_names(datamodule), LABEL)


def image_factors(datamodule: L.LightningDataModule, index: torch.Tensor) -> dict[str, Factor]:
    """The label and every latent of the images ``index``, keyed by name (latents first)."""
    factors: dict[str, Factor] = {}
    names = latent_names(datamodule)
    if names:
        classes = datamodule.latents_classes[index].numpy()
        values = getattr(datamodule, "latents_values", None)
        values = values[index].numpy() if values is not None else None
        for column, name in enumerate(names):
            if name == "shape" and names == render.LATENT_NAMES:
                factors[name] = Factor(name, classes[:, column], render.SHAPE_NAMES)
            elif values is not None:  # real values (scale 0.5-1, ...) read better than indices
                factors[name] = Factor(name, values[:, column], cyclic=name == "orientation")
            else:
                factors[name] = Factor(name, classes[:, column])
    class_names = getattr(datamodule, "class_names", None)
    factors[LABEL] = Factor(
        LABEL, datamodule.targets[index].numpy(), list(class_names) if class_names else None
    )
    return factors


def check_factor_names(
    requested: Sequence[str] | None, available: Sequence[str], key: str
) -> list[str]:
    """``requested`` (all latents, or the label without latents, when None), checked."""
    if requested is None:
        latents = [name for name in available if name != LABEL]
        return latents or [LABEL]
    requested = [str(name) for name in requested]
    if not requested:
        raise ValueError(f"{key} is empty; give some of {', '.join(available)} or null (all)")
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(
            f"unknown {key} {', '.join(map(repr, unknown))}; accepted: {', '.join(available)}"
        )
    return requested
