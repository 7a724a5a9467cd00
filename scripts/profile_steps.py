"""Where a training step of the tutorial's core encoder spends its time, and how far it is from
this machine's floor.

Run (from the repository root, with the project's venv; keep the machine otherwise idle)::

    python scripts/profile_steps.py                                    # simclr, supervised, vae
    python scripts/profile_steps.py --data ../shared/data/dsprites_subset.npz --compile
    python scripts/profile_steps.py --methods supervised --steps 10 --json steps.json

Cases: ``simclr`` is the default job (batch 1000, two views encoded together), ``supervised``
``experiment=tutorial_supervised`` (batch 1000) and ``vae`` ``experiment=tutorial_vae`` (batch
500): each preset's own module, augmentation and first training batch, built as ``reprlab-train``
builds them (``channels_last`` and ``compile`` as the run would set them, or ``--compile``).
One step is the module's ``training_step`` (augmentation, forward, losses, the probe head), then
``backward`` and an Adam step, as Lightning runs them, without Lightning around them.

Printed per case, all measured in this run:

* the step's median wall time over ``--steps`` steps after ``--warmup``, and its three phases
  (training_step, backward, optimiser) timed in separate steps;
* the floating-point work of one step (convolutions and matrix products, forward and backward,
  counted by ``torch.utils.flop_counter.FlopCounterMode``) and the rate the step reaches on it;
* the step's time by kind of operator (``torch.profiler`` self time, scaled to the step's wall
  time, as the profiler itself adds overhead): convolution forward, convolution backward,
  matrix products, compiled (fused) kernels, and everything else (pointwise, pooling,
  normalisation, copies and fills);
* the convolutions' rate, against the rate of a large float32 matrix product measured on this
  machine in the same run (the most this CPU does per second: the arithmetic floor), and the
  bytes the step keeps for its backward pass, against this machine's copy bandwidth (the
  memory floor of one pass over them);
* the floor: the step's work at the measured matrix-product rate, and the ratio step / floor;
* with ``--convolutions``: each convolution of the step alone (the layers an eager step runs,
  found by forward hooks, at the input shape and layout the step gives them), its forward and
  the backward the step needs (the input's gradient only where the step needs it), its work
  and the rate it reaches, and their sum per step: what the step cannot go below without a
  faster convolution kernel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from reprlab import train
from reprlab.perf import keep_freed_memory

CASES = {
    "simclr": [],
    "supervised": ["experiment=tutorial_supervised"],
    "vae": ["experiment=tutorial_vae"],
}
KINDS = ("conv forward", "conv backward", "matmul", "compiled kernels", "other")
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
LR = 1e-3


def kind_of(op_name: str) -> str:
    if "convolution" in op_name or "conv_transpose" in op_name or "conv2d" in op_name:
        return "conv backward" if "backward" in op_name else "conv forward"
    if op_name in MATMUL_OPS:
        return "matmul"
    if "CompiledFxGraph" in op_name:
        return "compiled kernels"
    return "other"


def median_time(run: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(size: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a float32 ``size`` x ``size`` matrix product on this machine."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s (read + written) of copying a ``megabytes`` float32 tensor."""
    source = torch.randn(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    start = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    return 2 * source.nbytes * repeats / (time.perf_counter() - start)


def data_overrides(path: Path | None) -> list[str]:
    """The overrides that train on the dSprites file at ``path``, or on procedural dSprites."""
    if path is None:
        return ["data.source=procedural", "data.path=null"]
    return [f"data.path={path.resolve()}", "data.source=file"]


def build_case(overrides: list[str], run_dir: Path) -> tuple[Any, tuple[torch.Tensor, ...]]:
    """The case's module (as ``reprlab-train`` builds it) and its first training batch."""
    with initialize_config_module(config_module="reprlab.conf", version_base="1.3"):
        cfg = train.with_pretrain_epochs(compose(config_name="train", overrides=overrides))
    run = train.start(cfg, run_dir)
    module = train.build_method(run).train()
    batch = next(iter(run.datamodule.train_dataloader()))
    return module, run.datamodule.on_after_batch_transfer(batch, 0)


class Stepper:
    """training_step, backward and an Adam step of ``module`` on one batch."""

    def __init__(self, module: Any, batch: tuple[torch.Tensor, ...]) -> None:
        self.module, self.batch = module, batch
        self.optimizer = torch.optim.Adam(module.parameters(), lr=LR)

    def forward(self) -> torch.Tensor:
        return self.module.training_step(self.batch, 0)

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def __call__(self) -> None:
        self.backward(self.forward())
        self.optimizer.step()


def median_seconds(step: Stepper, steps: int) -> tuple[float, dict[str, float]]:
    """(median step seconds, median seconds of each phase), from ``steps`` steps each."""
    whole = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        whole.append(time.perf_counter() - start)
    phases: dict[str, list[float]] = defaultdict(list)
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step.forward()
        t1 = time.perf_counter()
        step.backward(loss)
        t2 = time.perf_counter()
        step.optimizer.step()
        t3 = time.perf_counter()
        for name, seconds in (
            ("training_step", t1 - t0),
            ("backward", t2 - t1),
            ("optimiser", t3 - t2),
        ):
            phases[name].append(seconds)
    return statistics.median(whole), {k: statistics.median(v) for k, v in phases.items()}


def step_flops(step: Stepper) -> dict[str, int]:
    """Floating-point operations of one step by operator (convolutions and products)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    totals: dict[str, int] = defaultdict(int)
    for op, flops in counter.get_flop_counts()["Global"].items():
        totals[str(op).split(".")[1] if "." in str(op) else str(op)] += int(flops)
    return dict(totals)


def saved_bytes(step: Stepper) -> int:
    """Bytes of the tensors one step's forward pass keeps for its backward pass."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = step.forward()
    step.backward(loss)
    step.optimizer.zero_grad(set_to_none=True)
    return sum(seen.values())


def seconds_by_kind(step: Stepper, repeats: int = 2) -> dict[str, float]:
    """Profiler self seconds of one step by kind of operator."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    kinds = dict.fromkeys(KINDS, 0.0)
    for event in prof.key_averages():
        kinds[kind_of(event.key)] += event.self_cpu_time_total / 1e6 / repeats
    return kinds


@dataclass
class ConvolutionInput:
    name: str
    layer: nn.Module
    shape: tuple[int, ...]
    requires_grad: bool
    channels_last: bool


def convolution_inputs(step: Stepper) -> list[ConvolutionInput]:
    """Every convolution one eager training_step runs, in order, with what its input was."""
    found: list[ConvolutionInput] = []

    def record(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        found.append(ConvolutionInput(name, layer, tuple(x.shape), x.requires_grad, channels_last))

    hooks = [
        layer.register_forward_pre_hook(lambda layer, args, name=name: record(name, layer, args[0]))
        for name, layer in step.module.named_modules()
        if isinstance(layer, nn.modules.conv._ConvNd)
    ]
    try:
        step.forward()
    finally:
        for hook in hooks:
            hook.remove()
    return found


def time_convolution(conv: ConvolutionInput, steps: int) -> dict[str, Any]:
    """Median seconds and the work of the layer's forward + the backward a step needs."""
    layer = conv.layer
    layout = torch.channels_last if conv.channels_last else torch.contiguous_format
    x = torch.randn(conv.shape).contiguous(memory_format=layout).requires_grad_(conv.requires_grad)
    params = [p for p in layer.parameters() if p.requires_grad]
    wanted = [x, *params] if conv.requires_grad else params
    with torch.no_grad():
        grad = torch.randn_like(layer(x))

    def forward_backward() -> None:
        torch.autograd.grad(layer(x), wanted, grad)  # no .grad to accumulate into

    with FlopCounterMode(display=False) as counter:  # it cannot count autograd.grad
        layer(x).backward(grad)
    layer.zero_grad(set_to_none=True)
    seconds = median_time(forward_backward, steps)
    flops = counter.get_total_flops()
    kernel = "x".join(map(str, layer.kernel_size))
    return {
        "layer": conv.name,
        "kind": f"{type(layer).__name__} {layer.in_channels}->{layer.out_channels} {kernel}",
        "shape": list(conv.shape),
        "input_grad": conv.requires_grad,
        "seconds": seconds,
        "gflop": flops / 1e9,
        "gflops": flops / seconds / 1e9,
    }


def profile_case(
    name: str,
    overrides: list[str],
    warmup: int,
    steps: int,
    rate: float,
    bandwidth: float,
    convolutions: bool = False,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        module, batch = build_case(overrides, Path(tmp))
    step = Stepper(module, batch)
    for _ in range(warmup):  # oneDNN's primitive caches, and compiling when it compiles
        step()
    seconds, phases = median_seconds(step, steps)
    flops = step_flops(step)
    kept = saved_bytes(step)
    kinds = seconds_by_kind(step)
    scale = seconds / sum(kinds.values())  # the profiler's overhead, spread evenly
    kinds = {kind: value * scale for kind, value in kinds.items()}
    conv_flops = sum(v for k, v in flops.items() if "conv" in k)
    conv_seconds = kinds["conv forward"] + kinds["conv backward"]
    total = sum(flops.values())
    table = [time_convolution(c, steps) for c in convolution_inputs(step)] if convolutions else []
    return {
        "convolutions": table,
        "case": name,
        "batch": len(batch[0]),
        "step_s": seconds,
        "phases_s": phases,
        "gflop": total / 1e9,
        "gflop_by_op": {k: v / 1e9 for k, v in flops.items()},
        "step_gflops": total / seconds / 1e9,
        "seconds_by_kind": kinds,
        "conv_gflops": conv_flops / conv_seconds / 1e9 if conv_seconds else float("nan"),
        "saved_mb": kept / 2**20,
        "saved_pass_s": kept / bandwidth,
        "floor_s": total / rate,
        "step_over_floor": seconds * rate / total,
    }


def report(row: dict[str, Any]) -> None:
    kinds = row["seconds_by_kind"]
    phases = row["phases_s"]
    print(
        f"\n{row['case']} (batch {row['batch']}): step {row['step_s']:.3f} s "
        f"(training_step {phases['training_step']:.3f}, backward {phases['backward']:.3f}, "
        f"optimiser {phases['optimiser']:.3f})"
    )
    ops = ", ".join(f"{k} {v:.2f}" for k, v in sorted(row["gflop_by_op"].items()))
    print(f"  work {row['gflop']:.1f} GFLOP ({ops}); {row['step_gflops']:.0f} GFLOP/s")
    print(
        "  by kind: "
        + ", ".join(f"{k} {v:.3f} s ({v / row['step_s']:.0%})" for k, v in kinds.items())
    )
    print(
        f"  convolutions {row['conv_gflops']:.0f} GFLOP/s; kept for backward "
        f"{row['saved_mb']:.0f} MB, one pass over them {row['saved_pass_s']:.3f} s"
    )
    print(
        f"  floor {row['floor_s']:.3f} s at the matrix-product rate; "
        f"step / floor {row['step_over_floor']:.1f}x; "
        f"{row['gflop'] / row['batch']:.3f} GFLOP per image"
    )
    if row["convolutions"]:
        print("  convolutions alone (forward + the backward the step needs, median):")
        for conv in row["convolutions"]:
            grad = "" if conv["input_grad"] else ", no input gradient"
            print(
                f"    {conv['layer']:22s} {conv['kind']:26s} input {tuple(conv['shape'])}{grad}: "
                f"{conv['gflop']:.2f} GFLOP, {conv['seconds'] * 1e3:.1f} ms, "
                f"{conv['gflops']:.0f} GFLOP/s"
            )
        seconds = sum(conv["seconds"] for conv in row["convolutions"])
        print(f"  all convolutions {seconds:.3f} s, {seconds / row['step_s']:.0%} of the step")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(CASES), help=f"from {', '.join(CASES)}")
    parser.add_argument(
        "--data", type=Path, default=None, help="dSprites .npz (default: procedural)"
    )
    parser.add_argument("--compile", choices=("true", "false", "auto"), default="auto")
    parser.add_argument("--channels-last", choices=("true", "false"), default="true")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each preset's")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compiling included)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measure")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--convolutions", action="store_true", help="also time each convolution alone"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in CASES]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.warmup < 1 or args.steps < 1 or (args.batch_size is not None and args.batch_size < 2):
        parser.error(
            f"--warmup and --steps must be >= 1 and --batch-size >= 2, got {args.warmup}, "
            f"{args.steps} and {args.batch_size}"
        )
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data: no file at {args.data}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    rate, bandwidth = matmul_rate(), copy_bandwidth()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads: float32 4096^3 product "
        f"{rate / 1e9:.0f} GFLOP/s, copy {bandwidth / 1e9:.1f} GB/s"
    )
    data = data_overrides(args.data)
    common = [f"compile={args.compile}", f"channels_last={args.channels_last}", "logger=csv"]
    if args.batch_size:
        common.append(f"data.batch_size={args.batch_size}")
    rows = []
    for name in args.methods:
        row = profile_case(
            name,
            [*CASES[name], *data, *common],
            args.warmup,
            args.steps,
            rate,
            bandwidth,
            args.convolutions,
        )
        report(row)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps({"matmul_gflops": rate / 1e9, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
