"""The command-line tools as users run them: reprlab-train (single run and multirun) and
reprlab-eval, in a subprocess in a temporary folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SMOKE = ["debug=fast", "trainer.accelerator=cpu", "data.num_images=1000", "data.batch_size=100"]
# For the tests about something other than the analyses (those use `trained_run`).
QUICK = [*SMOKE, "analysis=none"]


def run_cli(module: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "REPRLAB_CACHE": str(cwd / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{module} {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def scalar_tags(event_dir: Path) -> set[str]:
    accumulator = EventAccumulator(str(event_dir))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("train")
    run_cli("reprlab.train", *SMOKE, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


def test_train_writes_metrics_config_checkpoints_and_events(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["chance"] == pytest.approx(1 / 3)
    assert set(metrics["seconds"]) >= {"data", "pretrain", "probe"}
    assert metrics["method"].endswith("SimCLR")  # the default job
    assert (trained_run / "config.yaml").is_file() and (
        trained_run / ".hydra" / "config.yaml"
    ).is_file()
    info = json.loads((trained_run / "run_info.json").read_text())
    assert info["torch"] and info["reprlab"]
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert (trained_run / "checkpoints" / "best.ckpt").is_file()
    assert {"train/loss_step", "val/acc"} <= scalar_tags(trained_run / "tensorboard" / "pretrain")
    assert {"val/acc", "test/acc"} <= scalar_tags(trained_run / "tensorboard" / "probe")


ANALYSIS_NUMBERS = ("knn_acc", "logreg_acc", "svm_acc", "kmeans_nmi", "kmeans_ari", "kmeans_acc")
ANALYSIS_FIGURES = ("rsm", "rsm_histogram", "pca", "tsne")


def test_train_writes_the_analysis_files_metrics_and_tensorboard_run(trained_run: Path) -> None:
    folder = trained_run / "analysis"
    assert {p.stem for p in folder.glob("*.png")} == set(ANALYSIS_FIGURES)
    assert {p.stem for p in folder.glob("*.json")} == {
        "rsm",
        "knn",
        "logreg",
        "svm",
        "kmeans",
        "pca",
        "tsne",
        "summary",
    }
    assert (folder / "rsm.npz").is_file()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for name in ANALYSIS_NUMBERS:
        assert -1.0 <= metrics[f"analysis/{name}"] <= 1.0, name
        assert (
            metrics[f"analysis/{name}"]
            == json.loads((folder / "summary.json").read_text())["metrics"][f"analysis/{name}"]
        )
    assert metrics["analysis/knn_acc"] > 0.0 and metrics["seconds"]["analysis/tsne"] > 0

    event_dir = trained_run / "tensorboard" / "analysis"
    events = EventAccumulator(str(event_dir), size_guidance={"images": 0})
    events.Reload()
    assert {f"analysis/{name}" for name in ANALYSIS_NUMBERS} | {"test/acc"} <= set(
        events.Tags()["scalars"]
    )
    assert {f"analysis/{name}" for name in ANALYSIS_FIGURES} <= set(events.Tags()["images"])
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")
    assert "test_features" in (event_dir / "projector_config.pbtxt").read_text()
    metadata = next(event_dir.glob("*/test_features/metadata.tsv")).read_text().splitlines()
    assert metadata[0].split("\t") == ["shape", "scale", "orientation", "posX", "posY", "label"]
    assert len(metadata) == 1 + 64  # debug=fast: 64 images in the projector


def test_eval_probes_a_saved_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    result = run_cli(
        "reprlab.eval",
        f"ckpt_path={ckpt}",
        "probe.label_fraction=0.5",
        "hydra.run.dir=eval",
        cwd=tmp_path,
    )
    assert "test/acc" in result.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["label_fraction"] == 0.5 and metrics["checkpoint"] == str(ckpt)
    assert metrics["num_labelled"] == pytest.approx(metrics["num_train"] / 2, abs=3)
    assert 0.0 <= metrics["analysis/knn_acc"] <= 1.0  # the analysis runs on the evaluated encoder
    assert (tmp_path / "eval" / "analysis" / "rsm.png").is_file()


def test_resume_from_last_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    run_cli(
        "reprlab.train",
        *QUICK,
        "method.epochs=2",
        f"ckpt_path={ckpt}",
        "hydra.run.dir=resumed",
        cwd=tmp_path,
    )
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["test/acc"] >= 0


def test_bad_ckpt_path_fails_before_training(tmp_path: Path, trained_run: Path) -> None:
    result = run_cli(
        "reprlab.train",
        *QUICK,
        "ckpt_path=nowhere.ckpt",
        "hydra.run.dir=r",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0 and "ckpt_path=nowhere.ckpt: no checkpoint" in result.stderr
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    result = run_cli(
        "reprlab.train",
        *QUICK,
        "encoder=identity",
        f"ckpt_path={ckpt}",
        "hydra.run.dir=r2",
        cwd=tmp_path,
        check=False,
    )
    assert (
        result.returncode != 0
        and "trained with encoder reprlab.encoders.CoreEncoder" in result.stderr
    )


def test_multirun_gives_each_job_its_own_folder(tmp_path: Path) -> None:
    run_cli(
        "reprlab.train",
        "-m",
        *QUICK,
        "method=supervised,none",
        "encoder=identity",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_supervised_identity", "1_none_identity"]
    methods = [json.loads((job / "metrics.json").read_text())["method"] for job in jobs]
    assert methods[0].endswith("Supervised") and methods[1] == "none"


def test_unknown_group_option_reads_clearly(tmp_path: Path) -> None:
    result = run_cli("reprlab.train", "method=nonexistent", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "nonexistent" in result.stderr and "supervised" in result.stderr  # names the choices


def test_a_failing_job_does_not_stop_the_multirun(tmp_path: Path) -> None:
    result = run_cli(
        "reprlab.train",
        "-m",
        *QUICK,
        "method=none",
        "data.target=colour,shape",
        "hydra.sweep.dir=sweep",
        "hydra.sweep.subdir=${hydra.job.num}",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    failed, finished = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    assert "unknown data.target 'colour'" in result.stderr
    assert f"the job's folder (config, log) is {failed}" in (failed / "train.log").read_text()
    assert (finished / "metrics.json").is_file() and not (failed / "metrics.json").exists()


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    args = [*QUICK, "method.epochs=4", "trainer.limit_train_batches=4", "data.num_images=2000"]
    run_cli("reprlab.train", *args, "hydra.run.dir=whole", cwd=tmp_path)

    env = {**os.environ, "REPRLAB_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "reprlab.train", *args, "hydra.run.dir=killed"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists() and not (tmp_path / "killed" / "metrics.json").exists(), (
        "not killed mid-run"
    )

    run_cli("reprlab.train", *args, "hydra.run.dir=killed", "ckpt_path=last", cwd=tmp_path)
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    for key in ("pretrain/test/loss", "pretrain/test/acc", "test/acc", "test/loss"):
        assert resumed[key] == whole[key], key


def test_more_devices_than_the_machine_has_fails_early(tmp_path: Path) -> None:
    result = run_cli(
        "reprlab.train",
        *QUICK,
        "trainer.devices=4096",
        "hydra.run.dir=r",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    assert "trainer.devices=4096 but this machine has" in result.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()
