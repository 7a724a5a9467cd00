"""BatchNorm2d, 2x2 average pooling and x2 nearest upsampling for channels_last CPU tensors with
few channels (the tutorial's core encoder and VAE decoder: 6 channels at 30x30 and 60x60).

With fewer channels than one AVX-512 register holds (16 float32), PyTorch's CPU kernels for
these three layers vectorise over the channel dimension and run far below memory bandwidth:
they are a large share of an eager training step of the core encoder (README, "Benchmarks";
``scripts/bench_few_channel_layers.py`` re-measures them against PyTorch's). The versions here
view the activation as a matrix whose rows hold several pixels' channels side by side, so every
reduction and elementwise pass runs over wide contiguous rows:

* BatchNorm: per-channel sums are column sums of a (pixels / k, k * C) view, folded over k;
  the variance is taken around the mean (two passes), as PyTorch does. After the mean, each
  pass runs over chunks of rows, so the centred values and products it needs are made and used
  while in cache rather than written to memory and read back.
* BatchNorm then ReLU (``run_sequential``): ReLU applied to each chunk as it is written, and its
  mask applied to the gradient in the backward's first pass.
* 2x2 average pooling: adding the two rows of each pair, then the two columns, of the
  (N, H, W, C) view; its gradient is one broadcast copy. Pooling takes this path up to 16
  channels (the core encoder's second block), the other two below 16.
* ReLU then 2x2 average pooling (``run_sequential``): one autograd step whose backward masks
  the broadcast gradient as it writes it, instead of writing it and then masking it.
* x2 nearest upsampling: that broadcast copy; its gradient is the 2x2 sum.

Each module is a subclass of PyTorch's, with the same parameters, buffers and state-dict keys,
and falls back to PyTorch's kernel wherever its fast path does not apply: another layout or
dtype, 16 channels or more (pooling: more than 16), a GPU, odd sizes, eval-mode BatchNorm, or
inside ``torch.compile`` (inductor fuses these layers itself).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

# Lanes of one AVX-512 float32 register: fewer channels than this is where PyTorch's kernels
# are slow.
_FEW_CHANNELS = 16
# Pooling's wide-row path also takes one full register of channels (README, "Benchmarks";
# scripts/bench_few_channel_layers.py re-measures it).
_POOL_MAX_CHANNELS = 16


def _takes_fast_path(x: torch.Tensor, max_channels: int = _FEW_CHANNELS - 1) -> bool:
    return (
        x.dim() == 4
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[1] <= max_channels
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
    )


def _rows_per_tile(pixels: int, channels: int) -> int:
    """How many pixels one row of the wide view holds: the fewest whose channels fill four
    registers (column sums run fastest from about that width), else one register, or 0 where
    neither number divides the pixel count."""
    for width in (4 * _FEW_CHANNELS, _FEW_CHANNELS):
        per_row = width // math.gcd(channels, width)
        if pixels % per_row == 0:
            return per_row
    return 0


def _wide(x: torch.Tensor, per_row: int) -> torch.Tensor:
    """(N, C, H, W) channels_last -> (N*H*W / per_row, per_row * C), a view."""
    return x.permute(0, 2, 3, 1).reshape(-1, per_row * x.shape[1])


def _empty_channels_last(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A new tensor, not a view, so that autograd allows an in-place op on it after a
    Function returns it (``nn.ReLU(inplace=True)``)."""
    return torch.empty(
        shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last
    )


def _channel_sums(rows: torch.Tensor, channels: int) -> torch.Tensor:
    return rows.sum(0).view(-1, channels).sum(0)  # (per_row * C,) -> (C,)


# Elements per chunk of BatchNorm's passes: a chunk's temporaries should stay in cache, and
# each chunk costs a few operator calls; chosen by timing the sizes around it with
# scripts/bench_few_channel_layers.py (README, "Benchmarks").
_CHUNK_ELEMENTS = 2**19


def _chunks(rows: torch.Tensor) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // rows.shape[1])
    return [slice(start, start + step) for start in range(0, rows.shape[0], step)]


class _BatchNormTraining(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over batch statistics (Ioffe & Szegedy
    2015), then max(y, 0) if ``relu``; returns the output, the batch mean and the biased batch
    variance.

    Every pass after the first (the mean) runs chunk by chunk, and the centred input is made
    afresh in each from the input, so the forward writes no full-size temporary: it reads the
    input three times and writes the output once. The backward reads the input twice and the
    gradient twice, and writes the input's gradient; with ReLU it reads the gradient and the
    output once, writes the masked gradient, and reads that once more. Saved for backward: the
    input, and the output where ReLU masks the gradient."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        per_row: int,
        relu: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        channels, pixels = x.shape[1], x.numel() // x.shape[1]
        rows = _wide(x, per_row)  # (P / k, k * C)
        mean = _channel_sums(rows, channels) / pixels  # (C,)
        wide_mean = mean.repeat(per_row)
        squares = torch.zeros(rows.shape[1], dtype=torch.float64, device=x.device)
        for part in _chunks(rows):
            centred = rows[part] - wide_mean
            squares += (centred * centred).sum(0)
        var = (squares.view(-1, channels).sum(0) / pixels).to(x.dtype)  # around the mean
        invstd = torch.rsqrt(var + eps)
        scale = (invstd if weight is None else invstd * weight).repeat(per_row)
        shift = None if bias is None else bias.repeat(per_row)
        out = _empty_channels_last(x.shape, x)
        out_rows = _wide(out, per_row)
        for part in _chunks(rows):
            centred = rows[part] - wide_mean
            if shift is None:
                written = torch.mul(centred, scale, out=out_rows[part])
            else:
                written = torch.addcmul(shift, centred, scale, out=out_rows[part])
            if relu:
                written.relu_()
        ctx.save_for_backward(x, out if relu else None, mean, invstd, weight)
        ctx.per_row, ctx.has_bias = per_row, bias is not None
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_out: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, out, mean, invstd, weight = ctx.saved_tensors
        per_row, channels = ctx.per_row, x.shape[1]
        pixels = x.numel() // channels
        rows = _wide(x, per_row)
        wide_mean = mean.repeat(per_row)
        grad_rows = _wide(grad_out.contiguous(memory_format=torch.channels_last), per_row)
        # The gradient reaching the normalisation: ReLU's mask applied, written once.
        masked = grad_rows if out is None else torch.empty_like(grad_rows)
        out_rows = None if out is None else _wide(out, per_row)
        # sum(g), sum(g (x - mean))
        sums = torch.zeros(2, rows.shape[1], dtype=torch.float64, device=x.device)
        for part in _chunks(rows):
            grad = grad_rows[part]
            if out_rows is not None:
                grad = torch.ops.aten.threshold_backward.grad_input(
                    grad, out_rows[part], 0, grad_input=masked[part]
                )
            sums[0] += grad.sum(0)
            sums[1] += (grad * (rows[part] - wide_mean)).sum(0)
        grad_sum, grad_dot = sums.view(2, -1, channels).sum(1).to(rows.dtype)  # (C,) each
        scale = invstd if weight is None else invstd * weight
        # dx = scale * (g - mean(g) - xhat * mean(g xhat)), xhat = (x - mean) * invstd
        wide_scale = scale.repeat(per_row)
        offset = (-scale * grad_sum / pixels).repeat(per_row)
        slope = (-scale * invstd * invstd * grad_dot / pixels).repeat(per_row)
        grad_x = _empty_channels_last(x.shape, x)
        grad_x_rows = _wide(grad_x, per_row)
        for part in _chunks(rows):
            written = torch.addcmul(offset, rows[part] - wide_mean, slope, out=grad_x_rows[part])
            written.addcmul_(masked[part], wide_scale)
        return (
            grad_x,
            None if weight is None else grad_dot * invstd,
            grad_sum if ctx.has_bias else None,
            None,
            None,
            None,
        )


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode forward takes the wide-row path above for
    channels_last float32 CPU inputs with fewer than 16 channels. Running statistics are updated
    as PyTorch updates them (``momentum``, or a cumulative average when it is None; the running
    variance unbiased)."""

    def takes_fast_path(self, x: torch.Tensor) -> bool:
        uses_batch_statistics = self.training or self.running_mean is None
        if not (uses_batch_statistics and _takes_fast_path(x) and x.shape[1] > 0):
            return False
        pixels = x.numel() // x.shape[1]
        # A single value per channel is left to PyTorch's kernel, which raises the error.
        return pixels > 1 and _rows_per_tile(pixels, x.shape[1]) > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.takes_fast_path(x):
            return super().forward(x)
        return self.normalise(x, relu=False)

    def normalise(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        """The fast path's forward, followed by ReLU in the same step if ``relu``; only where
        ``takes_fast_path(x)``."""
        if not self.takes_fast_path(x):
            raise ValueError(
                "BatchNorm2d.normalise needs batch statistics (training, or no running "
                "statistics), outside torch.compile, and a channels_last float32 CPU input with "
                f"1 to {_FEW_CHANNELS - 1} channels and more than one pixel, their count a "
                f"multiple of the wide row's; got shape {tuple(x.shape)}, dtype {x.dtype}, device "
                f"{x.device.type}, training={self.training}"
            )
        pixels = x.numel() // x.shape[1]
        per_row = _rows_per_tile(pixels, x.shape[1])
        out, mean, var = _BatchNormTraining.apply(
            x, self.weight, self.bias, self.eps, per_row, relu
        )
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
            with torch.no_grad():
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * (pixels / (pixels - 1)), factor)
        return out


def _sum_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) channels_last, H and W even -> (N, C, H/2, W/2) sums of 2x2 blocks."""
    n, c, h, w = x.shape
    pairs_of_rows = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w, c)
    rows = (pairs_of_rows[:, :, 0] + pairs_of_rows[:, :, 1]).view(n, h // 2, w // 2, 2 * c)
    out = _empty_channels_last((n, c, h // 2, w // 2), x)
    torch.add(rows[..., :c], rows[..., c:], out=out.permute(0, 2, 3, 1))
    return out


def _repeat_2x2(x: torch.Tensor, where_positive: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, H, W) channels_last -> (N, C, 2H, 2W), each value copied to its 2x2 block; with
    ``where_positive`` (channels_last, the output's shape), zero wherever it is not positive
    (ReLU's gradient), in the same pass."""
    n, c, h, w = x.shape
    pixels = x.permute(0, 2, 3, 1)
    # Doubling along W first makes rows of 2W*C contiguous values, which the doubling along H
    # then copies whole.
    doubled_row = torch.stack([pixels, pixels], dim=3).view(n, h, 1, 2 * w * c)
    doubled = doubled_row.expand(n, h, 2, 2 * w * c)
    out = _empty_channels_last((n, c, 2 * h, 2 * w), x)
    target = out.permute(0, 2, 3, 1).view(n, h, 2, 2 * w * c)
    if where_positive is None:
        target.copy_(doubled)
    else:
        mask = where_positive.permute(0, 2, 3, 1).reshape(n, h, 2, 2 * w * c)
        torch.ops.aten.threshold_backward.grad_input(doubled, mask, 0, grad_input=target)
    return out


class _AvgPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return _sum_pool_2x2(x).mul_(0.25)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> torch.Tensor:
        return _repeat_2x2(grad_out.contiguous(memory_format=torch.channels_last) * 0.25)


class _ReLUAvgPool2x2(torch.autograd.Function):
    """avg_pool_2x2(relu(x)); saves relu(x), as ReLU alone does."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(x)
        ctx.save_for_backward(activated)
        return _sum_pool_2x2(activated).mul_(0.25)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> torch.Tensor:
        (activated,) = ctx.saved_tensors
        grad = grad_out.contiguous(memory_format=torch.channels_last) * 0.25
        return _repeat_2x2(grad, where_positive=activated)


class _Upsample2x(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return _repeat_2x2(x)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> torch.Tensor:
        return _sum_pool_2x2(grad_out.contiguous(memory_format=torch.channels_last))


def _is_two(value: object) -> bool:
    return value == 2 or value == (2, 2)


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d``; a 2x2 window with stride 2 and no padding over even sizes takes the
    wide-row path for channels_last float32 CPU inputs with at most 16 channels."""

    def takes_fast_path(self, x: torch.Tensor) -> bool:
        plain_2x2 = (
            _is_two(self.kernel_size)
            and _is_two(self.stride)
            and self.padding in (0, (0, 0))
            and not self.ceil_mode
            and self.divisor_override is None
        )
        return (
            plain_2x2
            and _takes_fast_path(x, _POOL_MAX_CHANNELS)
            and x.shape[2] % 2 == 0
            and x.shape[3] % 2 == 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.takes_fast_path(x):
            return _AvgPool2x2.apply(x)
        return super().forward(x)


class UpsamplingNearest2d(nn.UpsamplingNearest2d):
    """``nn.UpsamplingNearest2d``; a scale factor of 2 takes the copy path for channels_last
    float32 CPU inputs with fewer than 16 channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        doubles = self.size is None and self.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0))
        if doubles and _takes_fast_path(x):
            return _Upsample2x.apply(x)
        return super().forward(x)


# Each of this module's layers and the PyTorch class it subclasses (same arguments and state).
PYTORCH_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    BatchNorm2d: nn.BatchNorm2d,
    AvgPool2d: nn.AvgPool2d,
    UpsamplingNearest2d: nn.UpsamplingNearest2d,
}


def as_pytorch_layers(module: nn.Module) -> nn.Module:
    """``module`` with each of this module's layers turned back into PyTorch's class, in place
    (for comparisons against PyTorch's kernels)."""
    for layer in module.modules():
        if type(layer) in PYTORCH_CLASSES:
            layer.__class__ = PYTORCH_CLASSES[type(layer)]
    return module


def run_sequential(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)``, the modules in order, except for two pairs that run as one step where
    their fast path applies: an ``nn.ReLU`` followed by this module's ``AvgPool2d`` (its
    backward writes the input's gradient in one masked pass, not a copy then a mask), and this
    module's ``BatchNorm2d`` followed by an ``nn.ReLU`` (no separate ReLU output or gradient
    is written). The modules (and so the state-dict keys) stay as they are; the pairs' module
    hooks, and ``layers``' own, are not called."""
    modules = list(layers)
    position = 0
    while position < len(modules):
        layer = modules[position]
        following = modules[position + 1] if position + 1 < len(modules) else None
        if (
            type(layer) is nn.ReLU
            and isinstance(following, AvgPool2d)
            and following.takes_fast_path(x)
        ):
            x = _ReLUAvgPool2x2.apply(x)
            position += 2
        elif (
            isinstance(layer, BatchNorm2d)
            and type(following) is nn.ReLU
            and layer.takes_fast_path(x)
        ):
            x = layer.normalise(x, relu=True)
            position += 2
        else:
            x = layer(x)
            position += 1
    return x
