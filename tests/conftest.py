"""Shared fixtures: the real dSprites subsets beside the checkout, when they are there."""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

SHARED_DATA = Path(
    os.environ.get("REPRLAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip without a CUDA GPU (``pytest -m cuda`` selects them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def real_subset() -> Path:
    path = SHARED_DATA / "dsprites_subset.npz"
    if not path.is_file():
        pytest.skip(f"real dSprites subset not found at {path} (set REPRLAB_SHARED_DATA)")
    return path


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (the scripts are not part of the package); registered in
    ``sys.modules`` because dataclasses look their module up there."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_datamodule(cfg: DictConfig):
    """The datamodule a run of ``cfg`` trains on."""
    from reprlab.builders import build_datamodule as build
    from reprlab.run_settings import uses_labels

    return build(cfg.data, cfg.bias, labelled_only=uses_labels(cfg.method))


def compose_train(*overrides: str) -> DictConfig:
    """The config `reprlab-train` would run with these command-line overrides."""
    with initialize_config_module(config_module="reprlab.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


# Small, quick settings shared by the tests that train.
FAST = (
    "data.num_images=2000",
    "data.batch_size=200",
    "callbacks=none",
    "logger=csv",
    "trainer.accelerator=cpu",
    "analysis=none",  # the analyses have their own tests (test_analysis.py, test_cli.py)
)


CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def write_cifar10(
    root: Path, num_train: int = 1000, num_test: int = 200, seed: int = 0
) -> dict[str, np.ndarray]:
    """A small, easy CIFAR-10 stand-in in the official on-disk layout (pickled batches under
    ``root/cifar-10-batches-py``): each class is its own coarse colour pattern plus pixel noise.
    Returns the arrays written, images as (N, 3, 32, 32) uint8."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(30, 225, size=(10, 3, 4, 4))

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        coarse = patterns[labels].repeat(8, axis=2).repeat(8, axis=3)
        images = coarse + rng.normal(0, 25, size=coarse.shape)
        return np.clip(images, 0, 255).astype(np.uint8), labels

    train_images, train_labels = draw(num_train)
    test_images, test_labels = draw(num_test)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, content: dict) -> None:
        with (folder / name).open("wb") as handle:
            pickle.dump(content, handle)

    for i, part in enumerate(np.array_split(np.arange(num_train), 5), start=1):
        dump(
            f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": train_labels[part].tolist(),
                "data": train_images[part].reshape(len(part), -1),
                "filenames": [f"train_{j}.png" for j in part],
            },
        )
    dump(
        "test_batch",
        {"labels": test_labels.tolist(), "data": test_images.reshape(num_test, -1)},
    )
    dump("batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072, "num_cases_per_batch": 0})
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """A folder holding a small CIFAR-10 stand-in (1,000 training and 200 test images)."""
    root = tmp_path_factory.mktemp("cifar10")
    write_cifar10(root)
    return root
