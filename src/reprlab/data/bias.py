"""Biased training sets for dSprites: which training images a bias keeps.

Every bias is a function of the latent values returning a boolean keep-mask. It filters the
training split only; validation and test stay unbiased, so a model that learned the shortcut is
caught. Biases read ``latents_values``, never class indices: files cut to a coarser grid number
their classes in their own grid, and the same bias must keep the same images on every file.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from reprlab.data import render

SQUARE, ELLIPSE, HEART = 1.0, 2.0, 3.0  # shape latent values (classes 0, 1, 2)
SHAPE, POS_X = render.LATENT_NAMES.index("shape"), render.LATENT_NAMES.index("posX")

# shape_posX cuts DeepMind's 32 posX values into consecutive groups of 11, 11 and 10: at the
# midpoints between values 10 and 11 and between 21 and 22 (0.339 and 0.694), so that values
# a last bit off the grid, or a coarser grid's, fall on the same side as on the full file.
_POS_X_GRID = render.LATENT_GRIDS[POS_X]
SHAPE_POS_X_CUTS = (
    float(_POS_X_GRID[10] + _POS_X_GRID[11]) / 2,
    float(_POS_X_GRID[21] + _POS_X_GRID[22]) / 2,
)

KeepMask = Callable[[np.ndarray], np.ndarray]


def _keep_all(values: np.ndarray) -> np.ndarray:
    return np.ones(len(values), dtype=bool)


def _shape_posx_spaced(values: np.ndarray) -> np.ndarray:
    # The tutorial's bias study: each shape only in its own band of posX, with gaps between bands.
    # Half-open bands, so posX = 1.0 is dropped too.
    shape, pos_x = values[:, SHAPE], values[:, POS_X]
    return (
        ((shape == SQUARE) & (pos_x >= 0.0) & (pos_x < 0.3))
        | ((shape == ELLIPSE) & (pos_x >= 0.35) & (pos_x < 0.65))
        | ((shape == HEART) & (pos_x >= 0.7) & (pos_x < 1.0))
    )


def _shape_posx(values: np.ndarray) -> np.ndarray:
    # Squares only in the left group of posX values, ellipses in the middle, hearts on the right.
    shape, pos_x = values[:, SHAPE], values[:, POS_X]
    low, high = SHAPE_POS_X_CUTS
    return (
        ((shape == SQUARE) & (pos_x < low))
        | ((shape == ELLIPSE) & (pos_x >= low) & (pos_x < high))
        | ((shape == HEART) & (pos_x >= high))
    )


def _heart_left(values: np.ndarray) -> np.ndarray:
    return ~((values[:, SHAPE] == HEART) & (values[:, POS_X] > 0.5))


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
    values: np.ndarray,
    bias: str,
    control: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """The training indices a bias keeps, or for ``control`` as many chosen at random.

    ``values`` are the (N, 5) latent values of the whole dataset; ``indices`` the training split.
    """
    keep = BIASES[check_bias(bias)](values[indices])
    if not control:
        return indices[keep]
    # Same size as the biased set, drawn uniformly: removes as many images without the correlation.
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(indices), size=int(keep.sum()), replace=False)
    return indices[np.sort(chosen)]
