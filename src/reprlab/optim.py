"""Optimisers and learning-rate schedules for pretraining (the ``optim`` config group).

Adam with per-epoch cosine annealing stays every method's default (the tutorial's optimiser).
The SimCLR recipes use SGD with momentum or LARS, warmed up linearly and then cosine-annealed
per step, as in Chen et al. (2020).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("adam", "sgd", "lars")
SCHEDULERS = ("cosine", "warmup_cosine")
# The keys an `optim` config may hold besides `name`.
OPTIM_KEYS = {"name", "scheduler", "warmup_epochs", "momentum", "nesterov", "trust_coefficient"}


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017).

    For each parameter tensor in a group with ``lars=True``: the update direction is
    ``d = grad + weight_decay * w``, scaled by the trust ratio
    ``trust_coefficient * ||w|| / ||d||`` (1 when either norm is 0), then fed to heavy-ball
    momentum: ``v = momentum * v + d``, ``w -= lr * v``. Groups with ``lars=False`` (biases and
    BatchNorm parameters, by SimCLR's convention) get plain momentum SGD on ``grad +
    weight_decay * w``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        nesterov: bool = False,
        lars: bool = True,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"LARS lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"LARS momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"LARS needs weight_decay >= 0 and trust_coefficient > 0, got {weight_decay} "
                f"and {trust_coefficient}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "nesterov": nesterov,
            "lars": lars,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                direction = param.grad
                if group["weight_decay"]:
                    direction = direction.add(param, alpha=group["weight_decay"])
                if group["lars"]:
                    param_norm = torch.linalg.vector_norm(param)
                    direction_norm = torch.linalg.vector_norm(direction)
                    # torch.where keeps this on the device: no host sync per parameter.
                    trust = torch.where(
                        (param_norm > 0) & (direction_norm > 0),
                        group["trust_coefficient"] * param_norm / direction_norm,
                        torch.ones_like(param_norm),
                    )
                    direction = direction * trust
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = direction.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(direction)
                buffer = state["momentum_buffer"]
                if group["nesterov"]:
                    direction = direction.add(buffer, alpha=group["momentum"])
                else:
                    direction = buffer
                param.add_(direction, alpha=-group["lr"])
        return loss


class WarmupCosine:
    """LambdaLR factor per step: linear warm-up from ``1/warmup_steps`` to 1, then cosine decay
    to 0 at ``total_steps``. An object rather than a closure, so LambdaLR checkpoints it."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        if total_steps < 1 or not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"need 0 <= warmup steps < total steps, got {warmup_steps} and {total_steps}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def check_optim(optim: Mapping[str, Any] | None, epochs: int | None = None) -> dict[str, Any]:
    """The ``optim`` settings with defaults filled in; unknown names and keys are refused, and so
    is a warm-up as long as the run (``epochs``, when given)."""
    settings = {
        "name": "adam",
        "scheduler": "cosine",
        "warmup_epochs": 0,
        "momentum": 0.9,
        "nesterov": False,
        "trust_coefficient": 0.001,
    }
    settings.update(dict(optim or {}))
    unknown = sorted(set(settings) - OPTIM_KEYS)
    if unknown:
        raise ValueError(f"unknown optim keys {unknown}; accepted: {sorted(OPTIM_KEYS)}")
    if settings["name"] not in OPTIMIZERS:
        raise ValueError(
            f"unknown optim.name {settings['name']!r}; accepted: {', '.join(OPTIMIZERS)}"
        )
    if settings["scheduler"] not in SCHEDULERS:
        raise ValueError(
            f"unknown optim.scheduler {settings['scheduler']!r}; accepted: {', '.join(SCHEDULERS)}"
        )
    if settings["warmup_epochs"] < 0:
        raise ValueError(f"optim.warmup_epochs must be >= 0, got {settings['warmup_epochs']}")
    if settings["warmup_epochs"] and settings["scheduler"] != "warmup_cosine":
        raise ValueError(
            f"optim.warmup_epochs={settings['warmup_epochs']} needs "
            f"optim.scheduler=warmup_cosine, got {settings['scheduler']}"
        )
    if epochs is not None and settings["warmup_epochs"] >= epochs:
        raise ValueError(
            f"optim.warmup_epochs={settings['warmup_epochs']} must be less than "
            f"method.epochs={epochs}"
        )
    return settings


def _decay_groups(
    module: nn.Module, weight_decay: float, undecayed: Iterable[nn.Parameter] = ()
) -> list[dict[str, Any]]:
    """Weights (matrices, kernels) decay and get LARS scaling; biases and BatchNorm parameters
    (one-dimensional) do neither, as in SimCLR. ``undecayed`` parameters (an online probe's head)
    keep LARS scaling on their weights but never decay."""
    excluded = {id(param) for param in undecayed}
    weights, others, probe = [], [], []
    for param in module.parameters():
        if not param.requires_grad:
            continue
        if id(param) in excluded:
            probe.append(param)
        else:
            (weights if param.ndim > 1 else others).append(param)
    groups = [
        {"params": weights, "weight_decay": weight_decay, "lars": True},
        {"params": others, "weight_decay": 0.0, "lars": False},
        {"params": [p for p in probe if p.ndim > 1], "weight_decay": 0.0, "lars": True},
        {"params": [p for p in probe if p.ndim <= 1], "weight_decay": 0.0, "lars": False},
    ]
    return [group for group in groups if group["params"]]


def cosine_per_epoch(
    optimizer: torch.optim.Optimizer, epochs: int, cosine_epochs: int | None = None
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: ``optimizer``, cosine-annealed per epoch over
    ``cosine_epochs`` (default: the run's ``epochs``, so the rate reaches 0 at the end)."""
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cosine_epochs or epochs)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def adam_with_cosine(
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    epochs: int,
    cosine_epochs: int | None = None,
) -> dict[str, Any]:
    """Adam with :func:`cosine_per_epoch` (the tutorial's optimiser)."""
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    return cosine_per_epoch(optimizer, epochs, cosine_epochs)


def configure_optimization(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    epochs: int,
    optim: Mapping[str, Any] | None,
    total_steps: int | None = None,
    cosine_epochs: int | None = None,
    undecayed: Iterable[nn.Parameter] = (),
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for ``module`` under the ``optim`` settings.

    ``undecayed``: parameters exempt from weight decay under SGD/LARS (the online probe's head:
    decay meant to regularise the encoder would only shrink the probe's logits).

    ``total_steps`` (the run's optimiser steps, ``trainer.estimated_stepping_batches``) is needed
    by ``warmup_cosine`` only. Adam + cosine is exactly :func:`adam_with_cosine`; the per-epoch
    ``cosine`` schedule anneals over ``cosine_epochs`` (default ``epochs``).
    """
    settings = check_optim(optim, epochs)
    if settings["name"] == "adam" and settings["scheduler"] == "cosine":
        return adam_with_cosine(module.parameters(), lr, weight_decay, epochs, cosine_epochs)
    if settings["name"] == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            module.parameters(), lr=lr, weight_decay=weight_decay
        )
    elif settings["name"] == "sgd":
        groups = _decay_groups(module, weight_decay, undecayed)
        for group in groups:
            del group["lars"]
        optimizer = torch.optim.SGD(
            groups, lr=lr, momentum=settings["momentum"], nesterov=settings["nesterov"]
        )
    else:
        optimizer = LARS(
            _decay_groups(module, weight_decay, undecayed),
            lr=lr,
            momentum=settings["momentum"],
            trust_coefficient=settings["trust_coefficient"],
            nesterov=settings["nesterov"],
        )
    if settings["scheduler"] == "cosine":
        return cosine_per_epoch(optimizer, epochs, cosine_epochs)
    if total_steps is None or total_steps < 1:
        raise ValueError("optim.scheduler=warmup_cosine needs the run's number of steps")
    warmup_steps = int(round(total_steps * settings["warmup_epochs"] / epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_steps, total_steps)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
