"""The bias study: its presets, and test accuracies per shape and per third of the posX range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAST, build_datamodule, compose_train

from reprlab.data import DSpritesDataModule
from reprlab.data.render import SHAPE_NAMES
from reprlab.probe import group_accuracies
from reprlab.train import train

GROUPS = [f"shape_{s}" for s in SHAPE_NAMES] + [f"posX_third_{t}" for t in (1, 2, 3)]


@pytest.mark.parametrize(
    ("preset", "method", "epochs"),
    [
        ("tutorial_bias_supervised", "Supervised", 80),
        ("tutorial_bias_random", None, 0),
        ("tutorial_bias_vae", "VAE", 450),
        ("tutorial_bias_simclr", "SimCLR", 150),
        ("tutorial_bias_byol", "BYOL", 150),
        ("tutorial_bias_simsiam", "SimSiam", 150),
        ("tutorial_bias_vicreg", "VICReg", 150),
        ("tutorial_bias_barlow_twins", "BarlowTwins", 150),
    ],
)
def test_bias_presets_set_the_tutorial_protocol(preset: str, method: str | None, epochs) -> None:
    cfg = compose_train(f"experiment={preset}", "data.path=x.npz")
    assert cfg.bias.name == "shape_posX_spaced" and cfg.bias.control is False
    assert cfg.data.train_fraction == 0.95 and cfg.data.val_fraction == 0.0
    assert cfg.data.split_seed == 2021 and cfg.probe.epochs == 30
    assert cfg.method.epochs == epochs
    assert (cfg.method.get("_target_") or "").endswith(method or "")
    control = compose_train(f"experiment={preset}", "data.path=x.npz", "bias.control=true")
    assert control.bias.control is True


def test_group_masks_follow_the_latents() -> None:
    dm = DSpritesDataModule(num_images=3000, batch_size=100)
    dm.setup()
    masks = dm.group_masks("test")
    index = dm.split_index("test").numpy()
    shapes = dm.latents_classes[index, 0].numpy()
    pos_x = dm.latents_values[index, 3].numpy()
    thirds = np.where(pos_x < 1 / 3, 1, np.where(pos_x < 2 / 3, 2, 3))
    for s, name in enumerate(SHAPE_NAMES):
        assert np.array_equal(masks[f"shape_{name}"].numpy(), shapes == s)
        for t in (1, 2, 3):
            cell = masks[f"shape_{name}_posX_third_{t}"].numpy()
            assert np.array_equal(cell, (shapes == s) & (thirds == t))
    for t in (1, 2, 3):
        assert np.array_equal(masks[f"posX_third_{t}"].numpy(), thirds == t)
    assert sum(int(masks[f"posX_third_{t}"].sum()) for t in (1, 2, 3)) == len(index)


def test_group_accuracies_agree_with_a_direct_count() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (500,), generator=generator)
    predictions = torch.where(torch.rand(500, generator=generator) < 0.7, labels, (labels + 1) % 3)
    masks = {"a": labels == 0, "b": torch.arange(500) < 123, "empty": torch.zeros(500, dtype=bool)}
    accuracies = group_accuracies(predictions, labels, masks, metric="test/acc")
    for name in ("a", "b"):
        members = [i for i in range(500) if masks[name][i]]
        direct = sum(int(predictions[i] == labels[i]) for i in members) / len(members)
        assert accuracies[f"test/acc_{name}"] == pytest.approx(direct)
    assert "test/acc_empty" not in accuracies


def test_biased_run_reports_accuracy_per_shape_and_third(tmp_path) -> None:
    cfg = compose_train(
        *FAST,
        "method=none",
        "encoder=identity",
        "probe.epochs=2",
        "bias=shape_posX_spaced",
        "data.train_fraction=0.95",
        "data.num_images=4000",
    )
    metrics = train(cfg, tmp_path)
    masks = build_datamodule(cfg).group_masks("test")
    sizes = {name: int(mask.sum()) for name, mask in masks.items()}
    # Each grouping partitions the test set, so its accuracies, weighted by group size, give the
    # overall accuracy: the breakdown comes from the same predictions as test/acc.
    partitions = [
        [f"shape_{s}" for s in SHAPE_NAMES],
        [f"posX_third_{t}" for t in (1, 2, 3)],
        [f"shape_{s}_posX_third_{t}" for s in SHAPE_NAMES for t in (1, 2, 3)],
    ]
    for groups in partitions:
        weighted = sum(metrics[f"test/acc_{g}"] * sizes[g] for g in groups) / metrics["num_test"]
        assert weighted == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert metrics["bias"] == "shape_posX_spaced" and metrics["num_test"] == 200
