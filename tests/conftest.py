"""Shared fixtures: the real dSprites subsets beside the checkout, when they are there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

SHARED_DATA = Path(
    os.environ.get("REPRLAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture
def real_subset() -> Path:
    path = SHARED_DATA / "dsprites_subset.npz"
    if not path.is_file():
        pytest.skip(f"real dSprites subset not found at {path} (set REPRLAB_SHARED_DATA)")
    return path


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
