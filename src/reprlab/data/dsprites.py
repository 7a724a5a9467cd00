"""dSprites as a LightningDataModule: the real file or the procedural renderer, split, biased."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from reprlab import metric_keys
from reprlab.data import render
from reprlab.data.bias import biased_subset, check_bias
from reprlab.data.files import download_dsprites, load_dsprites_npz
from reprlab.data.splits import stratified_subset
from reprlab.dist import world_size_and_rank

log = logging.getLogger(__name__)

SOURCES = ("procedural", "file")
# "labelled" is the part of the training split whose labels may be used (data.label_fraction).
SPLITS = ("train", "labelled", "val", "test")


class IndexedTensors(Dataset):
    """Rows ``index`` of some tensors, fetched a whole batch at a time by fancy indexing.

    Used with a ``BatchSampler`` as the sampler and ``batch_size=None``, each fetch is one tensor
    indexing operation: no per-image Python calls and no copy of the dataset per split.
    """

    def __init__(self, index: torch.Tensor, *tensors: torch.Tensor) -> None:
        self.index = index
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, ...]:
        rows = self.index[torch.as_tensor(positions)]
        return tuple(tensor[rows] for tensor in self.tensors)


def shard_batches(
    order: torch.Tensor, batch_size: int, num_replicas: int, rank: int
) -> list[torch.Tensor]:
    """Process ``rank``'s share of each batch when ``order`` is cut into batches of ``batch_size``.

    Every batch is split into ``num_replicas`` contiguous chunks whose sizes differ by at most one
    (the first ``len(batch) % num_replicas`` ranks take one more), so over all ranks each position
    is used exactly once, no sample is repeated to pad, and every rank gets the same number of
    batches. A last batch too small to give every rank two samples joins the batch before it:
    BatchNorm in training mode (and SimCLR's spread monitors) need at least two per process.
    """
    size = len(order)
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
    if min(size, batch_size) < num_replicas:
        raise ValueError(
            f"cannot share batches of {min(size, batch_size)} samples between {num_replicas} "
            f"processes: every process needs at least one per batch; use fewer processes "
            f"(trainer.devices) or a larger data.batch_size"
        )
    starts = list(range(0, size, batch_size))
    if len(starts) > 1 and size - starts[-1] < 2 * num_replicas:
        starts.pop()
    bounds = [*starts, size]
    shards = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        count, extra = divmod(end - start, num_replicas)
        low = start + rank * count + min(rank, extra)
        shards.append(order[low : low + count + (rank < extra)])
    return shards


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of positions ``0 .. size - 1``; under ``torch.distributed``, this process's share.

    In a single process it is exactly ``BatchSampler(RandomSampler | SequentialSampler)``: the
    shuffle draws from torch's global RNG, so a seeded (or resumed) run repeats its batches.

    With an initialised process group of W > 1 processes (or explicit ``num_replicas``/``rank``)
    the epoch's order is the same on every rank: a permutation drawn from a generator seeded with
    ``seed + epoch`` (Lightning calls :meth:`set_epoch` every epoch; without it each pass moves on
    to the next epoch). That order is cut into global batches of ``batch_size`` and each rank
    takes its part of every batch (:func:`shard_batches`). So ``batch_size`` stays the global
    batch: the same optimiser steps per epoch and, for SimCLR, the same negatives as one process.
    The world is looked up when iterating, not when built, so loaders made before the process
    group starts (the probe's) shard correctly too.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        seed: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if (num_replicas is None) != (rank is None):
            raise ValueError("give both num_replicas and rank, or neither")
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        # Lightning's own distributed sampler seeds from the seed_everything() value likewise.
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        positions = range(size)
        order = RandomSampler(positions) if shuffle else SequentialSampler(positions)
        self._one_process = BatchSampler(order, batch_size=batch_size, drop_last=False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _world(self) -> tuple[int, int]:
        if self.num_replicas is not None and self.rank is not None:
            return self.num_replicas, self.rank
        return world_size_and_rank()

    def _one_process_batches(self) -> list[list[int]]:
        """One process's batches; a last batch of a single image joins the one before it, as
        under DDP: a batch of one has no batch statistics (BatchNorm, VICReg, ...)."""
        batches = list(self._one_process)  # the same draws as iterating it
        if self.batch_size > 1 and len(batches) > 1 and len(batches[-1]) == 1:
            last = batches.pop()
            batches[-1] = batches[-1] + last
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        num_replicas, rank = self._world()
        if num_replicas == 1:
            yield from self._one_process_batches()
            return
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        self.epoch += 1
        for shard in shard_batches(order, self.batch_size, num_replicas, rank):
            yield shard.tolist()

    def __len__(self) -> int:
        num_replicas, rank = self._world()
        if num_replicas == 1:
            merged = self.size > self.batch_size and self.size % self.batch_size == 1
            return len(self._one_process) - merged
        return len(shard_batches(torch.arange(self.size), self.batch_size, num_replicas, rank))


def batch_loader(
    index: torch.Tensor, *tensors: torch.Tensor, batch_size: int, shuffle: bool
) -> DataLoader:
    """A DataLoader yielding batches of ``tensors[index]``: shuffled by torch's global RNG in one
    process, sharded across the processes of a distributed run (:class:`ShardedBatchSampler`)."""
    dataset = IndexedTensors(index, *tensors)
    return DataLoader(
        dataset,
        sampler=ShardedBatchSampler(len(dataset), batch_size=batch_size, shuffle=shuffle),
        batch_size=None,
    )


def check_fraction(
    name: str, value: float, allow_zero: bool = False, allow_one: bool = True
) -> float:
    low_ok = value >= 0 if allow_zero else value > 0
    high_ok = value <= 1 if allow_one else value < 1
    if not (low_ok and high_ok):
        interval = ("[0" if allow_zero else "(0") + ", " + ("1]" if allow_one else "1)")
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return float(value)


class InMemoryBatches:
    """What every reprlab DataModule shares: the whole dataset in memory as ``images`` (uint8)
    and ``targets``, splits as index tensors ``<split>_idx`` for each of :data:`SPLITS`, and
    batches gathered by :func:`batch_loader`. Subclasses set those in ``setup`` and define
    ``to_float``."""

    images: torch.Tensor | None
    targets: torch.Tensor
    batch_size: int
    train_split: str
    val_idx: torch.Tensor
    # The share of the training split whose labels may be used (the ``labelled`` split).
    label_fraction: float = 1.0

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def has_val(self) -> bool:
        return self.images is not None and len(self.val_idx) > 0

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        images, *rest = batch
        return (self.to_float(images), *rest)

    def split_index(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
        if self.images is None:
            raise RuntimeError("call setup() before asking for a split")
        return getattr(self, f"{split}_idx")

    def loader(
        self, split: str, shuffle: bool = False, batch_size: int | None = None
    ) -> DataLoader:
        return batch_loader(
            self.split_index(split),
            self.images,
            self.targets,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_split, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self.loader("val") if self.has_val else []

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def label_subset(
        self,
        fraction: float,
        seed: int,
        split: str = "train",
        name: str = "probe.label_fraction",
    ) -> torch.Tensor:
        """Positions (into ``split``) of a stratified ``fraction`` of its labels; ``name`` is the
        option the fraction came from, for the error message."""
        check_fraction(name, fraction)
        index = self.split_index(split)
        # The targets may live on the GPU (CIFAR-10's data.on_device); the indices stay on the CPU.
        labels = self.targets[index.to(self.targets.device)].cpu().numpy()
        return stratified_subset(labels, fraction, seed)


class DSpritesDataModule(InMemoryBatches, L.LightningDataModule):
    """dSprites (64x64 binary sprites with five latents) for classifying one latent.

    The images stay in memory as a uint8 tensor (N, 1, 64, 64); batches are converted to float on
    the device (``on_after_batch_transfer``). Splits are index tensors into that one tensor:
    ``train_fraction`` of the images for training, the rest for test, and ``val_fraction`` of the
    training split held out for validation. The bias (and its control) filters the training
    split only. All latents stay available (``latents_classes``, on DeepMind's grid whatever the
    file's own grid, and ``latents_values``) so later analyses can sort or colour by any of them.

    ``label_fraction`` makes only a stratified, seeded share of the training split labelled (the
    ``labelled`` split); the other training images count as unlabelled. ``train_dataloader``
    serves the split named by ``train_split``: ``train`` (every training image, for methods that
    ignore the labels) or ``labelled`` (for methods whose encoder learns from the labels).
    """

    def __init__(
        self,
        source: str = "procedural",
        path: str | None = None,
        download: bool = False,
        cache_dir: str = "~/.cache/reprlab",
        num_images: int | None = 20000,
        subset_seed: int = 0,
        target: str = "shape",
        train_fraction: float = 0.8,
        val_fraction: float = 0.1,
        split_seed: int = 2021,
        batch_size: int = 1000,
        num_workers: int = 0,
        bias: str = "none",
        bias_control: bool = False,
        label_fraction: float = 1.0,
        label_seed: int = 0,
    ) -> None:
        super().__init__()
        # Everything is checked here, before any data is read or any training starts.
        if source not in SOURCES:
            raise ValueError(f"unknown data.source {source!r}; accepted: {', '.join(SOURCES)}")
        if source == "file" and path is None and not download:
            raise ValueError(
                "data.source=file needs data.path=<dSprites .npz> or data.download=true"
            )
        if source == "procedural" and path is not None:
            # Otherwise the file would be silently ignored and the run trained on drawn images.
            raise ValueError(
                f"data.path={path!r} is used only with data.source=file, but data.source is "
                "procedural (the default; accepted: file, procedural): add data.source=file, or "
                "set data.path=null"
            )
        if target not in render.LATENT_NAMES:
            raise ValueError(
                f"unknown data.target {target!r}; accepted: {', '.join(render.LATENT_NAMES)}"
            )
        if num_images is not None and num_images < 2:
            raise ValueError(f"data.num_images must be >= 2 or null (all), got {num_images}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.path = path
        self.download = download
        self.cache_dir = Path(cache_dir).expanduser()
        self.num_images = num_images
        self.subset_seed = subset_seed
        self.target = target
        self.train_fraction = check_fraction("data.train_fraction", train_fraction, allow_one=False)
        self.val_fraction = check_fraction(
            "data.val_fraction", val_fraction, allow_zero=True, allow_one=False
        )
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.num_workers = num_workers  # accepted for config compatibility; batches need none
        self.bias = check_bias(bias)
        self.bias_control = bias_control
        self.label_fraction = check_fraction("data.label_fraction", label_fraction)
        self.label_seed = label_seed
        self.train_split = "train"
        self.images: torch.Tensor | None = None

    # -- what the rest of the pipeline asks of a datamodule ------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, render.IMAGE_SIZE, render.IMAGE_SIZE)

    @property
    def num_classes(self) -> int:
        return render.LATENT_SIZES[render.LATENT_NAMES.index(self.target)]

    @property
    def class_names(self) -> list[str]:
        if self.target == "shape":
            return list(render.SHAPE_NAMES)
        return [f"{self.target}={i}" for i in range(self.num_classes)]

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (0/1 for dSprites) to the float input the encoders see."""
        return images.float()

    # -- loading --------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.source == "file" and self.path is None and self.download:
            download_dsprites(self.cache_dir)

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.source == "file":
            path = self.path if self.path is not None else download_dsprites(self.cache_dir)
            images, classes, values = load_dsprites_npz(path)
            if images.shape[1:] != (render.IMAGE_SIZE, render.IMAGE_SIZE):
                raise ValueError(
                    f"{path}: dSprites images are {render.IMAGE_SIZE}x{render.IMAGE_SIZE}, "
                    f"got {images.shape[1:]}"
                )
            subset = self._subset(len(images))
            if subset is not None:
                images, classes, values = images[subset], classes[subset], values[subset]
            return images, classes, values
        classes = render.all_latent_classes()
        subset = self._subset(len(classes))
        if subset is None:
            images = render.render_all(self.cache_dir)
        else:
            classes = classes[subset]
            images = render.render(classes)
        return images, classes, render.latent_values(classes)

    def _subset(self, total: int) -> np.ndarray | None:
        if self.num_images is None or self.num_images >= total:
            if self.num_images is not None and self.num_images > total:
                log.warning("data.num_images=%d > %d available: using all", self.num_images, total)
            return None
        rng = np.random.default_rng(self.subset_seed)
        return np.sort(rng.choice(total, size=self.num_images, replace=False))

    def setup(self, stage: str | None = None) -> None:
        if self.images is not None:  # Lightning calls setup once per stage; load once
            return
        images, classes, values = self._load()
        self.images = torch.from_numpy(images).unsqueeze(1)
        self.latents_classes = torch.from_numpy(classes)
        self.latents_values = torch.from_numpy(values)
        self.targets = self.latents_classes[:, render.LATENT_NAMES.index(self.target)].clone()

        n = len(images)
        order = np.random.default_rng(self.split_seed).permutation(n)
        n_train = int(round(self.train_fraction * n))
        n_val = int(round(self.val_fraction * n_train))
        if n_train - n_val < 1 or n - n_train < 1:
            raise ValueError(
                f"{n} images with train_fraction={self.train_fraction} and "
                f"val_fraction={self.val_fraction} leave an empty split"
            )
        train = np.sort(order[n_val:n_train])
        train = biased_subset(
            train, values, self.bias, control=self.bias_control, seed=self.split_seed
        )
        if len(train) == 0:
            raise ValueError(f"bias {self.bias!r} keeps no training image")
        if self.batch_size > len(train):
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the training split "
                f"({len(train)} images); lower data.batch_size or raise data.num_images"
            )
        self.train_idx = torch.from_numpy(train)
        # Val and test keep the permuted order, so a partial pass (limit_val_batches) still sees a
        # random sample rather than the first shape of a file sorted by latents.
        self.val_idx = torch.from_numpy(order[:n_val].copy())
        self.test_idx = torch.from_numpy(order[n_train:].copy())
        self.labelled_idx = self.train_idx[
            self.label_subset(self.label_fraction, self.label_seed, name="data.label_fraction")
        ]
        log.info(
            "dSprites (%s): %d images; train %d (labelled %d), val %d, test %d; target %s; "
            "bias %s%s",
            self.source,
            n,
            len(self.train_idx),
            len(self.labelled_idx),
            len(self.val_idx),
            len(self.test_idx),
            self.target,
            self.bias,
            " (control)" if self.bias_control else "",
        )

    def group_masks(self, split: str) -> dict[str, torch.Tensor]:
        """Boolean masks over ``split`` naming the groups whose accuracies show a shortcut: each
        shape, each third of the posX range (1 = left, posX < 1/3), and each shape in each third.
        """
        index = self.split_index(split)
        shapes = self.latents_classes[index, render.LATENT_NAMES.index("shape")]
        pos_x = self.latents_values[index, render.LATENT_NAMES.index("posX")]
        thirds = (pos_x * 3).floor().clamp(max=2).long()
        masks = {}
        for shape, shape_name in enumerate(render.SHAPE_NAMES):
            masks[metric_keys.shape_group(shape_name)] = shapes == shape
        for third in metric_keys.POSX_THIRDS:
            masks[metric_keys.third_group(third)] = thirds == third - 1
        for shape, shape_name in enumerate(render.SHAPE_NAMES):
            for third in metric_keys.POSX_THIRDS:
                masks[metric_keys.shape_third_group(shape_name, third)] = (shapes == shape) & (
                    thirds == third - 1
                )
        return masks
