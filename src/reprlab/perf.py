"""Process-level speed settings for training on the CPU."""

from __future__ import annotations

import ctypes
import logging
import sys

import torch
from torch import nn

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Stop glibc from handing large freed blocks back to the OS after every training step.

    By default each activation over 32 MB is mmap'ed and unmapped again, so every step pays page
    faults to map the same memory anew, which can cost a CPU step most of its time in the
    kernel (README, "Benchmarks"). Memory still peaks at the same size; it is just not returned
    between steps. Returns whether the setting took effect
    (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
    except (OSError, AttributeError):
        return False
    if applied:
        log.debug("glibc malloc: freed memory is kept for reuse")
    return applied


def apply_model_speedups(
    module: nn.Module, channels_last: bool, compile_encoder: bool
) -> nn.Module:
    """channels_last for the convolutions; optionally compile the encoder (and a VAE's decoder)
    in place.

    Compiling in place (``nn.Module.compile``) keeps the state-dict keys unchanged, so
    checkpoints load whether or not the run that wrote them was compiled.
    """
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile_encoder:
        encoder = getattr(module, "encoder", module)
        encoder.compile()
        decoder = getattr(module, "decoder", None)  # the VAE's: as large a share of its step
        if isinstance(decoder, nn.Module):
            decoder.compile()
    return module
