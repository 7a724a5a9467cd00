"""SimCLR and VAE train end to end and do what they are for."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, compose_train
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from reprlab.encoders import CoreEncoder
from reprlab.methods import VAE, SimCLR
from reprlab.methods.vae import Decoder
from reprlab.train import train

EASY = (*FAST, "data.num_images=3000", "data.batch_size=250")


def epoch_scalars(run_dir, tag: str) -> list[float]:
    events = EventAccumulator(str(run_dir / "tensorboard" / "pretrain"))
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


def test_simclr_lowers_its_loss_without_collapse(tmp_path) -> None:
    cfg = compose_train(
        *EASY,
        "method=simclr",
        "method.epochs=3",
        "method.lr=3e-3",
        "logger=tensorboard",
        "probe.epochs=1",
    )
    metrics = train(cfg, tmp_path)
    losses = epoch_scalars(tmp_path, "train/nt_xent_epoch")
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.1
    assert metrics["pretrain/val/proj_std"] > 0.05  # healthy is ~1/sqrt(84) = 0.11, collapse 0
    assert epoch_scalars(tmp_path, "train/alignment") and epoch_scalars(
        tmp_path, "train/uniformity"
    )


@pytest.mark.slow
def test_simclr_beats_a_random_encoder(tmp_path) -> None:
    # SimCLR needs tens of epochs before its features separate shapes (10 epochs on 4,300
    # images: 46% against the random encoder's 42%), hence slow.
    base = (*FAST, "data.num_images=12000", "data.batch_size=500", "probe.epochs=20")
    random_acc = train(compose_train(*base, "method=none"), tmp_path / "random")["test/acc"]
    metrics = train(compose_train(*base, "method=simclr", "method.epochs=40"), tmp_path / "simclr")
    assert metrics["test/acc"] > random_acc + 0.2, (metrics["test/acc"], random_acc)


def encoder_inputs(views: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, what SimCLR's objective hands the encoder) for ``method.views``."""
    cfg = compose_train("method=simclr", f"method.views={views}")
    module = instantiate(cfg.method, encoder=CoreEncoder((1, 64, 64)), num_classes=3)
    assert isinstance(module, SimCLR)
    seen = []
    module.encoder = torch.nn.Sequential()  # capture what the encoder is given
    module.encoder.feature_dim = 4096
    module.encoder.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    module.encoder.append(torch.nn.Flatten())
    images = (torch.rand(8, 1, 64, 64) > 0.7).float()
    module.objective(images, "train")
    return images, seen[0]


def test_simclr_objective_uses_two_independent_views() -> None:
    images, views = encoder_inputs("two_augmented")
    assert views.shape == (16, 1, 64, 64)
    assert not torch.equal(views[:8], views[8:])
    assert not torch.equal(views[:8], images) and not torch.equal(views[8:], images)


def test_original_and_augmented_views_pair_each_image_with_one_augmentation() -> None:
    images, views = encoder_inputs("original_and_augmented")
    assert views.shape == (16, 1, 64, 64)
    assert torch.equal(views[:8], images)
    assert not torch.equal(views[8:], images)


def test_unknown_views_option_is_named() -> None:
    with pytest.raises(Exception, match=r"unknown views 'three'; accepted: two_augmented"):
        encoder_inputs("three")


class Brighten(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images + images.roll(3, dims=-1)).clamp(max=1) * 4


@pytest.mark.parametrize("encode_views", ["together", "separately"])
def test_views_share_batch_statistics_only_when_encoded_together(encode_views: str) -> None:
    cfg = compose_train(
        "method=simclr",
        f"method.encode_views={encode_views}",
        "method.views=original_and_augmented",
    )
    torch.manual_seed(0)
    module = instantiate(cfg.method, encoder=CoreEncoder((1, 64, 64)), num_classes=3)
    module.log = lambda *args, **kwargs: None  # no trainer to log to
    # A second view far from the first (4x brighter, thicker strokes), so that the features of
    # the two views differ in mean.
    module.augment = Brighten()
    images = (torch.rand(64, 1, 64, 64) > 0.8).float()
    _, first_view_features = module.objective(images, "train")
    # The encoder ends in a BatchNorm without affine parameters (train mode, batch statistics):
    # its outputs have mean 0 over whatever batch it normalised.
    view_mean = first_view_features.mean(dim=0).abs().max()
    if encode_views == "separately":
        assert view_mean < 1e-4
    else:
        assert view_mean > 0.1


def test_unknown_encode_views_option_is_named() -> None:
    cfg = compose_train("method=simclr", "method.encode_views=interleaved")
    with pytest.raises(Exception, match=r"unknown encode_views 'interleaved'; accepted: together"):
        instantiate(cfg.method, encoder=CoreEncoder((1, 64, 64)), num_classes=3)


@pytest.mark.parametrize(
    ("preset", "neg_pairs", "decoupled", "probe_epochs"),
    [("tutorial_simclr", "all", False, 10), ("tutorial_simclr_2neg", 2, True, 50)],
)
def test_tutorial_simclr_presets_train_as_the_tutorials_code(
    preset: str, neg_pairs, decoupled: bool, probe_epochs: int
) -> None:
    # The tutorial's train_simclr: two augmentations of every image, one encoder pass per view,
    # no projector, Adam at 1e-3 annealed over 500 epochs; sampling negatives drops the positive
    # from the denominator.
    cfg = compose_train(f"experiment={preset}", "data.path=x.npz")
    method = cfg.method
    assert (method.views, method.encode_views, method.projector) == (
        "two_augmented",
        "separately",
        "identity",
    )
    assert (method.lr, method.cosine_epochs, method.temperature, method.epochs) == (
        1e-3,
        500,
        0.5,
        60,
    )
    assert (method.neg_pairs, method.decoupled) == (neg_pairs, decoupled)
    assert (cfg.data.batch_size, cfg.probe.epochs) == (1000, probe_epochs)


def test_vae_lowers_its_loss_and_logs_reconstructions(tmp_path) -> None:
    cfg = compose_train(
        *EASY, "method=vae", "method.epochs=3", "logger=tensorboard", "probe.epochs=1"
    )
    metrics = train(cfg, tmp_path)
    losses = epoch_scalars(tmp_path, "train/vae_loss_epoch")
    assert len(losses) == 3 and losses[-1] < losses[0]
    events = EventAccumulator(
        str(tmp_path / "tensorboard" / "pretrain"), size_guidance={"images": 0}
    )
    events.Reload()
    assert "reconstructions" in events.Tags()["images"]
    assert len(events.Images("reconstructions")) == 3
    assert metrics["test/acc"] > 0


@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 32, 32), (1, 28, 28)])
def test_decoder_output_matches_the_data(shape) -> None:
    decoder = Decoder(16, shape)
    assert decoder(torch.randn(5, 16)).shape == (5, *shape)


def test_vae_probe_sees_the_posterior_mean() -> None:
    module = VAE(CoreEncoder((1, 64, 64)), num_classes=3, epochs=1)
    module.eval()
    images = (torch.rand(4, 1, 64, 64) > 0.7).float()
    _, features = module.objective(images, "test")
    assert torch.equal(features, module.encoder(images))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("data.batch_size=1",), r"SimCLR needs data.batch_size >= 2 .*got 1"),
        (("method.neg_pairs=500",), r"neg_pairs k=500 exceeds.*N=200.*2N-2=398"),
        (("method.temperature=0",), "temperature must be a positive finite number, got 0"),
        (("method.neg_pairs=many",), "many"),
        (("data.batch_size=5000",), "batch_size=5000 is larger than the training split"),
    ],
)
def test_bad_simclr_settings_fail_before_training(tmp_path, overrides, message) -> None:
    cfg = compose_train(*FAST, "method=simclr", *overrides)
    with pytest.raises(Exception, match=message):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path) -> None:
    from reprlab.callbacks import NonFiniteLossError

    cfg = compose_train(*FAST, "callbacks=default", "method.epochs=3", "method.lr=1e30")
    message = r"training loss is (nan|inf|-inf) at epoch \d+, global step \d+"
    with pytest.raises(NonFiniteLossError, match=message):
        train(cfg, tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_collapse_is_flagged_in_the_logs(tmp_path) -> None:
    # A collapse threshold above any healthy value flags every epoch.
    cfg = compose_train(
        *EASY,
        "method=simclr",
        "method.epochs=1",
        "+method.collapse_std=10",
        "logger=tensorboard",
        "probe.epochs=1",
    )
    with pytest.warns(UserWarning, match="SimCLR projections are collapsing"):
        train(cfg, tmp_path)
    assert epoch_scalars(tmp_path, "train/collapsed") == [1.0]


def test_cosine_period_can_outlast_the_run() -> None:
    # The tutorial anneals over 500 epochs, so its 60-epoch SimCLR run keeps ~97% of the rate.
    from reprlab.optim import adam_with_cosine

    def rate_after(epochs: int, cosine_epochs: int | None) -> float:
        setup = adam_with_cosine(
            [torch.nn.Parameter(torch.zeros(1))], 1e-3, 0.0, epochs, cosine_epochs
        )
        scheduler = setup["lr_scheduler"]["scheduler"]
        for _ in range(epochs):
            setup["optimizer"].step()
            scheduler.step()
        return scheduler.get_last_lr()[0]

    assert rate_after(60, None) == pytest.approx(0.0, abs=1e-12)
    assert rate_after(60, 500) == pytest.approx(1e-3 * (1 + math.cos(math.pi * 60 / 500)) / 2)


def test_every_schedule_takes_the_configured_cosine_period() -> None:
    # The tutorial presets anneal probes and the supervised network over 100 epochs, the VAE
    # over 500, SimCLR over 500: each setting must reach the scheduler it names.
    from reprlab.probe import LinearProbe

    probe = LinearProbe(84, 3, epochs=10, cosine_epochs=100)
    assert probe.configure_optimizers()["lr_scheduler"]["scheduler"].T_max == 100
    assert (
        LinearProbe(84, 3, epochs=10).configure_optimizers()["lr_scheduler"]["scheduler"].T_max
        == 10
    )
    with pytest.raises(ValueError, match="probe.cosine_epochs must be >= 1 or null, got 0"):
        LinearProbe(84, 3, epochs=10, cosine_epochs=0)
    for preset, method_period, probe_period in [
        ("tutorial_supervised", 100, 100),
        ("tutorial_vae", 500, 100),
        ("tutorial_simclr", 500, 100),
        ("tutorial_random", None, 100),
    ]:
        cfg = compose_train(f"experiment={preset}", "data.source=procedural")
        assert cfg.probe.cosine_epochs == probe_period
        if cfg.method.get("_target_"):
            module = instantiate(cfg.method, encoder=CoreEncoder((1, 64, 64)), num_classes=3)
            scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
            assert scheduler.T_max == (method_period or cfg.method.epochs)
