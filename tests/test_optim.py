"""The optim group: Adam + cosine stays the default, SGD / LARS with warm-up then cosine."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_train
from hydra.utils import instantiate
from torch import nn

from reprlab.encoders import CoreEncoder
from reprlab.optim import LARS, WarmupCosine, adam_with_cosine, check_optim, configure_optimization


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_default_is_the_tutorials_adam_with_cosine() -> None:
    model = small_model()
    for optim in (None, {"name": "adam"}, check_optim(None)):
        setup = configure_optimization(model, 1e-3, 0.0, 10, optim)
        reference = adam_with_cosine(model.parameters(), 1e-3, 0.0, 10)
        assert type(setup["optimizer"]) is torch.optim.Adam
        assert setup["optimizer"].defaults == reference["optimizer"].defaults
        scheduler = setup["lr_scheduler"]["scheduler"]
        assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
        assert scheduler.T_max == 10 and setup["lr_scheduler"]["interval"] == "epoch"
    module = instantiate(compose_train().method, encoder=CoreEncoder((1, 64, 64)), num_classes=3)
    assert module.hparams.optim == check_optim(None)


def test_warmup_cosine_factor() -> None:
    schedule = WarmupCosine(warmup_steps=10, total_steps=110)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.5)  # half way through the decay
    assert schedule(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert schedule(110) == pytest.approx(0.0)
    factors = [schedule(step) for step in range(110)]
    assert factors[:10] == sorted(factors[:10]) and factors[10:] == sorted(factors[10:])[::-1]


def test_sgd_warms_up_per_step_and_decays_weights_only() -> None:
    model = small_model()
    optim = {"name": "sgd", "scheduler": "warmup_cosine", "warmup_epochs": 2, "nesterov": True}
    setup = configure_optimization(model, 0.5, 5e-4, 10, optim, total_steps=100)
    optimizer = setup["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD) and setup["lr_scheduler"]["interval"] == "step"
    weights, others = optimizer.param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and weights["weight_decay"] == 5e-4
    assert all(p.ndim == 1 for p in others["params"]) and others["weight_decay"] == 0.0
    assert weights["nesterov"] and weights["momentum"] == 0.9
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        setup["lr_scheduler"]["scheduler"].step()
    assert lrs[0] == pytest.approx(0.5 / 20) and lrs[19] == pytest.approx(0.5)
    assert lrs[60] == pytest.approx(0.5 * 0.5) and lrs[-1] < 1e-3


def test_lars_scales_each_layer_by_its_trust_ratio() -> None:
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = nn.Parameter(torch.tensor([1.0]))
    optimizer = LARS(
        [
            {"params": [weight], "weight_decay": 0.1, "lars": True},
            {"params": [bias], "weight_decay": 0.0, "lars": False},
        ],
        lr=0.5,
        momentum=0.9,
        trust_coefficient=0.01,
    )
    weight.grad = torch.tensor([[0.6, 0.8]])
    bias.grad = torch.tensor([2.0])
    optimizer.step()
    direction = torch.tensor([[0.6, 0.8]]) + 0.1 * torch.tensor([[3.0, 4.0]])  # grad + wd * w
    trust = 0.01 * 5.0 / direction.norm()
    assert torch.allclose(weight, torch.tensor([[3.0, 4.0]]) - 0.5 * trust * direction)
    assert torch.allclose(bias, torch.tensor([1.0 - 0.5 * 2.0]))  # plain SGD step
    # Second step: heavy-ball momentum on the scaled direction.
    before = weight.detach().clone()
    weight.grad = torch.tensor([[0.6, 0.8]])
    optimizer.step()
    second = torch.tensor([[0.6, 0.8]]) + 0.1 * before
    velocity = 0.9 * trust * direction + 0.01 * before.norm() / second.norm() * second
    assert torch.allclose(weight, before - 0.5 * velocity, atol=1e-6)


def test_lars_recipe_group_puts_biases_and_batchnorm_aside() -> None:
    model = small_model()
    settings = {"name": "lars", "scheduler": "warmup_cosine", "warmup_epochs": 1}
    optimizer = configure_optimization(model, 1.0, 1e-6, 5, settings, total_steps=50)["optimizer"]
    assert isinstance(optimizer, LARS)
    adapted, plain = optimizer.param_groups
    assert adapted["lars"] and adapted["weight_decay"] == 1e-6
    assert not plain["lars"] and plain["weight_decay"] == 0.0
    assert len(adapted["params"]) == 2 and len(plain["params"]) == 4  # 2 biases, BN weight+bias


def test_online_probe_head_is_never_weight_decayed() -> None:
    from reprlab.augment import Identity
    from reprlab.methods.simclr import SimCLR

    settings = {"name": "lars", "scheduler": "cosine"}
    module = SimCLR(CoreEncoder((1, 64, 64)), 3, 5, Identity(), weight_decay=1e-4, optim=settings)
    groups = module.configure_optimizers()["optimizer"].param_groups
    head = {id(p) for p in module.classifier.parameters()}
    for group in groups:
        in_head = [id(p) in head for p in group["params"]]
        assert all(in_head) or not any(in_head)  # the head never shares a group
        if any(in_head):
            assert group["weight_decay"] == 0.0
        elif group["lars"]:
            assert group["weight_decay"] == 1e-4
    covered = [id(p) for group in groups for p in group["params"]]
    assert sorted(covered) == sorted(id(p) for p in module.parameters() if p.requires_grad)
    # Supervised training regularises its head like the rest of the network.
    from reprlab.methods.supervised import Supervised

    supervised = Supervised(CoreEncoder((1, 64, 64)), 3, 5, weight_decay=1e-4, optim=settings)
    decayed = supervised.configure_optimizers()["optimizer"].param_groups[0]["params"]
    assert any(p is supervised.classifier.weight for p in decayed)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("optim.name=adamw",), r"unknown optim.name 'adamw'; accepted: adam, sgd, lars"),
        (("optim=sgd", "optim.scheduler=step"), r"unknown optim.scheduler 'step'"),
        (("optim=lars", "optim.warmup_epochs=10"), r"warmup_epochs=10 must be less than.*=10"),
        (("optim.warmup_epochs=2",), "warmup_epochs=2 needs optim.scheduler=warmup_cosine"),
    ],
)
def test_bad_optim_settings_fail_when_the_method_is_built(overrides, message) -> None:
    cfg = compose_train("method=supervised", *overrides)
    with pytest.raises(Exception, match=message):
        instantiate(cfg.method, encoder=CoreEncoder((1, 64, 64)), num_classes=3)
