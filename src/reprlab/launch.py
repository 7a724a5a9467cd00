"""Starting the processes of one job (DDP) under Hydra, and refusing what cannot run.

Lightning's ``ddp`` strategy starts the other ranks by running the script again with the same
``sys.argv``. Under Hydra that breaks in a multirun (the children receive ``-m`` and the whole
sweep, so each starts a sweep of its own) and under the joblib launcher (the job runs in a
worker whose ``__main__`` is joblib's). So reprlab starts the local ranks itself, from what it
knows of the job: the entry module, the job's own overrides and its output folder.
:func:`local_processes` starts ranks 1..N-1 as ``python -m reprlab.train <this job's overrides>
hydra.run.dir=<this job's folder>`` with the environment Lightning reads (``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_PORT``, ...), after which Lightning sees processes created externally
and only joins them into a process group. One run folder per job, however many processes.

Clusters that start every rank themselves (SLURM with one task per device, torchrun, LSF, MPI)
are left to Lightning's cluster environments: nothing is launched then.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, ListConfig
from torch import Tensor

from reprlab.dist import destroy_process_group, uses_gpu

log = logging.getLogger(__name__)

# Strategies whose extra processes reprlab starts (Lightning would re-run the script for them).
LAUNCHED_STRATEGIES = (
    "auto",
    "ddp",
    "ddp_find_unused_parameters_false",
    "ddp_find_unused_parameters_true",
)
# Strategies that fork or spawn fresh workers inside every fit/test call: each of the pipeline's
# four stages would pay the start-up again, and the workers miss the Hydra job context.
REFUSED_STRATEGY_MARKS = ("spawn", "fork", "notebook")
# The variables a launch sets in this process; put back when the job ends, so the next job of a
# multirun starts its own process group.
_LAUNCH_VARIABLES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "NODE_RANK",
    "LOCAL_RANK",
    "RANK",
    "OMP_NUM_THREADS",
)
_PARENT_VARIABLE = "REPRLAB_PARENT_PID"
# Hydra settings a child rank keeps from the parent's command line (logging and environment);
# run/sweep folders, launcher and sweeper are the parent's business.
_PASSED_HYDRA_OVERRIDES = (
    "hydra/job_logging",
    "hydra/hydra_logging",
    "hydra.job_logging",
    "hydra.hydra_logging",
    "hydra.verbose",
    "hydra.job.env_set",
    "hydra.job.env_copy",
)


def local_process_count(trainer_cfg: DictConfig) -> int:
    """Processes on this machine that ``trainer.devices`` asks for (Lightning's meanings: a
    count, a list or comma-separated string of GPU ids, ``auto`` or -1 for every GPU)."""
    devices: Any = trainer_cfg.get("devices", "auto")
    if isinstance(devices, list | tuple | ListConfig):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        devices = -1 if text == "auto" else int(text)
    if devices == -1:
        return torch.cuda.device_count() if uses_gpu(trainer_cfg) else 1
    return int(devices)


def is_multi_process(trainer_cfg: DictConfig) -> bool:
    return local_process_count(trainer_cfg) > 1 or int(trainer_cfg.get("num_nodes", 1)) > 1


def check_devices(trainer_cfg: DictConfig) -> None:
    """Refuse more devices than the machine has, before any process is started."""
    devices = trainer_cfg.get("devices", 1)
    if not isinstance(devices, int) or isinstance(devices, bool):
        return  # "auto", lists of ids, ...: Lightning checks those itself
    gpu = uses_gpu(trainer_cfg)
    available = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
    if devices > available:
        kind = "GPUs" if gpu else "CPU cores"
        accelerator = trainer_cfg.get("accelerator", "auto")
        raise ValueError(
            f"trainer.devices={devices} but this machine has {available} {kind} "
            f"(trainer.accelerator={accelerator}); use trainer.devices<={available}"
        )


def check_strategy(trainer_cfg: DictConfig) -> None:
    """Refuse multi-process settings the pipeline cannot run correctly, before starting any."""
    strategy = trainer_cfg.get("strategy", "auto")
    if isinstance(strategy, str) and any(mark in strategy for mark in REFUSED_STRATEGY_MARKS):
        raise ValueError(
            f"trainer.strategy={strategy} is not supported: it starts new worker processes in "
            f"every fit and test call; use trainer.strategy=ddp (trainer=ddp or trainer=ddp_cpu), "
            f"which runs the whole job in every process and works under Hydra multiruns"
        )
    if trainer_cfg.get("sync_batchnorm", False) and not uses_gpu(trainer_cfg):
        raise ValueError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm trains on CUDA/XPU "
            f"only), but trainer.accelerator={trainer_cfg.get('accelerator', 'auto')} runs on "
            "the CPU; drop trainer.sync_batchnorm or use trainer=ddp"
        )
    if is_multi_process(trainer_cfg) and trainer_cfg.get("use_distributed_sampler", True):
        raise ValueError(
            "trainer.use_distributed_sampler=true with several processes: reprlab's loaders "
            "already give each process its own share of every batch, and Lightning's sampler "
            "would shard them again; set trainer.use_distributed_sampler=false"
        )


def check_launched(trainer_cfg: DictConfig) -> None:
    """Refuse a multi-process trainer outside :func:`local_processes` (e.g. ``train(cfg)`` called
    from Python), where Lightning would re-run this interpreter's command line as the ranks."""
    if processes_to_start(trainer_cfg) > 0:
        raise RuntimeError(
            f"trainer.devices={trainer_cfg.get('devices')} starts several processes: run the job "
            "with reprlab-train / reprlab-eval (or python -m reprlab.train), which start them"
        )


def launched_externally() -> bool:
    """Whether a cluster launcher (or a parent rank) started this process as one of several."""
    if "LOCAL_RANK" in os.environ:
        return True
    environments = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)
    return any(environment.detect() for environment in environments)


def processes_to_start(trainer_cfg: DictConfig) -> int:
    """How many local processes :func:`local_processes` starts (this one included); 0: none."""
    strategy = trainer_cfg.get("strategy", "auto")
    if not isinstance(strategy, str) or strategy not in LAUNCHED_STRATEGIES:
        return 0
    count = local_process_count(trainer_cfg)
    if count < 2 or launched_externally():
        return 0
    return count


class ExactMeanDDPStrategy(DDPStrategy):
    """Lightning's DDP strategy, with the mean of an integer tensor over processes not truncated.

    For an epoch mean of a logged value Lightning averages, over processes, its weighted sum and
    the number of samples behind it; that count is an integer tensor, and Lightning's mean of it
    is truncated (201 test images on 2 processes: 100, not 100.5). Whenever processes hold
    different numbers of samples, as evaluating every image exactly once implies, the epoch
    losses would come out too high. Counts are averaged as floats here.
    """

    def reduce(self, tensor: Any, group: Any | None = None, reduce_op: Any | None = "mean") -> Any:
        if (
            isinstance(tensor, Tensor)
            and not tensor.is_floating_point()
            and reduce_op in ("mean", "avg")
        ):
            tensor = tensor.double()
        return super().reduce(tensor, group, reduce_op)


def trainer_strategy(trainer_cfg: DictConfig) -> Any:
    """The Trainer's ``strategy``: as configured, but Lightning's DDP (``ddp``, or ``auto`` with
    several devices) becomes :class:`ExactMeanDDPStrategy`."""
    strategy = trainer_cfg.get("strategy", "auto")
    if (
        not isinstance(strategy, str)
        or strategy not in LAUNCHED_STRATEGIES
        or not is_multi_process(trainer_cfg)
    ):
        return strategy
    return ExactMeanDDPStrategy(find_unused_parameters=strategy.endswith("_true"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_command(entry_module: str, local_rank: int) -> tuple[list[str], str]:
    """The command line (and working directory) that runs this Hydra job as rank ``local_rank``:
    the same config and overrides, the same output folder, no second ``.hydra`` folder, and a log
    file of its own (``<job>_rank<N>.log``)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    command = [sys.executable, "-m", entry_module, f"--config-name={hydra_cfg.job.config_name}"]
    command += [
        f"--config-dir={source.path}"
        for source in hydra_cfg.runtime.config_sources
        if source.provider == "command-line"
    ]
    command += list(hydra_cfg.overrides.task)
    command += [
        override
        for override in hydra_cfg.overrides.hydra
        if override.startswith(_PASSED_HYDRA_OVERRIDES)
    ]
    output_dir = str(hydra_cfg.runtime.output_dir).replace('"', '\\"')
    command += [
        f'hydra.run.dir="{output_dir}"',
        "hydra.output_subdir=null",
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
    ]
    return command, str(hydra_cfg.runtime.cwd)


@contextmanager
def local_processes(trainer_cfg: DictConfig, entry_module: str) -> Iterator[None]:
    """Run the body as rank 0 of ``trainer.devices`` local processes when the trainer asks for
    several and nothing else started them; the other ranks run ``entry_module`` with this Hydra
    job's config. On leaving, the process group is destroyed and the other ranks are waited for
    (or killed, when the body failed), so a multirun's next job starts clean."""
    check_devices(trainer_cfg)
    check_strategy(trainer_cfg)
    if _PARENT_VARIABLE in os.environ:
        _exit_with_parent(int(os.environ[_PARENT_VARIABLE]))
    count = processes_to_start(trainer_cfg)
    if count == 0:
        try:
            yield
        finally:
            destroy_process_group()
        return

    saved_variables = {name: os.environ.get(name) for name in _LAUNCH_VARIABLES}
    saved_threads = torch.get_num_threads()
    children = _start_children(trainer_cfg, entry_module, count)
    watcher = _ChildWatcher(children)
    watcher.start()
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        watcher.stop()
        destroy_process_group()
        if not succeeded:
            _kill(children)
        exit_codes = _wait(children, timeout=600.0)
        for name, value in saved_variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.set_num_threads(saved_threads)
    failed = {rank: code for rank, code in exit_codes.items() if code != 0}
    if failed:
        raise RuntimeError(
            f"ranks {sorted(failed)} exited with codes {list(failed.values())}; "
            "their logs are the run folder's *_rank<N>.log files"
        )


def _start_children(
    trainer_cfg: DictConfig, entry_module: str, count: int
) -> dict[int, subprocess.Popen]:
    num_nodes = int(trainer_cfg.get("num_nodes", 1))
    node_rank = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    # Several processes on few cores: split the cores rather than oversubscribe them.
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // count))
    os.environ.update(
        {
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT") or str(free_port()),
            "WORLD_SIZE": str(count * num_nodes),
            "NODE_RANK": str(node_rank),
            "LOCAL_RANK": "0",
            "RANK": str(node_rank * count),
            "OMP_NUM_THREADS": threads,
        }
    )
    torch.set_num_threads(int(threads))
    children = {}
    for local_rank in range(1, count):
        command, cwd = child_command(entry_module, local_rank)
        env = {
            **os.environ,
            "LOCAL_RANK": str(local_rank),
            "RANK": str(node_rank * count + local_rank),
            _PARENT_VARIABLE: str(os.getpid()),
        }
        log.info("starting rank %d: %s", node_rank * count + local_rank, " ".join(command))
        children[local_rank] = subprocess.Popen(command, env=env, cwd=cwd)
    return children


def _kill(children: dict[int, subprocess.Popen]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.kill()


def _wait(children: dict[int, subprocess.Popen], timeout: float) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    codes = {}
    for local_rank, child in children.items():
        try:
            codes[local_rank] = child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("rank %d did not finish %.0f s after rank 0; killing it", local_rank, timeout)
            child.kill()
            codes[local_rank] = child.wait()
    return codes


class _ChildWatcher(threading.Thread):
    """Ends the job when another rank dies: the survivors would otherwise wait for it in their
    next collective (gloo notices a closed connection; NCCL waits out its timeout)."""

    def __init__(self, children: dict[int, subprocess.Popen], grace: float = 30.0) -> None:
        super().__init__(daemon=True, name="reprlab-rank-watcher")
        self.children = children
        self.grace = grace
        self.finished = threading.Event()

    def run(self) -> None:
        while not self.finished.wait(1.0):
            failed = {
                rank: child.returncode
                for rank, child in self.children.items()
                if child.poll() is not None and child.returncode != 0
            }
            if not failed:
                continue
            log.error(
                "rank(s) %s exited with code(s) %s; stopping the other ranks",
                sorted(failed),
                list(failed.values()),
            )
            _kill(self.children)
            # Rank 0 normally fails on its own at its next collective; if it is stuck in one,
            # only a kill ends it.
            if not self.finished.wait(self.grace):
                log.error("rank 0 is stuck waiting for the dead rank(s); killing it")
                os.kill(os.getpid(), signal.SIGKILL)
            return

    def stop(self) -> None:
        self.finished.set()


def _exit_with_parent(parent_pid: int) -> None:
    """In a started rank: exit when rank 0 is gone, instead of waiting in a collective forever."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="reprlab-parent-watcher").start()
