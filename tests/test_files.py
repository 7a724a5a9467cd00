"""Reading dSprites files whose classes index their own grid, and refusing inconsistent ones."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest

from reprlab.data import DSpritesDataModule, render
from reprlab.data.files import load_dsprites_npz


def coarse_latents() -> dict:
    """A downsampled file's latents: every second posX of DeepMind's grid, numbered 0..15."""
    full = render.all_latent_classes()[::997]
    full = full[full[:, 3] % 2 == 0]
    own = full.copy()
    own[:, 3] //= 2
    grids = [grid.copy() for grid in render.LATENT_GRIDS]
    grids[3] = grids[3][::2]
    metadata = {
        "latents_names": render.LATENT_NAMES,
        "latents_sizes": np.array([len(grid) for grid in grids]),
        "latents_possible_values": dict(zip(render.LATENT_NAMES, grids, strict=True)),
    }
    return {
        "full": full,
        "latents_classes": own,
        "latents_values": render.latent_values(full),
        "metadata": metadata,
        "original_dataset_indices": np.ravel_multi_index(tuple(full.T), render.LATENT_SIZES),
    }


def write(path: Path, latents: dict) -> Path:
    arrays = {key: value for key, value in latents.items() if key != "full"}
    if "metadata" in arrays:
        arrays["metadata"] = np.array(arrays["metadata"], dtype=object)
    count = len(arrays["latents_classes"])
    np.savez(path, imgs=np.zeros((count, 64, 64), np.uint8), **arrays)
    return path


def test_own_grid_classes_are_mapped_onto_deepminds_grid(tmp_path) -> None:
    latents = coarse_latents()
    _, classes, values = load_dsprites_npz(write(tmp_path / "coarse.npz", latents))
    assert np.array_equal(classes, latents["full"])
    assert np.array_equal(values, latents["latents_values"])
    # Without the index into the full file, the metadata is enough.
    del latents["original_dataset_indices"]
    _, classes, _ = load_dsprites_npz(write(tmp_path / "no_index.npz", latents))
    assert np.array_equal(classes, latents["full"])


def test_deepminds_six_latent_layout_drops_color(tmp_path) -> None:
    latents = coarse_latents()
    rows = len(latents["full"])
    latents["latents_classes"] = np.column_stack([np.zeros(rows, int), latents["full"]])
    latents["latents_values"] = np.column_stack([np.ones(rows), latents["latents_values"]])
    latents["metadata"] = {
        "latents_names": ("color", *render.LATENT_NAMES),
        "latents_sizes": np.array([1, *render.LATENT_SIZES]),
        "latents_possible_values": {
            "color": np.array([1.0]),
            **dict(zip(render.LATENT_NAMES, render.LATENT_GRIDS, strict=True)),
        },
    }
    _, classes, values = load_dsprites_npz(write(tmp_path / "full.npz", latents))
    assert np.array_equal(classes, latents["full"]) and values.shape == (rows, 5)
    latents["latents_values"][0, 0] = 0.5
    latents["metadata"]["latents_possible_values"]["color"] = np.array([0.5, 1.0])
    latents["metadata"]["latents_sizes"][0] = 2
    latents["latents_classes"][0, 0] = 0
    latents["latents_classes"][1:, 0] = 1
    with pytest.raises(ValueError, match="latent 'color' takes more than one value"):
        load_dsprites_npz(write(tmp_path / "coloured.npz", latents))


def test_classes_disagreeing_with_the_metadata_fail_naming_the_latent(tmp_path) -> None:
    latents = coarse_latents()
    # The metadata claims the odd posX values; the rows hold the even ones.
    latents["metadata"]["latents_possible_values"]["posX"] = render.LATENT_GRIDS[3][1::2]
    path = write(tmp_path / "bad_metadata.npz", latents)
    with pytest.raises(ValueError, match=r"bad_metadata.npz: latent 'posX': row 0 has class 0 "):
        load_dsprites_npz(path)
    # At load time: the datamodule fails in setup, before any training.
    dm = DSpritesDataModule(source="file", path=str(path), num_images=None, batch_size=10)
    with pytest.raises(ValueError, match="latent 'posX'.*file's metadata gives class 0"):
        dm.setup()


def test_classes_disagreeing_with_values_fail_without_metadata(tmp_path) -> None:
    latents = coarse_latents()
    del latents["metadata"]
    with pytest.raises(ValueError, match=r"latent 'posX'.*DeepMind's grid \(the file has no "):
        load_dsprites_npz(write(tmp_path / "no_metadata.npz", latents))
    latents["latents_classes"] = latents["full"].copy()
    latents["latents_classes"][5, 2] += 1
    with pytest.raises(ValueError, match="latent 'orientation': row 5 has class"):
        load_dsprites_npz(write(tmp_path / "one_bad_row.npz", latents))


def test_class_outside_the_metadata_grid_fails(tmp_path) -> None:
    latents = coarse_latents()
    latents["latents_classes"][3, 3] = 16
    with pytest.raises(ValueError, match=r"latent 'posX' has class index 16 \(row 3.*0\.\.15"):
        load_dsprites_npz(write(tmp_path / "outside.npz", latents))


def test_values_off_deepminds_grid_fail_naming_the_latent(tmp_path) -> None:
    latents = coarse_latents()
    # Consistent with each other and with the metadata, but not DeepMind's scales.
    latents["latents_values"][:, 1] += 0.05
    latents["metadata"]["latents_possible_values"]["scale"] = render.LATENT_GRIDS[1] + 0.05
    with pytest.raises(ValueError, match="latent 'scale' has value 0.55 .*none of DeepMind's 6"):
        load_dsprites_npz(write(tmp_path / "off_grid.npz", latents))


def test_original_indices_disagreeing_with_the_latents_fail(tmp_path) -> None:
    latents = coarse_latents()
    latents["original_dataset_indices"][7] += 32  # the next posX class in the full file
    message = r"latent 'posX': row 7 has DeepMind class (\d+) .*indices' \(\d+\) gives class"
    with pytest.raises(ValueError, match=message):
        load_dsprites_npz(write(tmp_path / "bad_index.npz", latents))
    latents["original_dataset_indices"][7] = render.NUM_IMAGES
    with pytest.raises(ValueError, match="'original_dataset_indices' has 737280 at row 7"):
        load_dsprites_npz(write(tmp_path / "outside_index.npz", latents))


def test_metadata_in_another_order_or_unsafe_is_refused(tmp_path) -> None:
    latents = coarse_latents()
    latents["metadata"]["latents_names"] = ("shape", "scale", "orientation", "posY", "posX")
    with pytest.raises(ValueError, match="metadata 'latents_names' is .*'posY', 'posX'"):
        load_dsprites_npz(write(tmp_path / "order.npz", latents))
    latents = coarse_latents()
    latents["metadata"]["date"] = datetime.date(2021, 5, 1)  # a global outside numpy's arrays
    path = write(tmp_path / "unsafe.npz", latents)
    # Never unpickled: the classes are held to DeepMind's grid instead, which these fail.
    with (
        pytest.warns(RuntimeWarning, match="'metadata' safely .*datetime.date"),
        pytest.raises(ValueError, match="latent 'posX'.*no readable metadata"),
    ):
        load_dsprites_npz(path)
    latents["latents_classes"] = latents["full"]
    with pytest.warns(RuntimeWarning, match="'metadata' safely"):
        _, classes, _ = load_dsprites_npz(write(tmp_path / "unsafe_full_grid.npz", latents))
    assert np.array_equal(classes, latents["full"])
