"""The training precision a machine runs natively: bf16 autocast where the hardware has bf16
arithmetic, fp32 elsewhere (bf16 emulated in software is slower than fp32).

Used from the configs as ``trainer.precision: ${native_precision:${trainer.accelerator}}``; the
resolver is registered when :mod:`reprlab` is imported.
"""

from __future__ import annotations

import functools
from pathlib import Path

# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AVX-512 BF16 and AMX (Intel
# Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later have avx512_bf16).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags; empty where /proc/cpuinfo is not there (macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes in bf16 natively and oneDNN (PyTorch's CPU kernels) can use it."""
    import torch

    flags = cpu_flags() if flags is None else flags
    return torch.backends.mkldnn.is_available() and any(f in flags for f in BF16_CPU_FLAGS)


def native_precision(accelerator: str = "auto") -> str:
    """Lightning's ``precision`` for ``accelerator``: ``bf16-mixed`` where it is native (a CPU
    with AVX-512 BF16 / AMX, a GPU with bf16 support), else ``32-true``."""
    import torch

    name = str(accelerator).lower()
    on_gpu = name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available())
    if on_gpu:
        return (
            "bf16-mixed"
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else "32-true"
        )
    if name not in ("cpu", "auto"):
        return "32-true"  # mps, tpu, ...: leave mixed precision to an explicit choice
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("native_precision"):
        OmegaConf.register_new_resolver("native_precision", native_precision)
