"""torchvision's labelled image datasets, read by torchvision's own classes into an ImageSet.

reprlab checks that the files of a dataset are where torchvision's class looks (and names them
when they are not), then lets the class parse them. torchvision's classes also compare each
unpacked file's MD5 with the official one before reading; reprlab leaves that to the download
(torchvision's downloader verifies the archive), so files written in the same layout by hand (a
subset, a conversion, a stand-in for tests) are read as well.

Fashion-MNIST has an offline source too: Debian's package ``dataset-fashion-mnist`` installs the
four gzipped idx files under :data:`DEBIAN_FASHION_MNIST`; when ``root`` lacks them they are
unpacked from there into torchvision's layout under ``root``.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reprlab.data.images import ImageSet
from reprlab.io import atomic_write

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
_IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DatasetSpec:
    """Where torchvision's class ``name`` finds its files under ``root``, and how to get them."""

    name: str  # the class in torchvision.datasets
    title: str  # for messages
    folder: str  # relative to root; "" is root itself
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    url: str
    size: str  # what the download costs, for the message
    shape: tuple[int, int, int]  # (channels, height, width) of its images
    num_classes: int
    split_argument: str = "train"  # train=True/False, or "split" for split="train"/"test"
    pickled: bool = False  # the files are pickles: a failed read names the first bad one


SPECS = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "CIFAR10",
            "CIFAR-10",
            "cifar-10-batches-py",
            tuple(f"data_batch_{i}" for i in range(1, 6)) + ("batches.meta",),
            ("test_batch",),
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "163 MB",
            (3, 32, 32),
            10,
            pickled=True,
        ),
        DatasetSpec(
            "CIFAR100",
            "CIFAR-100",
            "cifar-100-python",
            ("train", "meta"),
            ("test",),
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "161 MB",
            (3, 32, 32),
            100,
            pickled=True,
        ),
        DatasetSpec(
            "MNIST",
            "MNIST",
            "MNIST/raw",
            _IDX_TRAIN,
            _IDX_TEST,
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "12 MB",
            (1, 28, 28),
            10,
        ),
        DatasetSpec(
            "FashionMNIST",
            "Fashion-MNIST",
            "FashionMNIST/raw",
            _IDX_TRAIN,
            _IDX_TEST,
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "30 MB",
            (1, 28, 28),
            10,
        ),
        DatasetSpec(
            "KMNIST",
            "Kuzushiji-MNIST",
            "KMNIST/raw",
            _IDX_TRAIN,
            _IDX_TEST,
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            "21 MB",
            (1, 28, 28),
            10,
        ),
        DatasetSpec(
            "SVHN",
            "SVHN",
            "",
            ("train_32x32.mat",),
            ("test_32x32.mat",),
            "http://ufldl.stanford.edu/housenumbers/",
            "246 MB",
            (3, 32, 32),
            10,
            split_argument="split",
        ),
        DatasetSpec(
            "STL10",
            "STL-10",
            "stl10_binary",
            ("train_X.bin", "train_y.bin"),
            ("test_X.bin", "test_y.bin"),
            "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
            "2.6 GB, with the unlabelled images",
            (3, 96, 96),
            10,
            split_argument="split",
        ),
    )
}


def spec_for(name: str) -> DatasetSpec:
    """The dataset called ``name`` (torchvision's class name, any case)."""
    for key, spec in SPECS.items():
        if key.lower() == str(name).lower():
            return spec
    raise ValueError(
        f"unknown data.dataset {name!r}; accepted (torchvision.datasets classes): "
        f"{', '.join(SPECS)}. For other images use data=image_folder or data=array_file"
    )


def folder_of(spec: DatasetSpec, root: str | os.PathLike) -> Path:
    return Path(root).expanduser() / spec.folder


def missing_files(name: str, root: str | os.PathLike) -> list[str]:
    spec = spec_for(name)
    folder = folder_of(spec, root)
    return [f for f in (*spec.train_files, *spec.test_files) if not (folder / f).is_file()]


def _how_to_get(spec: DatasetSpec, root: Path) -> str:
    where = f"{spec.folder}/" if spec.folder else "its files"
    hint = (
        f"Set data.download=true to fetch it into data.root={root} (torchvision's downloader, "
        f"{spec.url}, {spec.size}), or download and unpack it into data.root by hand, or point "
        f"data.root at the folder that holds {where}."
    )
    if spec.name == "FashionMNIST":
        hint += (
            f" Offline: `apt-get install {DEBIAN_PACKAGE}` installs the files under "
            f"{DEBIAN_FASHION_MNIST}, which reprlab reads when data.root lacks them."
        )
    return hint


def _from_debian(spec: DatasetSpec, root: Path) -> bool:
    """Unpack Debian's Fashion-MNIST into torchvision's layout under ``root``; False without it."""
    if spec.name != "FashionMNIST":
        return False
    sources = {name: DEBIAN_FASHION_MNIST / f"{name}.gz" for name in (*_IDX_TRAIN, *_IDX_TEST)}
    if not all(path.is_file() for path in sources.values()):
        return False
    folder = folder_of(spec, root)
    for name, source in sources.items():
        if (folder / name).is_file():
            continue

        def unpack(handle: Any, source: Path = source) -> None:
            with gzip.open(source, "rb") as packed:
                shutil.copyfileobj(packed, handle)

        try:
            atomic_write(folder / name, unpack)
        except OSError as error:
            raise OSError(
                f"could not unpack {source} into {folder} ({error}); point data.root at a "
                f"writable folder"
            ) from error
    log.info("Fashion-MNIST: unpacked Debian's %s into %s", DEBIAN_FASHION_MNIST, folder)
    return True


def download(name: str, root: str | os.PathLike) -> None:
    """Fetch the dataset with torchvision's downloader unless its files are all there (or, for
    Fashion-MNIST, Debian's package provides them)."""
    spec = spec_for(name)
    target = Path(root).expanduser()
    if not missing_files(spec.name, target) or _from_debian(spec, target):
        return
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, spec.name)
    try:
        for split in ("train", "test"):
            dataset_class(str(target), download=True, **_split_kwargs(spec, split))
    except Exception as error:  # URLError, OSError, RuntimeError (bad checksum), ...
        raise RuntimeError(
            f"could not download {spec.title} from {spec.url} into {target} ({error}). Offline? "
            f"Download it elsewhere and unpack it into {target} (torchvision's layout: "
            f"{spec.folder or '.'}/{', '.join(spec.train_files + spec.test_files)}), then set "
            f"data.download=false."
        ) from error


def _split_kwargs(spec: DatasetSpec, split: str) -> dict[str, Any]:
    if spec.split_argument == "split":
        return {"split": split}
    return {"train": split == "train"}


def _load_cifar_meta(self: Any) -> None:
    # torchvision's CIFAR._load_meta, less its MD5 comparison (see the module docstring).
    path = os.path.join(self.root, self.base_folder, self.meta["filename"])
    with open(path, "rb") as handle:
        self.classes = pickle.load(handle, encoding="latin1")[self.meta["key"]]
    self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def _reader_class(name: str) -> type:
    """torchvision's class ``name`` with its MD5 checks replaced by reprlab's file check."""
    import torchvision.datasets

    base = getattr(torchvision.datasets, name)
    overrides: dict[str, Any] = {
        "_check_integrity": lambda self: True,
        "_check_exists": lambda self: True,
    }
    if issubclass(base, torchvision.datasets.CIFAR10):
        overrides["_load_meta"] = _load_cifar_meta
    # The same class name: the MNIST family finds its files under root/<class name>/raw.
    return type(name, (base,), overrides)


def _arrays(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """A torchvision dataset's images as uint8 (N, C, H, W) and labels as int64 (N,)."""
    data = np.asarray(dataset.data)
    if data.ndim == 3:  # MNIST family: (N, H, W)
        data = data[:, None]
    elif data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):  # CIFAR: (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = dataset.labels
    return np.ascontiguousarray(data, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def _unreadable_pickle(folder: Path, files: tuple[str, ...]) -> tuple[str, Exception] | None:
    for name in files:
        try:
            with (folder / name).open("rb") as handle:
                pickle.load(handle, encoding="latin1")
        except Exception as error:  # noqa: BLE001 - any failure names the file
            return name, error
    return None


def read(name: str, root: str | os.PathLike) -> ImageSet:
    """The official training and test images of dataset ``name`` under ``root``."""
    spec = spec_for(name)
    root = Path(root).expanduser()
    folder = folder_of(spec, root)
    missing = missing_files(spec.name, root)
    if missing and _from_debian(spec, root):
        missing = missing_files(spec.name, root)
    if missing:
        raise FileNotFoundError(
            f"{spec.title} not found: looked in {folder} for {', '.join(missing)}. "
            + _how_to_get(spec, root)
        )
    reader = _reader_class(spec.name)
    try:
        train = reader(str(root), **_split_kwargs(spec, "train"))
        test = reader(str(root), **_split_kwargs(spec, "test"))
    except Exception as error:  # noqa: BLE001 - torchvision raises many kinds on a bad file
        bad = (
            _unreadable_pickle(folder, spec.train_files + spec.test_files) if spec.pickled else None
        )
        if bad is not None:
            raise ValueError(
                f"{folder / bad[0]} is not a readable {spec.title} batch file: {bad[1]}"
            ) from error
        raise ValueError(
            f"torchvision.datasets.{spec.name} could not read the files in {folder} "
            f"({type(error).__name__}: {error}). " + _how_to_get(spec, root)
        ) from error
    train_images, train_labels = _arrays(train)
    test_images, test_labels = _arrays(test)
    classes = getattr(train, "classes", None)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    names = [str(c) for c in classes] if classes else [str(i) for i in range(num_classes)]
    return ImageSet(train_images, train_labels, names, test_images, test_labels)
