"""Where this process stands among several: its world, rank and device, and the collectives
that span them (the losses' gathers, the loaders' sharding, the run files' single writer).

Starting the processes is :mod:`reprlab.launch`'s job; everything here also works, and answers
"one process", when no process group exists.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, ListConfig
from torch import Tensor


def world_size_and_rank() -> tuple[int, int]:
    """(world size, rank) of the initialised process group; (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def global_rank() -> int:
    """This process's rank: from the process group once it exists, else from the environment
    (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``... as Lightning reads them)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    # Imported here: the losses use this module in processes that need no Lightning.
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_global_zero() -> bool:
    """Whether this process writes the run's files (config, metrics.json, summary)."""
    return global_rank() == 0


def uses_gpu(trainer_cfg: DictConfig) -> bool:
    """Whether ``trainer.accelerator`` puts this run on CUDA (``auto`` does when there is one)."""
    accelerator = str(trainer_cfg.accelerator)
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def local_gpu_index(trainer_cfg: DictConfig) -> int:
    """The GPU this process trains on: the ``LOCAL_RANK``-th of ``trainer.devices`` when it lists
    ids, else GPU ``LOCAL_RANK`` (0 in a single process), as Lightning assigns them."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    devices: Any = trainer_cfg.devices
    if isinstance(devices, str) and "," in devices:
        devices = [int(part) for part in devices.split(",") if part.strip()]
    if isinstance(devices, list | tuple | ListConfig) and local_rank < len(devices):
        return int(devices[local_rank])
    return local_rank


def compute_device(trainer_cfg: DictConfig) -> torch.device:
    """The device of this process's work outside the Trainer (features, BatchNorm passes,
    analyses): the GPU Lightning trains on, else the CPU."""
    if uses_gpu(trainer_cfg) and torch.cuda.is_available():
        return torch.device("cuda", local_gpu_index(trainer_cfg))
    return torch.device("cpu")


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` along dim 0 whose backward sends every rank its share of the gradient.

    Forward: concatenate the tensors of all ranks, in rank order. Ranks may hold different
    numbers of rows (``sizes``, the same list on every rank): each pads to the largest for the
    collective and the padding is cut out again.
    Backward: every rank holds d(own loss)/d(all gathered rows); an all-reduce SUM turns that
    into d(sum of all ranks' losses)/d(rows), of which each rank keeps its own slice.
    A custom Function (instead of ``torch.distributed.nn.functional.all_gather``) keeps the
    backward to a plain all-reduce, which every backend (gloo, nccl, ...) supports.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, sizes: list[int]) -> Tensor:  # type: ignore[override]
        rank = dist.get_rank()
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.start = sum(sizes[:rank])  # type: ignore[attr-defined]
        ctx.n = x.shape[0]  # type: ignore[attr-defined]
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)], dim=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()  # all_reduce is in place; never mutate autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.start  # type: ignore[attr-defined]
        return grad[start : start + ctx.n], None  # type: ignore[attr-defined]


def gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """All-gather ``x`` along dim 0, keeping gradients. ``sizes``: every rank's number of rows
    (the same list on all ranks); by default all ranks hold as many rows as this one."""
    if sizes is None:
        sizes = [x.shape[0]] * dist.get_world_size()
    return _GatherWithGrad.apply(x.contiguous(), sizes)  # type: ignore[no-any-return]


def gather_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's ``n``, in rank order (a tiny all_gather)."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(size.item()) for size in sizes]


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
