"""Losses and representation-quality monitors.

* :class:`NTXentLoss` -- SimCLR's normalised-temperature cross-entropy, with optional
  sub-sampling of negatives (the Neuromatch "few negative pairs" experiment), an optional
  decoupled denominator, and a distributed mode that contrasts against the negatives of every
  process.
* :func:`alignment_uniformity`, :func:`projection_std` -- cheap collapse/quality monitors.
* :class:`VAELoss` -- Bernoulli-likelihood VAE objective for binary (dSprites) images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from reprlab.dist import gather_sizes, gather_with_grad, world_size_and_rank

__all__ = [
    "NTXentLoss",
    "VAELoss",
    "alignment_uniformity",
    "bce_with_logits_sum",
    "negatives_count",
    "projection_std",
    "sample_negative_indices",
]

NegPairs = int | float | str


# --------------------------------------------------------------------------------------
# Negative sampling
# --------------------------------------------------------------------------------------
def _validate_neg_pairs(neg_pairs: NegPairs) -> None:
    accepted = (
        "accepted: 'all', a positive int k (k sampled negatives per anchor), "
        "or a float fraction in (0, 1)"
    )
    # bool is a subclass of int; neg_pairs=True is almost certainly a config mistake.
    if isinstance(neg_pairs, bool):
        raise ValueError(f"neg_pairs must not be a bool, got {neg_pairs!r}; {accepted}")
    if isinstance(neg_pairs, str):
        if neg_pairs != "all":
            raise ValueError(f"invalid neg_pairs {neg_pairs!r}; {accepted}")
    elif isinstance(neg_pairs, int):
        if neg_pairs < 1:
            raise ValueError(f"invalid neg_pairs {neg_pairs!r}; {accepted}")
    elif isinstance(neg_pairs, float):
        if not (0.0 < neg_pairs < 1.0) or math.isnan(neg_pairs):
            raise ValueError(f"invalid neg_pairs {neg_pairs!r}; {accepted}")
    else:
        raise ValueError(
            f"invalid neg_pairs {neg_pairs!r} ({type(neg_pairs).__name__}); {accepted}"
        )


def negatives_count(neg_pairs: NegPairs, available: int) -> int | None:
    """Number of negatives per anchor for ``neg_pairs`` given ``available`` (= 2N - 2) negatives.

    Returns ``None`` for ``"all"`` (no sampling). A fraction ``f`` gives ``max(1, floor(f *
    available))``. More negatives than ``available`` raises ``ValueError``.
    """
    if neg_pairs == "all":
        return None
    k = max(1, int(neg_pairs * available)) if isinstance(neg_pairs, float) else int(neg_pairs)
    if k > available:
        n = (available + 2) // 2
        raise ValueError(
            f"neg_pairs k={k} exceeds the available negatives: a batch of N={n} image pairs has "
            f"at most 2N-2={available} negatives per anchor"
        )
    return k


# Up to this many negatives per anchor, sample with Floyd's algorithm (O(rows * k^2), loops over
# k); above it, with random scores + top-k (O(rows * num_columns)). For N=1000, k=2 on CPU this
# is ~1 ms instead of ~30-50 ms (drawing and top-k-ing a 2000 x 2000 score matrix).
_FLOYD_MAX_K = 32


def sample_negative_indices(
    self_idx: Tensor,
    pos_idx: Tensor,
    num_columns: int,
    k: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ``k`` distinct negative column indices per anchor, uniformly, without replacement.

    For anchor ``r`` the candidates are the ``num_columns - 2`` columns other than
    ``self_idx[r]`` and ``pos_idx[r]``. Both strategies are vectorised over anchors and give a
    uniformly random k-subset (the order within a row carries no meaning):

    * ``k <= 32``: Floyd's algorithm on ordinals ``0..M-1`` (M = num_columns - 2), a loop over
      the k draws only, then ordinals are mapped to columns by skipping the two excluded ones;
    * larger ``k``: i.i.d. uniform scores per (anchor, column), excluded columns pushed below
      every valid score, top-k.

    Returns a ``(len(self_idx), k)`` long tensor on ``self_idx.device``. With the same
    ``generator`` state the result is reproducible (the loss uses exactly this function).
    """
    device = self_idx.device
    rows = self_idx.shape[0]
    available = num_columns - 2
    if not 1 <= k <= available:
        raise ValueError(f"need 1 <= k <= {available} negatives, got k={k}")
    # A CPU generator cannot draw CUDA tensors directly: draw on the generator's device.
    gen_device = generator.device if generator is not None else device

    if k > _FLOYD_MAX_K:
        scores = torch.rand((rows, num_columns), generator=generator, device=gen_device)
        scores = scores.to(device)
        ar = torch.arange(rows, device=device)
        scores[ar, self_idx] = -1.0  # rand() is in [0, 1), so -1 is never among the top-k
        scores[ar, pos_idx] = -1.0
        return scores.topk(k, dim=1, sorted=False).indices

    # Floyd: for j = M-k .. M-1 draw t ~ U{0..j}; take t unless already chosen, else take j.
    u = torch.rand((rows, k), generator=generator, device=gen_device).to(device)
    chosen = torch.empty((rows, k), dtype=torch.long, device=device)
    for i in range(k):
        j = available - k + i
        t = (u[:, i] * (j + 1)).long().clamp_(max=j)
        taken = (chosen[:, :i] == t[:, None]).any(dim=1)
        chosen[:, i] = torch.where(taken, torch.full_like(t, j), t)
    # Ordinal among the candidates -> column: step over the two excluded columns in order.
    low = torch.minimum(self_idx, pos_idx)[:, None]
    high = torch.maximum(self_idx, pos_idx)[:, None]
    cols = chosen + (chosen >= low).long()
    return cols + (cols >= high).long()


# --------------------------------------------------------------------------------------
# NT-Xent
# --------------------------------------------------------------------------------------
def _at_least_float32(x: Tensor) -> Tensor:
    """bf16/fp16 become float32; float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class NTXentLoss(nn.Module):
    """NT-Xent (SimCLR) loss over two batches of projections ``z1``, ``z2`` of shape (N, D).

    The 2N projections are L2-normalised and stacked as ``z = [z1; z2]``; anchor ``i`` has
    positive ``(i + N) mod 2N``. For anchor ``i``::

        loss_i = -log( exp(s_ip / T) / sum_{j in P(i)} exp(s_ij / T) )

    where ``s`` is cosine similarity and ``P(i)`` is the positive plus the negatives: all
    2N - 2 other samples (``neg_pairs="all"``), ``k`` of them sampled uniformly without
    replacement per anchor (``neg_pairs=k``), or a fraction ``f`` of them (``max(1,
    floor(f * (2N - 2)))`` sampled). The loss is the mean over the 2N anchors. It is computed
    as a cross-entropy (log-sum-exp, so stable for tiny T) on a ``(2N, 2N)`` logit matrix with
    the self-similarity masked to ``-inf``, or, with sampled negatives, on ``(2N, 1 + k)``
    logits [positive, negatives] with target 0; memory is O(N^2 + N D) either way.

    ``decoupled=True`` leaves the positive out of the denominator (Yeh et al. 2022, "Decoupled
    Contrastive Learning")::

        loss_i = -s_ip / T + log sum_{j in negatives(i)} exp(s_ij / T)

    This is the loss the Neuromatch tutorial trains with when it sub-samples negatives: with the
    positive in the denominator and only a couple of negatives, the loss saturates once the
    positive dominates them, and the encoder stops learning much earlier.

    Timing (2-core dev CPU, 1 thread, N=1000, D=84, forward + backward): ~55 ms for ``"all"``,
    ~10 ms for ``neg_pairs=2``.

    Distributed (``gather_distributed`` and an initialised process group, world size W > 1):
    every rank gathers the projections of all ranks (``N_r`` on rank r; they may differ, as in
    the last batch of an evaluation pass) and builds the logits for its *local* ``2 N_r``
    anchors against all ``2 N_global`` samples, with self and positive located by global index.
    Its loss is the sum over its local anchors divided by ``2 N_global / W`` (the mean over its
    anchors when all ranks hold N rows), so the mean of the per-rank losses equals the
    single-process loss on the global batch.

    Gradient scale under DDP: the gather's backward all-reduce-SUMs gradients, so on rank r
    ``z.grad = W * dL_global/dz_r`` where ``L_global = mean_r L_r``. DDP then *averages*
    parameter gradients over the W ranks, and ``(1/W) * sum_r (W * dL_global/dz_r) dz_r/dtheta
    = dL_global/dtheta``: parameters receive exactly the single-process global-batch gradient.
    (Gradients w.r.t. the inputs themselves, before DDP averaging, are W times the global
    ones.)

    ``forward`` accepts an optional ``generator`` used only for negative sampling.
    """

    def __init__(
        self,
        temperature: float = 0.5,
        neg_pairs: NegPairs = "all",
        gather_distributed: bool = True,
        decoupled: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if not temperature > 0 or math.isinf(temperature):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        _validate_neg_pairs(neg_pairs)
        self.temperature = float(temperature)
        self.neg_pairs = neg_pairs
        self.gather_distributed = gather_distributed
        self.decoupled = bool(decoupled)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, neg_pairs={self.neg_pairs!r}, "
            f"gather_distributed={self.gather_distributed}, decoupled={self.decoupled}"
        )

    def logits_and_targets(
        self, z1: Tensor, z2: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Logits ``(2N_local, C)`` and integer targets ``(2N_local,)`` for the cross-entropy.

        With ``neg_pairs="all"`` C = 2N_global columns (self masked to -inf, target = positive
        column); otherwise C = 1 + k with the positive at column 0.
        """
        with torch.autocast(device_type=z1.device.type, enabled=False):  # see forward
            logits, targets, _ = self._logits_targets_share(
                _at_least_float32(z1), _at_least_float32(z2), generator
            )
        return logits, targets

    def _logits_targets_share(
        self, z1: Tensor, z2: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, float]:
        """``logits_and_targets`` and this rank's share of the global batch (see ``forward``)."""
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(
                f"z1 and z2 must both have shape (N, D), got {tuple(z1.shape)} and "
                f"{tuple(z2.shape)}"
            )
        n = z1.shape[0]
        if n < 1:
            raise ValueError("NTXentLoss needs a batch of at least one pair")
        device = z1.device

        z_local = F.normalize(torch.cat([z1, z2], dim=0), dim=1)  # (2n, D)

        world_size, rank = world_size_and_rank() if self.gather_distributed else (1, 0)
        # Dividing the local mean by `share` = n / (mean rows per rank) makes the mean of the
        # ranks' losses the global-batch loss even when ranks hold different numbers of rows.
        share = 1.0
        if world_size > 1:
            sizes = gather_sizes(n, device)
            n_global = sum(sizes)
            z1_all = gather_with_grad(z_local[:n], sizes)
            z2_all = gather_with_grad(z_local[n:], sizes)
            z_global = torch.cat([z1_all, z2_all], dim=0)  # (2 n_global, D): [all z1; all z2]
            offset = sum(sizes[:rank])
            if len(set(sizes)) > 1:
                share = n * world_size / n_global
        else:
            n_global = n
            z_global = z_local
            offset = 0

        # Global column index of each local anchor and of its positive.
        ar = torch.arange(n, device=device)
        self_idx = torch.cat([offset + ar, n_global + offset + ar])
        pos_idx = torch.cat([n_global + offset + ar, offset + ar])

        num_columns = 2 * n_global
        if self.decoupled and num_columns < 3:
            raise ValueError("a decoupled NT-Xent needs a batch of at least 2 pairs (no negatives)")
        k = negatives_count(self.neg_pairs, num_columns - 2)
        # Folding 1/T into the (2n, D) anchors is cheaper than dividing the (2n, 2N) logits.
        anchors = z_local / self.temperature
        rows = torch.arange(2 * n, device=device)

        if k is None:
            # (2n, 2 n_global): O(N^2) memory; no (N, N, D) broadcast.
            logits = anchors @ z_global.T
            # -inf (not a large finite number) removes self-pairs exactly; log-softmax handles
            # it since every row keeps the positive as a finite entry. In place is safe: the
            # matmul's backward needs only its inputs.
            logits[rows, self_idx] = float("-inf")
            return logits, pos_idx, share

        neg_idx = sample_negative_indices(self_idx, pos_idx, num_columns, k, generator)
        pos_logit = (anchors * z_global[pos_idx]).sum(dim=1, keepdim=True)
        if k * z_global.shape[1] <= num_columns:
            # Few negatives: gather their (2n, k, D) embeddings (no bigger than the logit
            # matrix) and skip the O(N^2 D) all-pairs matmul.
            neg_logits = torch.bmm(z_global[neg_idx], anchors.unsqueeze(2)).squeeze(2)
        else:
            neg_logits = (anchors @ z_global.T).gather(1, neg_idx)
        sub_logits = torch.cat([pos_logit, neg_logits], dim=1)  # positive is class 0
        return sub_logits, torch.zeros(2 * n, dtype=torch.long, device=device), share

    def forward(self, z1: Tensor, z2: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # Under bf16/fp16 autocast the similarity matmul would round each logit to ~3
        # significant digits, i.e. errors of ~0.01/T in logits that differ by little: the loss is
        # small next to the encoder, so it always runs in float32.
        with torch.autocast(device_type=z1.device.type, enabled=False):
            logits, targets, share = self._logits_targets_share(
                _at_least_float32(z1), _at_least_float32(z2), generator
            )
        if self.decoupled:
            positive = logits.gather(1, targets[:, None]).squeeze(1)
            negatives = logits.scatter(1, targets[:, None], float("-inf"))
            loss = (torch.logsumexp(negatives, dim=1) - positive).mean()
        else:
            # cross_entropy = log-sum-exp - positive logit: stable for small temperatures.
            loss = F.cross_entropy(logits, targets, reduction="mean")
        return loss if share == 1.0 else loss * share


# --------------------------------------------------------------------------------------
# Monitoring helpers
# --------------------------------------------------------------------------------------
def alignment_uniformity(z1: Tensor, z2: Tensor, t: float = 2.0) -> tuple[Tensor, Tensor]:
    """Alignment and uniformity of Wang & Isola (2020) on L2-normalised projections.

    ``alignment = mean_i ||z1n_i - z2n_i||^2`` (lower = positives closer; in [0, 4]).
    ``uniformity = log mean_{i<j} exp(-t ||z1n_i - z1n_j||^2)`` over distinct pairs of z1
    (lower = more uniform on the sphere; 0 when collapsed). Inputs are detached: these are
    monitors, not losses. Needs N >= 2.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1, z2 must have equal (N, D) shapes, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError(f"alignment_uniformity needs N >= 2 samples, got N={z1.shape[0]}")
    z1n = F.normalize(z1.detach().float(), dim=1)
    z2n = F.normalize(z2.detach().float(), dim=1)
    alignment = (z1n - z2n).pow(2).sum(dim=1).mean()
    sq_dists = torch.pdist(z1n, p=2).pow(2)  # the N(N-1)/2 distinct pairs
    # log mean exp via logsumexp: exact and overflow-free.
    uniformity = torch.logsumexp(-t * sq_dists, dim=0) - math.log(sq_dists.numel())
    return alignment, uniformity


def projection_std(z: Tensor) -> Tensor:
    """Mean over dimensions of the per-dimension std of L2-normalised ``z`` (N, D).

    About ``1/sqrt(D)`` for well-spread projections, 0 for collapse to a single point (the
    SimSiam collapse monitor). Detached; needs N >= 2.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"projection_std needs an (N, D) tensor with N >= 2, got {tuple(z.shape)}")
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


# --------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------
class _BCEWithLogitsSum(torch.autograd.Function):
    """sum over every element of BCEWithLogits(x, y) = max(x, 0) - x y + log(1 + exp(-|x|)).

    The same value as ``F.binary_cross_entropy_with_logits(x, y, reduction="sum")``, written
    with ``log`` where PyTorch uses ``log1p``, whose CPU kernel is not vectorised. 1 + exp(-|x|)
    lies in (1, 2], so ``log`` loses at most the rounding of that sum, below 2^-24 per element.
    The three terms are added per element before the one sum: each element's loss is >= 0, so
    the sum does not cancel, as separate sums of max(x, 0) and x y would for a model that fits
    its targets. Gradients: sigmoid(x) - y for x, -x for y.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor) -> Tensor:
        ctx.save_for_backward(logits, target)
        per_element = logits.abs().neg_().exp_().add_(1.0).log_()
        per_element.add_(logits.clamp_min(0)).addcmul_(logits, target, value=-1.0)
        return per_element.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        logits, target = ctx.saved_tensors
        grad_logits = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_logits = (torch.sigmoid(logits) - target).mul_(grad)
        if ctx.needs_input_grad[1]:
            grad_target = logits * -grad
        return grad_logits, grad_target


def bce_with_logits_sum(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of ``logits`` against ``target`` (same shape), summed over every
    element, in float32 or wider (autocast's low-precision logits are widened first)."""
    if logits.shape != target.shape:
        raise ValueError(
            f"logits and target shapes differ: {tuple(logits.shape)} vs {tuple(target.shape)}"
        )
    logits = _at_least_float32(logits)
    return _BCEWithLogitsSum.apply(logits, target.to(logits.dtype))


class VAELoss(nn.Module):
    """Negative ELBO (beta-VAE) for Bernoulli pixels and a diagonal-Gaussian posterior.

    Per sample, terms are *summed* over pixels (reconstruction) and over latent dims (KL),
    i.e. the proper per-image negative ELBO -- not a per-pixel mean, which would shrink the
    reconstruction term by H*W*C and make beta effectively huge. The per-sample values are
    then *averaged* over the batch so the scale doesn't depend on batch size::

        reconstruction = mean_b sum_pixels BCEWithLogits(logits_b, target_b)
        kl             = mean_b sum_d -0.5 (1 + logvar - mu^2 - exp(logvar))
        loss           = reconstruction + beta * kl

    ``forward`` returns ``{"loss", "reconstruction", "kl"}`` (scalars).
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.beta = float(beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"

    def reconstruction_sum(self, logits: Tensor, target: Tensor) -> Tensor:
        """BCE with logits summed over every element: ``bce_with_logits_sum``."""
        return bce_with_logits_sum(logits, target)

    def forward(
        self, logits: Tensor, target: Tensor, mu: Tensor, logvar: Tensor
    ) -> dict[str, Tensor]:
        if logits.shape != target.shape:
            raise ValueError(
                f"logits and target shapes differ: {tuple(logits.shape)} vs {tuple(target.shape)}"
            )
        if mu.shape != logvar.shape:
            raise ValueError(
                f"mu and logvar shapes differ: {tuple(mu.shape)} vs {tuple(logvar.shape)}"
            )
        batch = logits.shape[0]
        # mean over images of the per-image sums = the sum over the batch / batch.
        reconstruction = self.reconstruction_sum(logits, target) / batch
        kl_per_dim = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())
        kl = kl_per_dim.reshape(batch, -1).sum(dim=1).mean()
        return {"loss": reconstruction + self.beta * kl, "reconstruction": reconstruction, "kl": kl}
