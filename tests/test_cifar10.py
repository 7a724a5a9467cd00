"""CIFAR-10: reading the on-disk layout, splits, batches, the device path, clear errors, and the
methods and recipe running on it (on a small stand-in written in the real layout)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CIFAR10_NAMES, build_datamodule, compose_train, write_cifar10
from hydra import compose, initialize_config_module

from reprlab.builders import build_encoder
from reprlab.data import CIFAR10DataModule
from reprlab.data.cifar10 import CIFAR10_URL, download_cifar10, load_cifar10
from reprlab.encoders import NormalizedInput
from reprlab.eval import evaluate, load_run
from reprlab.train import train

ON_CIFAR = ("callbacks=none", "logger=csv", "trainer.accelerator=cpu")


def make_dm(root: Path, **kwargs) -> CIFAR10DataModule:
    settings = {"root": str(root), "batch_size": 100}
    settings.update(kwargs)
    dm = CIFAR10DataModule(**settings)
    dm.prepare_data()
    dm.setup()
    return dm


def test_reads_the_official_layout(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, num_train=100, num_test=30, seed=3)
    train_images, train_labels, test_images, test_labels, names = load_cifar10(tmp_path)
    assert train_images.shape == (100, 3, 32, 32) and train_images.dtype.name == "uint8"
    assert (train_images == written["train_images"]).all()
    assert (train_labels == written["train_labels"]).all()
    assert (test_images == written["test_images"]).all()
    assert (test_labels == written["test_labels"]).all()
    assert names == CIFAR10_NAMES


def test_splits_are_seeded_disjoint_and_the_test_split_is_official(cifar10_root: Path) -> None:
    a, b = make_dm(cifar10_root, split_seed=5), make_dm(cifar10_root, split_seed=5)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split_index(split), b.split_index(split))
    train, val, test = (set(a.split_index(s).tolist()) for s in ("train", "val", "test"))
    assert len(train) == 900 and len(val) == 100 and len(test) == 200
    assert train | val == set(range(1000)) and not train & val
    assert test == set(range(1000, 1200))  # the official test batch, after the training images
    other = make_dm(cifar10_root, split_seed=6)
    assert not torch.equal(a.split_index("val"), other.split_index("val"))
    assert a.input_shape == (3, 32, 32) and a.num_classes == 10
    assert a.class_names == CIFAR10_NAMES and a.has_val
    assert not make_dm(cifar10_root, val_fraction=0.0).has_val


def test_batches_are_uint8_slices_converted_to_unit_floats(cifar10_root: Path) -> None:
    dm = make_dm(cifar10_root)
    images, labels = next(iter(dm.test_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (100, 3, 32, 32)
    index = dm.split_index("test")[:100]
    assert torch.equal(images, dm.images[index]) and torch.equal(labels, dm.targets[index])
    floats, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert floats.dtype == torch.float32
    assert torch.equal(floats, images.float() / 255)
    assert sum(len(batch[1]) for batch in dm.train_dataloader()) == 900


def test_num_images_keeps_the_official_ratio(cifar10_root: Path) -> None:
    dm = make_dm(cifar10_root, num_images=300, batch_size=50)
    assert len(dm.images) == 300
    assert len(dm.split_index("train")) + len(dm.split_index("val")) == 250
    assert len(dm.split_index("test")) == 50


def test_on_device_keeps_the_data_where_training_runs(cifar10_root: Path) -> None:
    dm = CIFAR10DataModule(root=str(cifar10_root), batch_size=100, on_device=True)
    dm.setup()  # no trainer yet (the pipeline loads the data before building one): CPU
    assert dm.images.device.type == "cpu"
    # Lightning sets the module up again with its trainer attached; the meta device stands in for
    # a GPU here: batches must be gathered there, never copied back to the host.
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))
    dm.setup("fit")
    assert dm.images.device.type == "meta" and dm.targets.device.type == "meta"
    images, labels = next(iter(dm.train_dataloader()))
    assert images.device.type == "meta" and images.shape == (100, 3, 32, 32)
    assert labels.device.type == "meta"
    assert dm.split_index("train").device.type == "cpu"


def test_on_device_cpu_run_learns(cifar10_root: Path, tmp_path: Path) -> None:
    # The tutorial's core encoder on colour images, trained end to end with the data held as a
    # device tensor (the GPU path, on the CPU). The stand-in's classes are colour patterns.
    cfg = compose_train(
        *ON_CIFAR,
        "data=cifar10",
        f"data.root={cifar10_root}",
        "data.on_device=true",
        "data.batch_size=100",
        "encoder=core",
        "method=supervised",
        "method.epochs=2",
        "probe.epochs=5",
        "probe.lr=1e-2",
    )
    metrics = train(cfg, tmp_path)
    assert metrics["pretrain/test/acc"] > 0.6 and metrics["test/acc"] > 0.6  # chance 0.1
    assert metrics["chance"] == pytest.approx(0.1) and metrics["num_test"] == 200


def test_the_encoder_sees_normalised_inputs(cifar10_root: Path) -> None:
    cfg = compose_train("data=cifar10", f"data.root={cifar10_root}", "encoder=identity")
    datamodule = build_datamodule(cfg)
    encoder, _ = build_encoder(cfg.encoder, datamodule, channels_last=False)
    assert isinstance(encoder, NormalizedInput)
    images = datamodule.to_float(datamodule.images[:8])
    mean, std = datamodule.normalization
    expected = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(encoder(images), expected.flatten(1), atol=1e-6)
    # dSprites keeps its 0/1 pixels as they are.
    dsprites = compose_train("encoder=identity", "data.num_images=200", "data.batch_size=50")
    dsprites_encoder, _ = build_encoder(dsprites.encoder, build_datamodule(dsprites), False)
    assert not isinstance(dsprites_encoder, NormalizedInput)


def test_vae_reconstructs_colour_images(cifar10_root: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        *ON_CIFAR,
        "data=cifar10",
        f"data.root={cifar10_root}",
        "data.batch_size=100",
        "encoder=core",
        "method=vae",
        "method.epochs=1",
        "probe.epochs=1",
        "trainer.limit_train_batches=2",
    )
    metrics = train(cfg, tmp_path)
    assert metrics["pretrain/val/reconstruction"] > 0 and 0 <= metrics["test/acc"] <= 1


def test_label_subset_is_stratified(cifar10_root: Path) -> None:
    dm = make_dm(cifar10_root)
    positions = dm.label_subset(0.2, seed=1)
    labels = dm.targets[dm.split_index("train")]
    assert torch.equal(positions, dm.label_subset(0.2, seed=1))
    counts = torch.bincount(labels[positions], minlength=10)
    expected = (torch.bincount(labels, minlength=10) * 0.2).round()
    assert torch.equal(counts, expected.long())


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "test_batch" in message
    assert "data.download=true" in message and CIFAR10_URL in message


def test_download_fails_clearly_offline(tmp_path: Path, monkeypatch) -> None:
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(RuntimeError, match=r"could not download CIFAR-10 from .*Offline"):
        download_cifar10(tmp_path)
    write_cifar10(tmp_path, num_train=20, num_test=10)
    download_cifar10(tmp_path)  # every file there: nothing to fetch, no network needed


def test_bad_files_and_options_are_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path, num_train=20, num_test=10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3 is not a readable CIFAR-10 batch"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="bias=shape_posX is defined on dSprites.*bias=none"):
        CIFAR10DataModule(bias="shape_posX")
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        CIFAR10DataModule(val_fraction=1.0)


@pytest.fixture(scope="module")
def recipe_run(cifar10_root: Path, tmp_path_factory) -> Path:
    """`reprlab-train experiment=cifar10_simclr debug=fast` on a tiny slice of the stand-in (in
    process: the command line only adds Hydra's entry point, which test_cli covers)."""
    run_dir = tmp_path_factory.mktemp("recipe")
    cfg = compose_train(
        "experiment=cifar10_simclr",
        "debug=fast",
        f"data.root={cifar10_root}",
        "data.num_images=60",
        "data.batch_size=12",
        "trainer.limit_train_batches=2",
        "trainer.accelerator=cpu",
        "logger=csv",
    )
    train(cfg, run_dir)
    return run_dir


def test_recipe_runs_and_checkpoints_its_optimiser(recipe_run: Path) -> None:
    metrics = json.loads((recipe_run / "metrics.json").read_text())
    assert metrics["method"].endswith("SimCLR") and metrics["encoder"].endswith("ResNet18Encoder")
    assert metrics["feature_dim"] == 512 and metrics["chance"] == pytest.approx(0.1)
    assert {"pretrain/val/acc", "test/acc"} <= set(metrics)
    checkpoint = torch.load(recipe_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["optim"]["name"] == "lars"
    optimizer = checkpoint["optimizer_states"][0]
    # Weights, biases/BatchNorm parameters, then the online probe's weight and bias (no decay).
    groups = optimizer["param_groups"]
    assert [(g["lars"], g["weight_decay"]) for g in groups] == [
        (True, 1e-6),
        (False, 0.0),
        (True, 0.0),
        (False, 0.0),
    ]


def test_recipe_checkpoint_is_probed_again_by_eval(recipe_run: Path, tmp_path: Path) -> None:
    # In process (the command line is the same code as for train): the run's config comes from
    # the checkpoint, so the encoder is rebuilt with its input normalisation and loads strictly.
    overrides = [
        f"ckpt_path={recipe_run / 'checkpoints' / 'last.ckpt'}",
        "probe.label_fraction=0.5",
    ]
    with initialize_config_module(config_module="reprlab.conf", version_base="1.3"):
        composed = compose(config_name="eval", overrides=overrides)
    cfg, checkpoint, path = load_run(composed, overrides, tmp_path)
    metrics = evaluate(cfg, checkpoint, path, tmp_path)
    assert metrics["label_fraction"] == 0.5 and 0 <= metrics["test/acc"] <= 1
    assert metrics["num_labelled"] == pytest.approx(metrics["num_train"] / 2, abs=5)


def test_recipe_preset_sets_the_simclr_cifar_protocol() -> None:
    cfg = compose_train("experiment=cifar10_simclr")
    assert cfg.data._target_.endswith("CIFAR10DataModule") and cfg.data.batch_size == 512
    assert cfg.encoder._target_.endswith("ResNet18Encoder")
    assert cfg.augment._target_.endswith("SimCLRAugmentation")
    method = cfg.method
    assert method._target_.endswith("SimCLR") and method.projector == "mlp"
    assert (method.projector_hidden, method.projector_out, method.temperature) == (2048, 128, 0.5)
    assert method.optim.name == "lars" and method.optim.scheduler == "warmup_cosine"
    assert method.optim.warmup_epochs == 10 and method.weight_decay == 1e-6
