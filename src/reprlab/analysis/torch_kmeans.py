"""k-means in torch on the features' device, as scikit-learn's ``KMeans`` runs it by default:
greedy k-means++ seeding (Arthur & Vassilvitskii, 2007; ``2 + log k`` candidates per centre,
the one that lowers the potential most kept), then Lloyd iterations until the centres move by at
most ``tol`` times the features' mean per-dimension variance (squared shift, summed) or the
assignment stops changing, ``n_init`` times from different seeds, the lowest inertia kept.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# Rows per block of the (images x centres) distance matrix.
_CHUNK = 16384


@dataclass
class KMeansFit:
    centres: torch.Tensor  # (K, D)
    labels: torch.Tensor  # (N,) cluster id of every row
    inertia: float  # sum of squared distances to the assigned centre
    iterations: int  # Lloyd iterations of the kept run
    converged: bool  # every run ended before max_iter


def _squared_distances(x: torch.Tensor, x_norms: torch.Tensor, centres: torch.Tensor):
    """(N, K) squared Euclidean distances, by ||x||^2 - 2 x.c + ||c||^2 (clamped at 0)."""
    # 2 * (x @ c^T), not (2 * x) @ c^T: the latter copies x, costing more than the product.
    products = x @ centres.T
    return (x_norms[:, None] - 2 * products + centres.square().sum(1)).clamp_min_(0)


def _assign(x: torch.Tensor, x_norms: torch.Tensor, centres: torch.Tensor):
    """Nearest centre of every row and its squared distance."""
    labels, distances = [], []
    for rows, norms in zip(x.split(_CHUNK), x_norms.split(_CHUNK), strict=True):
        nearest = _squared_distances(rows, norms, centres).min(1)
        distances.append(nearest.values)
        labels.append(nearest.indices)
    return torch.cat(labels), torch.cat(distances)


def kmeans_plus_plus(
    x: torch.Tensor, x_norms: torch.Tensor, clusters: int, generator: torch.Generator
) -> torch.Tensor:
    """(K, D) greedy k-means++ starting centres."""
    n = len(x)
    trials = 2 + int(math.log(clusters))
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    centres = [x[first]]
    closest = _squared_distances(x, x_norms, centres[0]).squeeze(1)  # (N,)
    for _ in range(1, clusters):
        # Candidates drawn with probability proportional to the squared distance (uniform when
        # every point already sits on a centre).
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        to_candidates = _squared_distances(x, x_norms, x[candidates])  # (N, trials)
        potentials = torch.minimum(closest[:, None], to_candidates)  # (N, trials)
        best = int(potentials.sum(0).argmin())
        closest = potentials[:, best]
        centres.append(x[candidates[best]][None])
    return torch.cat(centres)


def _lloyd(
    x: torch.Tensor,
    x_norms: torch.Tensor,
    centres: torch.Tensor,
    max_iter: int,
    shift_tol: float,
) -> tuple[torch.Tensor, torch.Tensor, float, int, bool]:
    clusters = len(centres)
    labels = None
    iteration, converged = 0, False
    for iteration in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        new_labels, distances = _assign(x, x_norms, centres)
        counts = torch.bincount(new_labels, minlength=clusters)
        sums = torch.zeros_like(centres).index_add_(0, new_labels, x)
        new_centres = sums / counts.clamp_min(1)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            # An empty cluster takes the points farthest from their centres (scikit-learn's
            # relocation), so k clusters stay k.
            far = distances.topk(len(empty)).indices
            new_centres[empty] = x[far]
        unchanged = labels is not None and torch.equal(new_labels, labels)
        shift = float((new_centres - centres).square().sum())
        centres, labels = new_centres, new_labels
        if unchanged or shift <= shift_tol:
            converged = True
            break
    labels, distances = _assign(x, x_norms, centres)
    return centres, labels, float(distances.sum()), iteration, converged


def kmeans(
    features: torch.Tensor,
    clusters: int,
    n_init: int = 4,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
) -> KMeansFit:
    """k-means of the rows of ``features`` (N, D) into ``clusters`` groups, on their device."""
    x = torch.as_tensor(features).float()
    if x.ndim != 2:
        raise ValueError(f"features must be (images, dims), got shape {tuple(x.shape)}")
    if clusters < 2 or clusters > len(x):
        raise ValueError(f"k-means needs 2 <= clusters <= images ({len(x)}), got {clusters}")
    if n_init < 1:
        raise ValueError(f"analysis.kmeans_n_init must be >= 1, got {n_init}")
    if max_iter < 1:
        raise ValueError(f"analysis.kmeans_max_iter must be >= 1, got {max_iter}")
    x_norms = x.square().sum(1)
    # scikit-learn's tolerance is relative to the data's spread, the mean per-dimension variance:
    # (mean ||x||^2 - ||mean x||^2) / D, from the norms at hand (x.var(0) is a slow pass).
    spread = x_norms.double().mean() - x.mean(0).double().square().sum()
    shift_tol = tol * float(spread.clamp_min(0)) / x.shape[1]
    generator = torch.Generator(device=x.device).manual_seed(seed)
    best: KMeansFit | None = None
    all_converged = True
    for _ in range(n_init):
        start = kmeans_plus_plus(x, x_norms, clusters, generator)
        centres, labels, inertia, iterations, converged = _lloyd(
            x, x_norms, start, max_iter, shift_tol
        )
        all_converged &= converged
        if best is None or inertia < best.inertia:
            best = KMeansFit(centres, labels, inertia, iterations, converged)
    assert best is not None
    best.converged = all_converged
    if not all_converged:
        log.warning(
            "k-means: a run reached kmeans_max_iter=%d before converging; raise it", max_iter
        )
    return best
