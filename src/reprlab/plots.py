"""Figures written into run and report folders (PNG, written atomically, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in tests

from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter  # noqa: E402

from reprlab.io import atomic_write  # noqa: E402

# (fraction of the training labels, mean accuracy, standard deviation over seeds)
CurvePoint = tuple[float, float, float]


def save_figure(figure: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def plot_label_fractions(
    curves: Mapping[str, Sequence[CurvePoint]],
    path: Path,
    chance: float | None = None,
    title: str | None = None,
    styles: Mapping[str, str] | None = None,
) -> Path:
    """Accuracy (%) against the fraction of labels used, log x axis, one line per curve."""
    styles = styles or {}
    figure, axes = plt.subplots(figsize=(7, 4.5))
    ticks: set[float] = set()
    for label, points in curves.items():
        points = sorted(points)
        fractions = [p[0] for p in points]
        ticks.update(fractions)
        axes.errorbar(
            fractions,
            [100 * p[1] for p in points],
            yerr=[100 * p[2] for p in points] if any(p[2] for p in points) else None,
            fmt=styles.get(label, "-") + "o",
            capsize=3,
            label=label,
        )
    if chance is not None:
        axes.axhline(100 * chance, color="gray", linestyle=":", label="chance")
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.set_xlabel("fraction of training labels used (log scale)")
    axes.set_ylabel("accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title)
    return save_figure(figure, path)


def plot_group_accuracies(
    bars: Mapping[str, Mapping[str, Mapping[str, float]]],
    groups: Sequence[str],
    path: Path,
    chance: float | None = None,
) -> Path:
    """One panel per model: accuracy (%) per test group, one bar per condition.

    ``bars[model][condition][group]`` is an accuracy in [0, 1].
    """
    figure, panels = plt.subplots(
        len(bars), 1, figsize=(max(6.0, 1.1 * len(groups)), 2.6 * len(bars)), squeeze=False
    )
    for axes, (model, conditions) in zip(panels[:, 0], bars.items(), strict=True):
        width = 0.8 / max(1, len(conditions))
        for i, (condition, accuracies) in enumerate(conditions.items()):
            axes.bar(
                [g + i * width for g in range(len(groups))],
                [100 * accuracies.get(group, float("nan")) for group in groups],
                width=width,
                label=condition,
            )
        if chance is not None:
            axes.axhline(100 * chance, color="gray", linestyle=":")
        axes.set_xticks(
            [g + 0.4 - width / 2 for g in range(len(groups))],
            [group.replace(" ", "\n") for group in groups],
            fontsize="small",
        )
        axes.set_ylim(0, 105)
        axes.set_ylabel("test acc. (%)")
        axes.set_title(model, fontsize="medium")
        axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return save_figure(figure, path)
