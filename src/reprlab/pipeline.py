"""The stages a run goes through, shared by ``reprlab-train`` and ``reprlab-eval``.

config -> datamodule -> encoder -> (pretraining method) -> frozen linear probe -> metrics.json
"""

from __future__ import annotations

import logging
import math
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from reprlab import __version__, distributed, encoder_weights
from reprlab.callbacks import PerRankRandomness, RankZeroBuffers
from reprlab.data.dsprites import batch_loader
from reprlab.encoders import NormalizedInput
from reprlab.io import AtomicCheckpointIO, atomic_write, write_json
from reprlab.names import short_name
from reprlab.perf import apply_model_speedups
from reprlab.probe import (
    LinearProbe,
    batchnorms,
    batchnorms_without_statistics,
    extract_features,
    group_accuracies,
    predict,
    recalibrate_batchnorm,
)

log = logging.getLogger(__name__)


class StageTimer:
    """Wall-clock seconds per named stage, for metrics.json."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(
                self.seconds.get(stage, 0.0) + time.perf_counter() - start, 3
            )


def prepare(cfg: DictConfig, run_dir: Path) -> tuple[L.LightningDataModule, nn.Module, StageTimer]:
    """Check the devices, write the run files, seed, load the data and build the encoder."""
    distributed.check_devices(cfg.trainer)
    distributed.check_strategy(cfg.trainer)
    distributed.check_launched(cfg.trainer)
    check_label_fractions(cfg)
    if distributed.is_global_zero():
        write_run_files(cfg, run_dir)
    L.seed_everything(cfg.seed, workers=True)
    timer = StageTimer()
    with timer("data"):
        datamodule = build_datamodule(cfg)
    encoder = build_encoder(cfg, datamodule)
    if cfg.encoder.get("weights") and distributed.is_global_zero():
        write_run_files(cfg, run_dir)  # again, now with encoder.weights_record
    return datamodule, encoder, timer


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    datamodule = instantiate(cfg.data, bias=cfg.bias.name, bias_control=cfg.bias.control)
    datamodule.prepare_data()
    datamodule.setup()
    if uses_labels(cfg):
        datamodule.train_split = "labelled"
    return datamodule


def build_encoder(cfg: DictConfig, datamodule: L.LightningDataModule) -> nn.Module:
    encoder = instantiate(
        encoder_weights.architecture_config(cfg.encoder), input_shape=datamodule.input_shape
    )
    # Weights trained elsewhere (encoder.weights), matched to the bare encoder's own names.
    encoder_weights.remember(cfg, encoder_weights.load_configured(encoder, cfg.encoder))
    normalization = getattr(datamodule, "normalization", None)
    if normalization is not None:  # data kept in [0, 1] pixels (CIFAR-10): normalise on entry
        encoder = NormalizedInput(encoder, *normalization)
    return apply_model_speedups(encoder, cfg.get("channels_last", False), compile_encoder=False)


def has_pretraining(cfg: DictConfig) -> bool:
    return cfg.method.get("_target_") is not None


def uses_labels(cfg: DictConfig) -> bool:
    """Whether the pretraining method's encoder learns from the labels (its classifier head is
    trained end to end, as in supervised learning), so it may see only the labelled images."""
    if not has_pretraining(cfg):
        return False
    return not getattr(get_class(cfg.method._target_), "detach_classifier", True)


def data_label_fraction(cfg: DictConfig) -> float:
    return float(cfg.data.get("label_fraction", 1.0))


def labelled_epochs(epochs: int, fraction: float) -> int:
    """The tutorial's epochs for training on ``fraction`` of the labels: ceil(epochs/sqrt(f)).

    Fewer images give fewer steps per epoch; scaling by 1/sqrt(f) rather than 1/f adds epochs
    without training small subsets for as many steps as the whole set.
    """
    # Less 1e-9 so that rounding cannot lift an exact quotient: 21 / sqrt(0.49) is 30, not 31.
    return math.ceil(epochs / math.sqrt(fraction) - 1e-9)


def pretrain_epochs(cfg: DictConfig) -> int:
    epochs = int(cfg.method.epochs)
    return labelled_epochs(epochs, data_label_fraction(cfg)) if uses_labels(cfg) else epochs


def check_label_fractions(cfg: DictConfig) -> None:
    """Refuse ``probe.label_fractions`` that cannot be probed, before any data is read."""
    fractions = cfg.probe.get("label_fractions")
    if fractions is None:
        return
    if isinstance(fractions, str | int | float) or len(fractions) == 0:
        raise ValueError(
            f"probe.label_fractions must be a non-empty list like [0.05,0.1,1.0], got {fractions}"
        )
    for fraction in fractions:
        if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise ValueError(f"probe.label_fractions must lie in (0, 1], got {fraction}")
    if uses_labels(cfg):
        raise ValueError(
            f"probe.label_fractions probes one encoder with fewer labels, but method "
            f"{cfg.method._target_} trains its encoder on the labels: retrain it on each "
            f"fraction instead, e.g. reprlab-train -m method=supervised "
            f"data.label_fraction={','.join(str(f) for f in fractions)}"
        )


def build_method(
    cfg: DictConfig, encoder: nn.Module, datamodule: L.LightningDataModule
) -> L.LightningModule:
    """The pretraining module; ``module.hparams.epochs`` is the number of epochs to train."""
    module = instantiate(
        cfg.method, encoder=encoder, num_classes=datamodule.num_classes, epochs=pretrain_epochs(cfg)
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return apply_model_speedups(module, cfg.get("channels_last", False), cfg.get("compile", False))


def build_trainer(
    cfg: DictConfig, run_dir: Path, stage: str, max_epochs: int, has_val: bool
) -> L.Trainer:
    """A Trainer for one stage: its own logger version and checkpoint folder in the run folder."""
    checkpoint_dir = (
        run_dir / "checkpoints" if stage == "pretrain" else run_dir / "checkpoints" / stage
    )
    callbacks = []
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        if callback_cfg is None:  # `callbacks.<name>=null` switches one callback off
            continue
        overrides: dict[str, Any] = {}
        if name == "model_checkpoint":
            overrides["dirpath"] = str(checkpoint_dir)
            overrides["enable_version_counter"] = False
            if not has_val:  # nothing to rank by: "best" is simply the latest epoch
                overrides["monitor"] = None
        callbacks.append(instantiate(callback_cfg, **overrides))
    # Not optional under DDP (no-ops in one process): independent random draws per rank, and
    # every rank evaluating rank 0's (the checkpointed) BatchNorm statistics.
    callbacks += [PerRankRandomness(), RankZeroBuffers()]
    logger = (
        instantiate(cfg.logger, save_dir=str(run_dir), version=stage)
        if cfg.get("logger")
        else False
    )
    return instantiate(
        cfg.trainer,
        max_epochs=max_epochs,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_checkpointing=any(
            isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks
        ),
        enable_progress_bar=any(isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks),
        plugins=[AtomicCheckpointIO()],
        strategy=distributed.trainer_strategy(cfg.trainer),
    )


def compute_device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", distributed.local_gpu_index(cfg.trainer))
    return torch.device("cpu")


def scalar_metrics(metrics: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    return {prefix + key: float(value) for key, value in metrics.items() if "_step" not in key}


def run_probe(
    cfg: DictConfig,
    encoder: nn.Module,
    datamodule: L.LightningDataModule,
    run_dir: Path,
    label_fraction: float | None = None,
    stage: str = "probe",
    feature_cache: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Fit a linear probe on the frozen encoder and test it; returns its metrics.

    The probe trains on ``label_fraction`` (default ``probe.label_fraction``) of the labelled
    training images, for ceil(probe.epochs / sqrt(f)) epochs where f is the share of the training
    split's labels it sees (:func:`labelled_epochs`). ``feature_cache`` keeps each split's frozen
    features between calls on the same encoder; ``stage`` names its logs and checkpoints.
    """
    probe_cfg = cfg.probe
    fraction = float(probe_cfg.label_fraction if label_fraction is None else label_fraction)
    feature_cache = {} if feature_cache is None else feature_cache
    device = compute_device(cfg)
    encoder = encoder.to(device)
    encoder.requires_grad_(False)
    batch_size = int(probe_cfg.batch_size)

    stale = batchnorms_without_statistics(encoder)
    if stale:
        log.info("estimating running statistics of %d untrained BatchNorm layers", len(stale))
        calibrate_batchnorm(cfg, encoder, datamodule, stale)

    def split_features(split: str) -> torch.Tensor:
        if split not in feature_cache:
            images = datamodule.images[datamodule.split_index(split)]
            feature_cache[split] = extract_features(
                encoder.to(device), images, datamodule.to_float, batch_size, device
            )
        return feature_cache[split]

    labelled = datamodule.label_subset(fraction, int(probe_cfg.label_seed), split="labelled")
    train_index = datamodule.split_index("labelled")[labelled]
    splits = {
        "train": train_index,
        "val": datamodule.split_index("val"),
        "test": datamodule.split_index("test"),
    }
    epochs = labelled_epochs(int(probe_cfg.epochs), fraction * data_label_fraction(cfg))

    probe = LinearProbe(
        encoder.feature_dim,
        datamodule.num_classes,
        epochs,
        probe_cfg.lr,
        probe_cfg.weight_decay,
        # Without the cache the probe runs the frozen encoder on every batch itself.
        encoder=None if probe_cfg.cache_features else _FloatInputs(encoder, datamodule.to_float),
        cosine_epochs=probe_cfg.get("cosine_epochs"),
    )
    if probe_cfg.cache_features:
        loaders = {
            split: batch_loader(
                torch.arange(len(index)),
                split_features("labelled")[labelled] if split == "train" else split_features(split),
                datamodule.targets[index],
                batch_size=batch_size,
                shuffle=split == "train",
            )
            for split, index in splits.items()
            if len(index) > 0
        }
    else:
        encoder.eval()
        loaders = {
            split: batch_loader(
                index,
                datamodule.images,
                datamodule.targets,
                batch_size=batch_size,
                shuffle=split == "train",
            )
            for split, index in splits.items()
            if len(index) > 0
        }

    trainer = build_trainer(cfg, run_dir, stage, epochs, has_val="val" in loaders)
    trainer.fit(probe, train_dataloaders=loaders["train"], val_dataloaders=loaders.get("val", []))
    fit_metrics = scalar_metrics(trainer.callback_metrics)
    test_metrics = scalar_metrics(
        trainer.test(probe, dataloaders=loaders["test"], verbose=False)[0]
    )
    metrics = {
        key: value for key, value in fit_metrics.items() if key.startswith(("train/acc", "val/"))
    }
    metrics.update(test_metrics)
    metrics["num_labelled"] = len(train_index)
    metrics["probe_epochs"] = epochs
    if hasattr(datamodule, "group_masks"):
        metrics.update(
            group_accuracies(
                predict(probe.classifier, split_features("test")),
                datamodule.targets[splits["test"]],
                datamodule.group_masks("test"),
                prefix="test/",
            )
        )
    return metrics


def calibrate_batchnorm(
    cfg: DictConfig,
    encoder: nn.Module,
    datamodule: L.LightningDataModule,
    layers: list[nn.modules.batchnorm._BatchNorm] | None = None,
    split: str = "train",
) -> None:
    """Set the running statistics of ``layers`` (default: every BatchNorm of ``encoder``) to
    their average over the un-augmented images of ``split``, in batches of ``probe.batch_size``.

    The batches are a seeded shuffle of the split: files sorted by latents would otherwise give
    batches of one shape each, and an average of within-batch variances that misses the
    variance between them.
    """
    layers = batchnorms(encoder) if layers is None else layers
    if not layers:
        return
    device = compute_device(cfg)
    batch_size = int(cfg.probe.batch_size)
    index = datamodule.split_index(split)
    order = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(cfg.seed))]
    recalibrate_batchnorm(
        encoder.to(device),
        lambda: (
            datamodule.to_float(datamodule.images[order[i : i + batch_size]].to(device))
            for i in range(0, len(order), batch_size)
        ),
        layers,
    )


def precise_batchnorm(
    cfg: DictConfig, encoder: nn.Module, datamodule: L.LightningDataModule
) -> bool:
    """With ``precise_bn`` set, recompute a trained encoder's BatchNorm statistics before it is
    tested or probed (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm").

    Training leaves each layer's running mean and variance as an exponential average over the
    last ~10 batches, taken while the weights were still moving, so in eval mode a network can
    normalise with statistics its final weights never produce. Measured on the real dSprites
    subset (tutorial protocol, supervised, 10 epochs): seed 2 tested at 94.0% with the running
    averages and 98.4% once they were recomputed over the training images. The images are the
    pretraining split's (``datamodule.train_split``), not augmented: what the probe and the test
    feed the encoder. Returns whether any statistics were recomputed.
    """
    if not cfg.get("precise_bn", False):
        return False
    layers = batchnorms(encoder)
    if layers:
        log.info("precise BatchNorm: recomputing the statistics of %d layers", len(layers))
        calibrate_batchnorm(cfg, encoder, datamodule, layers, split=datamodule.train_split)
    return bool(layers)


def resave_last_checkpoint(trainer: L.Trainer) -> None:
    """Write the trainer's model into its ``last.ckpt`` again (atomically), so that the file holds
    what is tested and probed after fitting (e.g. precise BatchNorm statistics), not the state at
    the last epoch's end. Every process calls it; under DDP rank 0 writes."""
    callback = trainer.checkpoint_callback
    path = getattr(callback, "last_model_path", "") if callback is not None else ""
    if path:
        trainer.save_checkpoint(path)


def pretrained_group_accuracies(
    cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule
) -> dict[str, float]:
    """Per-group test accuracies of the pretraining module's own classifier head."""
    if not hasattr(datamodule, "group_masks") or not hasattr(module, "classifier"):
        return {}
    device = compute_device(cfg)
    test_index = datamodule.split_index("test")
    features = extract_features(
        module.encoder.to(device),
        datamodule.images[test_index],
        datamodule.to_float,
        int(cfg.probe.batch_size),
        device,
    )
    return group_accuracies(
        predict(module.classifier, features),
        datamodule.targets[test_index],
        datamodule.group_masks("test"),
        prefix="pretrain/test/",
    )


def run_probes(
    cfg: DictConfig,
    encoder: nn.Module,
    datamodule: L.LightningDataModule,
    run_dir: Path,
    feature_cache: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The probe at ``probe.label_fraction``, then, when ``probe.label_fractions`` is set, one
    probe per fraction on the same frozen features (``frac_<f>/test/acc``, ...), plotted against
    the fraction in label_fractions.png. ``feature_cache`` receives each split's frozen features
    (``labelled``, ``val``, ``test``) for the analyses that follow."""
    feature_cache = {} if feature_cache is None else feature_cache
    metrics = run_probe(cfg, encoder, datamodule, run_dir, feature_cache=feature_cache)
    fractions = cfg.probe.get("label_fractions")
    if not fractions:
        return metrics
    curve: dict[float, dict[str, Any]] = {}
    for fraction in sorted({float(f) for f in fractions}):
        if fraction == float(cfg.probe.label_fraction):
            curve[fraction] = metrics
            continue
        # Each fraction's probe starts from the same seed, whatever the others drew.
        L.seed_everything(cfg.seed + 1, workers=True)
        curve[fraction] = run_probe(
            cfg,
            encoder,
            datamodule,
            run_dir,
            label_fraction=fraction,
            stage=f"probe_frac_{fraction:g}",
            feature_cache=feature_cache,
        )
    for fraction, result in curve.items():
        for key in FRACTION_KEYS:
            if key in result:
                metrics[f"frac_{fraction:g}/{key}"] = result[key]
    from reprlab.plots import plot_label_fractions  # matplotlib only for runs that plot

    data_fraction = data_label_fraction(cfg)
    plot_label_fractions(
        {
            "test": [(f * data_fraction, r["test/acc"], 0.0) for f, r in curve.items()],
            "train": [(f * data_fraction, r["train/acc"], 0.0) for f, r in curve.items()],
        },
        run_dir / "label_fractions.png",
        chance=1.0 / datamodule.num_classes,
        title=f"{short_name(cfg.method.get('_target_'))} / {short_name(cfg.encoder._target_)}",
        styles={"train": "--"},
    )
    return metrics


# What metrics.json keeps of each probe in a label-fraction sweep.
FRACTION_KEYS = ("test/acc", "test/loss", "train/acc", "val/acc", "num_labelled", "probe_epochs")


class _FloatInputs(nn.Module):
    """An encoder taking the datamodule's uint8 batches (the uncached probe path)."""

    def __init__(self, encoder: nn.Module, to_float: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.to_float = to_float

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.to_float(images))


def chance_levels(datamodule: L.LightningDataModule) -> dict[str, float]:
    test_labels = datamodule.targets[datamodule.split_index("test")]
    counts = torch.bincount(test_labels, minlength=datamodule.num_classes)
    return {
        "chance": 1.0 / datamodule.num_classes,
        "chance_majority": float(counts.max() / counts.sum()),
    }


def git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def write_run_files(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config and the software versions, so a run folder explains itself."""
    atomic_write(
        run_dir / "config.yaml",
        lambda handle: handle.write(OmegaConf.to_yaml(cfg, resolve=True).encode()),
    )
    import hydra
    import lightning
    import numpy
    import torchvision

    write_json(
        run_dir / "run_info.json",
        {
            "reprlab": __version__,
            "git_commit": git_commit(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightning": lightning.__version__,
            "hydra": hydra.__version__,
            "numpy": numpy.__version__,
            "cuda_available": torch.cuda.is_available(),
        },
    )


def describe(cfg: DictConfig, datamodule: L.LightningDataModule) -> dict[str, Any]:
    """The facts about a run that a results table needs beside its numbers."""
    return {
        "method": cfg.method.get("_target_", "none") or "none",
        "encoder": cfg.encoder._target_,
        "data": cfg.data._target_,
        "data_source": cfg.data.get("source"),
        "target": cfg.data.get("target"),
        "bias": cfg.bias.name,
        "bias_control": bool(cfg.bias.control),
        # The share of the training split's labels the probe saw; data.label_fraction alone is the
        # share the whole run could use.
        "label_fraction": data_label_fraction(cfg) * float(cfg.probe.label_fraction),
        "data_label_fraction": data_label_fraction(cfg),
        "seed": cfg.seed,
        "num_train": len(datamodule.split_index("train")),
        "num_val": len(datamodule.split_index("val")),
        "num_test": len(datamodule.split_index("test")),
    }


def finish(
    metrics: dict[str, Any],
    cfg: DictConfig,
    datamodule: L.LightningDataModule,
    run_dir: Path,
    timer: StageTimer,
) -> dict[str, Any]:
    """Add the run's facts and timings to ``metrics``, write metrics.json, print the summary."""
    metrics.update(chance_levels(datamodule))
    metrics.update(describe(cfg, datamodule))
    if encoder_weights.recorded(cfg) is not None:
        metrics["encoder_weights"] = encoder_weights.recorded(cfg)
    metrics["seconds"] = timer.seconds
    if distributed.is_global_zero():  # one metrics.json per run, however many processes
        write_json(run_dir / "metrics.json", metrics)
        print_summary(metrics, run_dir)
    return metrics


def print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    seconds = ", ".join(f"{stage} {value:.1f}s" for stage, value in metrics["seconds"].items())
    lines = [
        f"reprlab: probe test/acc {metrics['test/acc']:.4f} (chance {metrics['chance']:.4f})",
    ]
    if "pretrain/test/acc" in metrics:
        lines.append(f"         pretrained model's own test/acc {metrics['pretrain/test/acc']:.4f}")
    lines += [f"         time: {seconds}", f"         run folder: {run_dir}"]
    print("\n".join(lines), flush=True)
