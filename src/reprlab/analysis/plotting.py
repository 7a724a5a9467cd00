"""Figures drawn off-screen with matplotlib's Agg canvas, and their PNG bytes.

Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas rather than through
``pyplot``: no display is needed, no global backend is switched (so importing this in a notebook
leaves its backend alone), and nothing accumulates in pyplot's figure registry.
"""

from __future__ import annotations

import io
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

from reprlab.io import atomic_write

# Categorical colours for up to this many distinct values; more get a continuous colour map.
MAX_CATEGORIES = 10


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def png_pixels(png: bytes) -> np.ndarray:
    """Decoded RGB pixels (H, W, 3), uint8: what TensorBoard's image summaries take."""
    rgba = imread(io.BytesIO(png), format="png")  # floats in [0, 1]
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def write_png(path: str | os.PathLike, png: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(png))


def grid_shape(panels: int, max_columns: int = 3) -> tuple[int, int]:
    """(rows, columns) for ``panels`` subplots, at most ``max_columns`` wide."""
    if panels < 1:
        raise ValueError(f"a figure needs at least one panel, got {panels}")
    columns = min(panels, max_columns)
    return -(-panels // columns), columns


def is_categorical(values: np.ndarray) -> bool:
    """Few enough distinct values to tell apart by colour (else a continuous colour map)."""
    return len(np.unique(values)) <= MAX_CATEGORIES
