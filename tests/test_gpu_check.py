"""scripts/gpu_check.py: its CPU dry run goes through every step, a step past its budget is
killed without starving the next, and the reprlab.conf shim works from a bare source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


gpu_check = load_script("gpu_check")


def bare_tree(root: Path) -> Path:
    """A copy of the checkout's package and configs without the src/reprlab/conf link, as a
    fresh clone (or a copied working tree) has them."""
    shutil.copytree(
        REPO / "src" / "reprlab",
        root / "src" / "reprlab",
        ignore=shutil.ignore_patterns("conf", "__pycache__"),
    )
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_shim_makes_reprlab_conf_importable_from_a_bare_tree(tmp_path: Path) -> None:
    tree = bare_tree(tmp_path / "tree")
    assert not (tree / "src" / "reprlab" / "conf").exists()
    assert gpu_check.package_root(tree, tmp_path / "work", "auto") == tmp_path / "work" / "pkg"
    shim = gpu_check.make_conf_shim(tree, tmp_path / "shim")
    code = (
        "import reprlab, importlib.resources as r; print(reprlab.__file__); "
        "assert r.files('reprlab.conf').joinpath('train.yaml').is_file(); "
        "from hydra import compose, initialize_config_module; "
        "initialize_config_module(config_module='reprlab.conf', version_base='1.3'); "
        "cfg = compose(config_name='train', overrides=['experiment=cifar10_simclr']); "
        "print(cfg.data.batch_size)"
    )
    env = {**os.environ, "PYTHONPATH": str(shim)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    package_file, batch_size = result.stdout.split()
    assert Path(package_file).parent == shim / "reprlab"  # the shim's, not an installed copy
    assert batch_size == "512"
    # A checkout whose src/reprlab/conf is there needs no shim.
    (tree / "src" / "reprlab" / "conf").symlink_to(tree / "conf")
    assert gpu_check.package_root(tree, tmp_path / "work", "auto") == tree / "src"
    with pytest.raises(FileNotFoundError, match="src/reprlab"):
        gpu_check.make_conf_shim(tmp_path / "nowhere", tmp_path / "shim2")


def test_a_step_past_its_budget_is_killed_with_its_children(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as log:
        ctx = gpu_check.Context(
            cpu=True, work=tmp_path, env=dict(os.environ), log=log, dsprites=None, cifar_root=None
        )
        step = gpu_check.Step("slow", time.monotonic() + 1.0, ctx)
        pid_file = tmp_path / "child.pid"
        # A command that starts a child of its own, as the DDP launcher does.
        code = (
            "import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
        )
        start = time.monotonic()
        with pytest.raises(gpu_check.StepTimeout, match="still running"):
            step.run([sys.executable, "-c", code], "the slow command")
        assert time.monotonic() - start < 30
        child = int(pid_file.read_text())
        for _ in range(100):  # the kill is asynchronous: give it a moment
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the command's child {child} outlived the timeout")
        with pytest.raises(gpu_check.StepFailed, match="exited with status 3"):
            gpu_check.Step("fails", time.monotonic() + 60, ctx).run(
                [sys.executable, "-c", "raise SystemExit(3)"], "the failing command"
            )


def test_arguments_are_checked() -> None:
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "throughput,nonsense"])
    with pytest.raises(SystemExit, match="NAME=SECONDS"):
        gpu_check.parse_args(["--budget", "throughput"])
    args = gpu_check.parse_args(["--steps", "ddp", "--budget", "ddp=12", "--out", "x.json"])
    assert args.steps == ["ddp"] and args.budgets["ddp"] == 12 and args.out.name == "x.json"
    assert sum(gpu_check.GPU_BUDGETS.values()) <= 8 * 60  # the check's 8 minutes on a GPU


def test_cuda_tests_are_selected_by_their_marker() -> None:
    files = {path.name for path in gpu_check.cuda_test_files(REPO / "tests")}
    assert {"test_cuda.py", "test_augment.py", "test_losses.py"} <= files


def dry_run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "summary" / "gpu_check.json"
    # No src/ on the path and the shim forced: the run must work from a bare source tree.
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "OUT")}
    command = [sys.executable, str(SCRIPT), "--cpu-dry-run", "--out", str(out)]
    result = subprocess.run(
        [*command, "--conf-shim", "always", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    return result, json.loads(out.read_text())


def test_a_one_step_dry_run_writes_the_summary_and_the_log(tmp_path: Path) -> None:
    result, summary = dry_run(tmp_path, "--steps", "environment")
    assert result.returncode == 0, result.stdout[-3000:]
    assert list(summary["steps"]) == ["environment"] and summary["ok"]
    record = summary["steps"]["environment"]
    assert record["status"] == "ok" and 0 < record["seconds"] <= record["budget_s"]
    assert record["figures"]["reprlab_conf"] is True and record["figures"]["torch"]
    assert record["figures"]["reprlab"].startswith(summary["pythonpath"])  # the shim's package
    assert "[gpu_check] 1/1 environment" in result.stdout and "all steps ok" in result.stdout
    assert (tmp_path / "summary" / "gpu_check.log").is_file()


@pytest.mark.slow  # minutes on a 2-core machine: 14 processes, each importing torch
@pytest.mark.timeout(1500)
def test_cpu_dry_run_reports_every_step_ok(tmp_path: Path) -> None:
    result, summary = dry_run(tmp_path)
    out = tmp_path / "summary" / "gpu_check.json"
    steps = summary["steps"]
    assert list(steps) == list(gpu_check.STEPS)
    bad = {name: step.get("error") for name, step in steps.items() if step["status"] != "ok"}
    assert not bad, f"{bad}\n{result.stdout[-6000:]}"
    assert result.returncode == 0 and summary["ok"] and summary["mode"] == "cpu-dry-run"
    assert out.with_suffix(".log").stat().st_size > 0
    assert summary["pythonpath"].endswith("pkg")  # the shim

    assert steps["environment"]["figures"]["reprlab_conf"] is True
    tests = steps["cuda_tests"]["figures"]
    assert tests["tests"] >= 8 and tests["skipped"] == tests["tests"]  # no GPU here
    throughput = steps["throughput"]["figures"]
    assert set(throughput["ours"]) == {"bf16", "32"} and set(throughput["ratio"]) == {"bf16", "32"}
    assert throughput["conventional"]["images_per_s"] > 0
    assert set(throughput["phases_ms"]) >= {"data", "augmentation", "forward", "backward"}
    cifar = steps["cifar10_simclr"]["figures"]
    assert cifar["resume_identical"] is True and len(cifar["resume_differences"]) == 5
    assert 0 <= cifar["test/acc"] <= 1
    tutorial = steps["tutorial_simclr_fast"]["figures"]
    assert 0 <= tutorial["test_acc"] <= 1 and tutorial["pretrain_seconds"] > 0
    assert steps["bench_supervised"]["figures"]["speedup"] > 0
    assert steps["bench_vae"]["figures"]["trainer_seconds_per_epoch"] > 0
    ddp = steps["ddp"]["figures"]["ddp_cpu_vs_single_process"]
    assert abs(ddp["test/acc"]) <= 1e-6 and abs(ddp["pretrain/test/acc"]) <= 1e-6
