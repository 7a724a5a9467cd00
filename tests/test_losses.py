"""Tests for reprlab.losses: NT-Xent (incl. negative sampling and DDP), monitors, VAE loss."""

from __future__ import annotations

import math
import os
import re
import socket
import tempfile

import pytest
import torch
import torch.nn.functional as F

from reprlab.losses import (
    NTXentLoss,
    VAELoss,
    alignment_uniformity,
    bce_with_logits_sum,
    projection_std,
    sample_negative_indices,
)


# ---------------------------------------------------------------------------------------
# Reference implementations (deliberately naive: one anchor at a time)
# ---------------------------------------------------------------------------------------
def _reference_ntxent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    negatives: torch.Tensor | None = None,
    decoupled: bool = False,
) -> torch.Tensor:
    """Per-anchor NT-Xent. ``negatives[i]`` lists anchor i's negative indices (default: all);
    ``decoupled`` leaves the positive out of the denominator."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    two_n = z.shape[0]
    n = two_n // 2
    losses = []
    for i in range(two_n):
        pos = (i + n) % two_n
        if negatives is None:
            negs = [j for j in range(two_n) if j not in (i, pos)]
        else:
            negs = [int(j) for j in negatives[i]]
        sim_pos = torch.dot(z[i], z[pos]) / temperature
        in_denominator = [] if decoupled else [sim_pos]
        sims = torch.stack(in_denominator + [torch.dot(z[i], z[j]) / temperature for j in negs])
        losses.append(-sim_pos + torch.log(torch.exp(sims).sum()))
    return torch.stack(losses).mean()


def _self_pos(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ar = torch.arange(n)
    return torch.cat([ar, ar + n]), torch.cat([ar + n, ar])


# ---------------------------------------------------------------------------------------
# NT-Xent, single process
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_ntxent_matches_reference(temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    z2 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    loss = NTXentLoss(temperature=temperature)(z1, z2)
    ref = _reference_ntxent(z1, z2, temperature)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize(
    "n,k",
    [
        (6, 1),  # Floyd sampler, gathered-embedding logits (k * D <= 2N)
        (6, 2),
        (6, 5),  # Floyd sampler, full logit matrix + gather
        (20, 35),  # score + top-k sampler
    ],
)
def test_ntxent_sampled_negatives_match_reference(n: int, k: int) -> None:
    d, temperature = 4, 0.5
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, d, generator=g, dtype=torch.float64)
    loss = NTXentLoss(temperature, neg_pairs=k)(z1, z2, generator=torch.Generator().manual_seed(42))

    # The loss draws its negatives with exactly this helper: same seed -> same indices.
    self_idx, pos_idx = _self_pos(n)
    neg = sample_negative_indices(self_idx, pos_idx, 2 * n, k, torch.Generator().manual_seed(42))
    assert neg.shape == (2 * n, k)
    for i in range(2 * n):
        chosen = neg[i].tolist()
        assert len(set(chosen)) == k  # without replacement
        assert self_idx[i].item() not in chosen and pos_idx[i].item() not in chosen
    ref = _reference_ntxent(z1, z2, temperature, negatives=neg)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("neg_pairs", ["all", 1, 2, 5])
def test_decoupled_ntxent_matches_reference(neg_pairs: str | int) -> None:
    n, temperature = 6, 0.5
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(n, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(n, 4, generator=g, dtype=torch.float64)
    loss_fn = NTXentLoss(temperature, neg_pairs=neg_pairs, decoupled=True)
    loss = loss_fn(z1, z2, generator=torch.Generator().manual_seed(5))
    negatives = None
    if neg_pairs != "all":
        self_idx, pos_idx = _self_pos(n)
        negatives = sample_negative_indices(
            self_idx, pos_idx, 2 * n, int(neg_pairs), torch.Generator().manual_seed(5)
        )
    ref = _reference_ntxent(z1, z2, temperature, negatives=negatives, decoupled=True)
    torch.testing.assert_close(loss, ref)
    # Without the positive in the denominator the loss is lower and can go below zero.
    coupled = NTXentLoss(temperature, neg_pairs=neg_pairs)(
        z1, z2, generator=torch.Generator().manual_seed(5)
    )
    assert loss < coupled
    (grad,) = torch.autograd.grad(loss, z1)
    (ref_grad,) = torch.autograd.grad(ref, z1)
    torch.testing.assert_close(grad, ref_grad)


def test_decoupled_ntxent_needs_a_negative() -> None:
    with pytest.raises(ValueError, match="at least 2 pairs"):
        NTXentLoss(decoupled=True)(torch.randn(1, 3), torch.randn(1, 3))


@pytest.mark.parametrize("n,k", [(4, 2), (5, 7), (20, 33), (20, 38)])
def test_negative_sampling_is_uniform(n: int, k: int) -> None:
    # Covers both samplers (Floyd for k <= 32, scores + top-k above). For every anchor, each
    # admissible column should be drawn about equally often, excluded ones never, no repeats.
    reps = 1500 if k <= 32 else 300
    self_idx, pos_idx = _self_pos(n)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(2 * n, 2 * n)
    for _ in range(reps):
        idx = sample_negative_indices(self_idx, pos_idx, 2 * n, k, g)
        assert idx.shape == (2 * n, k)
        assert (idx.sort(dim=1).values.diff(dim=1) > 0).all()  # distinct within each row
        counts.scatter_add_(1, idx, torch.ones(2 * n, k))
    rows = torch.arange(2 * n)
    assert (counts[rows, self_idx] == 0).all() and (counts[rows, pos_idx] == 0).all()
    admissible = counts.clone()
    admissible[rows, self_idx] = float("nan")
    admissible[rows, pos_idx] = float("nan")
    expected = reps * k / (2 * n - 2)
    dev = (admissible - expected).abs() / expected
    assert dev.nan_to_num(0.0).max() < 0.2


def test_ntxent_k_all_negatives_equals_all() -> None:
    g = torch.Generator().manual_seed(2)
    n = 9
    z1, z2 = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    full = NTXentLoss(0.3)(z1, z2)
    sampled = NTXentLoss(0.3, neg_pairs=2 * n - 2)(z1, z2)
    torch.testing.assert_close(sampled, full)


def test_ntxent_fraction_equals_int() -> None:
    g = torch.Generator().manual_seed(3)
    n = 6  # 2N-2 = 10 negatives; 0.35 -> floor(3.5) = 3
    z1, z2 = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    frac = NTXentLoss(0.5, neg_pairs=0.35)(z1, z2, generator=torch.Generator().manual_seed(7))
    k3 = NTXentLoss(0.5, neg_pairs=3)(z1, z2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(frac, k3)
    # A tiny fraction still keeps one negative.
    logits, _ = NTXentLoss(0.5, neg_pairs=0.01).logits_and_targets(z1, z2)
    assert logits.shape == (2 * n, 2)


@pytest.mark.parametrize("neg_pairs", ["all", 1, 3])  # 1: gathered path, 3: matmul path
def test_ntxent_gradcheck(neg_pairs: str | int) -> None:
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    loss_fn = NTXentLoss(0.5, neg_pairs=neg_pairs)

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Fresh seed per call: gradcheck evaluates many times and needs a fixed function.
        return loss_fn(a, b, generator=torch.Generator().manual_seed(0))

    assert torch.autograd.gradcheck(fn, (z1, z2))


def test_ntxent_stable_at_small_temperature() -> None:
    g = torch.Generator().manual_seed(5)
    z1 = 1e4 * torch.randn(32, 16, generator=g)
    z2 = 1e4 * torch.randn(32, 16, generator=g)
    z1.requires_grad_(True)
    for neg_pairs in ("all", 2):
        loss = NTXentLoss(temperature=0.01, neg_pairs=neg_pairs)(z1, z2)
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, z1)
        assert torch.isfinite(grad).all()
    # At tiny T the loss is ~ (max negative sim - positive sim) / T, i.e. large but finite:
    # the naive exp() would overflow to inf here.
    assert loss.item() > 10


def test_ntxent_lower_for_aligned_views() -> None:
    # Well-separated points (orthogonal directions) with identical views vs unrelated pairs.
    z = torch.eye(8) * 3.0
    loss_fn = NTXentLoss(0.5)
    aligned = loss_fn(z, z.clone())
    shuffled = loss_fn(z, z[torch.roll(torch.arange(8), 1)])
    g = torch.Generator().manual_seed(6)
    random = loss_fn(torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g))
    assert aligned < random and aligned < shuffled


def test_ntxent_runs_in_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    z1 = torch.randn(64, 16, requires_grad=True)
    z2 = torch.randn(64, 16)
    loss_fn = NTXentLoss(temperature=0.1)
    reference = loss_fn(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss_fn(z1.bfloat16(), z2.bfloat16())
        logits, _ = loss_fn.logits_and_targets(z1, z2)
    assert mixed.dtype == torch.float32 and logits.dtype == torch.float32
    # Only the bf16 rounding of the inputs remains (a bf16 logit matmul is off by ~1e-2).
    assert mixed.item() == pytest.approx(reference.item(), abs=2e-3)
    exact = loss_fn(z1.bfloat16().float(), z2.bfloat16().float())
    assert mixed.item() == pytest.approx(exact.item(), abs=1e-6)
    mixed.backward()
    assert z1.grad is not None and z1.grad.dtype == torch.float32


@pytest.mark.parametrize("temperature", [0, -0.1, float("nan"), float("inf")])
def test_ntxent_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(temperature))):
        NTXentLoss(temperature=temperature)


@pytest.mark.parametrize("neg_pairs", [0, -3, 1.0, 0.0, 1.5, "some", True, None, [2]])
def test_ntxent_bad_neg_pairs(neg_pairs: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(neg_pairs))) as info:
        NTXentLoss(neg_pairs=neg_pairs)  # type: ignore[arg-type]
    assert "'all'" in str(info.value) and "(0, 1)" in str(info.value)


def test_ntxent_k_too_large() -> None:
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"k=7.*N=4.*6"):
        NTXentLoss(neg_pairs=7)(z, z)
    NTXentLoss(neg_pairs=6)(z, z)  # exactly 2N-2 is fine


@pytest.mark.cuda
@pytest.mark.parametrize("neg_pairs", ["all", 2, 40])
def test_ntxent_cuda_matches_cpu(neg_pairs: str | int) -> None:
    g = torch.Generator().manual_seed(12)
    z1, z2 = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)
    loss_fn = NTXentLoss(0.2, neg_pairs=neg_pairs)
    # A CPU generator drives the sampling on both devices -> identical negatives.
    cpu = loss_fn(z1, z2, generator=torch.Generator().manual_seed(0))
    gpu = loss_fn(z1.cuda(), z2.cuda(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_ntxent_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))


# ---------------------------------------------------------------------------------------
# NT-Xent, 2-process DDP on CPU (gloo)
# ---------------------------------------------------------------------------------------
_DDP_N, _DDP_D, _DDP_IN, _DDP_T = 5, 6, 4, 0.3
_DDP_UNEVEN = 4  # rank 0's rows in the unequal split of the 2 * _DDP_N global rows


def _ddp_global_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x1 = torch.randn(2 * _DDP_N, _DDP_IN, generator=g, dtype=torch.float64)
    x2 = torch.randn(2 * _DDP_N, _DDP_IN, generator=g, dtype=torch.float64)
    return x1, x2


def _ddp_model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(_DDP_IN, _DDP_D).double()


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        x1, x2 = _ddp_global_data()
        sl = slice(rank * _DDP_N, (rank + 1) * _DDP_N)
        loss_fn = NTXentLoss(_DDP_T)

        # (a) loss and input gradients
        z1 = x1[sl].clone().requires_grad_(True)
        z2 = x2[sl].clone().requires_grad_(True)
        loss = loss_fn(z1, z2)
        loss.backward()

        # (b) parameter gradients as DDP computes them: local backward, then the average of
        # the parameter grads over ranks. (Done by hand: constructing a real
        # DistributedDataParallel costs ~5 s of one-off setup on CPU, which would dominate.)
        model = _ddp_model()
        loss_fn(model(x1[sl]), model(x2[sl])).backward()
        for p in model.parameters():
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world_size

        # (c) k = 2 * N_global - 2 must be accepted (global negatives) and equal "all"
        k_loss = NTXentLoss(_DDP_T, neg_pairs=2 * world_size * _DDP_N - 2)(x1[sl], x2[sl])

        # (d) unequal per-rank batches (the last batch of an evaluation pass): rank 0 holds
        # rows [0, 4), rank 1 rows [4, 10) of the same global batch; the loss, its input
        # gradients and the DDP-averaged parameter gradients must still be the global ones.
        uneven = slice(0, _DDP_UNEVEN) if rank == 0 else slice(_DDP_UNEVEN, 2 * _DDP_N)
        u1 = x1[uneven].clone().requires_grad_(True)
        u2 = x2[uneven].clone().requires_grad_(True)
        uneven_loss = loss_fn(u1, u2)
        uneven_loss.backward()
        uneven_model = _ddp_model()
        loss_fn(uneven_model(x1[uneven]), uneven_model(x2[uneven])).backward()
        for p in uneven_model.parameters():
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world_size
        # ... also through the sampled-negatives path (all 2N-2 negatives: equal to "all").
        uneven_k_loss = NTXentLoss(_DDP_T, neg_pairs=2 * world_size * _DDP_N - 2)(
            x1[uneven], x2[uneven]
        )

        torch.save(
            {
                "loss": loss.detach(),
                "g1": z1.grad,
                "g2": z2.grad,
                "weight_grad": model.weight.grad,
                "bias_grad": model.bias.grad,
                "k_loss": k_loss,
                "uneven_loss": uneven_loss.detach(),
                "uneven_k_loss": uneven_k_loss,
                "uneven_g1": u1.grad,
                "uneven_g2": u2.grad,
                "uneven_weight_grad": uneven_model.weight.grad,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
def test_ntxent_ddp_matches_global_batch() -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("gloo backend unavailable")
    world_size = 2
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_ddp_worker, args=(world_size, _free_port(), out_dir), nprocs=world_size)
        res = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world_size)]

    # Single-process reference on the full global batch.
    x1, x2 = _ddp_global_data()
    z1, z2 = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    ref_loss = NTXentLoss(_DDP_T, gather_distributed=False)(z1, z2)
    ref_loss.backward()
    model = _ddp_model()
    NTXentLoss(_DDP_T)(model(x1), model(x2)).backward()

    # Loss: the mean over ranks (what DDP effectively optimises) is the global loss.
    mean_loss = torch.stack([r["loss"] for r in res]).mean()
    torch.testing.assert_close(mean_loss, ref_loss.detach())
    # Each rank's loss is the mean of the reference per-anchor losses of its local anchors.
    for rank, r in enumerate(res):
        torch.testing.assert_close(r["k_loss"], r["loss"])
        # Input gradients are world_size x the global ones (all-reduce SUM in the gather's
        # backward); DDP's 1/world_size averaging of parameter grads cancels that factor.
        sl = slice(rank * _DDP_N, (rank + 1) * _DDP_N)
        torch.testing.assert_close(r["g1"] / world_size, z1.grad[sl])
        torch.testing.assert_close(r["g2"] / world_size, z2.grad[sl])
        torch.testing.assert_close(r["weight_grad"], model.weight.grad)
        torch.testing.assert_close(r["bias_grad"], model.bias.grad)
        torch.testing.assert_close(r["uneven_weight_grad"], model.weight.grad)
        uneven = slice(0, _DDP_UNEVEN) if rank == 0 else slice(_DDP_UNEVEN, 2 * _DDP_N)
        torch.testing.assert_close(r["uneven_g1"] / world_size, z1.grad[uneven])
        torch.testing.assert_close(r["uneven_g2"] / world_size, z2.grad[uneven])
        torch.testing.assert_close(r["uneven_k_loss"], r["uneven_loss"])
    # Unequal shares: each rank's loss is weighted so that their mean is still the global loss.
    uneven_mean = torch.stack([r["uneven_loss"] for r in res]).mean()
    torch.testing.assert_close(uneven_mean, ref_loss.detach())


# ---------------------------------------------------------------------------------------
# Monitors
# ---------------------------------------------------------------------------------------
def test_alignment_uniformity() -> None:
    g = torch.Generator().manual_seed(8)
    z = torch.randn(50, 16, generator=g)
    align, unif = alignment_uniformity(z, z)
    assert align.item() == pytest.approx(0.0, abs=1e-6)
    # Manual: log of the mean of exp(-2 d^2) over i < j.
    zn = F.normalize(z, dim=1)
    vals = [
        math.exp(-2.0 * float((zn[i] - zn[j]).pow(2).sum()))
        for i in range(50)
        for j in range(i + 1, 50)
    ]
    assert unif.item() == pytest.approx(math.log(sum(vals) / len(vals)), rel=1e-5)
    # Collapse: uniformity 0 (its maximum); antipodal views: alignment 4 (its maximum).
    collapsed = torch.ones(10, 4)
    assert alignment_uniformity(collapsed, -collapsed)[0].item() == pytest.approx(4.0)
    assert alignment_uniformity(collapsed, collapsed)[1].item() == pytest.approx(0.0, abs=1e-6)
    # Monitors must not build graphs.
    zg = z.clone().requires_grad_(True)
    assert not any(t.requires_grad for t in alignment_uniformity(zg, zg))


def test_projection_std() -> None:
    g = torch.Generator().manual_seed(9)
    d = 64
    healthy = projection_std(torch.randn(4000, d, generator=g))
    assert healthy.item() == pytest.approx(1 / math.sqrt(d), rel=0.05)
    collapsed = projection_std(torch.ones(100, d) * 5 + 1e-9 * torch.randn(100, d, generator=g))
    assert collapsed.item() < 1e-6


# ---------------------------------------------------------------------------------------
# VAE loss
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_vae_loss_matches_formula(beta: float) -> None:
    g = torch.Generator().manual_seed(10)
    b = 3
    logits = torch.randn(b, 1, 8, 8, generator=g, dtype=torch.float64)
    target = (torch.rand(b, 1, 8, 8, generator=g) > 0.5).double()
    mu = torch.randn(b, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(b, 5, generator=g, dtype=torch.float64)
    out = VAELoss(beta)(logits, target, mu, logvar)

    rec, kl = 0.0, 0.0
    for i in range(b):
        p = torch.sigmoid(logits[i])
        rec += float(-(target[i] * p.log() + (1 - target[i]) * (1 - p).log()).sum())
        # KL(N(mu, sigma^2) || N(0, 1)) = 0.5 * (sigma^2 + mu^2 - 1 - log sigma^2)
        var = logvar[i].exp()
        kl += float(0.5 * (var + mu[i] ** 2 - 1 - logvar[i]).sum())
    rec, kl = rec / b, kl / b
    assert out["reconstruction"].item() == pytest.approx(rec, rel=1e-9)
    assert out["kl"].item() == pytest.approx(kl, rel=1e-9)
    assert out["loss"].item() == pytest.approx(rec + beta * kl, rel=1e-9)
    assert VAELoss(beta)(logits, target, torch.zeros_like(mu), torch.zeros_like(logvar))[
        "kl"
    ].item() == pytest.approx(0.0)


def test_bce_with_logits_sum_matches_pytorchs_value_and_gradients() -> None:
    g = torch.Generator().manual_seed(11)
    # Saturated logits too: exp(-|x|) underflows past about |x| = 88 in float32.
    logits = torch.cat([torch.randn(4000, generator=g) * 6, torch.tensor([-120.0, 0.0, 95.0])])
    target = (torch.rand(logits.shape, generator=g) > 0.7).float()
    reference = F.binary_cross_entropy_with_logits(
        logits.double(), target.double(), reduction="sum"
    )
    ours_in, ref_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = bce_with_logits_sum(ours_in, target)
    theirs = F.binary_cross_entropy_with_logits(ref_in, target, reduction="sum")
    assert ours.dtype == torch.float32
    # As close to the float64 value as PyTorch's own float32 sum.
    assert abs(ours.item() - reference.item()) <= max(
        abs(theirs.item() - reference.item()), 1e-6 * reference.item()
    )
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


def test_bce_with_logits_sum_does_not_cancel_when_the_logits_fit_their_targets() -> None:
    # A model that fits: large logits of the targets' sign, so each element's loss is tiny while
    # the sums of max(x, 0) and x y are large and nearly equal.
    g = torch.Generator().manual_seed(13)
    target = (torch.rand(2_000_000, generator=g) < 0.1).float()
    logits = (8 + 4 * torch.rand(target.shape, generator=g)) * (2 * target - 1)
    exact = F.binary_cross_entropy_with_logits(logits.double(), target.double(), reduction="sum")
    ours = bce_with_logits_sum(logits, target)
    assert abs(ours.item() - exact.item()) <= 1e-4 * exact.item()


def test_bce_with_logits_sum_refuses_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\) vs \(2, 16\)"):
        bce_with_logits_sum(torch.randn(2, 1, 4, 4), torch.rand(2, 16))


def test_bce_with_logits_sum_passes_gradcheck_and_widens_bf16() -> None:
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bce_with_logits_sum, (logits, target))
    low = bce_with_logits_sum(logits.detach().bfloat16(), target.detach())
    assert low.dtype == torch.float32


def test_vae_loss_bad_beta() -> None:
    with pytest.raises(ValueError, match="-1"):
        VAELoss(beta=-1.0)
