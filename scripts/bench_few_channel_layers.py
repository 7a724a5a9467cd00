"""The few-channel layers (``reprlab.few_channel_layers``) against PyTorch's, layer by layer and in
whole training steps of the tutorial's core encoder, measured in the same run.

Run (from the repository root, with the project's venv; keep the machine otherwise idle)::

    python scripts/bench_few_channel_layers.py
    python scripts/bench_few_channel_layers.py --layers-only --batch-size 2000
    python scripts/bench_few_channel_layers.py --methods supervised \
        --data ../shared/data/dsprites_subset.npz

Printed, all on channels_last float32 CPU tensors:

* per layer, at the shapes the core encoder (64x64 images), the tutorial's VAE decoder and
  reprlab's VAE decoder (``methods.vae.Decoder``, the VAE presets' own) give it at
  ``--batch-size``: the median seconds of the forward pass and of forward + backward with
  PyTorch's module and with ours, and PyTorch's time over ours;
* per case (``profile_steps.py``'s: ``simclr``, the default job; ``supervised``; ``vae``), the
  median eager training step (training_step, backward, Adam step) with PyTorch's layers and with
  ours, on the same module and batch, and the ratio. The swap changes only each layer's class
  (ours subclass PyTorch's and add no state).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # profile_steps, beside this script

from profile_steps import CASES, Stepper, build_case, data_overrides, median_time  # noqa: E402

from reprlab import few_channel_layers  # noqa: E402
from reprlab.few_channel_layers import as_pytorch_layers  # noqa: E402
from reprlab.perf import keep_freed_memory  # noqa: E402


class ReLUThenPool(nn.Sequential):
    """ReLU then 2x2 average pooling, run as the core encoder runs its layers (one fused step
    with our pooling; two layers with PyTorch's)."""

    def __init__(self) -> None:
        super().__init__(nn.ReLU(), few_channel_layers.AvgPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return few_channel_layers.run_sequential(self, x)


class BatchNormThenReLU(nn.Sequential):
    """BatchNorm then ReLU, run as reprlab's VAE decoder runs its blocks (one step with our
    BatchNorm; two layers with PyTorch's)."""

    def __init__(self, channels: int) -> None:
        super().__init__(few_channel_layers.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return few_channel_layers.run_sequential(self, x)


def layer_cases(batch: int) -> list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]]:
    """(name, our module's constructor, input shape) for each few-channel layer of the core
    encoder and the two VAE decoders on 64x64 images."""
    return [
        ("encoder pool 6x60x60", lambda: few_channel_layers.AvgPool2d(2), (batch, 6, 60, 60)),
        ("encoder ReLU+pool 6x60x60", ReLUThenPool, (batch, 6, 60, 60)),
        ("encoder pool 16x26x26", lambda: few_channel_layers.AvgPool2d(2), (batch, 16, 26, 26)),
        ("encoder ReLU+pool 16x26x26", ReLUThenPool, (batch, 16, 26, 26)),
        (
            "encoder BN 6x30x30",
            lambda: few_channel_layers.BatchNorm2d(6, affine=False),
            (batch, 6, 30, 30),
        ),
        (
            "decoder upsample 6x30x30",
            lambda: few_channel_layers.UpsamplingNearest2d(scale_factor=2),
            (batch, 6, 30, 30),
        ),
        (
            "decoder BN 6x60x60",
            lambda: few_channel_layers.BatchNorm2d(6, affine=False),
            (batch, 6, 60, 60),
        ),
        ("decoder BN+ReLU 8x32x32", lambda: BatchNormThenReLU(8), (batch, 8, 32, 32)),
        ("decoder BN+ReLU 8x64x64", lambda: BatchNormThenReLU(8), (batch, 8, 64, 64)),
    ]


def time_layer(layer: nn.Module, shape: tuple[int, ...], repeats: int) -> tuple[float, float]:
    """(forward seconds, forward + backward seconds) of ``layer`` on a channels_last input."""
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.no_grad():
        grad = torch.randn_like(layer(x))

    def both() -> None:
        torch.autograd.grad(layer(x), x, grad)  # no .grad to accumulate into

    with torch.no_grad():
        forward = median_time(lambda: layer(x), repeats)
    return forward, median_time(both, repeats)


def bench_layers(batch: int, repeats: int) -> None:
    print(f"layers at batch {batch} (median of {repeats}; PyTorch / ours):")
    for name, make, shape in layer_cases(batch):
        ours = time_layer(make(), shape, repeats)
        theirs = time_layer(as_pytorch_layers(make()), shape, repeats)
        print(
            f"  {name:26s} forward {theirs[0] * 1e3:6.1f} / {ours[0] * 1e3:5.1f} ms "
            f"({theirs[0] / ours[0]:.2f}x), forward+backward {theirs[1] * 1e3:6.1f} / "
            f"{ours[1] * 1e3:5.1f} ms ({theirs[1] / ours[1]:.2f}x)"
        )


def bench_step(name: str, overrides: list[str], steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        module, batch = build_case(overrides, Path(run_dir))
        ours = median_time(Stepper(module, batch), steps, warmup)
        theirs = median_time(Stepper(as_pytorch_layers(module), batch), steps, warmup)
    print(
        f"  {name:10s} step with PyTorch's layers {theirs:.3f} s, with ours {ours:.3f} s: "
        f"{theirs / ours:.2f}x"
    )
    return theirs / ours


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(CASES), help=f"from {', '.join(CASES)}")
    parser.add_argument(
        "--data", type=Path, default=None, help="dSprites .npz (default: procedural)"
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="for the layer timings")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per layer")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per case")
    parser.add_argument(
        "--step-batch-size", type=int, default=None, help="for the steps (default: each preset's)"
    )
    parser.add_argument("--layers-only", action="store_true", help="skip the training steps")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in CASES]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if min(args.batch_size, args.repeats, args.steps, args.warmup) < 1:
        parser.error(
            "--batch-size, --repeats, --steps and --warmup must be >= 1, got "
            f"{args.batch_size}, {args.repeats}, {args.steps} and {args.warmup}"
        )
    if args.step_batch_size is not None and args.step_batch_size < 2:
        parser.error(f"--step-batch-size must be >= 2, got {args.step_batch_size}")
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data: no file at {args.data}")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    keep_freed_memory()
    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_layers(args.batch_size, args.repeats)
    if args.layers_only:
        return {}
    data = data_overrides(args.data)
    common = [*data, "compile=false", "logger=csv"]
    if args.step_batch_size:
        common.append(f"data.batch_size={args.step_batch_size}")
    print(f"eager training steps (batch {args.step_batch_size or 'of each preset'}):")
    return {
        name: bench_step(name, [*CASES[name], *common], args.steps, args.warmup)
        for name in args.methods
    }


if __name__ == "__main__":
    main()
