"""Losses of the non-contrastive self-supervised objectives (no negative pairs).

* :class:`BYOLLoss` -- BYOL's normalised mean squared error between prediction and target.
* :class:`NegativeCosineSimilarity` -- SimSiam's negative cosine similarity.
* :class:`VICRegLoss` -- VICReg's variance, invariance and covariance terms.
* :class:`BarlowTwinsLoss` -- Barlow Twins' cross-correlation towards the identity.

Stop-gradients belong to the methods (BYOL's target runs without gradients, SimSiam detaches its
projections); these modules only compute the formulas. The batch-statistic losses (VICReg,
Barlow Twins) gather every process's rows under DDP so their statistics span the global batch,
as the papers compute them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# The gather helpers move to reprlab.dist with the orchestration refactor.
from reprlab.dist import gather_sizes, gather_with_grad

__all__ = [
    "BYOLLoss",
    "BarlowTwinsLoss",
    "NegativeCosineSimilarity",
    "VICRegLoss",
    "gather_rows",
]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Each (N_r, D) tensor concatenated over all processes in rank order (N = sum N_r rows),
    with gradients; unchanged in one process. Ranks may hold different numbers of rows."""
    if _world_size() == 1:
        return tensors
    sizes = gather_sizes(tensors[0].shape[0], tensors[0].device)
    return tuple(gather_with_grad(t, sizes) for t in tensors)


def _check_pair(name: str, a: Tensor, b: Tensor, min_rows: int = 1) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name} needs two (N, D) tensors of one shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if a.shape[0] < min_rows:
        raise ValueError(
            f"{name} needs a batch of at least {min_rows} images (its statistics span the batch), "
            f"got {a.shape[0]}"
        )


def _float32(*tensors: Tensor) -> tuple[Tensor, ...]:
    """bf16/fp16 become float32 (batch statistics and (D, D) products lose too much in 16 bits);
    float32 and float64 stay as they are."""
    return tuple(t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors)


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class BYOLLoss(nn.Module):
    """BYOL's loss for one direction (Grill et al. 2020, "Bootstrap your own latent", Eq. 2).

    For predictions ``q`` of the online network and projections ``z`` of the target network, both
    (N, D)::

        loss = mean_i || q_i / ||q_i|| - z_i / ||z_i|| ||^2  =  mean_i (2 - 2 cos(q_i, z_i))

    in [0, 4]. The method symmetrises it (each view predicts the other's target) and keeps ``z``
    free of gradients (the target network is not trained by the loss).
    """

    def forward(self, q: Tensor, z: Tensor) -> Tensor:
        _check_pair("BYOLLoss", q, z)
        return (2.0 - 2.0 * F.cosine_similarity(q, z, dim=1)).mean()  # (N,) -> ()


class NegativeCosineSimilarity(nn.Module):
    """SimSiam's distance (Chen & He 2021, "Exploring simple Siamese representation learning",
    Eq. 1): for predictions ``p`` and projections ``z``, both (N, D)::

        D(p, z) = - mean_i  p_i / ||p_i|| . z_i / ||z_i||

    in [-1, 1]. The method symmetrises it, ``L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``, with the
    stop-gradient ``sg`` applied to ``z`` before the call.
    """

    def forward(self, p: Tensor, z: Tensor) -> Tensor:
        _check_pair("NegativeCosineSimilarity", p, z)
        return -F.cosine_similarity(p, z, dim=1).mean()  # (N,) -> ()


class VICRegLoss(nn.Module):
    """VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance
    Regularization for self-supervised learning", Eqs. 1-6), on projections ``z_a``, ``z_b`` of
    shape (N, D) of two views::

        invariance  s    = mean_{i, k} (z_a[i, k] - z_b[i, k])^2
        variance    v(Z) = mean_k max(0, gamma - sqrt(Var_i(Z[i, k]) + eps))   (unbiased Var)
        covariance  c(Z) = (1/D) sum_{k != l} C(Z)[k, l]^2,
                    C(Z) = 1/(N-1) sum_i (Z_i - mean Z)(Z_i - mean Z)^T           (D, D)
        loss = invariance_weight * s
             + variance_weight * (v(z_a) + v(z_b)) / 2
             + covariance_weight * (c(z_a) + c(z_b))

    The scaling follows the authors' code (and lightly's ``VICRegLoss``): the invariance term is
    the per-element mean (the paper's sum over D, divided by D), the variance term the mean of the
    two branches. Paper defaults: weights 25, 25, 1, gamma 1, eps 1e-4.

    Under DDP every term is computed on the rows of all processes (the global batch) and every
    rank returns that global loss; the gather's backward sums each rank's gradient into the rows
    it owns, so after DDP averages parameter gradients they are the single-process gradients of
    the global batch. ``forward`` returns ``{"loss", "invariance", "variance", "covariance"}``.
    """

    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.invariance_weight = _check_weight("invariance_weight", invariance_weight)
        self.variance_weight = _check_weight("variance_weight", variance_weight)
        self.covariance_weight = _check_weight("covariance_weight", covariance_weight)
        if self.invariance_weight + self.variance_weight + self.covariance_weight == 0:
            raise ValueError("VICReg's weights are all 0: the loss would be constant")
        if not gamma > 0:
            raise ValueError(f"gamma (the target standard deviation) must be > 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.eps = _check_weight("eps", eps)
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return (
            f"invariance_weight={self.invariance_weight}, variance_weight={self.variance_weight}, "
            f"covariance_weight={self.covariance_weight}, gamma={self.gamma}, eps={self.eps}"
        )

    def _variance(self, z: Tensor) -> Tensor:
        std = torch.sqrt(z.var(dim=0) + self.eps)  # (D,), unbiased over the N rows
        return F.relu(self.gamma - std).mean()

    @staticmethod
    def _covariance(z: Tensor) -> Tensor:
        n, d = z.shape
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (n - 1)  # (D, D)
        off_diagonal = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
        return off_diagonal / d

    def forward(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        _check_pair("VICRegLoss", z_a, z_b)
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            return self._terms(*_float32(z_a, z_b))

    def _terms(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        if self.gather_distributed:
            z_a, z_b = gather_rows(z_a, z_b)  # (N_global, D) each
        _check_pair("VICRegLoss", z_a, z_b, min_rows=2)
        invariance = F.mse_loss(z_a, z_b)
        variance = (self._variance(z_a) + self._variance(z_b)) / 2
        covariance = self._covariance(z_a) + self._covariance(z_b)
        loss = (
            self.invariance_weight * invariance
            + self.variance_weight * variance
            + self.covariance_weight * covariance
        )
        return {
            "loss": loss,
            "invariance": invariance,
            "variance": variance,
            "covariance": covariance,
        }


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Zbontar et al. 2021, "Barlow Twins: self-supervised learning via redundancy
    reduction", Eqs. 1-2), on projections ``z_a``, ``z_b`` of shape (N, D) of two views::

        C[k, l] = sum_i a[i, k] b[i, l] / (sqrt(sum_i a[i, k]^2) sqrt(sum_i b[i, l]^2))   (D, D)
                  with a, b = z_a, z_b centred over the batch
        loss    = sum_k (1 - C[k, k])^2  +  lambda * sum_{k != l} C[k, l]^2

    computed as the authors' code does: each dimension standardised over the batch (biased
    variance, plus ``eps`` as in their BatchNorm), ``C = a_std^T b_std / N``; ``eps=0`` is the
    formula exactly. Paper default: lambda 5e-3 for D = 8192 (about 1/D per pair).

    Under DDP ``C`` is the cross-correlation of the global batch: every rank gathers all rows and
    returns the global loss (gradients as in :class:`VICRegLoss`). ``forward`` returns
    ``{"loss", "on_diagonal", "off_diagonal"}`` (the two sums before weighting).
    """

    def __init__(
        self, lambda_: float = 5e-3, eps: float = 1e-5, gather_distributed: bool = True
    ) -> None:
        super().__init__()
        self.lambda_ = _check_weight("lambda", lambda_)
        self.eps = _check_weight("eps", eps)
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}, eps={self.eps}"

    def _standardise(self, z: Tensor) -> Tensor:
        centred = z - z.mean(dim=0)
        return centred / torch.sqrt(centred.pow(2).mean(dim=0) + self.eps)  # (N, D)

    def forward(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        _check_pair("BarlowTwinsLoss", z_a, z_b)
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            return self._terms(*_float32(z_a, z_b))

    def _terms(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        if self.gather_distributed:
            z_a, z_b = gather_rows(z_a, z_b)  # (N_global, D) each
        _check_pair("BarlowTwinsLoss", z_a, z_b, min_rows=2)
        n = z_a.shape[0]
        c = self._standardise(z_a).T @ self._standardise(z_b) / n  # (D, D)
        diagonal = c.diagonal()
        on_diagonal = (1.0 - diagonal).pow(2).sum()
        off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
        return {
            "loss": on_diagonal + self.lambda_ * off_diagonal,
            "on_diagonal": on_diagonal,
            "off_diagonal": off_diagonal,
        }
