"""2-D views of a feature space: PCA (linear, all points) and t-SNE (non-linear, a subsample),
drawn as scatter plots coloured by the label and by each latent."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from reprlab.analysis.factors import Factor
from reprlab.analysis.plotting import grid_shape, is_categorical, new_figure

# t-SNE's neighbour search is slow in many dimensions and its result barely changes when the
# features are first reduced to their leading principal components (the usual practice).
TSNE_PCA_DIMS = 50
# Above this many dimensions torch's PCA is a randomised SVD rather than an exact eigensolve.
EXACT_PCA_DIMS = 2048


def _as_numpy(features: torch.Tensor | np.ndarray) -> np.ndarray:
    array = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"features must be (items, dims), got shape {array.shape}")
    return array.astype(np.float32, copy=False)


BACKENDS = ("torch", "sklearn")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"analysis.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def pca_torch(
    features: torch.Tensor, components: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, components) coordinates on the leading principal components and the fraction of the
    variance each explains, on the features' device.

    Up to ``EXACT_PCA_DIMS`` dimensions, the eigenvectors of the (D, D) scatter matrix (exact,
    and cheaper than an SVD of the (N, D) matrix when N > D); above, a randomised SVD of the
    centred features (``torch.svd_lowrank``, Halko et al. 2011) with 20 extra directions and 8
    power iterations, which finds the leading components of a decaying spectrum to float
    precision at a fraction of the cost. Each component's sign is fixed as scikit-learn's
    ``svd_flip`` fixes it (largest loading positive), so both backends draw the same picture.
    """
    x = torch.as_tensor(features).float()
    if x.ndim != 2:
        raise ValueError(f"features must be (items, dims), got shape {tuple(x.shape)}")
    centred = x - x.mean(0)
    if components > min(centred.shape):
        raise ValueError(f"PCA to {components} components needs at least that many rows and dims")
    total_variance = centred.double().square().sum()
    if centred.shape[1] <= EXACT_PCA_DIMS:
        eigenvalues, eigenvectors = torch.linalg.eigh((centred.T @ centred).double())
        order = eigenvalues.flip(0)[:components]
        axes = eigenvectors.flip(1)[:, :components].to(x.dtype)
        singular = order.clamp_min(0).sqrt()
    else:
        # svd_lowrank draws its random test matrix from the global generator.
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            _, singular, axes = torch.svd_lowrank(centred, q=components + 20, niter=8)
        axes = axes[:, :components]
        singular = singular.double()
    singular = singular[:components]
    largest = axes.abs().argmax(0)
    signs = axes[largest, torch.arange(components, device=x.device)].sign()
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    explained = (singular.square() / total_variance.clamp_min(1e-300)).to(x.dtype)
    return centred @ axes, explained


def pca_2d(
    features: torch.Tensor | np.ndarray, backend: str = "torch", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) coordinates on the first two principal components, and the fraction of the
    variance each explains; ``backend`` torch (:func:`pca_torch`, on the features' device) or
    sklearn (a full SVD)."""
    check_backend(backend)
    if backend == "torch":
        points, explained = pca_torch(torch.as_tensor(features), 2, seed)
        return points.cpu().numpy(), explained.cpu().numpy()
    pca = PCA(n_components=2, svd_solver="full")
    points = pca.fit_transform(_as_numpy(features))
    return points, pca.explained_variance_ratio_


def tsne_2d(
    features: torch.Tensor | np.ndarray,
    seed: int = 0,
    perplexity: float = 30.0,
    iterations: int = 500,
    backend: str = "torch",
) -> np.ndarray:
    """(N, 2) t-SNE coordinates (PCA initialisation; features first reduced to 50 principal
    components when they have more). The first 250 of ``iterations`` exaggerate the clusters;
    500 in all gives the layout at half the cost of scikit-learn's default 1000. ``backend``
    chooses who reduces to 50 dimensions (torch on the features' device, or scikit-learn); the
    t-SNE itself is scikit-learn's."""
    check_backend(backend)
    if backend == "torch" and isinstance(features, torch.Tensor):
        features = features.float()
        if features.ndim == 2 and min(features.shape) > TSNE_PCA_DIMS:
            features = pca_torch(features, TSNE_PCA_DIMS, seed)[0]
        features = features.cpu()
    array = _as_numpy(features)
    if len(array) < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {len(array)}")
    # sklearn requires perplexity < number of points.
    perplexity = min(float(perplexity), (len(array) - 1) / 3)
    if array.shape[1] > TSNE_PCA_DIMS and len(array) > TSNE_PCA_DIMS:
        array = PCA(n_components=TSNE_PCA_DIMS, random_state=seed).fit_transform(array)
    if iterations < 250:
        raise ValueError(f"t-SNE needs at least 250 iterations, got {iterations}")
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        max_iter=iterations,
        random_state=seed,
    )
    return tsne.fit_transform(array)


def plot_embedding(
    points: np.ndarray,
    colourings: Sequence[Factor],
    title: str,
    max_columns: int = 3,
    panel_size: float = 3.6,
) -> Figure:
    """One scatter panel of the same 2-D ``points`` per colouring."""
    if not colourings:
        raise ValueError("plot_embedding needs at least one colouring")
    rows, columns = grid_shape(len(colourings), max_columns)
    figure = new_figure(panel_size * columns + 0.6, panel_size * rows + 0.4)
    figure.suptitle(title)
    axes = figure.subplots(rows, columns, squeeze=False)
    marker_size = max(1.0, min(12.0, 6000 / max(len(points), 1)))
    for ax, colouring in zip(axes.flat, colourings, strict=False):
        values = np.asarray(colouring.values)
        if len(values) != len(points):
            raise ValueError(
                f"colouring {colouring.name!r} has {len(values)} values for {len(points)} points"
            )
        if is_categorical(values):
            _categorical_scatter(ax, points, values, colouring, marker_size)
        else:
            scatter = ax.scatter(
                points[:, 0],
                points[:, 1],
                c=values,
                s=marker_size,
                cmap="twilight" if colouring.cyclic else "viridis",
                linewidths=0,
            )
            figure.colorbar(scatter, ax=ax, shrink=0.8)
        ax.set_title(colouring.name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(colourings) :]:
        ax.set_visible(False)
    return figure


def _categorical_scatter(ax, points, values, colouring: Factor, marker_size: float) -> None:
    categories = np.unique(values)
    colours = matplotlib.colormaps["tab10"]
    for i, category in enumerate(categories):
        chosen = values == category
        names = colouring.value_names
        label = (
            names[int(category)]
            if names is not None and 0 <= int(category) < len(names)
            else str(category)
        )
        ax.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=marker_size,
            color=colours(i),
            label=label,
            linewidths=0,
        )
    # Many classes: beside the panel, where no point hides under the legend.
    beside = {"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)}
    placement = beside if len(categories) > 4 else {"loc": "best"}
    ax.legend(fontsize=7, markerscale=2.0, frameon=False, **placement)
