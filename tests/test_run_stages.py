"""The run as a list of stages: every key logged under the split it was measured on, one place
for the metric keys, decisions made once and recorded, and user errors as one message."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FAST, compose_train

from reprlab import metric_keys, run_settings
from reprlab.data.render import SHAPE_NAMES
from reprlab.train import pretrain_steps, train

SMOKE = ["debug=fast", "trainer.accelerator=cpu", "data.num_images=1000", "data.batch_size=100"]


def run_cli(
    module: str, *args: str, cwd: Path, full_error: bool = True
) -> subprocess.CompletedProcess:
    env = {**os.environ, "REPRLAB_CACHE": str(cwd / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def last_logged(metrics_csv: Path) -> dict[str, float]:
    """The last value of every column of a CSVLogger's metrics.csv."""
    values: dict[str, float] = {}
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            values.update({key: float(value) for key, value in row.items() if value})
    return values


def test_each_stage_logs_under_its_own_split(tmp_path: Path) -> None:
    cfg = compose_train(*FAST, "method=simclr", "method.epochs=2", "probe.epochs=1")
    metrics = train(cfg, tmp_path)
    # The test loop's geometry is the test split's ...
    for name in ("proj_std", "alignment", "uniformity", "collapsed"):
        assert f"pretrain/test/{name}" in metrics, name
    # ... and the validation keys hold what the validation loop logged in the last epoch.
    logged = last_logged(tmp_path / "csv" / "pretrain" / "metrics.csv")
    val_keys = [key for key in metrics if key.startswith("pretrain/val/")]
    assert {"pretrain/val/proj_std", "pretrain/val/alignment", "pretrain/val/acc"} <= set(val_keys)
    for key in val_keys:
        assert metrics[key] == pytest.approx(logged[key.removeprefix("pretrain/")], rel=1e-6), key
    assert metrics["pretrain/val/alignment"] != metrics["pretrain/test/alignment"]


def test_the_pretraining_epochs_are_decided_once_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_train(
        *FAST, "method=supervised", "method.epochs=1", "probe.epochs=1", "data.label_fraction=0.25"
    )
    with caplog.at_level("INFO"):
        metrics = train(cfg, tmp_path)
    assert "method.epochs 1 -> 2 for data.label_fraction 0.25" in caplog.text
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["pretrain_epochs"] == metrics["pretrain_epochs"] == 2
    assert saved["method"]["epochs"] == 1  # the request stays as given


@pytest.mark.parametrize("key", ["max_epochs", "max_steps"])
def test_a_trainer_length_names_the_stage_keys(tmp_path: Path, key: str) -> None:
    result = run_cli("reprlab.train", *SMOKE, f"trainer.{key}=3", cwd=tmp_path, full_error=False)
    assert result.returncode != 0
    assert f"trainer.{key}=3 is not used" in result.stderr
    assert "method.epochs" in result.stderr and "probe.epochs" in result.stderr
    assert "Traceback" not in result.stderr


def test_compile_auto_compiles_only_a_long_pretraining_off_the_cpu(caplog) -> None:
    threshold = run_settings.COMPILE_AUTO_MIN_STEPS
    decide = run_settings.decide_compile
    with caplog.at_level("INFO", logger="reprlab.run_settings"):
        assert decide("auto", threshold, on_cpu=False) is True
        assert decide("auto", threshold - 1, on_cpu=False) is False
    assert f"compiling the encoder ({threshold} pretraining steps" in caplog.text
    assert "not compiling" in caplog.text
    assert decide(True, 1, on_cpu=True) is True
    assert decide(False, 10**6, on_cpu=False) is False
    # On the CPU auto stays eager (few_channel_layers' paths run eager only).
    with caplog.at_level("INFO", logger="reprlab.run_settings"):
        assert decide("auto", 10**6, on_cpu=True) is False
    assert "not compiling the encoder on the CPU" in caplog.text


def test_pretrain_steps_count_the_batches_an_epoch_runs() -> None:
    class Batches:  # a datamodule of 15 training batches
        def train_dataloader(self) -> list[int]:
            return list(range(15))

    assert pretrain_steps(Batches(), 40, None) == 600  # the default job's
    assert pretrain_steps(Batches(), 40, 3) == 120
    assert pretrain_steps(Batches(), 40, 0.5) == 280


def test_a_bad_compile_setting_is_refused_before_the_run(tmp_path: Path) -> None:
    result = run_cli("reprlab.train", *SMOKE, "compile=yes", cwd=tmp_path, full_error=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "compile must be true, false or auto, got 'yes'" in result.stderr


def test_a_user_error_is_one_message_without_traceback(tmp_path: Path) -> None:
    result = run_cli(
        "reprlab.train",
        *SMOKE,
        "data.target=colour",
        "hydra.run.dir=r",
        cwd=tmp_path,
        full_error=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "reprlab-train: ValueError: unknown data.target 'colour'" in result.stderr
    assert f"job folder: {tmp_path / 'r'}" in result.stderr
    # A missing file likewise.
    result = run_cli(
        "reprlab.train",
        *SMOKE,
        "data.source=file",
        "data.path=/no/such.npz",
        cwd=tmp_path,
        full_error=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "/no/such.npz" in result.stderr


def test_a_failed_multirun_job_is_named_and_the_others_finish(tmp_path: Path) -> None:
    result = run_cli(
        "reprlab.train",
        "-m",
        *SMOKE,
        "analysis=none",
        "method=none",
        "data.target=colour,shape",
        "hydra.sweep.dir=sweep",
        "hydra.sweep.subdir=${hydra.job.num}",
        cwd=tmp_path,
        full_error=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"job folder: {tmp_path / 'sweep' / '0'}" in result.stderr
    assert (tmp_path / "sweep" / "1" / "metrics.json").is_file()


def test_eval_of_a_runs_checkpoint_repeats_its_probe(tmp_path: Path) -> None:
    args = [*SMOKE, "analysis=none", "logger=csv"]
    assert run_cli("reprlab.train", *args, "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    evaluated = run_cli("reprlab.eval", f"ckpt_path={ckpt}", "hydra.run.dir=eval", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/acc", "test/loss", "train/acc"):
        assert again[key] == trained[key], key


def test_the_metric_keys_are_built_and_read_back_in_one_place() -> None:
    assert metric_keys.SHAPES == SHAPE_NAMES
    key = metric_keys.fraction_prefix(0.05) + "test/acc"
    assert key == "frac_0.05/test/acc"
    assert metric_keys.split_fraction_key(key) == (0.05, "test/acc")
    assert metric_keys.split_fraction_key("frac_x/test/acc") is None
    assert metric_keys.split_fraction_key("test/acc") is None
    group = metric_keys.shape_third_group("heart", 3)
    assert metric_keys.group_key("test/acc", group) == "test/acc_shape_heart_posX_third_3"
    logged = {"train/loss_step": 1.0, "train/loss_epoch": 2.0, "val/acc": 0.5, "train/acc": 0.4}
    assert metric_keys.fitted_metrics(logged, "pretrain/") == {
        "pretrain/val/acc": 0.5,
        "pretrain/train/acc": 0.4,
    }
