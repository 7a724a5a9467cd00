"""The few-channel channels_last layers against PyTorch's own: values, gradients, running
statistics, and where each falls back."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from torch import nn

from reprlab import few_channel_layers as fcl
from reprlab.encoders import CoreEncoder


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def took_fast_path(out: torch.Tensor) -> bool:
    return type(out.grad_fn).__name__.startswith(("_BatchNormTraining", "_AvgPool2x2", "_Upsample"))


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_matches_pytorch_over_steps(
    affine: bool, momentum: float | None, relu: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BatchNorm alone, and BatchNorm then ReLU run as one step by ``run_sequential``."""
    # Chunks of 7 rows of 192 values (32 pixels of 6 channels): 18 per batch, the last 1 row.
    monkeypatch.setattr(fcl, "_CHUNK_ELEMENTS", 7 * 192)
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(6, affine=affine, momentum=momentum)
    if affine:
        with torch.no_grad():
            reference.weight.uniform_(0.5, 2.0)
            reference.bias.uniform_(-1.0, 1.0)
    ours = fcl.BatchNorm2d(6, affine=affine, momentum=momentum)
    ours.load_state_dict(reference.state_dict())
    pair = nn.Sequential(ours, nn.ReLU())
    for _ in range(3):
        x = channels_last(torch.randn(32, 6, 10, 12) * 2 + 3)
        grad = channels_last(torch.randn(32, 6, 10, 12))
        x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        if relu:
            out_ref, out_ours = torch.relu(reference(x_ref)), fcl.run_sequential(pair, x_ours)
        else:
            out_ref, out_ours = reference(x_ref), ours(x_ours)
        assert took_fast_path(out_ours)  # with ReLU too: one step, no ReLU node after it
        assert out_ours.is_contiguous(memory_format=torch.channels_last)
        out_ref.backward(grad)
        out_ours.backward(grad)
        torch.testing.assert_close(out_ours, out_ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)
    assert int(ours.num_batches_tracked) == int(reference.num_batches_tracked) == 3
    if affine:
        # Sums over 3,840 pixels per channel: compare relative to their size.
        torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(ours.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-3)


def test_batchnorm_is_closer_to_float64_than_pytorch_on_few_channels() -> None:
    torch.manual_seed(1)
    x = channels_last(torch.randn(200, 6, 30, 30) * 3 + 1)
    exact = nn.functional.batch_norm(x.double(), None, None, training=True)
    ours = fcl.BatchNorm2d(6, affine=False)(x).double()
    theirs = nn.BatchNorm2d(6, affine=False)(x).double()
    assert (ours - exact).abs().max() <= (theirs - exact).abs().max()
    assert (ours - exact).abs().max() < 1e-5


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_gradient_passes_gradcheck(relu: bool) -> None:
    torch.manual_seed(2)
    x = channels_last(torch.randn(4, 3, 4, 4, dtype=torch.float64)).requires_grad_()
    weight = torch.rand(3, dtype=torch.float64, requires_grad=True)
    bias = torch.rand(3, dtype=torch.float64, requires_grad=True)

    def normalise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return fcl._BatchNormTraining.apply(x, weight, bias, 1e-5, 16, relu)[0]

    assert torch.autograd.gradcheck(normalise, (x, weight, bias))


def test_batchnorm_gives_the_same_result_in_one_chunk_or_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(8)
    layer = fcl.BatchNorm2d(6)
    x = channels_last(torch.randn(10, 6, 8, 8) * 3 + 1)
    grad = channels_last(torch.randn_like(x))
    results = []
    for chunk in (2**30, 6 * 192):  # one chunk; chunks of 6 rows of 192 values, the last short
        monkeypatch.setattr(fcl, "_CHUNK_ELEMENTS", chunk)
        results.append(_values_and_gradients(layer, layer, x, grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_batchnorm_falls_back_where_its_path_does_not_apply() -> None:
    layer = fcl.BatchNorm2d(6, affine=False)
    x = torch.randn(8, 6, 5, 6)
    assert not took_fast_path(layer(x.requires_grad_()))  # NCHW
    wide = fcl.BatchNorm2d(16, affine=False)
    assert not took_fast_path(wide(channels_last(torch.randn(8, 16, 5, 6)).requires_grad_()))
    layer.eval()  # running statistics: PyTorch's kernel, same values
    reference = nn.BatchNorm2d(6, affine=False).eval()
    reference.load_state_dict(layer.state_dict())
    x = channels_last(torch.randn(8, 6, 5, 6))
    torch.testing.assert_close(layer(x), reference(x))
    layer.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(channels_last(torch.randn(1, 6, 1, 1)))


@pytest.mark.parametrize("shape", [(8, 6, 10, 12), (3, 5, 4, 6), (2, 1, 8, 8)])
def test_average_pooling_and_upsampling_match_pytorch(shape: tuple[int, ...]) -> None:
    torch.manual_seed(3)
    for ours, reference in (
        (fcl.AvgPool2d(2), nn.AvgPool2d(2)),
        (fcl.UpsamplingNearest2d(scale_factor=2), nn.UpsamplingNearest2d(scale_factor=2)),
    ):
        x = channels_last(torch.randn(shape))
        x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_ref, out_ours = reference(x_ref), ours(x_ours)
        assert took_fast_path(out_ours), type(ours).__name__
        assert out_ours.is_contiguous(memory_format=torch.channels_last)
        grad = channels_last(torch.randn_like(out_ref))
        out_ref.backward(grad)
        out_ours.backward(grad)
        torch.testing.assert_close(out_ours, out_ref)
        torch.testing.assert_close(x_ours.grad, x_ref.grad)
        assert x_ours.grad.is_contiguous(memory_format=torch.channels_last)


def test_pooling_falls_back_on_odd_sizes_and_other_windows() -> None:
    x = channels_last(torch.randn(2, 6, 7, 8)).requires_grad_()
    out = fcl.AvgPool2d(2)(x)
    assert not took_fast_path(out)
    torch.testing.assert_close(out, nn.functional.avg_pool2d(x, 2))
    assert not took_fast_path(fcl.AvgPool2d(3, stride=2)(x))
    assert not took_fast_path(fcl.UpsamplingNearest2d(scale_factor=3)(x))


def test_core_encoder_keeps_pytorch_classes_and_state_dict_keys() -> None:
    encoder = CoreEncoder((1, 64, 64))
    keys = set(encoder.state_dict())
    assert {"features.3.running_mean", "features.7.running_var"} <= keys
    assert isinstance(encoder.features[3], nn.BatchNorm2d)
    assert isinstance(encoder.features[2], nn.AvgPool2d)


def test_batchnorm_without_bias_matches_pytorch() -> None:
    torch.manual_seed(4)
    reference = nn.BatchNorm2d(8, bias=False)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2.0)
    ours = fcl.BatchNorm2d(8, bias=False)
    ours.load_state_dict(reference.state_dict())
    x = channels_last(torch.randn(16, 8, 8, 8))
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_ours = reference(x_ref), ours(x_ours)
    assert took_fast_path(out_ours)
    grad = channels_last(torch.randn_like(x))
    out_ref.backward(grad)
    out_ours.backward(grad)
    torch.testing.assert_close(out_ours, out_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-3)


def test_pooling_takes_its_path_up_to_sixteen_channels() -> None:
    x = channels_last(torch.randn(4, 16, 6, 8)).requires_grad_()
    out = fcl.AvgPool2d(2)(x)
    assert took_fast_path(out)
    torch.testing.assert_close(out, nn.functional.avg_pool2d(x, 2))
    assert not took_fast_path(fcl.AvgPool2d(2)(channels_last(torch.randn(4, 17, 6, 8))))
    # BatchNorm and upsampling keep PyTorch's kernels at 16 channels.
    wide = channels_last(torch.randn(4, 16, 6, 8)).requires_grad_()
    assert not took_fast_path(fcl.BatchNorm2d(16)(wide))
    assert not took_fast_path(fcl.UpsamplingNearest2d(scale_factor=2)(wide))


def graph_node_names(out: torch.Tensor) -> list[str]:
    """The class names of every node of ``out``'s autograd graph."""
    names, stack, seen = [], [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(child for child, _ in node.next_functions)
    return names


def _values_and_gradients(
    forward, module: nn.Module, x: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    module.zero_grad()
    out = forward(x)
    out.backward(grad)
    return out.detach(), x.grad, *(p.grad for p in module.parameters())


def test_run_sequential_fuses_both_pairs_with_the_same_result() -> None:
    torch.manual_seed(5)
    layers = nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.ReLU(), fcl.AvgPool2d(2), fcl.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 1), nn.ReLU(), fcl.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 3),
    ).to(memory_format=torch.channels_last)  # fmt: skip
    x = channels_last(torch.randn(5, 2, 10, 10))
    grad = torch.randn(5, 3)
    node_names: list[str] = []

    def fused(inputs: torch.Tensor) -> torch.Tensor:
        out = fcl.run_sequential(layers, inputs)
        node_names.extend(graph_node_names(out))
        return out

    ours = _values_and_gradients(fused, layers, x, grad)
    reference = _values_and_gradients(layers, layers, x, grad)
    assert sum(n.startswith("_ReLUAvgPool") for n in node_names) == 2
    assert sum(n.startswith("_BatchNormTraining") for n in node_names) == 1
    assert not any(n.startswith("Relu") for n in node_names)  # every ReLU ran in a pair
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b)
    assert ours[1].is_contiguous(memory_format=torch.channels_last)


def test_run_sequential_runs_the_pair_apart_where_pooling_falls_back() -> None:
    layers = nn.Sequential(nn.ReLU(), fcl.AvgPool2d(2))
    x = channels_last(torch.randn(2, 6, 7, 8)).requires_grad_()  # odd height: no fast path
    out = fcl.run_sequential(layers, x)
    assert type(out.grad_fn).__name__ == "AvgPool2DBackward0"
    torch.testing.assert_close(out, nn.functional.avg_pool2d(torch.relu(x), 2))


def test_vae_decoder_forward_matches_its_layers_run_one_by_one() -> None:
    from reprlab.methods.vae import Decoder

    torch.manual_seed(9)
    decoder = Decoder(10, (1, 64, 64)).to(memory_format=torch.channels_last)
    latents = torch.randn(4, 10)
    grad = channels_last(torch.randn(4, 1, 64, 64))

    def one_by_one(z: torch.Tensor) -> torch.Tensor:
        return decoder.blocks(decoder.project(z).view(-1, *decoder.start))

    ours = _values_and_gradients(decoder, decoder, latents, grad)
    reference = _values_and_gradients(one_by_one, decoder, latents, grad)
    names = graph_node_names(decoder(latents))
    # The 8-channel blocks (32x32 and 64x64) fuse; wider BatchNorms keep PyTorch's kernel.
    assert sum(n.startswith("_BatchNormTraining") for n in names) == 2
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("training", [True, False])
def test_vae_decoder_matches_pytorchs_layers_in_training_and_eval(training: bool) -> None:
    from reprlab.methods.vae import Decoder

    torch.manual_seed(10)
    decoder = Decoder(10, (1, 64, 64)).to(memory_format=torch.channels_last)
    for layer in decoder.modules():
        if isinstance(layer, nn.BatchNorm2d):  # running statistics far from the batch's
            layer.running_mean.uniform_(-1.0, 1.0)
            layer.running_var.uniform_(0.5, 2.0)
    reference = fcl.as_pytorch_layers(deepcopy(decoder))
    decoder.train(training)
    reference.train(training)
    latents = torch.randn(4, 10)
    grad = channels_last(torch.randn(4, 1, 64, 64))
    ours = _values_and_gradients(decoder, decoder, latents, grad)
    theirs = _values_and_gradients(reference, reference, latents, grad)
    # Training takes the fast path in both 8-channel blocks; eval mode (running statistics) is
    # PyTorch's kernel on both sides. (A copy: this forward must not move the running statistics
    # compared below.)
    nodes = graph_node_names(deepcopy(decoder)(latents))
    fused = sum(n.startswith("_BatchNormTraining") for n in nodes)
    assert fused == (2 if training else 0)
    names = ["output", "input gradient", *(name for name, _ in decoder.named_parameters())]
    before_batchnorm = {
        f"blocks.{i}.bias"
        for i, (layer, after) in enumerate(zip(decoder.blocks, decoder.blocks[1:], strict=False))
        if isinstance(layer, nn.ConvTranspose2d) and isinstance(after, nn.BatchNorm2d)
    }
    for name, a, b in zip(names, ours, theirs, strict=True):
        if not training:
            tolerance = {}
        elif name in before_batchnorm:
            # Zero in exact arithmetic (the BatchNorm removes any constant), so on both sides
            # rounding noise from sums over every pixel: an absolute tolerance, small against
            # the gradients' scale.
            tolerance = {"atol": 1e-3, "rtol": 0.0}
        else:
            # Our batch statistics round differently (float64 sums across chunks), and the
            # difference grows through the layers above: a few float32 roundings' worth.
            tolerance = {"atol": 1e-4, "rtol": 1e-4}
        torch.testing.assert_close(a, b, **tolerance, msg=lambda m, name=name: f"{name}: {m}")
    for a, b in zip(decoder.buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "layer",
    [fcl.BatchNorm2d(6), fcl.AvgPool2d(2), fcl.UpsamplingNearest2d(scale_factor=2)],
    ids=["batchnorm", "pooling", "upsampling"],
)
def test_an_in_place_relu_may_follow_each_layer(layer: nn.Module) -> None:
    torch.manual_seed(11)
    x = channels_last(torch.randn(4, 6, 8, 8))
    grads = []
    for inplace in (False, True):
        inputs = x.clone().requires_grad_()
        out = nn.Sequential(layer, nn.ReLU(inplace=inplace))(inputs)
        out.backward(torch.ones_like(out))
        grads.append((out.detach(), inputs.grad))
    assert took_fast_path(layer(x.clone().requires_grad_()))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_normalise_refuses_an_input_off_its_path() -> None:
    with pytest.raises(ValueError, match="channels_last float32 CPU input"):
        fcl.BatchNorm2d(6).normalise(torch.randn(2, 6, 4, 4), relu=False)  # contiguous NCHW


def test_core_encoder_forward_matches_its_layers_run_one_by_one() -> None:
    torch.manual_seed(6)
    encoder = CoreEncoder((1, 64, 64)).to(memory_format=torch.channels_last)
    x = channels_last(torch.rand(8, 1, 64, 64))
    grad = torch.randn(8, encoder.feature_dim)
    ours = _values_and_gradients(encoder, encoder, x, grad)
    reference = _values_and_gradients(encoder.features, encoder, x, grad)
    names = graph_node_names(encoder(x.clone().requires_grad_()))
    assert sum(n.startswith("_ReLUAvgPool2x2") for n in names) == 2
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b)
    features, hidden = encoder.forward_hidden(x)
    torch.testing.assert_close(features, encoder(x))
    assert hidden.shape == (8, encoder.hidden_dim)
