"""The device-sensitive parts on a CUDA GPU: batched augmentation, the on-device data path,
bf16 autocast steps and a short training run. Every test here is marked ``cuda`` and skips
without a GPU (``pytest -m cuda`` runs them; ``scripts/gpu_check.py`` does on a GPU machine)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_train

from reprlab.augment import SimCLRAugmentation
from reprlab.data import CIFAR10DataModule
from reprlab.encoders import ResNet18Encoder
from reprlab.losses import NTXentLoss
from reprlab.train import train

pytestmark = pytest.mark.cuda


def colour_batch(count: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_simclr_views_on_cuda_follow_the_cpu_parameters() -> None:
    images = colour_batch()
    augment = SimCLRAugmentation()
    # A CPU generator draws the per-image parameters on both devices: the same views, up to
    # float rounding (and rare ties at crop edges or the hue wrap-around).
    on_gpu = augment(images.cuda(), generator=torch.Generator().manual_seed(3))
    on_cpu = augment(images, generator=torch.Generator().manual_seed(3))
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    assert on_gpu.shape == images.shape
    assert float(on_gpu.min()) >= 0 and float(on_gpu.max()) <= 1
    assert ((on_gpu.cpu() - on_cpu).abs() > 1e-3).float().mean() < 0.01


def test_on_device_cifar10_batches_are_gathered_on_the_gpu(cifar10_root: Path) -> None:
    dm = CIFAR10DataModule(root=str(cifar10_root), batch_size=100, on_device=True)
    dm.setup()
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    dm.setup("fit")
    assert dm.images.device.type == "cuda" and dm.targets.device.type == "cuda"
    images, labels = next(iter(dm.train_dataloader()))
    assert images.device.type == "cuda" and labels.device.type == "cuda"
    assert images.dtype == torch.uint8 and images.shape == (100, 3, 32, 32)
    floats, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert floats.device.type == "cuda" and torch.equal(floats, images.float() / 255)


def test_bf16_autocast_step_of_resnet18_is_finite_and_close_to_fp32() -> None:
    torch.manual_seed(0)
    encoder = ResNet18Encoder((3, 32, 32)).cuda().to(memory_format=torch.channels_last)
    views = colour_batch(32).cuda().contiguous(memory_format=torch.channels_last)
    criterion = NTXentLoss(temperature=0.5)
    with torch.no_grad():
        reference = encoder(views).float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        features = encoder(views)
    assert features.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits: each feature vector points where fp32's does.
    cosine = torch.nn.functional.cosine_similarity(features.detach().float(), reference, dim=1)
    assert float(cosine.min()) > 0.99
    loss = criterion(*features.float().chunk(2))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_on_device_bf16_run_learns_on_the_gpu(cifar10_root: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        "callbacks=none",
        "logger=csv",
        "analysis=none",
        "trainer=gpu",
        "trainer.precision=bf16-mixed",
        "data=cifar10",
        f"data.root={cifar10_root}",
        "data.on_device=true",
        "data.batch_size=100",
        "encoder=core",
        "method=supervised",
        "method.epochs=3",
        "probe.epochs=5",
        "probe.lr=1e-2",
    )
    metrics = train(cfg, tmp_path)
    # The stand-in's classes are colour patterns (chance 0.1), as in the CPU test of this path.
    assert metrics["pretrain/test/acc"] > 0.6 and metrics["test/acc"] > 0.6
