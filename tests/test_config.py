"""Every option of every config group composes, and the objects it names can be built."""

from __future__ import annotations

from importlib.resources import files

import lightning as L
import pytest
import torch
from conftest import compose_train
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from reprlab.encoder_weights import architecture_config

CONF = files("reprlab.conf")
# method_tuning is not chosen on its own: its files join the method of one experiment (below).
GROUPS = sorted(
    p.name
    for p in CONF.iterdir()
    if p.is_dir() and not p.name.startswith("_") and p.name != "method_tuning"
)


def options(group: str) -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml")
    )


GROUP_OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


def test_every_group_has_options() -> None:
    assert {
        "data",
        "bias",
        "encoder",
        "method",
        "probe",
        "trainer",
        "logger",
        "callbacks",
        "debug",
        "experiment",
        "analysis",
    } <= set(GROUPS)
    assert len(GROUP_OPTIONS) >= 20


@pytest.mark.parametrize(
    ("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS]
)
def test_option_composes_and_builds(group: str, option: str, tmp_path) -> None:
    cfg = compose_train(f"{group}={option}")
    # A file the data module needs but does not read here; procedural dSprites takes none.
    reads_a_file = "path" in cfg.data and cfg.data.get("source", "file") == "file"
    if reads_a_file or OmegaConf.is_missing(cfg.data, "path"):
        cfg.data.path = "/nonexistent.npz"
    # Likewise the published weights' folder (`in cfg` is false while the value is missing).
    if "tutorial_checkpoints" in cfg.keys():  # noqa: SIM118
        cfg.tutorial_checkpoints = "/nonexistent"
        if "decoder_weights" in cfg.method:
            cfg.method.decoder_weights = cfg.method.logvar_weights = None
    if OmegaConf.is_missing(cfg.data, "root"):  # data=image_folder
        cfg.data.root = "/nonexistent"
    assert cfg.seed is not None
    datamodule = instantiate(cfg.data, bias=cfg.bias.name, bias_control=cfg.bias.control)
    assert isinstance(datamodule, L.LightningDataModule)
    try:
        input_shape, num_classes = datamodule.input_shape, datamodule.num_classes
    except RuntimeError:  # known once the files are read (an image folder, an array file)
        input_shape, num_classes = (3, 32, 32), 10
    encoder = instantiate(architecture_config(cfg.encoder), input_shape=input_shape)
    assert encoder.feature_dim > 0
    if cfg.method.get("_target_"):
        module = instantiate(cfg.method, encoder=encoder, num_classes=num_classes)
        assert isinstance(module, L.LightningModule)
    trainer = (
        instantiate(
            cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=tmp_path
        )
        if cfg.trainer.accelerator != "gpu" or torch.cuda.is_available()
        else None
    )
    if trainer is not None:
        assert isinstance(trainer, L.Trainer)
    if cfg.get("logger"):
        instantiate(cfg.logger, save_dir=str(tmp_path), version="test")
    for callback in (cfg.get("callbacks") or {}).values():
        instantiate(callback)
    if cfg.analysis.get("_target_"):
        instantiate(cfg.analysis)


def test_experiment_presets_set_the_tutorial_protocol() -> None:
    cfg = compose_train("experiment=tutorial_raw", "data.path=x.npz")
    assert cfg.encoder._target_.endswith("IdentityEncoder")
    assert cfg.method.get("_target_") is None
    assert cfg.data.val_fraction == 0.0 and cfg.data.split_seed == 2021 and cfg.probe.epochs == 25
    cfg = compose_train("experiment=tutorial_supervised", "data.path=x.npz")
    assert cfg.method._target_.endswith("Supervised") and cfg.method.epochs == 10


def test_unknown_option_is_a_readable_hydra_error() -> None:
    with pytest.raises(ConfigCompositionException, match="encoder.*nonexistent|nonexistent"):
        compose_train("encoder=nonexistent")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.target=colour", "unknown data.target 'colour'.*shape, scale"),
        ("data.source=web", "unknown data.source 'web'.*procedural, file"),
        ("bias.name=tilted", "unknown bias 'tilted'.*shape_posX_spaced"),
        ("data.train_fraction=1.5", r"train_fraction must be in \(0, 1\), got 1.5"),
        ("data.val_fraction=-0.1", r"val_fraction must be in \[0, 1\), got -0.1"),
        ("data.batch_size=0", "batch_size must be >= 1, got 0"),
    ],
)
def test_bad_data_options_fail_early(override: str, message: str) -> None:
    cfg = compose_train(override)
    with pytest.raises(Exception, match=message):
        instantiate(cfg.data, bias=cfg.bias.name, bias_control=cfg.bias.control)


def test_a_callback_set_to_null_is_switched_off(tmp_path) -> None:
    from reprlab.builders import build_trainer

    cfg = compose_train("callbacks.progress_bar=null", "logger=csv")
    trainer = build_trainer(
        cfg.trainer, cfg.logger, cfg.callbacks, tmp_path, "pretrain", max_epochs=1, has_val=False
    )
    names = {type(callback).__name__ for callback in trainer.callbacks}
    assert "TQDMProgressBar" not in names and "ModelCheckpoint" in names


def test_a_preset_setting_of_another_method_is_named_before_anything_runs() -> None:
    from reprlab.run_settings import check_run

    cfg = compose_train("experiment=tutorial_simclr_2neg", "method=byol")
    with pytest.raises(ValueError, match="not a setting of method=") as raised:
        check_run(cfg)
    message = str(raised.value)
    assert "method.decoupled=True" in message and "~method.decoupled" in message
    assert "base_momentum" in message  # what BYOL does take
    check_run(compose_train("experiment=tutorial_simclr_2neg"))  # its own method takes them


@pytest.mark.parametrize("preset", ["fashion_mnist_exercise", "cifar10_exercise"])
@pytest.mark.parametrize("method", ["byol", "simsiam", "vicreg", "barlow_twins"])
def test_the_exercise_presets_take_any_two_view_method(preset: str, method: str) -> None:
    from reprlab.run_settings import check_method_keys

    cfg = compose_train(f"experiment={preset}", f"method={method}")
    check_method_keys(cfg.method, method)
    assert cfg.method.projector == "mlp" and cfg.method.projector_hidden == 256
    assert cfg.method.epochs == 10 and "temperature" not in cfg.method
    # SimCLR keeps the exercise's own temperature (method_tuning/<preset>_simclr.yaml) ...
    assert compose_train(f"experiment={preset}").method.temperature == 0.5
    # ... and a command-line value still wins over it.
    assert compose_train(f"experiment={preset}", "method.temperature=0.2").method.temperature == 0.2


@pytest.mark.parametrize("tuning", options("method_tuning"))
def test_every_method_tuning_file_names_an_experiment_and_method_and_applies(tuning: str) -> None:
    experiment, method = next(
        (e, tuning[len(e) + 1 :])
        for e in options("experiment")
        if tuning.startswith(f"{e}_") and tuning[len(e) + 1 :] in options("method")
    )
    cfg = compose_train(f"experiment={experiment}", f"method={method}")
    settings = OmegaConf.load(str(CONF.joinpath("method_tuning", f"{tuning}.yaml")))
    for key, value in settings.items():
        assert cfg.method[key] == value, key


def test_epoch_snapshots_are_named_by_the_epochs_trained(tmp_path) -> None:
    from conftest import FAST

    from reprlab.callbacks import EpochSnapshots
    from reprlab.train import train

    cfg = compose_train(
        *FAST,
        "callbacks=default",
        "callbacks.progress_bar=null",
        "method.epochs=4",
        "probe.epochs=1",
        "callbacks.epoch_snapshots.every_n_epochs=2",
    )
    train(cfg, tmp_path)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("epoch*.ckpt")) == ["epoch002.ckpt", "epoch004.ckpt"]
    snapshot = torch.load(folder / "epoch002.ckpt", weights_only=False, map_location="cpu")
    assert snapshot["epoch"] == 1 and "state_dict" in snapshot  # Lightning's 0-based epoch
    assert not list((folder / "probe").glob("epoch*.ckpt"))  # the probe's 1 epoch: none due
    with pytest.raises(ValueError, match="every_n_epochs must be a whole number >= 0"):
        EpochSnapshots(every_n_epochs=-1)
