"""Natural-image sources on tiny generated data: torchvision's layouts (every supported dataset),
an ImageFolder of PNGs (decoding, resizing, channels, cache, bad files), array files, and the
errors each raises before training."""

from __future__ import annotations

import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, build_datamodule, compose_train
from hydra.errors import InstantiationException

from reprlab.builders import build_encoder
from reprlab.data import (
    ArrayFileDataModule,
    ImageFolderDataModule,
    TorchvisionDataModule,
)
from reprlab.data import torchvision_datasets as tvd
from reprlab.data.image_folder import read_image_folder
from reprlab.data.images import convert_channels, fit_size
from reprlab.train import train


def patterns(count: int, channels: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 images (N, C, size, size) in 10 classes, each class a coarse pattern of
    its own plus pixel noise (easy to tell apart), and their labels."""
    rng = np.random.default_rng(seed)
    coarse = np.random.default_rng(99).uniform(30, 225, size=(10, channels, 4, 4))
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    up = -(-size // 4)
    images = coarse[labels].repeat(up, axis=2).repeat(up, axis=3)[:, :, :size, :size]
    images = images + rng.normal(0, 20, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


# -- fake torchvision layouts ------------------------------------------------------------------
def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n, _, h, w = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, n, h, w) + images[:, 0].tobytes()
    )
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()
    )


def write_layout(name: str, root: Path, num_train: int = 60, num_test: int = 20) -> dict:
    """Dataset ``name`` in torchvision's on-disk layout under ``root``; returns the arrays."""
    size, channels = (28, 1) if "MNIST" in name else ((96, 3) if name == "STL10" else (32, 3))
    train_images, train_labels = patterns(num_train, channels, size, seed=1)
    test_images, test_labels = patterns(num_test, channels, size, seed=2)
    if "MNIST" in name:
        folder = root / name / "raw"
        write_idx(folder, "train", train_images, train_labels)
        write_idx(folder, "t10k", test_images, test_labels)
    elif name == "CIFAR100":
        # Two training images and one test image of each of the 100 classes.
        train_labels, test_labels = np.arange(200) % 100, np.arange(100)
        train_images = np.repeat(train_images, 4, axis=0)[:200]
        test_images = np.repeat(test_images, 5, axis=0)[:100]
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for part, images, labels in (
            ("train", train_images, train_labels),
            ("test", test_images, test_labels),
        ):
            content = {"data": images.reshape(len(images), -1), "fine_labels": labels.tolist()}
            (folder / part).write_bytes(pickle.dumps(content))
        names = {"fine_label_names": [f"class{i}" for i in range(100)]}
        (folder / "meta").write_bytes(pickle.dumps(names))
    elif name == "SVHN":
        from scipy.io import savemat

        for part, images, labels in (
            ("train", train_images, train_labels),
            ("test", test_images, test_labels),
        ):
            # SVHN stores (H, W, C, N) and the digit 0 as label 10.
            savemat(
                root / f"{part}_32x32.mat",
                {
                    "X": images.transpose(2, 3, 1, 0),
                    "y": np.where(labels == 0, 10, labels)[:, None],
                },
            )
    elif name == "STL10":
        folder = root / "stl10_binary"
        folder.mkdir(parents=True)
        for part, images, labels in (
            ("train", train_images, train_labels),
            ("test", test_images, test_labels),
        ):
            # Column-major images (N, C, W, H) and 1-based labels.
            (folder / f"{part}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
            (folder / f"{part}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    else:
        raise AssertionError(name)
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST", "KMNIST", "CIFAR100", "SVHN", "STL10"])
def test_torchvision_classes_read_their_layouts(name: str, tmp_path: Path) -> None:
    written = write_layout(name, tmp_path)
    dm = TorchvisionDataModule(dataset=name.lower(), root=str(tmp_path), batch_size=10)
    dm.setup()
    n_train = len(written["train_images"])
    train_val = torch.cat([dm.split_index("train"), dm.split_index("val")]).sort().values
    assert torch.equal(train_val, torch.arange(n_train))
    assert torch.equal(dm.images[:n_train], torch.from_numpy(written["train_images"]))
    assert torch.equal(dm.targets[:n_train], torch.from_numpy(written["train_labels"]))
    test = dm.split_index("test")
    assert torch.equal(dm.images[test], torch.from_numpy(written["test_images"]))
    assert torch.equal(dm.targets[test], torch.from_numpy(written["test_labels"]))
    assert dm.input_shape == written["train_images"].shape[1:]
    expected_classes = 100 if name == "CIFAR100" else 10
    assert dm.num_classes == expected_classes and len(dm.class_names) == expected_classes
    mean, std = dm.normalization
    pixels = written["train_images"][dm.split_index("train").numpy()].astype(np.float64) / 255
    assert len(mean) == dm.input_shape[0] and min(std) > 0
    assert abs(mean[0] - pixels[:, 0].mean()) < 0.05  # statistics of the training split


def test_missing_torchvision_files_say_where_and_how(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tvd, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    dm = TorchvisionDataModule(dataset="FashionMNIST", root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "data.download=true" in message and "apt-get install dataset-fashion-mnist" in message


def test_fashion_mnist_is_unpacked_from_the_debian_folder(tmp_path: Path, monkeypatch) -> None:
    import gzip

    written = write_layout("FashionMNIST", tmp_path / "made")
    debian = tmp_path / "debian"
    debian.mkdir()
    for path in (tmp_path / "made" / "FashionMNIST" / "raw").iterdir():
        (debian / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    monkeypatch.setattr(tvd, "DEBIAN_FASHION_MNIST", debian)
    dm = TorchvisionDataModule(dataset="FashionMNIST", root=str(tmp_path / "root"), batch_size=10)
    dm.prepare_data()  # data.download=false: nothing fetched
    dm.setup()
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert torch.equal(dm.images[:60], torch.from_numpy(written["train_images"]))
    # download=true finds the Debian files too: no network asked for.
    TorchvisionDataModule(
        dataset="FashionMNIST", root=str(tmp_path / "r2"), download=True
    ).prepare_data()
    assert (tmp_path / "r2" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_unknown_dataset_and_bias_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"unknown data.dataset 'ImageNet'.*CIFAR10, CIFAR100, MNIST"
    ):
        TorchvisionDataModule(dataset="ImageNet")
    with pytest.raises(ValueError, match=r"bias=shape_posX is defined on dSprites.*bias=none"):
        TorchvisionDataModule(dataset="MNIST", bias="shape_posX")
    with pytest.raises(ValueError, match=r"bias=heart_left .*image folder.*bias=none"):
        ImageFolderDataModule(root="x", bias="heart_left")
    with pytest.raises(ValueError, match=r"data.channels must be 1, 3 or null.*got 2"):
        ArrayFileDataModule(path="x.npz", channels=2)


def test_bias_from_the_command_line_fails_before_reading(tmp_path: Path) -> None:
    cfg = compose_train("data=torchvision", f"data.root={tmp_path}", "bias=shape_posX")
    with pytest.raises((ValueError, InstantiationException), match="bias=shape_posX is defined"):
        build_datamodule(cfg)


# -- image folders -------------------------------------------------------------------------------
def write_folder(root: Path, per_class: int = 12, size: int = 40, grey_every: int = 0) -> None:
    """10 class folders of PNGs (every ``grey_every``-th saved as grey), rectangular images."""
    from PIL import Image

    images, labels = patterns(10 * per_class, 3, size, seed=3)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(
            np.concatenate([image, image[:, :, :8]], axis=2).transpose(1, 2, 0)
        )
        if grey_every and i % grey_every == 0:
            picture = picture.convert("L")
        picture.save(folder / f"{i:04d}.png")


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "pictures"
    write_folder(root, grey_every=3)
    return root


def make_folder_dm(root: Path, cache: Path | None, **kwargs) -> ImageFolderDataModule:
    settings = {"root": str(root), "image_size": 16, "cache_dir": cache, "batch_size": 10}
    settings.update(kwargs)
    dm = ImageFolderDataModule(**settings)
    dm.setup()
    return dm


def test_image_folder_is_decoded_resized_split_and_cached(image_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dm = make_folder_dm(image_root, cache)
    assert dm.images.shape == (120, 3, 16, 16) and dm.images.dtype == torch.uint8
    assert dm.class_names == [f"class_{i}" for i in range(10)]
    test = dm.targets[dm.split_index("test")]
    assert torch.equal(torch.bincount(test, minlength=10), torch.full((10,), 2))  # stratified
    assert len(dm.split_index("train")) + len(dm.split_index("val")) == 100
    # Every third PNG is grey (saved as such): it became RGB with three equal channels.
    from PIL import Image, ImageOps

    equal = (dm.images[:, 0] == dm.images[:, 1]).flatten(1).all(1)
    assert 0.2 < equal.float().mean() < 0.5
    (cached,) = cache.iterdir()
    # The second run reads the cache (no decoding): same arrays, far less time than decoding.
    start = time.perf_counter()
    again = make_folder_dm(image_root, cache)
    assert torch.equal(again.images, dm.images) and torch.equal(again.targets, dm.targets)
    assert time.perf_counter() - start < 5
    # A changed folder is decoded again.
    first = sorted((image_root / "class_1").iterdir())[0]
    with Image.open(first) as picture:
        ImageOps.invert(picture.convert("RGB")).save(first)
    changed = make_folder_dm(image_root, cache)
    assert not torch.equal(changed.images, dm.images)
    assert len(list(cache.iterdir())) == 1  # rewritten in place, not a second file


def test_decoding_resizes_the_short_side_and_crops_the_centre(tmp_path: Path) -> None:
    from PIL import Image

    for label in ("a", "b"):
        for i in range(2):
            # 20 x 40: left and right quarters red, the centre half green.
            pixels = np.zeros((20, 40, 3), dtype=np.uint8)
            pixels[:, :10, 0] = pixels[:, 30:, 0] = 255
            pixels[:, 10:30, 1] = 255
            (tmp_path / label).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    data = read_image_folder(tmp_path, image_size=10, channels=3)
    assert data.train_images.shape == (4, 3, 10, 10)
    # The centre half survives; of the red quarters at most a blended edge column is left.
    assert (data.train_images[:, 1, :, 1:-1] == 255).all()
    assert (data.train_images[:, 0, :, 1:-1] == 0).all()
    grey = read_image_folder(tmp_path, image_size=10, channels=1)
    assert grey.train_images.shape == (4, 1, 10, 10)
    assert abs(int(grey.train_images[0, 0, 5, 5]) - round(0.587 * 255)) <= 1


def test_train_and_test_subfolders_are_the_splits(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", per_class=6)
    write_folder(tmp_path / "test", per_class=3)
    dm = make_folder_dm(tmp_path, None, val_fraction=0.0)
    assert len(dm.split_index("train")) == 60 and len(dm.split_index("test")) == 30
    assert dm.class_names == [f"class_{i}" for i in range(10)]


def test_channels_null_keeps_grey_folders_grey(tmp_path: Path) -> None:
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(
                tmp_path / label / f"{i}.png"
            )
    assert read_image_folder(tmp_path, image_size=8, channels=None).train_images.shape[1] == 1


def test_bad_image_folders_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    (empty / "cats" / "notes.txt").write_text("no image")
    with pytest.raises(ValueError, match=r"no images in .*empty: .*one subfolder per class.*\.png"):
        make_folder_dm(empty, None)
    lonely = tmp_path / "lonely"
    write_folder(lonely, per_class=3)
    for extra in sorted((lonely / "class_4").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(
        ValueError, match=r"class folder .*lonely/class_4 has 1 image \(.*at least 2"
    ):
        make_folder_dm(lonely, None)
    with pytest.raises(FileNotFoundError, match=r"data.root=.*missing is not a folder"):
        make_folder_dm(tmp_path / "missing", None)
    with pytest.raises(
        ValueError, match=r"unknown data.on_bad_file 'ignore'; accepted: error, skip"
    ):
        ImageFolderDataModule(root=str(lonely), on_bad_file="ignore")


def test_an_undecodable_image_stops_or_is_skipped_and_counted(
    image_root: Path, tmp_path: Path
) -> None:
    broken = image_root / "class_2" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    with pytest.raises(
        ValueError, match=r"cannot decode .*class_2/broken.png .*data.on_bad_file=skip"
    ):
        make_folder_dm(image_root, None)
    dm = make_folder_dm(image_root, tmp_path / "cache", on_bad_file="skip")
    assert dm.skipped == [str(broken)] and len(dm.images) == 120
    again = make_folder_dm(image_root, tmp_path / "cache", on_bad_file="skip")  # from the cache
    assert again.skipped == [str(broken)]


def test_image_size_below_what_the_encoder_accepts_fails_before_training(image_root: Path) -> None:
    cfg = compose_train(
        "data=image_folder",
        f"data.root={image_root}",
        "data.image_size=12",
        "data.cache_dir=null",
        "data.batch_size=10",
        "encoder=core",
    )
    datamodule = build_datamodule(cfg)
    with pytest.raises(
        (ValueError, InstantiationException),
        match=r"CoreEncoder needs images of at least 16x16.*data.image_size",
    ):
        build_encoder(cfg.encoder, datamodule, channels_last=False)


def test_a_run_on_an_image_folder_learns(image_root: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        *FAST,
        "data=image_folder",
        f"data.root={image_root}",
        "data.image_size=16",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.num_images=null",
        "data.batch_size=24",
        "encoder=simple_cnn",
        "encoder.global_pool=true",
        "method=supervised",
        "method.epochs=15",
        "method.lr=1e-2",
        "probe.epochs=20",
        "probe.lr=1e-2",
    )
    metrics = train(cfg, tmp_path / "run")
    assert metrics["test/acc"] > 0.5 and metrics["chance"] == pytest.approx(0.1)  # chance 0.1


# -- array files ---------------------------------------------------------------------------------
def test_npz_with_and_without_test_arrays(tmp_path: Path) -> None:
    images, labels = patterns(50, 3, 12)
    test_images, test_labels = patterns(20, 3, 12, seed=5)
    path = tmp_path / "data.npz"
    # Channels-last floats in [0, 1] and string labels: converted to uint8 NCHW and classes.
    names = np.array([f"n{i}" for i in range(10)])
    np.savez(
        path,
        x=images.transpose(0, 2, 3, 1) / 255.0,
        y=names[labels],
        tx=test_images.transpose(0, 2, 3, 1) / 255.0,
        ty=names[test_labels],
    )
    dm = ArrayFileDataModule(
        path=str(path),
        images_key="x",
        labels_key="y",
        test_images_key="tx",
        test_labels_key="ty",
        batch_size=10,
    )
    dm.setup()
    assert dm.images.shape == (70, 3, 12, 12) and dm.class_names == list(names)
    assert np.abs(dm.images[:50].numpy().astype(int) - images).max() <= 1
    assert torch.equal(dm.targets[dm.split_index("test")], torch.from_numpy(test_labels))
    # Without test arrays: a seeded, stratified test split; grey (N, H, W) uint8 images.
    plain = tmp_path / "plain.npz"
    np.savez(plain, images=images[:, 0], labels=labels)
    dm = ArrayFileDataModule(path=str(plain), batch_size=10, test_fraction=0.2, channels=3)
    dm.setup()
    assert dm.input_shape == (3, 12, 12) and len(dm.split_index("test")) == 10
    again = ArrayFileDataModule(path=str(plain), batch_size=10, test_fraction=0.2, channels=3)
    again.setup()
    assert torch.equal(again.split_index("test"), dm.split_index("test"))


def test_npy_pair_and_array_file_errors(tmp_path: Path) -> None:
    images, labels = patterns(30, 1, 10)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    dm = ArrayFileDataModule(
        path=str(tmp_path / "images.npy"), labels_path=str(tmp_path / "labels.npy"), batch_size=5
    )
    dm.setup()
    assert dm.input_shape == (1, 10, 10) and dm.num_classes == 10
    with pytest.raises(ValueError, match=r"images.npy holds images only: set data.labels_path"):
        ArrayFileDataModule(path=str(tmp_path / "images.npy")).setup()
    np.savez(tmp_path / "keys.npz", pixels=images, labels=labels)
    with pytest.raises(
        ValueError,
        match=r"no array 'images' \(data.images_key\); its arrays: \['labels', 'pixels'\]",
    ):
        ArrayFileDataModule(path=str(tmp_path / "keys.npz")).setup()
    np.savez(tmp_path / "square.npz", images=np.zeros((4, 3, 5, 3), np.uint8), labels=[0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"cannot tell the channel axis .*data.layout=NCHW"):
        ArrayFileDataModule(path=str(tmp_path / "square.npz")).setup()
    np.savez(tmp_path / "one.npz", images=images[:3], labels=[0, 0, 1])
    with pytest.raises(
        ValueError, match=r"class '1' has 1 training image; every class needs at least 2"
    ):
        ArrayFileDataModule(path=str(tmp_path / "one.npz"), batch_size=1).setup()


def test_channel_conversion_and_resizing_helpers() -> None:
    colour = np.zeros((2, 3, 4, 6), dtype=np.uint8)
    colour[:, 0] = 255
    grey = convert_channels(colour, 1)
    assert grey.shape == (2, 1, 4, 6) and (grey == round(0.299 * 255)).all()
    assert (convert_channels(grey, 3) == grey).all() and convert_channels(grey, 3).shape[1] == 3
    resized = fit_size(colour, 2)
    assert resized.shape == (2, 3, 2, 2) and (resized[:, 0] == 255).all()
