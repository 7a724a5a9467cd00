"""The names of everything a run measures: one contract between the methods and the probe
(which log them), the run stages (which collect them into metrics.json), the analyses and
``reprlab-report`` (which read them back).

A key is ``[<prefix>]<stage>/<name>``:

- ``<stage>`` is the split the value was measured on: ``train``, ``val`` or ``test``;
- no prefix: the linear probe on the frozen encoder (``test/acc``), the run's headline;
- ``pretrain/``: the pretraining module itself (its loss, its online probe or classifier head);
- ``frac_<f>/``: the probe trained on a share ``f`` of the labels (a label-fraction sweep);
- ``analysis/<name>``: the analyses of the frozen features (no stage: they use train and test).

Accuracy within a group of test images (dSprites: per shape, per third of the posX range, per
shape in each third) is ``<metric>_<group>``: ``test/acc_shape_square``,
``pretrain/test/acc_shape_heart_posX_third_3``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STAGES = ("train", "val", "test")
PRETRAIN = "pretrain/"
ANALYSIS = "analysis/"
FRACTION = "frac_"

# What metrics.json keeps of each probe in a label-fraction sweep.
FRACTION_KEYS = ("test/acc", "test/loss", "train/acc", "val/acc", "num_labelled", "probe_epochs")

# dSprites' groups of test images.
SHAPES = ("square", "ellipse", "heart")
POSX_THIRDS = (1, 2, 3)  # 1 = left (posX < 1/3), 2 = middle, 3 = right
THIRD_NAMES = {1: "left", 2: "middle", 3: "right"}


def fraction_prefix(fraction: float) -> str:
    """``frac_0.1/``: the prefix of the probe trained on ``fraction`` of the labels."""
    return f"{FRACTION}{fraction:g}/"


def split_fraction_key(key: str) -> tuple[float, str] | None:
    """``frac_0.1/test/acc`` -> (0.1, ``test/acc``); None for any other key."""
    if not key.startswith(FRACTION) or "/" not in key:
        return None
    head, rest = key.split("/", 1)
    try:
        return float(head.removeprefix(FRACTION)), rest
    except ValueError:
        return None


def shape_group(shape: str) -> str:
    return f"shape_{shape}"


def third_group(third: int) -> str:
    return f"posX_third_{third}"


def shape_third_group(shape: str, third: int) -> str:
    return f"{shape_group(shape)}_{third_group(third)}"


def group_key(metric: str, group: str) -> str:
    """The accuracy within ``group`` beside ``metric``: test/acc -> test/acc_shape_square."""
    return f"{metric}_{group}"


def scalar_metrics(logged: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Lightning's logged values as floats under ``prefix``, without the per-step copies."""
    return {prefix + key: float(value) for key, value in logged.items() if "_step" not in key}


def fitted_metrics(logged: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """What metrics.json keeps of a fit: the last validation values and the training accuracy
    (the training loss of the last epoch says little next to them)."""
    return {
        key: value
        for key, value in scalar_metrics(logged, prefix).items()
        if key.startswith((f"{prefix}val/", f"{prefix}train/acc"))
    }


# Config keys that describe how a run was executed rather than what was measured: the report
# leaves them out of its comparison of settings.
REPORT_IGNORED_PREFIXES = (
    "hydra.",
    "trainer.",
    "logger.",
    "callbacks.",
    "method.augment.",
    "encoder.weights_record.",  # the file's sha256 and match counts: encoder.weights names it
)
REPORT_IGNORED_KEYS = frozenset(
    {
        "ckpt_path",
        "channels_last",
        "compile",
        "optimized_metric",
        "feature_batch_size",
        "pretrain_epochs",  # follows method.epochs and data.label_fraction
        "data._target_",
        "data.path",
        "data.cache_dir",
        "data.download",
        "data.num_workers",
        "probe.cache_features",
        "tutorial_checkpoints",  # the folder; encoder.weights names the file
        # Folded into the synthetic `label_fraction` condition:
        "data.label_fraction",
        "probe.label_fraction",
        "probe.label_fractions",
    }
)
