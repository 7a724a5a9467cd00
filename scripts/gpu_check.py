#!/usr/bin/env python3
"""One command that checks reprlab's GPU path end to end and writes one JSON summary.

Run, from the repository root, on a machine with a CUDA GPU (at most ~8 minutes of wall time)::

    python3 scripts/gpu_check.py                # JSON: $OUT/gpu_check.json or ./gpu_check.json
    python3 scripts/gpu_check.py --cpu-dry-run  # every step at tiny sizes on the CPU
    python3 scripts/gpu_check.py --steps throughput,ddp --budget throughput=200

Steps, in order, each in subprocesses under its own time budget (a step that overruns is killed,
marked ``timeout``, and the next one still gets its own budget; time a step leaves unused goes to
the ones after it):

1. ``environment``: versions, the GPU, and that ``reprlab.conf`` (the Hydra configs) imports.
2. ``cuda_tests``: ``pytest -m cuda`` -- the tests that skip without CUDA (tests/test_cuda.py: the
   device-sensitive parts -- batched augmentation, the on-device data path, bf16 autocast, a
   short training run -- plus the CUDA cases in the augmentation and loss tests).
3. ``throughput``: ``scripts/bench_throughput.py`` -- ResNet-18 (CIFAR stem) SimCLR at 32x32,
   batch 512; ours (data on the device, batched augmentation) at bf16 + torch.compile and at
   eager fp32, against the conventional pipeline (per-image torchvision transforms in a
   DataLoader with workers) in the same process: images/s, ratios, phase times, top kernels.
4. ``cifar10_simclr``: ``reprlab-train experiment=cifar10_simclr trainer=gpu
   trainer.precision=bf16-mixed data.on_device=true compile=true`` for 3 epochs on a CIFAR-10
   layout folder written on the spot (or ``--cifar-root``), through the probe and the analyses:
   metrics.json, checkpoint and TensorBoard events must exist. Then the same run killed once its
   first epoch's checkpoint is written and resumed with ``ckpt_path=last``: the differences of
   its metrics from the uninterrupted run's are reported (on the CPU they must be zero).
5. ``tutorial_simclr_fast``: ``experiment=tutorial_simclr_fast trainer=gpu`` on the real dSprites
   subset (``--dsprites``): pretraining seconds and the probe's test accuracy against the goal
   (>= 97.5% with pretraining under 2 minutes).
6. ``bench_supervised`` and 7. ``bench_vae``: those benchmarks on cuda.
8. ``ddp``: ``trainer=ddp trainer.devices=1`` runs; and a 2-process ``trainer=ddp_cpu`` run's
   synchronised test metrics equal a single process's pass over its saved checkpoints.

``--cpu-dry-run`` runs the same steps at tiny sizes on the CPU (``trainer=cpu`` / ``ddp_cpu``,
no compile, a few batches), so that the script keeps working without a GPU.

This file uses the standard library only, so it runs and reports even when a dependency is
missing. It needs no installed reprlab: it puts ``src/`` on the subprocesses' PYTHONPATH, and
when the source tree lacks ``src/reprlab/conf`` (the package maps ``reprlab.conf`` to the
top-level ``conf/`` only when installed) it builds a shim package in its work folder whose
entries link to ``src/reprlab/*`` and ``conf/``. On a machine without the Python dependencies,
install the wheels listed in ``scripts/gpu_wheels.txt`` first (that file says how).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
DSPRITES_CANDIDATES = (
    REPO.parent / "shared" / "data" / "dsprites_subset.npz",
    REPO / "shared" / "data" / "dsprites_subset.npz",
    REPO / ".gpu_data" / "dsprites_subset.npz",
)
# Wall-clock budget of each step in seconds (GPU mode: 480 in all, the 8 minutes the check may
# take; the CPU dry run's are for a slow, shared machine).
GPU_BUDGETS = {
    "environment": 15,
    "cuda_tests": 35,
    "throughput": 100,  # compiling the model takes most of it
    "cifar10_simclr": 150,  # three runs, each compiling (the later ones from the cache)
    "tutorial_simclr_fast": 85,
    "bench_supervised": 30,
    "bench_vae": 20,
    "ddp": 45,
}
CPU_BUDGETS = {
    "environment": 60,
    "cuda_tests": 120,
    "throughput": 120,
    "cifar10_simclr": 420,
    "tutorial_simclr_fast": 120,
    "bench_supervised": 120,
    "bench_vae": 120,
    "ddp": 300,
}
STEPS = tuple(GPU_BUDGETS)
TUTORIAL_GOAL = {"test_acc": 0.975, "pretrain_seconds": 120.0}
# Metrics compared between the uninterrupted and the killed-and-resumed CIFAR-10 run.
RESUME_KEYS = (
    "pretrain/val/acc",
    "pretrain/test/loss",
    "pretrain/test/acc",
    "test/acc",
    "test/loss",
)


class StepFailed(Exception):
    """A step's check failed (or one of its commands exited with an error)."""


class StepTimeout(Exception):
    """A step ran past its budget; its processes were killed."""


@dataclass
class Context:
    cpu: bool
    work: Path
    env: dict[str, str]
    log: TextIO
    dsprites: Path | None
    cifar_root: Path | None

    def trainer(self) -> str:
        return "trainer=cpu" if self.cpu else "trainer=gpu"


@dataclass
class Step:
    """One step's clock and its subprocesses (each in its own process group, so that a timeout
    also ends the processes a command started, e.g. DDP ranks)."""

    name: str
    deadline: float
    ctx: Context
    figures: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def start(self, args: list[str], cwd: Path | None = None) -> subprocess.Popen:
        if self.remaining() <= 0:
            raise StepTimeout("no time left in the step's budget")
        self.ctx.log.write(f"\n$ {' '.join(args)}\n")
        self.ctx.log.flush()
        return subprocess.Popen(
            args,
            cwd=cwd or self.ctx.work,
            env=self.ctx.env,
            stdout=self.ctx.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, process: subprocess.Popen, what: str) -> None:
        try:
            code = process.wait(timeout=max(self.remaining(), 0.1))
        except subprocess.TimeoutExpired:
            kill_group(process)
            raise StepTimeout(f"{what} was still running when the step's time ran out") from None
        if code != 0:
            raise StepFailed(f"{what} exited with status {code}")

    def run(self, args: list[str], what: str, cwd: Path | None = None) -> None:
        self.wait(self.start(args, cwd), what)

    def python(self, *args: str | Path) -> list[str]:
        return [sys.executable, *map(str, args)]


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise StepFailed(f"{path} was not written")
    return json.loads(path.read_text())


def train_args(step: Step, run_dir: Path, *overrides: str) -> list[str]:
    return step.python("-m", "reprlab.train", *overrides, f"hydra.run.dir={run_dir}")


# -- the steps ----------------------------------------------------------------------------------
ENVIRONMENT_PROBE = """
import importlib.metadata, importlib.resources, json, platform, sys
info = {"python": platform.python_version()}
# Versions from the installed metadata (importing them all would cost seconds).
for name in ("torch", "torchvision", "lightning", "torchmetrics", "hydra-core", "omegaconf",
             "antlr4-python3-runtime", "kornia", "kornia_rs", "numpy", "scikit-learn", "scipy",
             "threadpoolctl", "tensorboard", "matplotlib", "pytest", "pytest-timeout"):
    try:
        info[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        info[name] = "missing"
import torch, reprlab
info["reprlab"] = reprlab.__file__
info["reprlab_conf"] = importlib.resources.files("reprlab.conf").joinpath("train.yaml").is_file()
info["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    properties = torch.cuda.get_device_properties(0)
    info["gpu"] = properties.name
    info["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
    info["capability"] = list(torch.cuda.get_device_capability(0))
    info["cuda"] = torch.version.cuda
open(sys.argv[1], "w").write(json.dumps(info))
"""


def step_environment(step: Step) -> dict[str, Any]:
    out = step.ctx.work / "environment.json"
    step.run(step.python("-c", ENVIRONMENT_PROBE, out), "the environment probe")
    info = read_json(out)
    missing = [name for name, version in info.items() if version == "missing"]
    if missing:
        raise StepFailed(f"not importable: {', '.join(missing)} (see scripts/gpu_wheels.txt)")
    if not info["reprlab_conf"]:
        raise StepFailed("reprlab.conf has no train.yaml: the Hydra configs are not importable")
    if not step.ctx.cpu and not info["cuda_available"]:
        raise StepFailed("torch sees no CUDA device (use --cpu-dry-run on a CPU machine)")
    return info


def cuda_test_files(tests: Path) -> list[Path]:
    """The test files that mark anything ``cuda``: collecting only these (``-m cuda`` still
    selects) spares importing the whole suite."""
    return sorted(path for path in tests.glob("test_*.py") if "mark.cuda" in path.read_text())


def step_cuda_tests(step: Step) -> dict[str, Any]:
    report = step.ctx.work / "cuda_tests.xml"
    files = cuda_test_files(REPO / "tests")
    if not files:
        raise StepFailed("no test file marks a test cuda")
    args = step.python(
        "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={report}"
    )
    process = step.start([*args, *map(str, files)], cwd=REPO)
    with contextlib.suppress(StepFailed):  # the counts below say what failed
        step.wait(process, "pytest -m cuda")
    if not report.is_file():
        raise StepFailed(f"pytest exited with status {process.returncode} and wrote no report")
    suites = ET.parse(report).getroot()
    suite = suites if suites.tag == "testsuite" else suites[0]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{case.get('classname')}.{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    figures = {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"]}
    figures["passed"] -= counts["skipped"]
    figures["failed_tests"] = failed
    if counts["tests"] == 0:
        raise StepFailed("no test is marked cuda")
    if failed or process.returncode != 0:
        raise StepFailed(f"{len(failed)} cuda test(s) failed: {', '.join(failed)}")
    if not step.ctx.cpu and counts["skipped"]:
        raise StepFailed(f"{counts['skipped']} cuda test(s) skipped on a GPU machine")
    return figures


def step_throughput(step: Step) -> dict[str, Any]:
    out = step.ctx.work / "throughput.json"
    if step.ctx.cpu:
        sizes = ["--device", "cpu", "--batch-size", "4", "--images", "8", "--steps", "1"]
        sizes += ["--warmup-steps", "0", "--workers", "1", "--ours", "bf16,32"]
        sizes += ["--profile-steps", "1"]
    else:
        workers = str(min(8, os.cpu_count() or 1))
        sizes = ["--device", "cuda", "--batch-size", "512", "--images", "20000", "--steps", "30"]
        sizes += ["--warmup-steps", "5", "--workers", workers, "--ours", "bf16+compile,32"]
        sizes += ["--profile-steps", "5", "--compare-augment"]
    script = REPO / "scripts" / "bench_throughput.py"
    step.run(step.python(script, *sizes, "--json", out), "bench_throughput.py")
    return read_json(out)


def write_cifar_layout(step: Step, root: Path, num_train: int, num_test: int) -> None:
    """A CIFAR-10 stand-in in the official layout (tests/conftest.py's writer: coarse colour
    patterns per class plus noise), in a subprocess like every other step's work."""
    code = (
        "import sys; from pathlib import Path; "
        f"sys.path.insert(0, {str(REPO / 'tests')!r}); "
        "from conftest import write_cifar10; "
        f"write_cifar10(Path({str(root)!r}), num_train={num_train}, num_test={num_test})"
    )
    step.run(step.python("-c", code), "writing the CIFAR-10 layout folder")


def event_files(run_dir: Path, stage: str) -> int:
    return len(list((run_dir / "tensorboard" / stage).rglob("events.out.tfevents*")))


def step_cifar10_simclr(step: Step) -> dict[str, Any]:
    ctx = step.ctx
    real = ctx.cifar_root is not None and (ctx.cifar_root / "cifar-10-batches-py").is_dir()
    num_train, num_test = (160, 40) if ctx.cpu else (10000, 2000)
    root = ctx.cifar_root if real else ctx.work / "cifar10"
    if not real:
        write_cifar_layout(step, root, num_train, num_test)
    overrides = [
        "experiment=cifar10_simclr",
        f"data.root={root}",
        "method.epochs=3",
        "callbacks.progress_bar=null",
    ]
    if real:
        overrides.append(f"data.num_images={num_train + num_test}")
    if ctx.cpu:  # the GPU settings' code paths, at a few batches: bf16 autocast and on_device
        overrides += [
            "trainer=cpu",
            "trainer.precision=bf16-mixed",
            "data.on_device=true",
            "compile=false",
            "data.batch_size=16",
            "optim.warmup_epochs=0",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "probe.epochs=1",
            "analysis.rsm_images=40",
            "analysis.tsne_images=40",
            "analysis.projector_images=16",
        ]
    else:
        overrides += [
            "trainer=gpu",
            "trainer.precision=bf16-mixed",
            "data.on_device=true",
            "compile=true",
            "optim.warmup_epochs=1",
            "probe.epochs=10",
            "analysis.tsne_images=1000",
        ]
    whole = ctx.work / "cifar_whole"
    step.run(train_args(step, whole, *overrides), "the uninterrupted cifar10_simclr run")
    metrics = read_json(whole / "metrics.json")
    missing = [
        str(path.relative_to(whole))
        for path in (whole / "checkpoints" / "last.ckpt", whole / "analysis" / "summary.json")
        if not path.is_file()
    ]
    events = {stage: event_files(whole, stage) for stage in ("pretrain", "probe", "analysis")}
    missing += [f"tensorboard/{stage} events" for stage, count in events.items() if not count]
    if missing:
        raise StepFailed(f"the run did not write: {', '.join(missing)}")
    figures: dict[str, Any] = {
        "data": "real CIFAR-10" if real else "written stand-in",
        "train_images": metrics.get("num_train"),
        "test_images": metrics.get("num_test"),
        "seconds": metrics.get("seconds"),
        **{key: metrics.get(key) for key in (*RESUME_KEYS, "analysis/knn_acc")},
    }

    # The analyses run after pretraining and the probe and change neither: the resumed pair
    # leaves them out to save time.
    pair = [*(o for o in overrides if not o.startswith("analysis.")), "analysis=none"]
    killed = ctx.work / "cifar_killed"
    last = killed / "checkpoints" / "last.ckpt"
    process = step.start(train_args(step, killed, *pair))
    while not last.exists() and process.poll() is None and step.remaining() > 0:
        time.sleep(0.02)
    kill_group(process)
    if step.remaining() <= 0:
        raise StepTimeout("the run to be killed wrote no checkpoint in time")
    if not last.exists() or (killed / "metrics.json").exists():
        raise StepFailed("the run to be killed finished or failed before its first checkpoint")
    step.run(train_args(step, killed, *pair, "ckpt_path=last"), "the resumed cifar10_simclr run")
    resumed = read_json(killed / "metrics.json")
    differences = {
        key: resumed[key] - metrics[key] for key in RESUME_KEYS if key in metrics and key in resumed
    }
    figures["resume_differences"] = differences
    figures["resume_identical"] = all(value == 0 for value in differences.values())
    if len(differences) != len(RESUME_KEYS):
        raise StepFailed(f"metrics.json lacks some of {RESUME_KEYS}")
    if ctx.cpu and not figures["resume_identical"]:  # CPU runs with a fixed seed are exact
        raise StepFailed(f"the resumed run differs from the uninterrupted one: {differences}")
    return figures


def tutorial_data(ctx: Context) -> list[str]:
    if ctx.dsprites is not None:
        # The dry run: a random 2,000 of the subset's images, through the same file loader.
        return [f"data.path={ctx.dsprites}", *(["data.num_images=2000"] if ctx.cpu else [])]
    if ctx.cpu:  # the dry run works without the real subset
        return ["data.source=procedural", "data.num_images=2000"]
    raise StepFailed(
        "the real dSprites subset was not found (pass --dsprites, or copy it to "
        f"{DSPRITES_CANDIDATES[-1]} and carry that folder)"
    )


def step_tutorial_simclr_fast(step: Step) -> dict[str, Any]:
    ctx = step.ctx
    overrides = ["experiment=tutorial_simclr_fast", ctx.trainer(), *tutorial_data(ctx)]
    overrides += ["analysis=none", "callbacks.progress_bar=null"]
    if ctx.cpu:
        overrides += ["method.epochs=1", "trainer.limit_train_batches=2", "probe.epochs=1"]
    run = ctx.work / "tutorial_simclr_fast"
    step.run(train_args(step, run, *overrides), "the tutorial_simclr_fast run")
    metrics = read_json(run / "metrics.json")
    seconds = metrics["seconds"]["pretrain"]
    return {
        "data": str(ctx.dsprites) if ctx.dsprites else "procedural",
        "pretrain_seconds": seconds,
        "test_acc": metrics["test/acc"],
        "seconds": metrics["seconds"],
        "goal": TUTORIAL_GOAL,
        "goal_met": metrics["test/acc"] >= TUTORIAL_GOAL["test_acc"]
        and seconds < TUTORIAL_GOAL["pretrain_seconds"],
    }


def dsprites_option(ctx: Context) -> list[str]:
    return ["--data", str(ctx.dsprites)] if ctx.dsprites else []


def step_bench_supervised(step: Step) -> dict[str, Any]:
    ctx = step.ctx
    out = ctx.work / "supervised.json"
    if ctx.cpu:  # procedural images, only as many as the few batches need
        sizes = ["--device", "cpu", "--epochs", "1", "--images", "1000"]
    else:
        sizes = ["--device", "cuda", "--epochs", "5", "--baseline-epochs", "2"]
        sizes += dsprites_option(ctx)
    script = REPO / "scripts" / "bench_supervised.py"
    step.run(step.python(script, *sizes, "--json", out), "bench_supervised")
    return read_json(out)


def step_bench_vae(step: Step) -> dict[str, Any]:
    ctx = step.ctx
    out = ctx.work / "vae.json"
    if ctx.cpu:  # procedural images, 2 batches
        sizes = ["--device", "cpu", "--images", "200", "--batch-size", "100"]
        sizes += ["--epochs", "1", "--profile-batches", "1"]
    else:
        # The conventional loop differs from ours on a GPU only by its loss (the few-channel
        # layers are CPU paths): not worth its share of the device time.
        sizes = ["--device", "cuda", "--epochs", "2", "--no-baseline", *dsprites_option(ctx)]
    script = REPO / "scripts" / "bench_vae.py"
    args = step.python(script, *sizes, "--trainer", "--json", out)
    step.run(args, "bench_vae")
    return read_json(out)


# test_distributed.py's check, in a process of its own: what one process computes from a DDP
# run's checkpoints (the model's own and the probe's test accuracy, SimCLR's test NT-Xent).
SINGLE_PROCESS_PASS = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_distributed import single_process_metrics
Path({out!r}).write_text(json.dumps(single_process_metrics(Path({run!r}))))
"""


def step_ddp(step: Step) -> dict[str, Any]:
    ctx = step.ctx
    # test_distributed.py's smoke settings: SimCLR without augmentation, so that the test pass
    # is deterministic; 1005 images, so that the ranks' test shares are unequal.
    smoke = ["debug=fast", "data.batch_size=100", "augment=none", "callbacks.progress_bar=null"]
    smoke.append("analysis=none")  # the analyses' DDP path is no different from one process's
    one = ctx.work / "ddp_one_device"
    # 1000 images here: one process would test the 1005's last image as a batch of its own.
    one_device = ["trainer=ddp", "trainer.devices=1", "data.num_images=1000"]
    if ctx.cpu:
        one_device.append("trainer.accelerator=cpu")
    step.run(train_args(step, one, *smoke, *one_device), "trainer=ddp trainer.devices=1")
    one_metrics = read_json(one / "metrics.json")

    two = ctx.work / "ddp_cpu"
    ddp_cpu = ["trainer=ddp_cpu", "data.num_images=1005"]
    step.run(train_args(step, two, *smoke, *ddp_cpu), "trainer=ddp_cpu")
    metrics = read_json(two / "metrics.json")
    out = ctx.work / "ddp_single_process.json"
    code = SINGLE_PROCESS_PASS.format(tests=str(REPO / "tests"), out=str(out), run=str(two))
    step.run(step.python("-c", code), "the single-process pass over the DDP checkpoints")
    single = read_json(out)
    pairs = {
        "pretrain/test/acc": (single["own"], 1e-6),
        "test/acc": (single["probe"], 1e-6),
        # The ranks weight the last batch's unequal shares by their own counts (see the test).
        "pretrain/test/nt_xent": (single["nt_xent"], 2e-3),
    }
    differences = {key: metrics[key] - value for key, (value, _) in pairs.items()}
    figures = {
        "one_device": {key: one_metrics.get(key) for key in ("pretrain/test/acc", "test/acc")},
        "ddp_cpu_vs_single_process": differences,
    }
    off = [key for key, (_, tolerance) in pairs.items() if abs(differences[key]) > tolerance]
    if off:
        raise StepFailed(f"trainer=ddp_cpu differs from a single process on {off}: {differences}")
    return figures


STEP_FUNCTIONS: dict[str, Callable[[Step], dict[str, Any]]] = {
    "environment": step_environment,
    "cuda_tests": step_cuda_tests,
    "throughput": step_throughput,
    "cifar10_simclr": step_cifar10_simclr,
    "tutorial_simclr_fast": step_tutorial_simclr_fast,
    "bench_supervised": step_bench_supervised,
    "bench_vae": step_bench_vae,
    "ddp": step_ddp,
}


# -- the package path ---------------------------------------------------------------------------
def make_conf_shim(repo: Path, target: Path) -> Path:
    """A folder holding a ``reprlab`` package whose entries link to ``repo/src/reprlab/*`` and
    whose ``conf`` links to ``repo/conf``: ``reprlab.conf`` imports from a bare source tree,
    as it does from an installed wheel. Returns the folder to put on PYTHONPATH."""
    source = repo / "src" / "reprlab"
    if not (source / "__init__.py").is_file() or not (repo / "conf" / "train.yaml").is_file():
        raise FileNotFoundError(f"{repo} does not hold src/reprlab/ and conf/train.yaml")
    package = target / "reprlab"
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name not in ("conf", "__pycache__"):
            (package / entry.name).symlink_to(entry.resolve())
    (package / "conf").symlink_to((repo / "conf").resolve(), target_is_directory=True)
    return target


def package_root(repo: Path, work: Path, shim: str) -> Path:
    has_conf = (repo / "src" / "reprlab" / "conf" / "train.yaml").is_file()
    if shim == "always" or not has_conf:
        return make_conf_shim(repo, work / "pkg")
    return repo / "src"


def child_env(work: Path, root: Path, dsprites: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    env.update(
        PYTHONUNBUFFERED="1",
        HYDRA_FULL_ERROR="1",
        REPRLAB_CACHE=str(work / "cache"),
        MPLBACKEND="Agg",
    )
    if dsprites is not None:  # the tests' real-data fixtures look there
        env["REPRLAB_SHARED_DATA"] = str(dsprites.parent)
    return env


# -- the run ------------------------------------------------------------------------------------
def summary_line(figures: dict[str, Any]) -> str:
    """The step's headline figures, for the progress output."""
    parts = []
    for key, value in figures.items():
        if isinstance(value, dict) and key in ("ours", "ratio", "resume_differences"):
            inner = ", ".join(f"{k}: {_short(v)}" for k, v in value.items())
            parts.append(f"{key} {{{inner}}}")
        elif isinstance(value, bool | int | float | str) and len(parts) < 12:
            parts.append(f"{key}={_short(value)}")
    return "; ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, dict) and "images_per_s" in value:
        value = value["images_per_s"]
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def log_tail(log_path: Path, offset: int, chars: int = 4000) -> str:
    with log_path.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    return text[-chars:]


def parse_budgets(items: list[str], cpu: bool) -> dict[str, float]:
    budgets = dict(CPU_BUDGETS if cpu else GPU_BUDGETS)
    for item in items:
        name, _, seconds = item.partition("=")
        if name not in budgets or not seconds:
            raise SystemExit(
                f"--budget {item!r}: expected NAME=SECONDS with NAME one of {', '.join(budgets)}"
            )
        budgets[name] = float(seconds)
    return budgets


def default_out() -> Path:
    return (
        Path(os.environ["OUT"]) / "gpu_check.json"
        if os.environ.get("OUT")
        else Path("gpu_check.json")
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes, on the CPU")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON summary (default: $OUT/gpu_check.json if "
        "$OUT is set, else ./gpu_check.json); the full log goes beside it",
    )
    parser.add_argument(
        "--dsprites",
        type=Path,
        default=None,
        help="real dSprites subset (default: the first of "
        + ", ".join(str(p) for p in DSPRITES_CANDIDATES)
        + " that exists)",
    )
    parser.add_argument(
        "--cifar-root", type=Path, default=None, help="a real CIFAR-10 folder (default: written)"
    )
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps to run")
    parser.add_argument(
        "--budget", action="append", default=[], help="NAME=SECONDS: one step's budget"
    )
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--conf-shim",
        choices=("auto", "always"),
        default="auto",
        help="build the reprlab.conf shim always, or only when src/reprlab/conf is missing",
    )
    args = parser.parse_args(argv)
    args.steps = [name.strip() for name in args.steps.split(",") if name.strip()]
    unknown = [name for name in args.steps if name not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown {unknown}; the steps are {', '.join(STEPS)}")
    args.budgets = parse_budgets(args.budget, args.cpu_dry_run)
    if args.dsprites is None:
        args.dsprites = next((p for p in DSPRITES_CANDIDATES if p.is_file()), None)
    elif not args.dsprites.is_file():
        parser.error(f"--dsprites {args.dsprites}: no such file")
    args.out = (args.out or default_out()).resolve()
    return args


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    path.with_suffix(".tmp").replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "cpu-dry-run" if args.cpu_dry_run else "gpu"
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    summary: dict[str, Any] = {
        "mode": mode,
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "repo": str(REPO),
        "budget_seconds": sum(args.budgets[name] for name in args.steps),
        "log": str(log_path),
        "steps": {},
    }
    print(
        f"[gpu_check] {mode}: {len(args.steps)} steps, budget "
        f"{summary['budget_seconds']:.0f} s; log {log_path}",
        flush=True,
    )
    try:
        with log_path.open("w") as log:
            root = package_root(REPO, work, args.conf_shim)
            summary["pythonpath"] = str(root)
            ctx = Context(
                cpu=args.cpu_dry_run,
                work=work,
                env=child_env(work, root, args.dsprites),
                log=log,
                dsprites=args.dsprites,
                cifar_root=args.cifar_root,
            )
            for number, name in enumerate(args.steps, start=1):
                # The step may use what the steps before it left unused, never what the steps
                # after it are given.
                later = sum(args.budgets[n] for n in args.steps[number:])
                deadline = started + summary["budget_seconds"] - later
                step = Step(name, deadline, ctx)
                log.write(f"\n===== {name} =====\n")
                log.flush()
                offset = log.tell()
                print(
                    f"[gpu_check] {number}/{len(args.steps)} {name} "
                    f"(up to {step.remaining():.0f} s) ...",
                    flush=True,
                )
                record: dict[str, Any] = {"budget_s": args.budgets[name]}
                begin = time.monotonic()
                try:
                    record["figures"] = STEP_FUNCTIONS[name](step)
                    record["status"] = "ok"
                except StepTimeout as error:
                    record.update(status="timeout", error=str(error))
                except StepFailed as error:
                    record.update(status="failed", error=str(error))
                except Exception as error:  # this script's own fault: report it, go on
                    record.update(status="error", error=f"{type(error).__name__}: {error}")
                record["seconds"] = round(time.monotonic() - begin, 1)
                log.flush()
                if record["status"] == "ok":
                    print(
                        f"[gpu_check]   ok in {record['seconds']} s: "
                        f"{summary_line(record['figures'])}",
                        flush=True,
                    )
                else:
                    record["output_tail"] = log_tail(log_path, offset)
                    print(
                        f"[gpu_check]   {record['status'].upper()} after {record['seconds']} s: "
                        f"{record['error']}\n{record['output_tail'][-1500:]}",
                        flush=True,
                    )
                summary["steps"][name] = record
                summary["total_seconds"] = round(time.monotonic() - started, 1)
                write_summary(args.out, summary)
    finally:
        if not args.keep_work and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    summary["ok"] = all(record["status"] == "ok" for record in summary["steps"].values())
    summary["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    write_summary(args.out, summary)
    failed = [name for name, record in summary["steps"].items() if record["status"] != "ok"]
    print(
        f"[gpu_check] {'all steps ok' if not failed else 'NOT OK: ' + ', '.join(failed)} in "
        f"{summary['total_seconds']} s; summary {args.out}",
        flush=True,
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
