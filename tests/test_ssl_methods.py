"""BYOL, SimSiam, VICReg and Barlow Twins: they train end to end from the config, do what their
papers say (stop-gradients, a momentum target, global views), monitor collapse as SimCLR does,
and refuse bad settings before training."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, compose_train
from hydra.utils import instantiate
from test_methods import epoch_scalars

from reprlab.encoders import CoreEncoder
from reprlab.methods import BYOL, BarlowTwins, SimSiam, VICReg
from reprlab.methods.byol import cosine_momentum, update_moving_average
from reprlab.train import train

# Two training batches per epoch: enough to train, log and checkpoint each objective in seconds.
QUICK = (*FAST, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "probe.epochs=1")
OBJECTIVES = {"byol": BYOL, "simsiam": SimSiam, "vicreg": VICReg, "barlow_twins": BarlowTwins}
LOSS_NAMES = {
    "byol": "byol_loss",
    "simsiam": "simsiam_loss",
    "vicreg": "vicreg_loss",
    "barlow_twins": "barlow_twins_loss",
}


def build(method: str, *overrides: str):
    cfg = compose_train(f"method={method}", *overrides)
    torch.manual_seed(0)
    module = instantiate(cfg.method, encoder=CoreEncoder((1, 64, 64)), num_classes=3)
    module.log = lambda *args, **kwargs: None  # no trainer to log to
    return module


def images(n: int = 16) -> torch.Tensor:
    return (torch.rand(n, 1, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.8).float()


@pytest.mark.parametrize("method", OBJECTIVES)
def test_each_objective_trains_from_the_command_line(tmp_path, method: str) -> None:
    cfg = compose_train(
        *QUICK, f"method={method}", "method.epochs=2", "logger=tensorboard", "callbacks=default"
    )
    metrics = train(cfg, tmp_path)
    losses = epoch_scalars(tmp_path, f"train/{LOSS_NAMES[method]}_epoch")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert metrics["method"] == f"reprlab.methods.{OBJECTIVES[method].__name__}"
    # The online probe and the collapse monitor, as SimCLR logs them.
    assert "pretrain/val/acc" in metrics and "pretrain/test/proj_std" in metrics
    assert epoch_scalars(tmp_path, "train/collapsed") == [0.0, 0.0]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert metrics["test/acc"] > 0


@pytest.mark.parametrize("method", OBJECTIVES)
def test_objective_sees_two_views_and_gives_the_first_to_the_probe(method: str) -> None:
    module = build(method)
    seen = []
    module.encoder.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    batch = images()
    loss, features = module.objective(batch, "train")
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert features.shape == (16, 84)
    views = torch.cat(seen[:1])  # encode_views=together: one pass over both views (online)
    assert views.shape == (32, 1, 64, 64)
    assert not torch.equal(views[:16], views[16:]) and not torch.equal(views[:16], batch)
    # The loss trains the online encoder.
    loss.backward()
    assert all(p.grad is not None for p in module.encoder.parameters())


def test_byol_target_is_a_moving_average_without_gradients() -> None:
    module = build("byol")
    assert not any(p.requires_grad for p in module.target_encoder.parameters())
    loss, _ = module.objective(images(), "train")
    loss.backward()
    assert all(p.grad is None for p in module.target_encoder.parameters())
    assert all(p.grad is not None for p in module.predictor.parameters())
    online = [p.detach().clone() for p in module.encoder.parameters()]
    with torch.no_grad():  # move the online network away from the target
        for p in module.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in module.target_encoder.parameters()]
    update_moving_average(module.target_encoder, module.encoder, momentum=0.9)
    after = module.target_encoder.parameters()
    for target, start, weight in zip(after, before, online, strict=True):
        torch.testing.assert_close(target, 0.9 * start + 0.1 * (weight + 1.0))


def test_byol_projector_can_end_in_batchnorm_as_simsiams_does() -> None:
    plain = build("byol").projector
    normalised = build("byol", "method.projector_batchnorm_last=true").projector
    assert isinstance(plain[-1], torch.nn.Linear) and plain[-1].bias is not None
    assert isinstance(normalised[-1], torch.nn.BatchNorm1d) and not normalised[-1].affine
    module = build("byol", "method.projector_batchnorm_last=true")
    z = module.projector(module.encoder(images(32)))  # training mode: the batch's statistics
    torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), atol=1e-5, rtol=0)
    # The target network is a copy, BatchNorm included.
    assert isinstance(module.target_projector[-1], torch.nn.BatchNorm1d)


def test_byol_presets_tuned_and_the_bias_preset_as_measured() -> None:
    tuned = compose_train("experiment=tutorial_byol", "data.path=x.npz")
    assert tuned.method.projector_batchnorm_last and tuned.data.batch_size == 256
    bias = compose_train("experiment=tutorial_bias_byol", "data.path=x.npz")
    assert not bias.method.projector_batchnorm_last and bias.data.batch_size == 1000
    assert not compose_train("method=byol").method.projector_batchnorm_last  # the paper's


def test_byol_momentum_rises_with_a_cosine_from_base_to_final() -> None:
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.9, 0.95) == pytest.approx(
        0.95 - 0.05 * (math.cos(math.pi / 4) + 1) / 2
    )
    steps = [cosine_momentum(k, 40, 0.9) for k in range(41)]
    assert steps == sorted(steps)


class FixedPrediction(torch.nn.Module):
    """A predictor whose output does not depend on its input (but stays in the graph)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 0.0 * z + torch.linspace(-1, 1, z.shape[1])


def test_simsiam_stops_the_gradient_through_its_targets() -> None:
    module = build("simsiam")
    loss, _ = module.objective(images(), "train")
    loss.backward()
    assert any(torch.count_nonzero(p.grad) for p in module.encoder.parameters())
    # With a prediction that ignores the encoder, the only path left from the loss to the
    # encoder would be through the projections it is compared with: the stop-gradient cuts it.
    module.zero_grad()
    module.predictor = FixedPrediction()
    loss, _ = module.objective(images(), "train")
    loss.backward()
    assert all(p.grad is None or not torch.count_nonzero(p.grad) for p in module.parameters())


@pytest.mark.parametrize("method", OBJECTIVES)
def test_collapse_is_flagged_and_warned(tmp_path, method: str) -> None:
    # A collapse threshold above any healthy value flags every epoch, as for SimCLR.
    cfg = compose_train(
        *QUICK,
        f"method={method}",
        "method.epochs=1",
        "method.collapse_std=10",
        "logger=tensorboard",
    )
    name = OBJECTIVES[method].display_name
    with pytest.warns(UserWarning, match=f"{name} projections are collapsing"):
        train(cfg, tmp_path)
    assert epoch_scalars(tmp_path, "train/collapsed") == [1.0]


@pytest.mark.parametrize(
    ("method", "overrides", "message"),
    [
        ("byol", ("method.base_momentum=1.5",), r"base_momentum must lie in \[0, 1\], got 1.5"),
        ("byol", ("method.final_momentum=-0.1",), r"final_momentum must lie in \[0, 1\], got -0.1"),
        ("vicreg", ("method.variance_weight=-25",), "variance_weight must be .*>= 0, got -25"),
        ("vicreg", ("method.covariance_weight=-1",), "covariance_weight must .*>= 0, got -1"),
        ("barlow_twins", ("method.lambda_=-0.005",), "lambda must be a number >= 0, got -0.005"),
        ("vicreg", ("data.batch_size=1",), r"VICReg needs data.batch_size >= 2 .*got 1"),
        ("barlow_twins", ("data.batch_size=1",), r"Barlow Twins needs data.batch_size >= 2"),
        ("byol", ("data.batch_size=1",), r"BYOL needs data.batch_size >= 2 .*got 1"),
        ("simsiam", ("method.neg_pairs=2",), r"method.neg_pairs=2: SimSiam has no negative pairs"),
        ("byol", ("method.neg_pairs=all",), r"method.neg_pairs='all': BYOL has no negative"),
        ("vicreg", ("method.projector=deep",), "unknown projector kind 'deep'; accepted: mlp"),
        ("barlow_twins", ("method.encode_views=x",), "unknown encode_views 'x'; accepted"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, method, overrides, message) -> None:
    cfg = compose_train(*FAST, f"method={method}", *overrides)
    # (Hydra wraps what the constructors raise in an InstantiationException.)
    with pytest.raises(Exception, match=message):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_method_lists_the_choices() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(
        ConfigCompositionException, match=r"(?s)moco.*barlow_twins.*byol.*simsiam.*vicreg"
    ):
        compose_train("method=moco")


# Objectives whose preset pretrains on batches of 256 rather than the tutorial's 1000 (tuned:
# README, "Objectives without negatives"); their probe and feature batches stay at 1000.
TUNED_BATCH = {"byol": 256, "vicreg": 256, "barlow_twins": 256}


@pytest.mark.parametrize("method", OBJECTIVES)
def test_tutorial_presets_differ_from_tutorial_simclr_in_the_objective(method: str) -> None:
    simclr = compose_train("experiment=tutorial_simclr", "data.path=x.npz")
    cfg = compose_train(f"experiment=tutorial_{method}", "data.path=x.npz")
    assert cfg.method._target_ == f"reprlab.methods.{OBJECTIVES[method].__name__}"
    for key in ("epochs", "lr", "cosine_epochs", "encode_views"):
        assert cfg.method[key] == simclr.method[key], key
    assert cfg.data.batch_size == TUNED_BATCH.get(method, simclr.data.batch_size)
    assert cfg.probe.batch_size == simclr.probe.batch_size == 1000
    assert cfg.feature_batch_size == simclr.feature_batch_size == 1000

    def without_batch(group) -> dict:  # noqa: ANN001
        return {key: value for key, value in group.items() if key != "batch_size"}

    assert without_batch(cfg.data) == without_batch(simclr.data)
    assert without_batch(cfg.probe) == without_batch(simclr.probe)
    assert cfg.augment == simclr.augment and cfg.encoder == simclr.encoder


# The real subset, small enough for a minute or two per objective at one thread: 2,400 training
# images, 10 epochs of 12 batches, a 20-epoch probe; the random encoder is the baseline.
REAL_SHORT = (
    *FAST,
    "data.source=file",
    "data.num_images=3000",
    "data.val_fraction=0",
    "probe.epochs=20",
)
# Ten epochs leave every objective short of the plateau's end (README, "Objectives without
# negatives"), but clearly above the random encoder's features.
MARGIN = 0.05


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("method", OBJECTIVES)
def test_a_short_real_data_run_beats_a_random_encoder(tmp_path, real_subset, method) -> None:
    base = (*REAL_SHORT, f"data.path={real_subset}")
    random_acc = train(compose_train(*base, "method=none"), tmp_path / "random")["test/acc"]
    cfg = compose_train(*base, f"method={method}", "method.epochs=10")
    metrics = train(cfg, tmp_path / method)
    assert metrics["test/acc"] > random_acc + MARGIN, (metrics["test/acc"], random_acc)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", ["vicreg", "byol"])
def test_two_process_run_from_the_command_line(tmp_path, method: str) -> None:
    # Global-batch statistics (VICReg) and a momentum target (BYOL) through real DDP.
    import json

    from test_distributed import DDP_SMOKE, run_cli

    run_cli(*DDP_SMOKE, f"method={method}", "analysis=none", "hydra.run.dir=run", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == f"reprlab.methods.{OBJECTIVES[method].__name__}"
    assert math.isfinite(metrics[f"pretrain/test/{LOSS_NAMES[method]}"])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
