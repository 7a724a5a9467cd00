"""Multi-process (DDP) runs: batch sharding, the 2-process CPU pipeline through the real CLI,
the checks that refuse unsupported settings, and the cluster launcher configs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, build_datamodule, compose_train
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from reprlab import dist, launch
from reprlab.data.dsprites import ShardedBatchSampler, batch_loader, shard_batches
from reprlab.methods import SimCLR

DDP_SMOKE = [
    "trainer=ddp_cpu",
    "debug=fast",
    # 1005 images: the 201 test images come in batches of 100 and 101 (the last single image
    # joins the batch before it), so the ranks get 50/50 and then 51/50 test images.
    "data.num_images=1005",
    "data.batch_size=100",
]


# ------------------------------------------------------------------------------------------
# Sharding
# ------------------------------------------------------------------------------------------
def rank_batches(size: int, batch_size: int, world: int, shuffle: bool, epoch: int = 0):
    batches = []
    for rank in range(world):
        sampler = ShardedBatchSampler(
            size, batch_size, shuffle, seed=3, num_replicas=world, rank=rank
        )
        sampler.set_epoch(epoch)
        batches.append(list(sampler))
        assert len(sampler) == len(batches[-1])
    return batches


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(
    "size,batch_size,world",
    [(1000, 128, 2), (1001, 100, 2), (1003, 100, 3), (250, 1000, 2), (7, 3, 3)],
)
def test_ranks_share_every_batch_disjointly_and_cover_the_epoch(
    size: int, batch_size: int, world: int, shuffle: bool
) -> None:
    batches = rank_batches(size, batch_size, world, shuffle)
    # The same number of batches on every rank (DDP steps in lockstep), none empty, sizes within
    # one of each other, and together each position exactly once.
    assert len({len(b) for b in batches}) == 1
    for step in zip(*batches, strict=True):
        sizes = [len(part) for part in step]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        # Each step is one global batch of at most batch_size (+ a merged tail under 2 * world).
        assert sum(sizes) < batch_size + 2 * world
    positions = [p for rank in batches for batch in rank for p in batch]
    assert sorted(positions) == list(range(size))
    if not shuffle:  # evaluation: rank r's part of batch i follows rank r-1's, in order
        flat = [p for step in zip(*batches, strict=True) for part in step for p in part]
        assert flat == list(range(size))


def test_the_last_small_batch_joins_the_one_before() -> None:
    order = torch.arange(1001)
    rank0, rank1 = (shard_batches(order, 100, 2, rank) for rank in (0, 1))
    assert len(rank0) == len(rank1) == 10
    assert (len(rank0[-1]), len(rank1[-1])) == (51, 50)  # 100 + the 1 left over
    assert [len(b) for b in rank0[:-1]] == [50] * 9


def test_every_epoch_is_a_new_order_that_all_ranks_agree_on() -> None:
    first = rank_batches(1000, 100, 2, shuffle=True, epoch=0)
    again = rank_batches(1000, 100, 2, shuffle=True, epoch=0)
    second = rank_batches(1000, 100, 2, shuffle=True, epoch=1)
    assert first == again
    assert first[0] != second[0]
    assert sorted(p for b in second[0] + second[1] for p in b) == list(range(1000))
    # Without set_epoch (a hand-written loop) each pass still moves on to a new order.
    sampler = ShardedBatchSampler(1000, 100, True, seed=3, num_replicas=2, rank=0)
    assert list(sampler) != list(sampler)


def test_one_process_batches_are_exactly_the_plain_batch_sampler() -> None:
    for shuffle in (True, False):
        torch.manual_seed(11)
        sharded = [list(ShardedBatchSampler(1002, 100, shuffle)) for _ in range(2)]
        torch.manual_seed(11)
        order = RandomSampler(range(1002)) if shuffle else SequentialSampler(range(1002))
        plain = [list(BatchSampler(order, 100, drop_last=False)) for _ in range(2)]
        assert sharded == plain
        # A last batch of one image joins the one before it (a batch of one has no statistics).
        torch.manual_seed(11)
        sampler = ShardedBatchSampler(1001, 100, shuffle)
        merged = list(sampler)
        torch.manual_seed(11)
        order = RandomSampler(range(1001)) if shuffle else SequentialSampler(range(1001))
        plain_batches = list(BatchSampler(order, 100, drop_last=False))
        assert merged == [*plain_batches[:-2], plain_batches[-2] + plain_batches[-1]]
        assert len(sampler) == len(merged) == 10
    assert [len(b) for b in ShardedBatchSampler(3, 1, False)] == [1, 1, 1]
    images, labels = torch.arange(50).view(50, 1), torch.arange(50) % 3
    loader = batch_loader(torch.arange(10, 40), images, labels, batch_size=8, shuffle=False)
    assert len(loader) == 4 and isinstance(loader.sampler, ShardedBatchSampler)
    assert torch.equal(torch.cat([batch[0] for batch in loader]).flatten(), torch.arange(10, 40))


def test_sharding_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="cannot share batches of 2 samples between 3 processes"):
        shard_batches(torch.arange(2), 10, 3, 0)
    with pytest.raises(ValueError, match="batches of 2 samples between 3 .* data.batch_size"):
        list(ShardedBatchSampler(10, 2, True, num_replicas=3, rank=0))
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        shard_batches(torch.arange(10), 4, 2, 2)
    with pytest.raises(ValueError, match="both num_replicas and rank"):
        ShardedBatchSampler(10, 4, True, num_replicas=2)


# ------------------------------------------------------------------------------------------
# Settings refused before any process starts
# ------------------------------------------------------------------------------------------
def test_spawning_strategies_and_double_sharding_are_refused() -> None:
    with pytest.raises(ValueError, match="trainer.strategy=ddp_spawn is not supported.*ddp"):
        launch.check_strategy(
            compose_train("trainer=ddp_cpu", "trainer.strategy=ddp_spawn").trainer
        )
    cfg = compose_train("trainer=ddp_cpu", "trainer.use_distributed_sampler=true")
    with pytest.raises(ValueError, match="use_distributed_sampler=false"):
        launch.check_strategy(cfg.trainer)
    cfg = compose_train("trainer=ddp_cpu", "trainer.sync_batchnorm=true")
    with pytest.raises(ValueError, match="sync_batchnorm=true needs GPUs.*accelerator=cpu"):
        launch.check_strategy(cfg.trainer)
    launch.check_strategy(compose_train("trainer=ddp_cpu").trainer)  # the preset is fine


def test_a_multi_process_trainer_needs_the_cli(tmp_path: Path) -> None:
    from reprlab.train import train

    with pytest.raises(
        RuntimeError, match="starts several processes: run the job with reprlab-train"
    ):
        train(compose_train(*FAST, "trainer=ddp_cpu"), tmp_path)
    assert not (tmp_path / "config.yaml").exists()


def test_several_processes_get_the_exact_mean_ddp_strategy() -> None:
    strategy = launch.trainer_strategy(compose_train("trainer=ddp_cpu").trainer)
    assert isinstance(strategy, launch.ExactMeanDDPStrategy)
    assert launch.trainer_strategy(compose_train("trainer=cpu").trainer) == "auto"
    one = compose_train("trainer=ddp_cpu", "trainer.devices=1").trainer
    assert launch.trainer_strategy(one) == "ddp"


def test_process_counts_and_gpus_follow_lightnings_devices(monkeypatch) -> None:
    cpu = OmegaConf.create({"accelerator": "cpu", "strategy": "ddp"})
    assert launch.local_process_count(OmegaConf.merge(cpu, {"devices": 2})) == 2
    assert launch.local_process_count(OmegaConf.merge(cpu, {"devices": [0, 1, 2]})) == 3
    assert launch.local_process_count(OmegaConf.merge(cpu, {"devices": "0,1"})) == 2
    assert launch.local_process_count(OmegaConf.merge(cpu, {"devices": "auto"})) == 1
    assert launch.processes_to_start(OmegaConf.merge(cpu, {"devices": 1})) == 0
    spawn = OmegaConf.merge(cpu, {"devices": 2, "strategy": "deepspeed"})
    assert launch.processes_to_start(spawn) == 0  # left to Lightning
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.local_gpu_index(OmegaConf.create({"devices": [2, 3]})) == 3
    assert dist.local_gpu_index(OmegaConf.create({"devices": "2,3"})) == 3
    assert dist.local_gpu_index(OmegaConf.create({"devices": 4})) == 1
    # Started by a parent rank (or a cluster): nothing more to start.
    assert launch.processes_to_start(OmegaConf.merge(cpu, {"devices": 2})) == 0


# ------------------------------------------------------------------------------------------
# The pipeline on 2 CPU processes, through the real command line
# ------------------------------------------------------------------------------------------
def run_cli(
    *args: str, cwd: Path, timeout: float = 540, module: str = "reprlab.train"
) -> subprocess.CompletedProcess:
    """Run reprlab-train (or ``module``); on a timeout kill its whole process group (the other
    ranks too)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "REPRLAB_CACHE": str(cwd / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{module} {args} timed out:\n{stderr[-5000:]}") from None
    if process.returncode != 0:
        raise AssertionError(f"{module} {args} failed:\n{stdout[-3000:]}\n{stderr[-5000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def single_process_metrics(run: Path) -> dict[str, float]:
    """What one process computes from the DDP run's saved checkpoints on the whole test split:
    the pretrained model's own accuracy (last.ckpt), the linear probe's (probe/last.ckpt) and,
    for SimCLR, the NT-Xent of each global test batch (100 images, then the last 101)."""
    from reprlab.builders import build_encoder, build_method
    from reprlab.features import extract_features

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    cfg = OmegaConf.create(checkpoint["reprlab"]["config"])
    datamodule = build_datamodule(cfg)
    encoder, _ = build_encoder(cfg.encoder, datamodule, cfg.channels_last)
    module = build_method(
        cfg.method, encoder, datamodule.num_classes, cfg.pretrain_epochs, cfg, False, False
    )
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    test = datamodule.split_index("test")
    labels = datamodule.targets[test]
    features = extract_features(module.encoder, datamodule.images[test], datamodule.to_float)
    probe = torch.load(run / "checkpoints" / "probe" / "last.ckpt", weights_only=False)[
        "state_dict"
    ]
    results = {}
    with torch.no_grad():
        results["own"] = float((module.classifier(features).argmax(1) == labels).float().mean())
        probe_logits = features @ probe["classifier.weight"].T + probe["classifier.bias"]
        results["probe"] = float((probe_logits.argmax(1) == labels).float().mean())
        if isinstance(module, SimCLR):  # without augmentation: both views are the image
            batches = (slice(0, 100), slice(100, len(test)))
            total = 0.0
            for batch in batches:
                z = module.projector(features[batch])
                total += float(module.criterion(z, z)) * len(z)
            results["nt_xent"] = total / len(test)  # the epoch mean, weighted by batch size
    return results


@pytest.mark.timeout(600)
def test_two_process_run_writes_one_run_folder_with_exact_metrics(tmp_path: Path) -> None:
    # SimCLR without augmentation, so that its test pass is deterministic and checkable here.
    result = run_cli(*DDP_SMOKE, "method=simclr", "augment=none", "hydra.run.dir=run", cwd=tmp_path)
    run = tmp_path / "run"
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == ["run"]
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("metrics.json")] == [
        Path("run/metrics.json")
    ]
    assert result.stdout.count("reprlab: probe test/acc") == 1  # only rank 0 reports
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log", "train_rank1.log"]
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*.ckpt")) == [
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "checkpoints/probe/best.ckpt",
        "checkpoints/probe/last.ckpt",
    ]
    assert not list(run.rglob("*.tmp"))
    assert {p.name for p in (run / "tensorboard").iterdir()} == {"pretrain", "probe", "analysis"}

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_test"] == 201 and metrics["method"].endswith("SimCLR")
    # Evaluation under DDP saw every test image exactly once, with rank 0's model: the
    # synchronised accuracies equal a single-process pass of the saved checkpoints ...
    expected = single_process_metrics(run)
    assert metrics["pretrain/test/acc"] == pytest.approx(expected["own"], abs=1e-6)
    assert metrics["test/acc"] == pytest.approx(expected["probe"], abs=1e-6)
    # ... and the NT-Xent contrasted each image with its whole global batch, not with its rank's
    # half of it (about log(2) lower), with an epoch mean that is not biased by the ranks' unequal
    # shares (Lightning's own DDP reads 0.03 high here). The ranks weight their 51 and 50 images
    # of the last batch by their own counts, hence a small tolerance.
    assert metrics["pretrain/test/nt_xent"] == pytest.approx(expected["nt_xent"], abs=2e-3)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_process_multirun_resume_and_eval(tmp_path: Path) -> None:
    run_cli(
        "-m",
        *DDP_SMOKE,
        "seed=1,2",
        "hydra.sweep.dir=sweep",
        "hydra.sweep.subdir=${seed}",
        cwd=tmp_path,
        timeout=600,
    )
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["1", "2"]
    for job in jobs:
        metrics = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert metrics["seed"] == int(job)
        assert (tmp_path / "sweep" / job / "train_rank1.log").is_file()
    assert len(list(tmp_path.rglob("metrics.json"))) == 2

    first = tmp_path / "sweep" / "1"
    run_cli(
        *DDP_SMOKE,
        "seed=1",
        "method.epochs=2",
        "ckpt_path=last",
        f"hydra.run.dir={first}",
        cwd=tmp_path,
    )
    checkpoint = torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 2 and checkpoint["global_step"] == 6  # 3 batches per epoch
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["pretrain/test/acc"] == pytest.approx(
        single_process_metrics(first)["own"], abs=1e-6
    )

    # reprlab-eval probes with the checkpoint's trainer: 2 processes again, one metrics.json.
    ckpt = first / "checkpoints" / "last.ckpt"
    run_cli(f"ckpt_path={ckpt}", "hydra.run.dir=eval", cwd=tmp_path, module="reprlab.eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"] == str(ckpt)
    assert sorted(p.name for p in (tmp_path / "eval").glob("*.log")) == [
        "eval.log",
        "eval_rank1.log",
    ]


# ------------------------------------------------------------------------------------------
# Cluster launchers (optional extras: pip install -e ".[launchers]")
# ------------------------------------------------------------------------------------------
def has_plugin(name: str) -> bool:
    try:  # without any plugin installed, even the namespace package hydra_plugins is absent
        return importlib.util.find_spec(f"hydra_plugins.{name}") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(
    not has_plugin("hydra_submitit_launcher"), reason="needs hydra-submitit-launcher"
)
def test_slurm_launcher_preset_composes() -> None:
    with initialize_config_module(config_module="reprlab.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "trainer=ddp"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    # One task per GPU: Lightning's SLURM environment checks tasks per node == devices.
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 1)
    assert cfg.trainer.strategy == "ddp"


@pytest.mark.skipif(not has_plugin("hydra_joblib_launcher"), reason="needs hydra-joblib-launcher")
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path: Path) -> None:
    run_cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        "method=none",
        "encoder=identity",
        "debug=fast",
        "trainer.accelerator=cpu",
        "data.num_images=500",
        "data.batch_size=100",
        "hydra.sweep.dir=sweep",
        "hydra.sweep.subdir=${seed}",
        cwd=tmp_path,
    )
    for seed in (1, 2):
        assert (
            json.loads((tmp_path / "sweep" / str(seed) / "metrics.json").read_text())["seed"]
            == seed
        )
