"""Few labels: the supervised network retrains on the labelled share only, with the tutorial's
scaled epochs; a frozen encoder is probed at a list of fractions without re-pretraining."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST, build_datamodule, compose_train
from hydra import compose, initialize_config_module

from reprlab.checkpoints import load_checkpoint
from reprlab.data import DSpritesDataModule
from reprlab.eval import evaluate, load_run
from reprlab.run_settings import labelled_epochs
from reprlab.train import start, train


@pytest.mark.parametrize(
    ("epochs", "fraction", "expected"),
    [(10, 1.0, 10), (10, 0.1, 32), (21, 0.49, 30), (20, 0.05, 90), (8, 0.75, 10), (1, 0.25, 2)],
)
def test_labelled_epochs_follow_the_tutorial(epochs: int, fraction: float, expected: int) -> None:
    # The tutorial's rule: ceil(epochs / sqrt(fraction)) ("10 epochs at 0.1 -> about 30").
    assert labelled_epochs(epochs, fraction) == expected


def test_supervised_trains_only_on_the_stratified_labelled_share(tmp_path) -> None:
    cfg = compose_train(
        *FAST,
        "callbacks=default",
        "callbacks.model_checkpoint.monitor=null",  # a checkpoint after every epoch
        "method=supervised",
        "method.epochs=1",
        "probe.epochs=1",
        "data.label_fraction=0.25",
    )
    datamodule = build_datamodule(cfg)
    train_index = datamodule.split_index("train")
    positions = datamodule.label_subset(0.25, cfg.data.label_seed)
    expected = train_index[positions]
    assert torch.equal(datamodule.split_index("labelled"), expected)
    assert datamodule.train_split == "labelled"
    served = torch.cat([labels for _, labels in datamodule.train_dataloader()])
    assert len(served) == len(expected) < len(train_index)
    all_labels = datamodule.targets[train_index]
    for label in range(datamodule.num_classes):  # stratified: a quarter of every class
        count = int((all_labels == label).sum())
        assert int((served == label).sum()) == int(count * 0.25 + 0.5)

    metrics = train(cfg, tmp_path)
    assert metrics["num_pretrain"] == metrics["num_labelled"] == len(expected)
    assert metrics["pretrain_epochs"] == 2 and metrics["probe_epochs"] == 2  # ceil(1 / sqrt(.25))
    assert metrics["data_label_fraction"] == metrics["label_fraction"] == 0.25
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    batches = -(-len(expected) // cfg.data.batch_size)
    assert checkpoint["global_step"] == 2 * batches  # two epochs over the labelled share only
    # The network's own classifier is broken down per test group too.
    shares = [metrics[f"pretrain/test/acc_shape_{s}"] for s in ("square", "ellipse", "heart")]
    assert min(shares) >= 0 and max(shares) <= 1


def test_self_supervised_methods_pretrain_on_every_training_image() -> None:
    cfg = compose_train(*FAST, "method=simclr", "data.label_fraction=0.1")
    datamodule = build_datamodule(cfg)
    assert datamodule.train_split == "train"
    served = sum(len(labels) for _, labels in datamodule.train_dataloader())
    assert served == len(datamodule.split_index("train"))
    assert len(datamodule.split_index("labelled")) < served / 5


def test_probe_sees_only_the_labelled_share(tmp_path) -> None:
    cfg = compose_train(
        *FAST, "method=none", "encoder=identity", "probe.epochs=1", "data.label_fraction=0.2"
    )
    metrics = train(cfg, tmp_path)
    assert metrics["num_labelled"] == pytest.approx(0.2 * metrics["num_train"], abs=3)
    assert metrics["probe_epochs"] == 3  # ceil(1 / sqrt(0.2))


def test_eval_probes_one_checkpoint_at_each_fraction(tmp_path) -> None:
    cfg = compose_train(*FAST, "callbacks=default", "method=vae", "debug=fast")
    train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt_path={ckpt}", "probe.label_fractions=[0.1,0.5,1.0]", "probe.epochs=1"]
    with initialize_config_module(config_module="reprlab.conf", version_base="1.3"):
        composed = compose(config_name="eval", overrides=[*FAST, *overrides])
    cfg, checkpoint, path = load_run(composed, [*FAST, *overrides], tmp_path / "eval")
    metrics = evaluate(cfg, checkpoint, path, tmp_path / "eval")

    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    num_train = metrics["num_train"]
    for fraction, epochs in ((0.1, 4), (0.5, 2), (1.0, 1)):
        prefix = f"frac_{fraction:g}/"
        assert 0 <= metrics[prefix + "test/acc"] <= 1
        assert metrics[prefix + "num_labelled"] == pytest.approx(fraction * num_train, abs=3)
        assert metrics[prefix + "probe_epochs"] == epochs
    assert metrics["frac_1/test/acc"] == metrics["test/acc"]  # the main probe, not run twice
    assert not any(key.startswith("frac_0.2") for key in metrics)
    assert (tmp_path / "eval" / "label_fractions.png").stat().st_size > 1000
    assert "pretrain/test/acc" not in metrics  # eval does not retrain


def test_label_fractions_are_refused_for_an_encoder_trained_on_labels(tmp_path) -> None:
    cfg = compose_train(*FAST, "method=supervised", "probe.label_fractions=[0.1,1.0]")
    with pytest.raises(ValueError, match=r"data\.label_fraction=0\.1,1\.0"):
        start(cfg, tmp_path)
    assert not (tmp_path / "config.yaml").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("value", "message"),
    [("[]", "non-empty list"), ("0.5", "non-empty list"), ("[0.5,1.5]", r"\(0, 1\], got 1.5")],
)
def test_bad_label_fractions_read_clearly(value: str, message: str, tmp_path) -> None:
    cfg = compose_train(*FAST, "method=none", f"probe.label_fractions={value}")
    with pytest.raises(ValueError, match=message):
        start(cfg, tmp_path)


@pytest.mark.parametrize("fraction", [0, 1.5])
def test_bad_data_label_fraction_is_refused(fraction: float) -> None:
    with pytest.raises(
        ValueError, match=rf"data.label_fraction must be in \(0, 1\], got {fraction}"
    ):
        DSpritesDataModule(num_images=200, batch_size=50, label_fraction=fraction)
