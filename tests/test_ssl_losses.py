"""Tests for reprlab.ssl_losses: each loss against its paper's formula (computed naively, element
by element), against lightly's value when lightly is installed, by gradcheck, and under 2-process
DDP against one process on the same global batch."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
from test_losses import _free_port

from reprlab.heads import GlobalBatchNorm1d
from reprlab.ssl_losses import BarlowTwinsLoss, BYOLLoss, NegativeCosineSimilarity, VICRegLoss


def _pair(n: int = 7, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    # Correlated with a, so that every term of every loss is far from trivial.
    b = a + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a, b


# ---------------------------------------------------------------------------------------
# References: the papers' formulas, one element at a time
# ---------------------------------------------------------------------------------------
def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _reference_byol(q: torch.Tensor, z: torch.Tensor) -> float:
    # Grill et al. Eq. 2: || q/||q|| - z/||z|| ||^2, averaged over the batch.
    total = 0.0
    for qi, zi in zip(q.tolist(), z.tolist(), strict=True):
        nq, nz = _norm(qi), _norm(zi)
        total += sum((a / nq - b / nz) ** 2 for a, b in zip(qi, zi, strict=True))
    return total / len(q)


def _reference_negative_cosine(p: torch.Tensor, z: torch.Tensor) -> float:
    # Chen & He Eq. 1: D(p, z) = - p/||p|| . z/||z||, averaged over the batch.
    total = 0.0
    for pi, zi in zip(p.tolist(), z.tolist(), strict=True):
        total += -sum(a * b for a, b in zip(pi, zi, strict=True)) / (_norm(pi) * _norm(zi))
    return total / len(p)


def _column(z: list[list[float]], k: int) -> list[float]:
    return [row[k] for row in z]


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def _reference_vicreg(
    a: torch.Tensor, b: torch.Tensor, weights: tuple[float, float, float], eps: float = 1e-4
) -> dict[str, float]:
    za, zb = a.tolist(), b.tolist()
    n, d = len(za), len(za[0])

    def variance(z: list[list[float]]) -> float:
        # v(Z) = (1/d) sum_k max(0, 1 - sqrt(Var(z^k) + eps)), unbiased variance.
        total = 0.0
        for k in range(d):
            col = _column(z, k)
            var = sum((x - _mean(col)) ** 2 for x in col) / (n - 1)
            total += max(0.0, 1.0 - math.sqrt(var + eps))
        return total / d

    def covariance(z: list[list[float]]) -> float:
        # c(Z) = (1/d) sum_{k != l} C(Z)_kl^2, C(Z) = 1/(n-1) sum_i (z_i - mean)(z_i - mean)^T.
        means = [_mean(_column(z, k)) for k in range(d)]
        total = 0.0
        for k in range(d):
            for m in range(d):
                if k != m:
                    c = sum((row[k] - means[k]) * (row[m] - means[m]) for row in z) / (n - 1)
                    total += c * c
        return total / d

    # s(Z, Z') = (1/n) sum_i ||z_i - z'_i||^2, divided by d as in the authors' code.
    invariance = sum(
        (x - y) ** 2 for ra, rb in zip(za, zb, strict=True) for x, y in zip(ra, rb, strict=True)
    ) / (n * d)
    var = (variance(za) + variance(zb)) / 2
    cov = covariance(za) + covariance(zb)
    lam, mu, nu = weights
    return {
        "loss": lam * invariance + mu * var + nu * cov,
        "invariance": invariance,
        "variance": var,
        "covariance": cov,
    }


def _reference_barlow_twins(a: torch.Tensor, b: torch.Tensor, lambda_: float) -> dict[str, float]:
    # Zbontar et al. Eq. 2 on batch-centred a, b:
    # C_kl = sum_i a_ik b_il / (sqrt(sum_i a_ik^2) sqrt(sum_i b_il^2)).
    za, zb = a.tolist(), b.tolist()
    d = len(za[0])
    ca = [[x - _mean(_column(za, k)) for k, x in enumerate(row)] for row in za]
    cb = [[x - _mean(_column(zb, k)) for k, x in enumerate(row)] for row in zb]
    on, off = 0.0, 0.0
    for k in range(d):
        for m in range(d):
            num = sum(ra[k] * rb[m] for ra, rb in zip(ca, cb, strict=True))
            c = num / (_norm(_column(ca, k)) * _norm(_column(cb, m)))
            if k == m:
                on += (1 - c) ** 2
            else:
                off += c * c
    return {"loss": on + lambda_ * off, "on_diagonal": on, "off_diagonal": off}


# ---------------------------------------------------------------------------------------
# Against the formulas
# ---------------------------------------------------------------------------------------
def test_byol_loss_matches_the_formula() -> None:
    q, z = _pair()
    assert BYOLLoss()(q, z).item() == pytest.approx(_reference_byol(q, z), rel=1e-12)
    assert BYOLLoss()(q, 3 * q).item() == pytest.approx(0.0, abs=1e-12)  # scale-free
    assert BYOLLoss()(q, -q).item() == pytest.approx(4.0)


def test_negative_cosine_matches_the_formula() -> None:
    p, z = _pair(seed=1)
    value = NegativeCosineSimilarity()(p, z).item()
    assert value == pytest.approx(_reference_negative_cosine(p, z), rel=1e-12)
    assert NegativeCosineSimilarity()(p, 2 * p).item() == pytest.approx(-1.0)


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.0, 3.0), (0.0, 2.0, 0.5)])
def test_vicreg_matches_the_formula(weights: tuple[float, float, float]) -> None:
    a, b = _pair(n=6, d=4, seed=2)
    a = 0.3 * a  # std below 1 in some dimensions: the variance hinge is active
    terms = VICRegLoss(*weights)(a, b)
    reference = _reference_vicreg(a, b, weights)
    for name, value in reference.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-10), name
    assert terms["variance"] > 0 and terms["covariance"] > 0


@pytest.mark.parametrize("lambda_", [5e-3, 0.0, 1.0])
def test_barlow_twins_matches_the_formula(lambda_: float) -> None:
    a, b = _pair(n=8, d=4, seed=3)
    terms = BarlowTwinsLoss(lambda_, eps=0.0)(a, b)
    reference = _reference_barlow_twins(a, b, lambda_)
    for name, value in reference.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-10), name
    # Identical views of decorrelated dimensions: C is the identity and the loss vanishes.
    # (QR of centred columns: orthogonal columns that stay centred.)
    x = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    white = torch.linalg.qr(x - x.mean(dim=0))[0]
    assert BarlowTwinsLoss(1.0, eps=0.0)(white, white)["loss"].item() == pytest.approx(0, abs=1e-9)


# ---------------------------------------------------------------------------------------
# Against lightly, where it is installed
# ---------------------------------------------------------------------------------------
def test_losses_match_lightly() -> None:
    loss = pytest.importorskip("lightly.loss")
    a, b = _pair(n=16, d=8, seed=4)
    vicreg = VICRegLoss(25.0, 20.0, 2.0)(a, b)["loss"]
    lightly_vicreg = loss.VICRegLoss(lambda_param=25.0, mu_param=20.0, nu_param=2.0)(a, b)
    torch.testing.assert_close(vicreg, lightly_vicreg)
    # lightly standardises with BatchNorm's eps (1e-5), as this loss does by default.
    barlow = BarlowTwinsLoss(5e-3)(a, b)["loss"]
    torch.testing.assert_close(barlow, loss.BarlowTwinsLoss(lambda_param=5e-3)(a, b))
    negative_cosine = NegativeCosineSimilarity()(a, b)
    torch.testing.assert_close(negative_cosine, loss.NegativeCosineSimilarity()(a, b).mean())
    # BYOL's normalised MSE is 2 + 2 x lightly's (negative) cosine similarity.
    torch.testing.assert_close(BYOLLoss()(a, b), 2 + 2 * negative_cosine)


# ---------------------------------------------------------------------------------------
# Gradients, dtypes, refusals
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "loss_fn",
    [
        BYOLLoss(),
        NegativeCosineSimilarity(),
        lambda a, b: VICRegLoss(2.0, 3.0, 0.5)(0.5 * a, b)["loss"],
        lambda a, b: BarlowTwinsLoss(0.1)(a, b)["loss"],
    ],
    ids=["byol", "negative_cosine", "vicreg", "barlow_twins"],
)
def test_gradcheck(loss_fn) -> None:
    a, b = _pair(n=5, d=3, seed=5)
    assert torch.autograd.gradcheck(loss_fn, (a.requires_grad_(True), b.requires_grad_(True)))


def test_batch_statistic_losses_run_in_float32_under_autocast() -> None:
    a, b = (t.float() for t in _pair(n=64, d=16, seed=6))
    for loss_fn in (VICRegLoss(), BarlowTwinsLoss()):
        reference = loss_fn(a, b)["loss"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = loss_fn(a.bfloat16(), b.bfloat16())["loss"]
        assert mixed.dtype == torch.float32
        exact = loss_fn(a.bfloat16().float(), b.bfloat16().float())["loss"]
        assert mixed.item() == pytest.approx(exact.item(), rel=1e-6)
        assert mixed.item() == pytest.approx(reference.item(), rel=2e-2)


@pytest.mark.parametrize("loss_fn", [VICRegLoss(), BarlowTwinsLoss()], ids=["vicreg", "barlow"])
def test_batch_statistic_losses_refuse_a_batch_of_one(loss_fn) -> None:
    with pytest.raises(ValueError, match="at least 2 images .*got 1"):
        loss_fn(torch.randn(1, 4), torch.randn(1, 4))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VICRegLoss(invariance_weight=-1.0), "invariance_weight must be .* >= 0, got -1"),
        (lambda: VICRegLoss(variance_weight=-0.5), "variance_weight must be .* >= 0, got -0.5"),
        (lambda: VICRegLoss(covariance_weight=-2), "covariance_weight must be .* >= 0, got -2"),
        (lambda: VICRegLoss(0, 0, 0), "weights are all 0"),
        (lambda: BarlowTwinsLoss(lambda_=-5e-3), "lambda must be a number >= 0, got -0.005"),
    ],
)
def test_negative_weights_are_refused(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(5, 3\)"):
        BYOLLoss()(torch.randn(4, 3), torch.randn(5, 3))


# ---------------------------------------------------------------------------------------
# 2-process DDP on CPU (gloo): global-batch statistics
# ---------------------------------------------------------------------------------------
_N, _IN, _D = 6, 4, 5  # rows per rank (equal split), input and projection sizes
_UNEVEN = 4  # rank 0's rows in the unequal split of the 2 * _N global rows


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(321)
    x1 = torch.randn(2 * _N, _IN, generator=g, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(2 * _N, _IN, generator=g, dtype=torch.float64)
    return x1, x2


def _projector() -> torch.nn.Sequential:
    """Linear -> global-batch BatchNorm -> ReLU -> Linear, as the objectives' heads."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(_IN, 8), GlobalBatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, _D)
    ).double()


_LOSSES = {
    "vicreg": lambda: VICRegLoss(2.0, 3.0, 0.5),
    "barlow_twins": lambda: BarlowTwinsLoss(0.1),
}


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        x1, x2 = _global_batch()
        results = {}
        for name, build in _LOSSES.items():
            for split, rows in (
                ("even", slice(rank * _N, (rank + 1) * _N)),
                ("uneven", slice(0, _UNEVEN) if rank == 0 else slice(_UNEVEN, 2 * _N)),
            ):
                # Loss and gradients w.r.t. the inputs, then the parameter gradients of a
                # projector with a global-batch BatchNorm, averaged over ranks as DDP does
                # (by hand: a real DistributedDataParallel costs seconds of setup on CPU).
                z1 = x1[rows].clone().requires_grad_(True)
                z2 = x2[rows].clone().requires_grad_(True)
                loss = build()(z1, z2)["loss"]
                loss.backward()
                model = _projector()
                build()(model(x1[rows]), model(x2[rows]))["loss"].backward()
                for p in model.parameters():
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad /= world_size
                results[f"{name}/{split}"] = {
                    "loss": loss.detach(),
                    "g1": z1.grad,
                    "g2": z2.grad,
                    "param_grads": [p.grad for p in model.parameters()],
                    "running_mean": model[1].running_mean.clone(),
                }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_batch_statistics_span_the_global_batch_under_ddp() -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("gloo backend unavailable")
    world_size = 2
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_ddp_worker, args=(world_size, _free_port(), out_dir), nprocs=world_size)
        ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world_size)]

    x1, x2 = _global_batch()
    for name, build in _LOSSES.items():
        # One process on the whole global batch.
        z1, z2 = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
        reference = build()(z1, z2)["loss"]
        reference.backward()
        model = _projector()
        build()(model(x1), model(x2))["loss"].backward()
        for split in ("even", "uneven"):
            for rank, result in enumerate(ranks):
                r = result[f"{name}/{split}"]
                rows = (
                    slice(rank * _N, (rank + 1) * _N)
                    if split == "even"
                    else (slice(0, _UNEVEN) if rank == 0 else slice(_UNEVEN, 2 * _N))
                )
                # Every rank's loss is the global one (not that of its half of the batch) ...
                torch.testing.assert_close(r["loss"], reference.detach())
                # ... its input gradients world_size x the global ones (the gather's backward
                # sums), which DDP's averaging of parameter gradients cancels:
                torch.testing.assert_close(r["g1"] / world_size, z1.grad[rows])
                torch.testing.assert_close(r["g2"] / world_size, z2.grad[rows])
                for got, want in zip(r["param_grads"], model.parameters(), strict=True):
                    torch.testing.assert_close(got, want.grad)
                # The BatchNorm's running statistics come from the global batch too.
                torch.testing.assert_close(r["running_mean"], model[1].running_mean)
