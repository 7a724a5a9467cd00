"""Sending an analysis to the run's Lightning logger.

With TensorBoard (the default logger) the ``analysis`` run gets every figure as an image, every
number as a scalar, the test features in the embedding projector (label and latent metadata,
image thumbnails as the sprite) and the hparams view, whose table lines up the runs of a sweep by
their settings and final metrics. Other loggers get the numbers and the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from reprlab.analysis.plotting import png_pixels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedding:
    """Features for the embedding projector: one metadata column per name, one thumbnail per
    row (N, C, H, W, floats in [0, 1]) or none."""

    features: torch.Tensor
    metadata: Mapping[str, Sequence[str]]
    thumbnails: torch.Tensor | None = None


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """uint8 or float images (N, C, H, W) as RGB floats in [0, 1], the projector's sprite input."""
    images = images.float()
    peak = float(images.max()) if images.numel() else 1.0
    if peak > 1.0:
        images = images / 255.0
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.clamp(0.0, 1.0).contiguous()


def log_analysis(
    logger: Logger,
    figures: Mapping[str, bytes],
    metrics: Mapping[str, float],
    hparams: Mapping[str, Any],
    embedding: Embedding | None = None,
) -> None:
    """Write figures (PNG bytes by tag), ``metrics`` (scalars; also the hparams view's metric
    columns), ``hparams`` (nested dicts are flattened with ``/``) and ``embedding``."""
    numbers = {key: float(value) for key, value in metrics.items() if np.isfinite(value)}
    if isinstance(logger, TensorBoardLogger):
        writer = logger.experiment
        for tag, png in figures.items():
            writer.add_image(tag, png_pixels(png), dataformats="HWC")
        if embedding is not None:
            _add_embedding(writer, embedding)
        # Scalars and the hparams summaries in one call, so the table shows these metrics.
        logger.log_hyperparams(dict(hparams), metrics=numbers)
    else:
        if figures or embedding is not None:
            log.info("logger %s keeps no images: figures are in the analysis folder only", logger)
        logger.log_hyperparams(dict(hparams))
        logger.log_metrics(numbers, step=0)
    logger.finalize("success")


def _add_embedding(writer: Any, embedding: Embedding) -> None:
    columns = list(embedding.metadata)
    rows = len(embedding.features)
    for name in columns:
        if len(embedding.metadata[name]) != rows:
            raise ValueError(
                f"metadata {name!r} has {len(embedding.metadata[name])} rows, not {rows}"
            )
    if len(columns) == 1:  # TensorBoard takes one column as a plain list, without a header
        metadata: list[Any] = [str(v) for v in embedding.metadata[columns[0]]]
        header = None
    else:
        metadata = [[str(embedding.metadata[name][i]) for name in columns] for i in range(rows)]
        header = columns
    writer.add_embedding(
        embedding.features,
        metadata=metadata,
        label_img=embedding.thumbnails,
        tag="test_features",
        metadata_header=header,
    )
