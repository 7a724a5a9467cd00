"""Label subsets shared by the datamodules: which training labels a probe may use."""

from __future__ import annotations

import math

import numpy as np
import torch


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> torch.Tensor:
    """Sorted positions of a seeded ``fraction`` of ``labels``, drawn class by class.

    Every class keeps ``round(fraction * its count)`` members (at least one), so a small fraction
    still has every class and the class balance of the full set.
    """
    if fraction == 1.0:
        return torch.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, math.floor(fraction * len(members) + 0.5))
        chosen.append(rng.choice(members, size=count, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(chosen)))
