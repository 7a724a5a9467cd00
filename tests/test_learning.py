"""Training actually learns: supervised beats chance by far, the random baseline is sane."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, build_datamodule, compose_train
from torch import nn

from reprlab.batchnorm import (
    batchnorms,
    batchnorms_without_statistics,
    recalibrate_batchnorm,
    reestimate_batchnorm,
)
from reprlab.encoders import CoreEncoder
from reprlab.train import train


def test_supervised_learns_shape_well_above_chance(tmp_path) -> None:
    # The tutorial's encoder needs thousands of images before shape beats position: with 1,400
    # training images it stays near 48%; with 5,800 it reaches ~64% in 5 epochs (seed 42).
    cfg = compose_train(
        *FAST,
        "data.num_images=8000",
        "method=supervised",
        "method.epochs=5",
        "method.lr=3e-3",
        "probe.epochs=5",
    )
    metrics = train(cfg, tmp_path)
    assert metrics["pretrain/test/acc"] > 0.55  # chance is 1/3
    assert metrics["test/acc"] > 0.55  # the probe on its frozen features
    assert (tmp_path / "metrics.json").is_file()


def test_raw_pixel_probe_trains_on_cached_features(tmp_path) -> None:
    cfg = compose_train(*FAST, "method=none", "encoder=identity", "probe.epochs=3")
    metrics = train(cfg, tmp_path)
    assert metrics["feature_dim"] == 64 * 64
    assert 0.2 < metrics["test/acc"] <= 1.0


def test_cached_and_uncached_probes_agree(tmp_path) -> None:
    results = []
    for cache in (True, False):
        cfg = compose_train(*FAST, "method=none", "probe.epochs=2", f"probe.cache_features={cache}")
        results.append(train(cfg, tmp_path / str(cache))["test/acc"])
    assert results[0] == pytest.approx(results[1], abs=0.02)


def test_fixed_seed_gives_identical_metrics(tmp_path) -> None:
    cfg = compose_train(*FAST, "method.epochs=1", "probe.epochs=1", "seed=5")
    first, second = train(cfg, tmp_path / "a"), train(cfg, tmp_path / "b")
    assert first["test/acc"] == second["test/acc"]
    assert first["pretrain/test/loss"] == second["pretrain/test/loss"]


def test_untrained_batchnorm_gets_statistics_from_the_data() -> None:
    torch.manual_seed(0)
    encoder = CoreEncoder((1, 64, 64))
    images = (torch.rand(256, 1, 64, 64) > 0.8).float()
    stale = batchnorms_without_statistics(encoder)
    assert len(stale) == 5
    weights = [p.clone() for p in encoder.parameters()]
    recalibrate_batchnorm(encoder, lambda: (images[i : i + 64] for i in range(0, 256, 64)), stale)
    assert batchnorms_without_statistics(encoder) == []
    assert all(torch.equal(a, b) for a, b in zip(weights, encoder.parameters(), strict=True))
    encoder.eval()
    with torch.no_grad():
        features = encoder(images)
    # Normalised by the data's own statistics: features centred with unit scale, not raw.
    assert features.mean().abs() < 0.2 and 0.5 < features.std() < 1.5


@pytest.mark.parametrize("precise_bn", [True, False])
def test_precise_batchnorm_recomputes_the_trained_statistics(precise_bn: bool) -> None:
    cfg = compose_train(*FAST, f"precise_bn={precise_bn}", "feature_batch_size=100")
    datamodule = build_datamodule(cfg)
    # One BatchNorm on each image's ink (its count of lit pixels), which varies with shape and
    # scale: procedural dSprites come sorted by latents, so batches taken in file order would
    # each hold similar sprites and their average variance would be ~0.4 of the split's.
    encoder = nn.Sequential(
        nn.Flatten(), nn.Linear(64 * 64, 1, bias=False), nn.BatchNorm1d(1, affine=False)
    )
    nn.init.ones_(encoder[1].weight)
    norm = encoder[2]
    norm.running_mean.fill_(5.0)  # stale statistics, as a run's last batches leave them
    norm.running_var.fill_(9.0)
    norm.num_batches_tracked.fill_(160)

    reestimate_batchnorm(
        encoder,
        datamodule.images,
        datamodule.split_index(datamodule.train_split),
        datamodule.to_float,
        cfg.feature_batch_size,
        torch.device("cpu"),
        cfg.seed,
        all_layers=cfg.precise_bn,
    )

    assert torch.equal(encoder[1].weight, torch.ones(1, 64 * 64))
    assert encoder.training  # the mode is left as it was
    if not precise_bn:
        assert norm.running_mean.item() == 5.0 and norm.running_var.item() == 9.0
        return
    images = datamodule.to_float(datamodule.images[datamodule.split_index("train")])
    ink = images.flatten(start_dim=1).sum(dim=1).double()
    assert norm.running_mean.item() == pytest.approx(ink.mean().item(), rel=1e-5)
    assert norm.running_var.item() == pytest.approx(ink.var().item(), rel=0.05)


def test_recalibration_runs_a_compiled_encoder_eagerly() -> None:
    # Each batch sets a new momentum; traced, each value would be a recompilation.
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    encoder = CoreEncoder((1, 64, 64))
    counter = CompileCounter()
    encoder.compile(backend=counter)
    images = (torch.rand(96, 1, 64, 64) > 0.8).float()
    recalibrate_batchnorm(
        encoder, lambda: (images[i : i + 32] for i in range(0, 96, 32)), batchnorms(encoder)
    )
    assert counter.frame_count == 0
    assert all(int(layer.num_batches_tracked) == 3 for layer in batchnorms(encoder))


def test_compiling_a_vae_compiles_its_decoder_too_and_keeps_the_state_dict_keys() -> None:
    from reprlab.perf import apply_model_speedups

    class EncoderDecoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 2)
            self.decoder = nn.Linear(2, 4)

    module = EncoderDecoder()
    keys = list(module.state_dict())
    apply_model_speedups(module, channels_last=False, compile_encoder=True)
    # nn.Module.compile compiles in place: the call goes through torch.compile, the keys stay.
    assert module.encoder._compiled_call_impl is not None
    assert module.decoder._compiled_call_impl is not None
    assert list(module.state_dict()) == keys
