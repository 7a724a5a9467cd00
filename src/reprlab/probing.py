"""The linear-probe stage: a linear classifier fitted on a frozen encoder's features and tested,
at ``probe.label_fraction`` and, for a few-label curve, at each of ``probe.label_fractions``.

The probe's schedule: Adam with a cosine over ``probe.epochs`` (``probe.cosine_epochs``), and
ceil(epochs / sqrt(f)) epochs when it sees a share f of the training labels, as the tutorial
trains with few labels (:func:`reprlab.run_settings.labelled_epochs`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from reprlab.data.dsprites import batch_loader
from reprlab.features import SplitFeatures, labelled_positions
from reprlab.metric_keys import FRACTION_KEYS, fitted_metrics, fraction_prefix, scalar_metrics
from reprlab.probe import LinearProbe, group_accuracies, predict
from reprlab.run_settings import labelled_epochs

# (stage name, epochs, has a validation split) -> the Trainer for that stage.
TrainerFactory = Callable[[str, int, bool], L.Trainer]


class _FloatInputs(nn.Module):
    """An encoder taking the datamodule's uint8 batches (the uncached probe path)."""

    def __init__(self, encoder: nn.Module, to_float: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.encoder = encoder
        self.to_float = to_float

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.to_float(images))


def run_probe(
    features: SplitFeatures,
    probe_cfg: DictConfig,
    make_trainer: TrainerFactory,
    data_label_fraction: float,
    label_fraction: float,
    stage: str = "probe",
) -> dict[str, Any]:
    """Fit a linear probe on ``label_fraction`` of the labelled training images and test it;
    returns its metrics (``train/acc``, ``val/*``, ``test/*``, per-group test accuracies,
    ``num_labelled``, ``probe_epochs``). ``stage`` names its logs and checkpoints."""
    datamodule = features.datamodule
    encoder = features.encoder.to(features.device)
    encoder.requires_grad_(False)
    positions = labelled_positions(datamodule, label_fraction, int(probe_cfg.label_seed))
    splits = {
        "train": datamodule.split_index("labelled")[positions],
        "val": datamodule.split_index("val"),
        "test": datamodule.split_index("test"),
    }
    # The epochs follow the share of the training split's labels the probe sees.
    epochs = labelled_epochs(int(probe_cfg.epochs), label_fraction * data_label_fraction)
    probe = LinearProbe(
        encoder.feature_dim,
        datamodule.num_classes,
        epochs,
        probe_cfg.lr,
        probe_cfg.weight_decay,
        # Without the cache the probe runs the frozen encoder on every batch itself.
        encoder=None if probe_cfg.cache_features else _FloatInputs(encoder, datamodule.to_float),
        cosine_epochs=probe_cfg.cosine_epochs,
    )
    batch_size = int(probe_cfg.batch_size)
    loaders = {}
    for split, index in splits.items():
        if len(index) == 0:
            continue
        if probe_cfg.cache_features:
            inputs = features("labelled")[positions] if split == "train" else features(split)
            index, images = torch.arange(len(index)), inputs
            targets = datamodule.targets[splits[split]]
        else:
            encoder.eval()
            images, targets = datamodule.images, datamodule.targets
        loaders[split] = batch_loader(
            index, images, targets, batch_size=batch_size, shuffle=split == "train"
        )

    trainer = make_trainer(stage, epochs, "val" in loaders)
    trainer.fit(probe, train_dataloaders=loaders["train"], val_dataloaders=loaders.get("val", []))
    metrics = fitted_metrics(trainer.callback_metrics)
    metrics.update(
        scalar_metrics(trainer.test(probe, dataloaders=loaders["test"], verbose=False)[0])
    )
    metrics["num_labelled"] = len(splits["train"])
    metrics["probe_epochs"] = epochs
    if hasattr(datamodule, "group_masks"):
        metrics.update(
            group_accuracies(
                predict(probe.classifier, features("test")),
                datamodule.targets[splits["test"]],
                datamodule.group_masks("test"),
                metric="test/acc",
            )
        )
    return metrics


def run_probes(
    features: SplitFeatures,
    probe_cfg: DictConfig,
    make_trainer: TrainerFactory,
    data_label_fraction: float,
    seed: int,
    plot_path: Path,
    plot_title: str,
) -> dict[str, Any]:
    """The probe at ``probe.label_fraction``, then, when ``probe.label_fractions`` is set, one
    probe per fraction on the same frozen features (``frac_<f>/test/acc``, ...), plotted against
    the share of the training labels in ``plot_path``."""
    main_fraction = float(probe_cfg.label_fraction)
    metrics = run_probe(features, probe_cfg, make_trainer, data_label_fraction, main_fraction)
    if not probe_cfg.label_fractions:
        return metrics
    curve: dict[float, dict[str, Any]] = {}
    for fraction in sorted({float(f) for f in probe_cfg.label_fractions}):
        if fraction == main_fraction:
            curve[fraction] = metrics
            continue
        # Each fraction's probe starts from the same seed, whatever the others drew.
        L.seed_everything(seed, workers=True)
        curve[fraction] = run_probe(
            features,
            probe_cfg,
            make_trainer,
            data_label_fraction,
            fraction,
            stage=f"probe_frac_{fraction:g}",
        )
    for fraction, result in curve.items():
        for key in FRACTION_KEYS:
            if key in result:
                metrics[fraction_prefix(fraction) + key] = result[key]
    from reprlab.plots import plot_label_fractions  # matplotlib only for runs that plot

    plot_label_fractions(
        {
            split: [(f * data_label_fraction, r[f"{split}/acc"], 0.0) for f, r in curve.items()]
            for split in ("test", "train")
        },
        plot_path,
        chance=1.0 / features.datamodule.num_classes,
        title=plot_title,
        styles={"train": "--"},
    )
    return metrics
