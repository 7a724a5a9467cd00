"""Reading the composed config: the checks made before anything runs, and the values derived
from it once (the pretraining epochs with few labels), so no later stage guesses them again."""

from __future__ import annotations

import inspect
import logging
import math

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from reprlab import launch

log = logging.getLogger(__name__)

# Lightning Trainer keys that a run of several stages cannot take as one value, with the value
# that means "not set" to Lightning.
STAGE_LENGTH_KEYS = {"max_epochs": None, "max_steps": -1}
# compile=auto compiles the encoder on a GPU for a pretraining of at least this many optimiser
# steps, set well above the steps a compile takes to repay itself; shorter runs (tests,
# debug=fast, quick looks) stay eager. On the CPU it never compiles: eager steps run
# few_channel_layers' CPU paths, which compiling replaces (README, "Benchmarks", compares both).
COMPILE_AUTO_MIN_STEPS = 300
COMPILE_SETTINGS = (True, False, "auto")


def has_pretraining(method_cfg: DictConfig) -> bool:
    return method_cfg.get("_target_") is not None  # method=none has no target


def uses_labels(method_cfg: DictConfig) -> bool:
    """Whether the pretraining method's encoder learns from the labels (its classifier head is
    trained end to end, as in supervised learning), so it may see only the labelled images."""
    if not has_pretraining(method_cfg):
        return False
    return not get_class(method_cfg._target_).detach_classifier


def data_label_fraction(data_cfg: DictConfig) -> float:
    """The labelled share of the training split; data groups without labels to withhold
    (CIFAR-10) have no ``label_fraction`` key and use every label."""
    return float(OmegaConf.select(data_cfg, "label_fraction", default=1.0))


def labelled_epochs(epochs: int, fraction: float) -> int:
    """The tutorial's epochs for training on ``fraction`` of the labels: ceil(epochs/sqrt(f)).

    Fewer images give fewer steps per epoch; scaling by 1/sqrt(f) rather than 1/f adds epochs
    without training small subsets for as many steps as the whole set.
    """
    # Less 1e-9 so that rounding cannot lift an exact quotient: 21 / sqrt(0.49) is 30, not 31.
    return math.ceil(epochs / math.sqrt(fraction) - 1e-9)


def decide_pretrain_epochs(method_cfg: DictConfig, data_cfg: DictConfig) -> int:
    """``method.epochs``, or ceil(method.epochs / sqrt(f)) for a method whose encoder trains on
    the ``data.label_fraction`` f of the labels; said in the log when they differ."""
    epochs = int(method_cfg.epochs)
    if not uses_labels(method_cfg):
        return epochs
    fraction = data_label_fraction(data_cfg)
    scaled = labelled_epochs(epochs, fraction)
    if scaled != epochs:
        log.info("method.epochs %d -> %d for data.label_fraction %g", epochs, scaled, fraction)
    return scaled


def check_stage_lengths(trainer_cfg: DictConfig) -> None:
    """A run trains in stages, each with its own length: refuse ``trainer.max_epochs`` and
    ``trainer.max_steps``, naming the keys that set them."""
    for key, unset in STAGE_LENGTH_KEYS.items():
        value = trainer_cfg.get(key, unset)  # a trainer group of the user's may leave them out
        if value != unset:
            raise ValueError(
                f"trainer.{key}={value} is not used: a run trains in stages of their own length; "
                "set the pretraining's with method.epochs and the linear probe's with "
                "probe.epochs (trainer.limit_train_batches shortens every epoch)"
            )


def check_label_fractions(probe_cfg: DictConfig, method_cfg: DictConfig) -> None:
    """Refuse ``probe.label_fractions`` that cannot be probed, before any data is read."""
    fractions = probe_cfg.label_fractions
    if fractions is None:
        return
    if isinstance(fractions, str | int | float) or len(fractions) == 0:
        raise ValueError(
            f"probe.label_fractions must be a non-empty list like [0.05,0.1,1.0], got {fractions}"
        )
    for fraction in fractions:
        if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise ValueError(f"probe.label_fractions must lie in (0, 1], got {fraction}")
    if uses_labels(method_cfg):
        raise ValueError(
            f"probe.label_fractions probes one encoder with fewer labels, but method "
            f"{method_cfg._target_} trains its encoder on the labels: retrain it on each "
            f"fraction instead, e.g. reprlab-train -m method=supervised "
            f"data.label_fraction={','.join(str(f) for f in fractions)}"
        )


def group_choice(group: str) -> str | None:
    """The option chosen for a config group on the command line or by a preset (``byol`` for
    ``method=byol``); None outside a Hydra app."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


# Given by the run when it builds the method, not by the method group.
BUILT_METHOD_ARGUMENTS = ("self", "encoder", "num_classes")


def check_method_keys(method_cfg: DictConfig, method_choice: str | None) -> None:
    """Refuse ``method.*`` keys that the chosen method does not take, naming them and the keys it
    does take: a preset written for one method, with another swapped in by ``method=``, would
    otherwise stop inside Hydra's instantiate with an "unexpected keyword" traceback."""
    if not has_pretraining(method_cfg):
        return
    target = get_class(method_cfg._target_)
    parameters = inspect.signature(target.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [key for key in method_cfg if key not in parameters and key != "_target_"]
    if unknown:
        accepted = [name for name in parameters if name not in BUILT_METHOD_ARGUMENTS]
        given = ", ".join(f"method.{key}={method_cfg[key]}" for key in unknown)
        raise ValueError(
            f"{given}: not a setting of method={method_choice or target.__name__} "
            f"({method_cfg._target_}), which takes {', '.join(accepted)}. An experiment preset "
            "written for another method sets it: drop it with "
            + " ".join(f"~method.{key}" for key in unknown)
            + ", or pick a preset made for this method"
        )


def check_compile(setting: object) -> None:
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"compile must be true, false or auto, got {setting!r}")


def decide_compile(setting: bool | str, steps: int, on_cpu: bool) -> bool:
    """Whether to compile the encoder for a pretraining of ``steps`` optimiser steps: the
    setting itself, or with ``auto`` never on the CPU and elsewhere whether ``steps`` reaches
    COMPILE_AUTO_MIN_STEPS; said in the log."""
    check_compile(setting)
    if setting != "auto":
        return bool(setting)
    if on_cpu:
        log.info("compile=auto: not compiling the encoder on the CPU (compile=true to force it)")
        return False
    decided = steps >= COMPILE_AUTO_MIN_STEPS
    log.info(
        "compile=auto: %s the encoder (%d pretraining steps, %s %d)",
        "compiling" if decided else "not compiling",
        steps,
        ">=" if decided else "<",
        COMPILE_AUTO_MIN_STEPS,
    )
    return decided


def check_run(cfg: DictConfig) -> None:
    """Everything that can be refused from the config alone, before a file is written."""
    check_compile(cfg.compile)
    launch.check_devices(cfg.trainer)
    launch.check_strategy(cfg.trainer)
    launch.check_launched(cfg.trainer)
    check_stage_lengths(cfg.trainer)
    check_method_keys(cfg.method, group_choice("method"))
    check_label_fractions(cfg.probe, cfg.method)
