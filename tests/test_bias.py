"""Biases keep the same images on every dSprites file, whatever grid its own classes index.

The real files beside the checkout: the random subset (DeepMind's grid) and the downsampled file
(classes in its own grid of 10 orientations and 16x16 positions). Skipped without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from reprlab.data import DSpritesDataModule, render
from reprlab.data.bias import BIASES, biased_subset
from reprlab.data.files import load_dsprites_npz

BIASED = [name for name in BIASES if name != "none"]
SHAPES = range(len(render.SHAPE_NAMES))


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real dSprites file not found at {path} (set REPRLAB_SHARED_DATA)")
    return path


@pytest.fixture(scope="module")
def latents() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per file: latent classes and values as loaded, and each image's index in DeepMind's file."""
    loaded = {}
    for name in ("subset", "downsampled"):
        path = shared_file(f"dsprites_{name}.npz")
        _, classes, values = load_dsprites_npz(path)
        with np.load(path) as archive:
            loaded[name] = (classes, values, archive["original_dataset_indices"])
    return loaded


def kept_pos_x(values: np.ndarray, bias: str) -> tuple[list[set[float]], list[set[float]]]:
    """Per shape, the posX values of the images a bias keeps, and of those it drops."""
    keep = BIASES[bias](values)
    shape, pos_x = values[:, 0].round().astype(int) - 1, values[:, 3]
    kept = [set(pos_x[keep & (shape == s)].tolist()) for s in SHAPES]
    dropped = [set(pos_x[~keep & (shape == s)].tolist()) for s in SHAPES]
    return kept, dropped


@pytest.mark.parametrize("bias", BIASED)
def test_each_bias_keeps_per_shape_the_posx_range_it_keeps_on_the_subset(latents, bias) -> None:
    subset_kept, subset_dropped = kept_pos_x(latents["subset"][1], bias)
    kept, dropped = kept_pos_x(latents["downsampled"][1], bias)
    for s in SHAPES:
        # Every posX value is in the subset for every shape, so the subset shows the whole rule.
        assert len(subset_kept[s] | subset_dropped[s]) == 32
        assert kept[s], f"{bias} keeps no {render.SHAPE_NAMES[s]} on the downsampled file"
        assert kept[s] <= subset_kept[s] and dropped[s] <= subset_dropped[s]
        assert min(subset_kept[s]) <= min(kept[s]) and max(kept[s]) <= max(subset_kept[s])


@pytest.mark.parametrize("bias", list(BIASES))
def test_a_bias_keeps_the_same_images_as_on_the_full_grid(latents, bias) -> None:
    # DeepMind's full set of latents, as the procedural renderer draws it, in the full file's order.
    full = BIASES[bias](render.latent_values(render.all_latent_classes()))
    for name, (classes, values, original) in latents.items():
        assert np.array_equal(BIASES[bias](values), full[original]), name
        # The loader maps each file's own classes onto DeepMind's grid.
        assert np.array_equal(classes, render.all_latent_classes()[original]), name


@pytest.mark.parametrize("bias", BIASED)
def test_the_control_drops_as_many_images_on_the_downsampled_file(latents, bias) -> None:
    _, values, _ = latents["downsampled"]
    train = np.random.default_rng(0).permutation(len(values))[: len(values) * 8 // 10]
    train.sort()
    biased = biased_subset(train, values, bias)
    control = biased_subset(train, values, bias, control=True, seed=3)
    assert len(control) == len(biased) < len(train)
    assert set(control.tolist()) <= set(train.tolist())
    # Chosen at random: every shape keeps images on both halves of the posX range.
    for s in SHAPES:
        chosen = values[control][values[control, 0] == s + 1, 3]
        assert (chosen < 0.5).any() and (chosen > 0.5).any()


def test_datamodule_on_the_downsampled_file_biases_by_posx_value() -> None:
    path = str(shared_file("dsprites_downsampled.npz"))
    settings = dict(
        source="file", path=path, num_images=None, train_fraction=0.95, val_fraction=0.0
    )
    plain = DSpritesDataModule(**settings)
    biased = DSpritesDataModule(**settings, bias="shape_posX")
    control = DSpritesDataModule(**settings, bias="shape_posX", bias_control=True)
    for dm in (plain, biased, control):
        dm.setup()
    train = biased.split_index("train")
    shape, pos_x = biased.latents_classes[train, 0], biased.latents_values[train, 3]
    # DeepMind's 32 posX values cut 11 / 11 / 10: squares up to 10/31, hearts from 22/31.
    assert pos_x[shape == 0].max() == pytest.approx(10 / 31)
    assert pos_x[shape == 1].min() == pytest.approx(12 / 31)  # 11/31 is not on this file's grid
    assert pos_x[shape == 1].max() == pytest.approx(20 / 31)
    assert pos_x[shape == 2].min() == pytest.approx(22 / 31)
    # Class indices on DeepMind's grid: the same cut as the values.
    pos_x_class = biased.latents_classes[train, 3]
    assert (pos_x_class[shape == 0] < 11).all() and (pos_x_class[shape == 2] >= 22).all()
    assert len(control.split_index("train")) == len(train) < len(plain.split_index("train"))
    assert set(control.split_index("train").tolist()) <= set(plain.split_index("train").tolist())
