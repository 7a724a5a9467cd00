"""Biased training sets for dSprites: which training images a bias keeps.

Every bias is a function of the latents returning a boolean keep-mask. It filters the training
split only; validation and test stay unbiased, so a model that learned the shortcut is caught.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SQUARE, ELLIPSE, HEART = 0, 1, 2  # shape class indices (latent values 1, 2, 3)

KeepMask = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _keep_all(classes: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.ones(len(classes), dtype=bool)


def _shape_posx_spaced(classes: np.ndarray, values: np.ndarray) -> np.ndarray:
    # The tutorial's bias study: each shape only in its own band of posX, with gaps between bands.
    # Half-open bands, so posX = 1.0 is dropped too.
    shape, pos_x = classes[:, 0], values[:, 3]
    return (
        ((shape == SQUARE) & (pos_x >= 0.0) & (pos_x < 0.3))
        | ((shape == ELLIPSE) & (pos_x >= 0.35) & (pos_x < 0.65))
        | ((shape == HEART) & (pos_x >= 0.7) & (pos_x < 1.0))
    )


def _shape_posx(classes: np.ndarray, values: np.ndarray) -> np.ndarray:
    # The 32 posX classes cut into consecutive groups of 11, 11 and 10, one per shape.
    shape, pos_x_class = classes[:, 0], classes[:, 3]
    return (
        ((shape == SQUARE) & (pos_x_class < 11))
        | ((shape == ELLIPSE) & (pos_x_class >= 11) & (pos_x_class < 22))
        | ((shape == HEART) & (pos_x_class >= 22))
    )


def _heart_left(classes: np.ndarray, values: np.ndarray) -> np.ndarray:
    return ~((classes[:, 0] == HEART) & (values[:, 3] > 0.5))


BIASES: dict[str, KeepMask] = {
    "none": _keep_all,
    "shape_posX": _shape_posx,
    "shape_posX_spaced": _shape_posx_spaced,
    "heart_left": _heart_left,
}


def check_bias(name: str) -> str:
    if name not in BIASES:
        raise ValueError(f"unknown bias {name!r}; accepted: {', '.join(BIASES)}")
    return name


def biased_subset(
    indices: np.ndarray,
    classes: np.ndarray,
    values: np.ndarray,
    bias: str,
    control: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """The training indices a bias keeps, or for ``control`` as many chosen at random.

    ``classes`` and ``values`` are the latents of the whole dataset; ``indices`` the training split.
    """
    keep = BIASES[check_bias(bias)](classes[indices], values[indices])
    if not control:
        return indices[keep]
    # Same size as the biased set, drawn uniformly: removes as many images without the correlation.
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(indices), size=int(keep.sum()), replace=False)
    return indices[np.sort(chosen)]
