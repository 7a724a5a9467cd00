"""Representational similarity matrices (RSMs): the cosine similarity of every pair of images'
features, with rows and columns sorted by a latent so that structure in the representation shows
up as blocks.

A saved RSM (:func:`save_rsm`) holds the matrix and the latent values of its rows, so runs can be
compared side by side (:func:`plot_rsm_grid`) without their models.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from reprlab.analysis.plotting import grid_shape, new_figure
from reprlab.io import atomic_write

# Group boundaries are drawn as lines up to this many groups; beyond, they would hide the matrix.
MAX_BOUNDARY_LINES = 12


def cosine_rsm(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, N) float32 matrix of cosine similarities between the rows of ``features`` (N, D).

    A row of zeros has no direction: its similarities are NaN (and plot as blanks).
    """
    features = torch.as_tensor(features).float()
    if features.ndim != 2:
        raise ValueError(f"features must be (items, dims), got shape {tuple(features.shape)}")
    norms = features.norm(dim=1)
    unit = F.normalize(features, dim=1)
    rsm = (unit @ unit.T).clamp_(-1.0, 1.0)
    zero = norms == 0
    rsm[zero, :] = float("nan")
    rsm[:, zero] = float("nan")
    return rsm.numpy()


def sort_order(values: np.ndarray) -> np.ndarray:
    """The stable order that sorts ``values``: items with equal values keep their order."""
    return np.argsort(np.asarray(values), kind="stable")


def sort_rsm(rsm: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rsm`` with rows and columns sorted by ``values``, and the sorted values."""
    values = np.asarray(values)
    if rsm.ndim != 2 or rsm.shape[0] != rsm.shape[1] or len(values) != len(rsm):
        raise ValueError(
            f"an RSM must be square with one sort value per row: got {rsm.shape} and "
            f"{len(values)} values"
        )
    order = sort_order(values)
    return rsm[np.ix_(order, order)], values[order]


def group_boundaries(sorted_values: np.ndarray) -> np.ndarray:
    """Positions where a sorted sequence of values changes (the first row of each new group)."""
    sorted_values = np.asarray(sorted_values)
    return np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1


def within_between_similarity(rsm: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Mean similarity of pairs with equal ``values`` and of pairs with different ones (the
    diagonal excluded). A representation organised by this latent has within >> between."""
    values = np.asarray(values)
    same = values[:, None] == values[None, :]
    off_diagonal = ~np.eye(len(values), dtype=bool)
    within = rsm[same & off_diagonal]
    between = rsm[~same]
    return (
        float(np.nanmean(within)) if within.size else float("nan"),
        float(np.nanmean(between)) if between.size else float("nan"),
    )


RSMEntry = tuple[str, np.ndarray, np.ndarray] | tuple[str, np.ndarray, np.ndarray, Sequence[str]]


def plot_rsm_grid(
    entries: Sequence[RSMEntry],
    sort_name: str | None = None,
    max_columns: int = 3,
    panel_size: float = 4.0,
) -> Figure:
    """Several RSMs side by side on one colour scale.

    ``entries`` are (title, rsm, sort values) or (title, rsm, sort values, value names), the
    names labelling integer class values (e.g. shape 0, 1, 2 as square, ellipse, heart). Each RSM
    is sorted by its values (a no-op when it already is), and the boundaries between groups of
    equal values are marked: lines for up to 12 groups, ticks for more.
    """
    if not entries:
        raise ValueError("plot_rsm_grid needs at least one (title, rsm, sort values) entry")
    panels = []
    for entry in entries:
        if len(entry) not in (3, 4):
            raise ValueError(
                "plot_rsm_grid entries are (title, rsm, sort values[, value names]), "
                f"got {len(entry)} items"
            )
        title, rsm, values = entry[:3]
        names = entry[3] if len(entry) == 4 else None
        panels.append((title, *sort_rsm(np.asarray(rsm, dtype=np.float32), values), names))
    low, high = _colour_range([rsm for _, rsm, _, _ in panels])
    rows, columns = grid_shape(len(panels), max_columns)
    figure = new_figure(panel_size * columns + 0.8, panel_size * rows)
    axes = figure.subplots(rows, columns, squeeze=False)
    image = None
    for ax, (title, rsm, values, names) in zip(axes.flat, panels, strict=False):
        image = ax.imshow(rsm, vmin=low, vmax=high, cmap="viridis", interpolation="antialiased")
        ax.set_title(title, fontsize=10)
        _mark_groups(ax, values, names)
        if sort_name:
            ax.set_xlabel(f"images sorted by {sort_name}", fontsize=8)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    figure.colorbar(image, ax=axes, shrink=0.8, label="cosine similarity", extend="both")
    return figure


def _colour_range(rsms: Sequence[np.ndarray]) -> tuple[float, float]:
    """One colour scale for all panels: the 0.5th to 99.5th percentile of the similarities of
    distinct pairs. The diagonal's 1s and a few near-duplicate pairs would otherwise stretch the
    scale and flatten the structure."""
    values = np.concatenate([_off_diagonal(rsm) for rsm in rsms])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return -1.0, 1.0
    low, high = np.percentile(values, [0.5, 99.5])
    return (float(low), float(high)) if high > low else (float(low) - 1e-3, float(high) + 1e-3)


def _off_diagonal(rsm: np.ndarray) -> np.ndarray:
    """The similarities of distinct pairs (upper triangle, each pair once)."""
    return rsm[np.triu_indices(len(rsm), k=1)]


def _mark_groups(ax, sorted_values: np.ndarray, names: Sequence[str] | None) -> None:
    starts = np.concatenate([[0], group_boundaries(sorted_values)])
    ends = np.concatenate([starts[1:], [len(sorted_values)]])

    def label(position: int) -> str:
        value = sorted_values[position]
        if names is not None and float(value).is_integer() and 0 <= int(value) < len(names):
            return str(names[int(value)])
        return f"{value:.3g}" if isinstance(value, float | np.floating) else str(value)

    if len(starts) <= MAX_BOUNDARY_LINES:
        for position in starts[1:] - 0.5:
            ax.axhline(position, color="white", linewidth=0.8)
            ax.axvline(position, color="white", linewidth=0.8)
        centres = (starts + ends - 1) / 2
        labels = [label(s) for s in starts]
        ax.set_xticks(centres, labels, fontsize=7, rotation=90 if len(starts) > 4 else 0)
        ax.set_yticks(centres, labels, fontsize=7)
    else:  # tick the start of every few groups
        chosen = starts[:: -(-len(starts) // 8)]
        labels = [label(s) for s in chosen]
        ax.set_xticks(chosen - 0.5, labels, fontsize=7, rotation=90)
        ax.set_yticks(chosen - 0.5, labels, fontsize=7)


def plot_rsm_histogram(entries: Sequence[tuple[str, np.ndarray]], bins: int = 100) -> Figure:
    """Histograms of the off-diagonal similarities of one or more RSMs, overlaid."""
    if not entries:
        raise ValueError("plot_rsm_histogram needs at least one (label, rsm) entry")
    figure = new_figure(6.0, 4.0)
    ax = figure.subplots()
    values = [_off_diagonal(rsm) for _, rsm in entries]
    values = [v[np.isfinite(v)] for v in values]
    low = min((float(v.min()) for v in values if v.size), default=-1.0)
    high = max((float(v.max()) for v in values if v.size), default=1.0)
    edges = np.linspace(low, high, bins + 1)
    for (label, _), data in zip(entries, values, strict=True):
        ax.hist(data, bins=edges, density=True, alpha=0.5, label=label)
    ax.set_xlabel("cosine similarity (pairs of distinct images)")
    ax.set_ylabel("density")
    ax.set_title("RSM values")
    if len(entries) > 1:
        ax.legend(fontsize=8)
    return figure


def save_rsm(
    path: str | os.PathLike,
    rsm: np.ndarray,
    values: Mapping[str, np.ndarray],
    sort_by: Sequence[str] | None = None,
    value_names: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write ``rsm`` (float16) and each row's ``values`` (one array per latent) to an ``.npz``.

    Rows are stored sorted by the first name in ``sort_by`` (default: the first key of
    ``values``), so the stored ``rsm`` is ready to plot; :func:`load_rsm` re-sorts by any other.
    Keys: ``rsm``, ``sort_by``, ``values_<name>`` and, for class values, ``names_<name>``.
    """
    names = list(sort_by) if sort_by else list(values)
    unknown = [name for name in names if name not in values]
    if unknown:
        raise ValueError(f"sort_by {unknown} not among the saved values {sorted(values)}")
    for name, column in values.items():
        if len(column) != len(rsm):
            raise ValueError(f"values[{name!r}] has {len(column)} entries for {len(rsm)} rows")
    order = sort_order(values[names[0]]) if names else np.arange(len(rsm))
    arrays = {
        "rsm": rsm[np.ix_(order, order)].astype(np.float16),
        "sort_by": np.array(names),
        **{f"values_{name}": np.asarray(column)[order] for name, column in values.items()},
        **{f"names_{name}": np.array(list(names)) for name, names in (value_names or {}).items()},
    }

    def write(handle) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        handle.write(buffer.getvalue())

    return atomic_write(path, write)


def load_rsm(
    path: str | os.PathLike, sort_by: str | None = None
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """(RSM sorted by ``sort_by``, its sorted values, names of the values or None) from a file
    written by :func:`save_rsm`; ``sort_by=None`` keeps the order it was saved in. Ready for
    :func:`plot_rsm_grid`: ``plot_rsm_grid([(title, *load_rsm(path, "shape")), ...])``."""
    with np.load(path) as saved:
        names = [str(name) for name in saved["sort_by"]]
        available = [key[len("values_") :] for key in saved.files if key.startswith("values_")]
        name = sort_by if sort_by is not None else (names[0] if names else None)
        if name is None or f"values_{name}" not in saved.files:
            raise ValueError(f"{path}: no values for sort_by={name!r}; saved: {available}")
        rsm, values = sort_rsm(saved["rsm"].astype(np.float32), saved[f"values_{name}"])
        value_names = (
            [str(n) for n in saved[f"names_{name}"]] if f"names_{name}" in saved.files else None
        )
        return rsm, values, value_names
