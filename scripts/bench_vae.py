"""Benchmark VAE pretraining: seconds per epoch of the model alone, and through a Trainer.

Run (from the repository root, with the project's venv)::

    .venv/bin/python scripts/bench_vae.py                       # 16,000 images, 1 epoch
    .venv/bin/python scripts/bench_vae.py --trainer             # + Lightning Trainer epoch
    .venv/bin/python scripts/bench_vae.py --images 2000 --epochs 1 --trainer --threads 2
    .venv/bin/python scripts/bench_vae.py --data /work/shared/data/dsprites_subset.npz
    .venv/bin/python scripts/bench_vae.py --compile --epochs 2  # compiled, as a long run is
    .venv/bin/python scripts/bench_vae.py --device cuda --trainer --json vae.json

What it measures, on ``--images`` dSprites training images (default 16,000, the Neuromatch
tutorial's training split) with the tutorial's VAE settings -- core encoder (84-d posterior
mean), ``reprlab.methods.VAE`` (log-variance head, transposed-convolution decoder, Bernoulli
BCE + KL), batch 500, Adam lr 1e-3, channels_last modules as a run builds them
(``--no-channels-last`` for ``channels_last=false``):

* **plain loop** (always): uint8 images in memory, batches by index, ``.float()``, then
  ``module.objective(images, "train")``, ``zero_grad``, ``backward``, ``step``: the model alone, no
  Lightning Trainer. ``--epochs`` full epochs, each after one untimed warm-up step. A short
  instrumented pass (``--profile-batches``) splits a step into encoder forward, decoder forward
  (with the log-variance head and the reparameterisation), loss, and backward+step, the way
  ``VAE.objective`` chains them, scaled to an epoch.
* **conventional loop** (unless ``--no-baseline``): the same loop, model, weights and batches,
  with PyTorch's own layers where reprlab uses ``reprlab.few_channel_layers`` (``nn.BatchNorm2d``
  and ``nn.AvgPool2d``, each run as its own module) and PyTorch's
  ``F.binary_cross_entropy_with_logits`` as the reconstruction loss. Its epochs alternate with
  the plain loop's, so both see the machine in the same state; the ratio of their medians is
  printed.
* with ``--trainer``, also:

  - the same plain loop calling ``module.training_step((images, labels), i)`` -- the objective
    plus the online linear probe (classifier, cross-entropy, accuracy update; ``self.log``
    calls are no-ops without a Trainer), so the probe's cost can be told from the Trainer's;
  - one epoch of ``lightning.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
    enable_progress_bar=False)`` fitting a fresh ``VAE`` on a ``DSpritesDataModule`` holding the
    same training images (epoch time from a callback, and the whole ``fit()`` call).

Data as in ``bench_simclr.py`` (whose helpers this script imports, so keep both in
``scripts/``): ``--data PATH`` for a dSprites ``.npz`` file, otherwise procedural dSprites; if
``reprlab.data`` cannot be imported the plain loop falls back to numpy / random blobs and the
Trainer run to a minimal in-memory datamodule, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from bench_simclr import (
    IMAGE_SHAPE,
    CpuUsage,
    PhaseClock,
    Phases,
    batch_indices,
    load_train_images,
    make_datamodule,
    seed_everything,
    set_threads,
    synchronize,
)
from torch import Tensor
from torch.nn import functional as F

from reprlab import few_channel_layers
from reprlab.encoders import CoreEncoder
from reprlab.losses import VAELoss
from reprlab.methods.vae import VAE
from reprlab.perf import apply_model_speedups, keep_freed_memory

LR = 1e-3
NUM_CLASSES = 3  # shape: the probe head's size; irrelevant to the VAE objective


def build_vae(
    device: torch.device, seed: int, compile_model: bool = False, channels_last: bool = True
) -> VAE:
    torch.manual_seed(seed)
    encoder = CoreEncoder(IMAGE_SHAPE, feature_dim=84)
    module = VAE(encoder, num_classes=NUM_CLASSES, epochs=1, lr=LR)
    # As a run sets it up (channels_last=true by default; compile the encoder and the decoder);
    # the untimed warm-up step compiles.
    return apply_model_speedups(module.to(device).train(), channels_last, compile_model)


class PyTorchBCEVAELoss(VAELoss):
    """``VAELoss`` with PyTorch's BCE with logits as the reconstruction term."""

    def reconstruction_sum(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")


def conventional_vae(module: VAE) -> VAE:
    """``module`` with PyTorch's layers and BCE loss in place of reprlab's, in place."""
    few_channel_layers.as_pytorch_layers(module)
    module.criterion = PyTorchBCEVAELoss(module.criterion.beta)
    return module


def summed(usages: list[CpuUsage]) -> CpuUsage:
    total = CpuUsage()
    total.user = sum(u.user for u in usages)
    total.system = sum(u.system for u in usages)
    total.minor_faults = sum(u.minor_faults for u in usages)
    return total


def objective_step(module: VAE, optimizer: torch.optim.Optimizer, images: Tensor) -> None:
    loss, _ = module.objective(images, "train")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def training_step(
    module: VAE, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor, i: int
) -> None:
    loss = module.training_step((images, labels), i)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + epoch)


def time_plain(
    module: VAE,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    with_probe: bool,
) -> tuple[list[float], CpuUsage]:
    """Seconds per epoch of the plain loop (objective only, or the full training_step)."""
    device = module.device
    optimizer = torch.optim.Adam(module.parameters(), lr=LR)
    warm = torch.arange(min(batch_size, len(images)))
    step_args = (images[warm].to(device).float(), labels[warm].to(device))
    if with_probe:  # untimed warm-up
        training_step(module, optimizer, *step_args, 0)
    else:
        objective_step(module, optimizer, step_args[0])
    times = []
    with CpuUsage() as usage:
        for _ in range(epochs):
            synchronize(device)
            start = time.perf_counter()
            for i, index in enumerate(batch_indices(len(images), batch_size, generator)):
                batch = images[index].to(device, non_blocking=True).float()
                if with_probe:
                    training_step(module, optimizer, batch, labels[index].to(device), i)
                else:
                    objective_step(module, optimizer, batch)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return times, usage


def profile_vae(
    module: VAE, images: Tensor, batch_size: int, num_batches: int, generator: torch.Generator
) -> Phases:
    """Phase timings of ``VAE.objective``'s chain, with a sync + timer between phases."""
    device = module.device
    optimizer = torch.optim.Adam(module.parameters(), lr=LR)
    phases = Phases(names=("encoder", "decoder", "loss", "backward+step"))
    clock = PhaseClock(device, phases)
    done = 0
    while done < num_batches:
        for index in batch_indices(len(images), batch_size, generator):
            if done == num_batches:
                break
            batch = images[index].to(device).float()
            clock.start()
            mu = module.encoder(batch)
            clock.lap("encoder")
            logvar = module.logvar_head(mu)
            latents = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            logits = module.decoder(latents)
            clock.lap("decoder")
            loss = module.criterion(logits, batch, mu, logvar)["loss"]
            clock.lap("loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clock.lap("backward+step")
            phases.images += len(index)
            done += 1
    return phases


class EpochTimer(L.Callback):
    """Wall-clock seconds of each training epoch, as the Trainer runs it."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self.times.append(time.perf_counter() - self._start)


class InMemoryDataModule(L.LightningDataModule):
    """Fallback when ``reprlab.data`` is unavailable: (uint8 images, labels) batches by index."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int) -> None:
        super().__init__()
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def train_dataloader(self) -> Any:
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

        dataset = TensorDataset(self.images, self.labels)
        sampler = BatchSampler(RandomSampler(dataset), self.batch_size, drop_last=False)
        # TensorDataset indexes with a list of positions: one fancy-indexing fetch per batch.
        return DataLoader(dataset, sampler=sampler, batch_size=None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        return images.float(), labels


def run_trainer(
    datamodule: L.LightningDataModule, device: torch.device, seed: int
) -> tuple[float, float]:
    """(seconds of the Trainer's training epoch, seconds of the whole ``fit()`` call)."""
    module = build_vae(device, seed)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    return (timer.times[0] if timer.times else float("nan")), fit_seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=16000, help="training images")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs of the plain loop")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--profile-batches", type=int, default=3, help="instrumented batches")
    parser.add_argument(
        "--trainer", action="store_true", help="also time a probe loop and a Lightning Trainer"
    )
    parser.add_argument(
        "--data", default=None, help="dSprites .npz file (omitted: procedural images)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the encoder and decoder (as a run)"
    )
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="contiguous (NCHW) modules, as a run with channels_last=false",
    )
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the conventional loop (PyTorch's layers and BCE), epochs alternating",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("images", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.profile_batches < 0:
        parser.error("--profile-batches must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    set_threads(args.threads)
    # The allocator setting reprlab-train uses; it applies to both pipelines alike.
    print(f"keep freed memory (glibc mallopt): {keep_freed_memory()}")
    seed_everything(args.seed)
    device = torch.device(args.device)
    # VAE.objective calls self.log, which warns (and does nothing) without a Trainer.
    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning vs torch deprecation
    for name in ("lightning.pytorch", "lightning.fabric"):  # "GPU available: ..." banners
        logging.getLogger(name).setLevel(logging.WARNING)

    datamodule: L.LightningDataModule | None = None
    try:
        dm = make_datamodule(args.images, args.data, batch_size=args.batch_size)
    except ImportError as error:
        print(f"note: reprlab.data not importable ({error}); using a fallback", file=sys.stderr)
        images, source = load_train_images(args.images, args.data, args.seed, try_datamodule=False)
        labels = torch.zeros(len(images), dtype=torch.long)
        if args.trainer:
            datamodule = InMemoryDataModule(images, labels, args.batch_size)
            source += "; Trainer on a minimal in-memory datamodule (not DSpritesDataModule)"
    else:
        dm.train_idx = dm.train_idx[: args.images]
        train = dm.split_index("train")
        images = dm.images[train].contiguous()
        labels = dm.targets[train].contiguous()
        source = f"file {args.data}" if args.data else "procedural dSprites"
        source += " (DSpritesDataModule training split)"
        datamodule = dm

    num = len(images)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(f"data: {num} training images from {source}")
    print(f"batch {args.batch_size} ({-(-num // args.batch_size)} batches/epoch)\n")

    module = build_vae(device, args.seed, args.compile, args.channels_last)
    baseline = (
        conventional_vae(build_vae(device, args.seed, args.compile, args.channels_last))
        if args.baseline
        else None
    )
    times, baseline_times, usages = [], [], []
    for epoch in range(args.epochs):
        # The same batches for both loops: a generator seeded per epoch.
        epoch_times, usage = time_plain(
            module, images, labels, args.batch_size, 1, epoch_generator(args.seed, epoch), False
        )
        times += epoch_times
        usages.append(usage)
        if baseline is not None:
            epoch_times, _ = time_plain(
                baseline, images, labels, args.batch_size, 1, epoch_generator(args.seed, epoch),
                False,
            )  # fmt: skip
            baseline_times += epoch_times
    plain = statistics.median(times)
    listed = ", ".join(f"{t:.2f}" for t in times)
    usage = summed(usages)
    print(f"plain loop: epoch times {listed} s; per epoch {usage.describe(per=args.epochs)}")
    if baseline_times:
        listed = ", ".join(f"{t:.2f}" for t in baseline_times)
        print(f"conventional loop (PyTorch's layers and BCE): epoch times {listed} s")
    generator = torch.Generator().manual_seed(args.seed)
    if args.profile_batches:
        phases = profile_vae(module, images, args.batch_size, args.profile_batches, generator)
        per_epoch = phases.per_epoch(num)
        breakdown = ", ".join(f"{k} {v:.2f}" for k, v in per_epoch.items())
        plain_line = f"{plain:.2f} s/epoch  ({breakdown})"
    else:
        plain_line = f"{plain:.2f} s/epoch"

    figures: dict[str, Any] = {
        "device": str(device),
        "train_images": num,
        "batch_size": args.batch_size,
        "plain_seconds_per_epoch": plain,
    }
    print()
    print(f"VAE plain loop, objective only:        {plain_line}")
    if baseline_times:
        conventional = statistics.median(baseline_times)
        print(
            f"VAE conventional loop, objective only: {conventional:.2f} s/epoch; "
            f"ours is {conventional / plain:.2f}x faster"
        )
        figures.update(
            conventional_seconds_per_epoch=conventional,
            conventional_over_ours=conventional / plain,
        )
    if args.trainer:
        probe_module = build_vae(device, args.seed, args.compile, args.channels_last)
        probe_times, _ = time_plain(
            probe_module, images, labels, args.batch_size, args.epochs, generator, with_probe=True
        )
        probe = statistics.median(probe_times)
        print(f"VAE plain loop, training_step (probe): {probe:.2f} s/epoch")
        seed_everything(args.seed)
        assert datamodule is not None
        epoch, fit_seconds = run_trainer(datamodule, device, args.seed)
        print(
            f"VAE Lightning Trainer, 1 epoch:        {epoch:.2f} s/epoch  "
            f"(whole fit() call {fit_seconds:.2f} s)"
        )
        overhead = epoch - probe
        print(
            f"Trainer overhead vs the training_step loop: {overhead:+.2f} s/epoch "
            f"({100 * overhead / probe:+.0f}%)"
        )
        figures.update(
            probe_loop_seconds_per_epoch=probe,
            trainer_seconds_per_epoch=epoch,
            trainer_fit_seconds=fit_seconds,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
