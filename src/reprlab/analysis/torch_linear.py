"""Full-batch torch solvers for the linear probes of the analysis, on the features' device:
multinomial logistic regression and a one-vs-rest squared-hinge linear SVM, each on features
standardised with the training features' mean and standard deviation.

They minimise the objectives of scikit-learn's defaults, so the two backends agree:

- logistic regression (``LogisticRegression(C=c)``, lbfgs): with ``K`` classes the logits are
  ``X W + b`` and the objective, divided by ``C n`` as scikit-learn's is, reads
  ``f(W, b) = 1/n sum_i CE(y_i, x_i W + b) + 1/(2 C n) ||W||^2``; the intercept ``b`` is not
  penalised. Two classes take one logit column (``p = sigmoid(x w + b)``), as scikit-learn's
  binary model does (a softmax over two penalised columns would halve the penalty);
- the SVM (``LinearSVC(C=c)``, squared hinge, one-vs-rest): for class ``k`` with targets
  ``t_ik = +1`` (class k) or ``-1`` (the rest), ``f_k(w_k, b_k) = 1/n sum_i
  max(0, 1 - t_ik (x_i w_k + b_k))^2 + 1/(2 C n) (||w_k||^2 + b_k^2)`` (liblinear's objective
  over ``C n``); liblinear appends a constant feature for the intercept, so ``b_k`` is penalised
  like a weight. The classes are solved jointly (their sum; the Hessian is block diagonal) and
  two classes take one classifier, as liblinear does.

Both are solved by L-BFGS with a strong-Wolfe line search (``torch.optim.LBFGS``, 10 correction
pairs as SciPy's default) until the largest absolute gradient entry of ``f`` is at most ``tol``
(scikit-learn's stopping rule for lbfgs, on the same scaled objective) or ``max_iter``
iterations have run; the result says which, and a solver that stops unconverged logs a warning
(and logs its progress every ``progress_seconds`` while it runs). L-BFGS works in rescaled
variables (``W = P V``, :func:`leading_directions`): the features' leading directions, which make
correlated features such as raw pixels a stiff problem, are scaled to the curvature of the rest.
That is a change of variables, not of the problem: the minimiser and the stopping rule are W's.
The features stay float32 (the objective is summed in float64); their rounding sets a floor near
a tolerance of 1e-5, below which the line search stalls (reported as ``stalled``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Iterations per call of LBFGS.step: between calls the solver checks its clock and logs progress
# (the history of correction pairs is kept across calls).
_CHUNK = 50
# Leading feature directions the solver rescales (0: none); see _fit.
PRECONDITIONER_RANK = 256


@dataclass
class LinearFit:
    """A fitted linear classifier on standardised features, and how its solver ended."""

    mean: torch.Tensor  # (D,) training mean subtracted before the weights apply
    scale: torch.Tensor  # (D,) training standard deviation (1 where a dimension is constant)
    weight: torch.Tensor  # (D, M) with M = 1 for two classes, else K
    bias: torch.Tensor  # (M,)
    classes: torch.Tensor  # (K,) the training labels' values, in column order
    iterations: int
    converged: bool
    gradient_max: float  # largest |gradient| of the scaled objective at the end
    tolerance: float
    stop_reason: str  # "tolerance", "max_iter" or "stalled" (no progress in float precision)

    def decision(self, features: torch.Tensor) -> torch.Tensor:
        """(N, M) scores of ``features`` (raw, unstandardised)."""
        return standardised(features, self.mean, self.scale) @ self.weight + self.bias

    def predict(self, features: torch.Tensor, chunk_size: int = 8192) -> torch.Tensor:
        """(N,) predicted labels (values of ``classes``)."""
        predictions = []
        for chunk in features.split(chunk_size):
            scores = self.decision(chunk)
            index = (scores[:, 0] > 0).long() if scores.shape[1] == 1 else scores.argmax(1)
            predictions.append(self.classes[index])
        return torch.cat(predictions) if predictions else self.classes[:0]

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        labels = torch.as_tensor(labels).to(self.classes.device)
        return float((self.predict(features) == labels).float().mean())


class _ThinProduct(torch.autograd.Function):
    """``x @ weight`` for a tall ``x`` (N, D) and a thin ``weight`` (D, M), with the weight's
    gradient taken as ``(grad.T @ x).T``.

    autograd's own backward of ``x @ weight`` is ``x.T @ grad``, a (D, N) x (N, M) product that
    MKL runs many times slower than the same product in the other layout
    (``scripts/bench_analysis.py --products`` measures both); the forward takes the weight
    column-major for the same reason. ``x`` gets no gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x @ weight.T.contiguous().T

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        (x,) = ctx.saved_tensors
        return None, (grad.T @ x).T


def thin_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(N, M) ``x @ weight``, differentiable in ``weight`` (see :class:`_ThinProduct`)."""
    return _ThinProduct.apply(x, weight)


def standardisation(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation (divisor n, as StandardScaler), with 1 for the
    deviation of a constant dimension so it stays 0 rather than dividing by zero."""
    # float64 sums, in chunks: a float32 variance of a large-mean dimension loses its digits.
    # The deviations are taken from the float32-rounded mean (exact for values near it) and the
    # rounding's shift is taken out afterwards, so no float64 copy of the features is made.
    n = len(features)
    mean = sum(chunk.sum(0, dtype=torch.float64) for chunk in features.split(4096)) / n
    rounded = mean.to(features.dtype)
    centred_square = sum(
        (chunk - rounded).square().sum(0, dtype=torch.float64) for chunk in features.split(4096)
    )
    variance = (centred_square / n - (mean - rounded.double()).square()).clamp_min(0)
    # StandardScaler's test for a constant dimension: a variance within the rounding error of
    # computing it.
    eps = torch.finfo(torch.float64).eps
    constant = variance <= n * eps * variance + (n * mean * eps).square()
    scale = torch.where(constant, torch.ones_like(variance), variance.sqrt())
    return mean.to(features.dtype), scale.to(features.dtype)


def standardised(features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (features - mean).div_(scale)  # one new matrix, not two


@dataclass
class StandardisedFeatures:
    """Training features standardised once, with the solvers' preconditioner: what the two
    probes share when they are fitted on the same features (``standardise``)."""

    mean: torch.Tensor  # (D,)
    scale: torch.Tensor  # (D,)
    x: torch.Tensor  # (N, D) the standardised features
    # (D, r) leading directions and their (r,) factors (leading_directions); None: unscaled.
    directions: tuple[torch.Tensor, torch.Tensor] | None

    def __len__(self) -> int:
        return len(self.x)


def _feature_matrix(features: torch.Tensor) -> torch.Tensor:
    features = torch.as_tensor(features).float()
    if features.ndim != 2:
        raise ValueError(f"features must be (images, dims), got shape {tuple(features.shape)}")
    return features


def standardise(
    features: torch.Tensor, preconditioner_rank: int = PRECONDITIONER_RANK
) -> StandardisedFeatures:
    """``features`` (N, D) standardised with their own mean and deviation, and the leading
    directions the solvers rescale (``preconditioner_rank`` of them; 0: none)."""
    features = _feature_matrix(features)
    mean, scale = standardisation(features)
    x = standardised(features, mean, scale)
    directions = leading_directions(x, preconditioner_rank) if preconditioner_rank else None
    return StandardisedFeatures(mean, scale, x, directions)


def _class_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    classes, index = torch.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"a linear probe needs at least 2 classes in the training labels, got {len(classes)}"
        )
    return classes, index


def _minimise(
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor,
    max_iter: int,
    tol: float,
    name: str,
    progress_seconds: float,
    gradient_max: Callable[[], float],
    weight_gradient: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[int, str, float]:
    """L-BFGS on ``objective(weight, bias)`` in place until ``gradient_max()`` (the stopping
    rule's measure: the largest |gradient| in the original variables, of which
    ``weight_gradient`` maps the optimised weights' gradient) is at most ``tol``; (iterations,
    stop reason, its last value)."""
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=_CHUNK,
        # The gradient test is ours (below, on W's gradient): LBFGS's own, on the optimised
        # variables' gradient, would stop it early.
        tolerance_grad=0.0,
        # A change this small in a float loss is no change: the solver has stalled.
        tolerance_change=1e-12,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    group = optimizer.param_groups[0]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(weight, bias)
        loss.backward()
        largest = max(float(weight_gradient(weight.grad).abs().max()), float(bias.grad.abs().max()))
        if largest <= tol:
            # The stopping rule holds here: a zero gradient makes LBFGS accept this point and
            # stop (its own test, with tolerance_grad=0), at any iteration of a chunk.
            weight.grad.zero_()
            bias.grad.zero_()
        return loss

    start = last_report = time.perf_counter()
    iterations, reason = 0, "max_iter"
    largest = math.inf
    while iterations < max_iter:
        group["max_iter"] = min(_CHUNK, max_iter - iterations)
        # Generous, so a chunk ends on its iterations (or a stall), not on its evaluations.
        group["max_eval"] = group["max_iter"] * 20 + 1
        before = optimizer.state[weight].get("n_iter", 0)
        optimizer.step(closure)
        done = optimizer.state[weight].get("n_iter", 0) - before
        iterations += done
        largest = gradient_max()
        if largest <= tol:
            reason = "tolerance"
            break
        if done < group["max_iter"] and largest > tol:  # LBFGS stopped early: no progress
            reason = "stalled"
            break
        now = time.perf_counter()
        if now - last_report >= progress_seconds:
            last_report = now
            log.info(
                "%s: iteration %d of at most %d, max |gradient| %.2e (tolerance %.0e), %.0f s",
                name,
                iterations,
                max_iter,
                largest,
                tol,
                now - start,
            )
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    if reason != "tolerance":
        log.warning(
            "%s did not converge: %s after %d iterations, max |gradient| %.2e > tolerance %.0e; "
            "raise analysis.%s_max_iter (or the tolerance)",
            name,
            "stalled" if reason == "stalled" else "stopped at max_iter",
            iterations,
            largest,
            tol,
            name,
        )
    return iterations, reason, largest


def _gradient_max(objective, weight: torch.Tensor, bias: torch.Tensor) -> float:
    weight = weight.detach().requires_grad_(True)
    bias = bias.detach().requires_grad_(True)
    with torch.enable_grad():
        objective(weight, bias).backward()
    return float(torch.maximum(weight.grad.abs().max(), bias.grad.abs().max()))


def leading_directions(
    x: torch.Tensor, rank: int, sample: int = 8192, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(D, r) leading eigenvectors of the standardised features' second-moment matrix and the
    factors ``sqrt(lambda_{r+1} / lambda_i)`` that bring each one's curvature down to the first
    one left out; None when there is nothing to precondition.

    From ``sample`` random rows (a preconditioner needs no exact spectrum): an eigensolve of the
    (D, D) matrix up to 1024 dimensions, a randomised SVD above.
    """
    n, dims = x.shape
    # Directions well inside the spectrum only: rescaling nearly all of them trades one stiff
    # problem for another (and float32 precision with it).
    rank = min(rank, dims // 4, n // 4)
    if rank < 1:
        return None
    generator = torch.Generator().manual_seed(seed)
    rows = x[torch.randperm(n, generator=generator)[:sample].to(x.device)] if n > sample else x
    if dims <= 1024:
        eigenvalues, eigenvectors = torch.linalg.eigh((rows.T @ rows).double())
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    else:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            _, singular, eigenvectors = torch.svd_lowrank(rows, q=rank + 11, niter=2)
        eigenvalues = singular.double().square()
    eigenvalues = eigenvalues[: rank + 1].clamp_min(0)
    if eigenvalues[rank] <= 0:
        return None
    reference = torch.maximum(eigenvalues[rank], eigenvalues[0] * 1e-4)
    factors = (reference / eigenvalues[:rank]).sqrt().clamp_max(1).to(x.dtype)
    return eigenvectors[:, :rank].to(x.dtype).contiguous(), factors


def _prepared(
    features: torch.Tensor | StandardisedFeatures,
    labels: torch.Tensor,
    c: float,
    max_iter: int,
    tol: float,
    name: str,
    preconditioner_rank: int,
) -> tuple[StandardisedFeatures, torch.Tensor]:
    """The checked problem: ``features`` standardised (unless they come so) and the labels on
    their device. The settings are checked before the standardisation's cost is paid."""
    if not isinstance(features, StandardisedFeatures):
        features = _feature_matrix(features)
    labels = torch.as_tensor(labels)
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} training features but {len(labels)} labels")
    if not c > 0:
        raise ValueError(f"analysis.{name}_c must be > 0, got {c}")
    if max_iter < 1:
        raise ValueError(f"analysis.{name}_max_iter must be >= 1, got {max_iter}")
    if not tol > 0:
        raise ValueError(f"analysis.{name}_tol must be > 0, got {tol}")
    if not isinstance(features, StandardisedFeatures):
        features = standardise(features, preconditioner_rank)
    return features, labels.to(features.x.device)


def _fit(
    problem: StandardisedFeatures,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    columns: int,
    c: float,
    penalise_bias: bool,
    max_iter: int,
    tol: float,
    name: str,
    progress_seconds: float,
    classes: torch.Tensor,
) -> LinearFit:
    x = problem.x
    n, dims = x.shape
    penalty = 1.0 / (2.0 * c * n)

    def objective(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # The loss is summed in float64: near the optimum a float32 objective cannot resolve
        # the decrease of a step (about |gradient|^2), and the line search stalls.
        scores = (thin_product(x, weight) + bias).double()  # (N, M)
        regulariser = weight.double().square().sum()
        if penalise_bias:
            regulariser = regulariser + bias.double().square().sum()
        return loss(scores) + penalty * regulariser

    # L-BFGS runs on V with W = P V, P = I + U (diag(f) - 1) U^T: the leading directions of the
    # features (U) scaled down (f < 1) so that their curvature matches the rest. The same
    # minimiser in W (a change of variables, the objective is evaluated at W); far fewer
    # iterations on correlated features, whose few large directions make the problem stiff.
    directions = problem.directions
    if directions is not None:
        # Both layouts of U, so that every product with it is a fast thin one.
        basis, factors = directions
        basis_t = basis.T.contiguous()  # (r, D)

    def to_weight(v: torch.Tensor) -> torch.Tensor:
        if directions is None:
            return v
        return v + thin_product(basis, (factors - 1)[:, None] * thin_product(basis_t, v))

    def weight_gradient(v_gradient: torch.Tensor) -> torch.Tensor:
        """W's gradient from V's: P^-1 applied (P is symmetric)."""
        if directions is None:
            return v_gradient
        return v_gradient + basis @ ((1 / factors - 1)[:, None] * (basis_t @ v_gradient))

    v = torch.zeros(dims, columns, device=x.device, dtype=x.dtype)
    bias = torch.zeros(columns, device=x.device, dtype=x.dtype)
    with torch.enable_grad():
        iterations, reason, gradient_max = _minimise(
            lambda v, b: objective(to_weight(v), b),
            v,
            bias,
            max_iter,
            tol,
            name,
            progress_seconds,
            # The stopping rule on W's gradient, scikit-learn's.
            lambda: _gradient_max(objective, to_weight(v.detach()), bias),
            weight_gradient,
        )
    return LinearFit(
        mean=problem.mean,
        scale=problem.scale,
        weight=to_weight(v.detach()),
        bias=bias.detach(),
        classes=classes,
        iterations=iterations,
        converged=reason == "tolerance",
        gradient_max=gradient_max,
        tolerance=tol,
        stop_reason=reason,
    )


def fit_logistic_regression(
    features: torch.Tensor | StandardisedFeatures,
    labels: torch.Tensor,
    c: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-4,
    progress_seconds: float = 10.0,
    preconditioner_rank: int = PRECONDITIONER_RANK,
) -> LinearFit:
    """Multinomial logistic regression (see the module doc for the objective) on ``features``
    (N, D) and integer ``labels`` (N,), on the features' device. ``features`` may come
    standardised (``standardise``; ``preconditioner_rank`` is then its own)."""
    features, labels = _prepared(features, labels, c, max_iter, tol, "logreg", preconditioner_rank)
    classes, index = _class_index(labels)
    if len(classes) == 2:
        target = index.double()[:, None]  # (N, 1)

        def loss(scores: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(scores, target)
    else:

        def loss(scores: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(scores, index)

    columns = 1 if len(classes) == 2 else len(classes)
    return _fit(
        features, loss, columns, c, False, max_iter, tol, "logreg", progress_seconds, classes
    )


def fit_linear_svm(
    features: torch.Tensor | StandardisedFeatures,
    labels: torch.Tensor,
    c: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-4,
    progress_seconds: float = 10.0,
    preconditioner_rank: int = PRECONDITIONER_RANK,
) -> LinearFit:
    """One-vs-rest squared-hinge linear SVM (see the module doc for the objective) on
    ``features`` (N, D) and integer ``labels`` (N,), on the features' device. ``features`` may
    come standardised (``standardise``; ``preconditioner_rank`` is then its own)."""
    features, labels = _prepared(features, labels, c, max_iter, tol, "svm", preconditioner_rank)
    classes, index = _class_index(labels)
    if len(classes) == 2:
        targets = (index * 2 - 1).double()[:, None]  # (N, 1): +1 for classes[1]
    else:
        targets = F.one_hot(index, len(classes)).double() * 2 - 1  # (N, K)
    n = len(features)

    def loss(scores: torch.Tensor) -> torch.Tensor:
        # Summed over the classes: each classifier's objective is its own term.
        return (1 - targets * scores).clamp_min(0).square().sum() / n

    return _fit(
        features, loss, targets.shape[1], c, True, max_iter, tol, "svm", progress_seconds, classes
    )
