"""dSprites loading, splits, biases, controls and label fractions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reprlab.data import DSpritesDataModule
from reprlab.data.files import load_dsprites_npz


def make_dm(**kwargs) -> DSpritesDataModule:
    settings = {"num_images": 3000, "batch_size": 500}
    settings.update(kwargs)
    dm = DSpritesDataModule(**settings)
    dm.setup()
    return dm


def test_split_is_deterministic_disjoint_and_sized() -> None:
    a, b = make_dm(split_seed=7), make_dm(split_seed=7)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split_index(split), b.split_index(split))
    train, val, test = (set(a.split_index(s).tolist()) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 3000
    assert len(test) == 600 and len(val) == 240  # 20% test, 10% of the training split
    c = make_dm(split_seed=8)
    assert not torch.equal(a.split_index("test"), c.split_index("test"))


def test_val_fraction_zero_reproduces_the_tutorial_split() -> None:
    dm = make_dm(val_fraction=0.0)
    assert len(dm.split_index("val")) == 0 and not dm.has_val
    assert len(dm.split_index("train")) == 2400
    assert dm.val_dataloader() == []


def test_batches_are_images_and_labels_of_the_split() -> None:
    dm = make_dm()
    images, labels = next(iter(dm.test_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (500, 1, 64, 64)
    index = dm.split_index("test")[:500]
    assert torch.equal(images, dm.images[index]) and torch.equal(labels, dm.targets[index])
    floats, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert floats.dtype == torch.float32 and set(floats.unique().tolist()) <= {0.0, 1.0}
    assert sum(len(batch[1]) for batch in dm.train_dataloader()) == len(dm.split_index("train"))


@pytest.mark.parametrize("target", ["shape", "scale", "orientation", "posX", "posY"])
def test_target_selects_the_latent(target: str) -> None:
    dm = make_dm(num_images=500, batch_size=50, target=target)
    column = ["shape", "scale", "orientation", "posX", "posY"].index(target)
    assert torch.equal(dm.targets, dm.latents_classes[:, column])
    assert dm.num_classes == (3, 6, 40, 32, 32)[column]


def test_shape_posx_spaced_bias_and_its_control() -> None:
    plain = make_dm(num_images=6000)
    biased = make_dm(num_images=6000, bias="shape_posX_spaced")
    control = make_dm(num_images=6000, bias="shape_posX_spaced", bias_control=True)
    shape = biased.latents_classes[:, 0]
    pos_x = biased.latents_values[:, 3]
    train = biased.split_index("train")
    assert (pos_x[train][shape[train] == 0] < 0.3).all()
    ellipses = pos_x[train][shape[train] == 1]
    assert ((ellipses >= 0.35) & (ellipses < 0.65)).all()
    hearts = pos_x[train][shape[train] == 2]
    assert ((hearts >= 0.7) & (hearts < 1.0)).all()
    # The control drops as many images at random: same size, subset of the plain training split,
    # and squares still spread over the whole width.
    control_train = control.split_index("train")
    assert len(control_train) == len(train) < len(plain.split_index("train"))
    assert set(control_train.tolist()) <= set(plain.split_index("train").tolist())
    control_squares = pos_x[control_train][shape[control_train] == 0]
    assert (control_squares > 0.5).float().mean() > 0.3
    # Validation and test are untouched by the bias.
    for split in ("val", "test"):
        assert torch.equal(biased.split_index(split), plain.split_index(split))
        assert torch.equal(control.split_index(split), plain.split_index(split))


def test_shape_posx_and_heart_left_biases() -> None:
    dm = make_dm(num_images=6000, bias="shape_posX")
    train = dm.split_index("train")
    shape, pos_class = dm.latents_classes[train, 0], dm.latents_classes[train, 3]
    assert (pos_class[shape == 0] < 11).all()
    assert ((pos_class[shape == 1] >= 11) & (pos_class[shape == 1] < 22)).all()
    assert (pos_class[shape == 2] >= 22).all()
    dm = make_dm(num_images=6000, bias="heart_left")
    train = dm.split_index("train")
    hearts = dm.latents_values[train][dm.latents_classes[train, 0] == 2]
    assert (hearts[:, 3] <= 0.5).all() and len(hearts) > 0
    assert (dm.latents_values[train][dm.latents_classes[train, 0] == 0][:, 3] > 0.5).any()


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5])
def test_label_subset_is_stratified_and_seeded(fraction: float) -> None:
    dm = make_dm()
    positions = dm.label_subset(fraction, seed=3)
    assert torch.equal(positions, dm.label_subset(fraction, seed=3))
    labels = dm.targets[dm.split_index("train")]
    chosen = labels[positions]
    assert abs(len(positions) - fraction * len(labels)) <= dm.num_classes
    for label in range(dm.num_classes):
        share = (chosen == label).float().mean()
        assert abs(share - (labels == label).float().mean()) < 0.02
    assert len(dm.label_subset(1.0, seed=0)) == len(labels)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_bad_label_fraction_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match=rf"label_fraction must be in \(0, 1\], got {fraction}"):
        make_dm(num_images=200, batch_size=50).label_subset(fraction, seed=0)


def test_file_source_reads_the_real_subset(real_subset) -> None:
    dm = make_dm(source="file", path=str(real_subset), num_images=None, val_fraction=0.0)
    assert len(dm.images) == 20000
    assert len(dm.split_index("train")) == 16000 and len(dm.split_index("test")) == 4000
    with np.load(real_subset) as archive:
        assert np.array_equal(dm.images[:5, 0].numpy(), archive["imgs"][:5])


def test_file_errors_name_the_problem(tmp_path) -> None:
    missing = tmp_path / "missing.npz"
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_dsprites_npz(missing)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dsprites_npz(garbage)
    no_imgs = tmp_path / "no_imgs.npz"
    np.savez(no_imgs, latents_classes=np.zeros((2, 5)), latents_values=np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"lacks \['imgs'\]"):
        load_dsprites_npz(no_imgs)
    flat = tmp_path / "flat.npz"
    np.savez(
        flat,
        imgs=np.zeros((2, 4096), np.uint8),
        latents_classes=np.zeros((2, 5)),
        latents_values=np.zeros((2, 5)),
    )
    with pytest.raises(
        ValueError, match=r"'imgs' must have shape \(N, height, width\), got shape \(2, 4096\)"
    ):
        load_dsprites_npz(flat)
    with pytest.raises(ValueError, match="needs data.path"):
        DSpritesDataModule(source="file", path=None)


def test_a_path_with_procedural_images_is_refused() -> None:
    # The default source is procedural: a path given alone would otherwise be ignored.
    with pytest.raises(ValueError, match=r"data.path='x.npz' is used only with data.source=file"):
        DSpritesDataModule(path="x.npz")


def test_download_fails_clearly_offline(tmp_path, monkeypatch) -> None:
    import urllib.request

    from reprlab.data import files

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match="could not download dSprites.*Offline"):
        files.download_dsprites(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written left behind
