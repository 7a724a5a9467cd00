"""Linear probes on frozen features: logistic regression and a linear SVM, each on standardised
features (zero mean, unit variance per dimension, fitted on the training features), by either
backend: ``torch`` (full-batch L-BFGS on the features' device, :mod:`torch_linear`) or
``sklearn`` (``LogisticRegression`` / ``LinearSVC``, the reference; same objectives).

They complement the Lightning probe (Adam, a fixed number of epochs): both solvers here run to
a tolerance, so a gap between them and the Lightning probe says the latter was under-trained.
Each says whether it converged: a probe that stopped at its iteration cap is reported as such.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from reprlab.analysis.projection import check_backend
from reprlab.analysis.torch_linear import (
    StandardisedFeatures,
    fit_linear_svm,
    fit_logistic_regression,
)

log = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    """A probe's test accuracy and how its solver ended."""

    accuracy: float
    backend: str
    iterations: int  # the solver's iterations (scikit-learn: its n_iter_, the largest class's)
    converged: bool
    tolerance: float
    max_iter: int
    # torch only: the largest |gradient| of the scaled objective at the end, and why it stopped.
    gradient_max: float | None = None
    stop_reason: str | None = None

    def details(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def _as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def fit_and_score(
    model: Pipeline,
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
) -> tuple[float, bool, int]:
    """Fit ``model`` on the training features; its test accuracy, whether it converged and its
    iterations."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(_as_numpy(train_features), _as_numpy(train_labels))
    name = model.steps[-1][0]
    converged = True
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            converged = False
            log.warning("%s did not converge in max_iter iterations; raise it", name)
        else:
            log.warning("%s: %s", name, warning.message)
    accuracy = float(model.score(_as_numpy(test_features), _as_numpy(test_labels)))
    iterations = int(np.max(model.steps[-1][1].n_iter_))
    return accuracy, converged, iterations


def logistic_regression(
    c: float = 1.0, max_iter: int = 1000, seed: int = 0, tol: float = 1e-4
) -> Pipeline:
    """Multinomial logistic regression (L2, inverse strength ``c``) on standardised features."""
    if c <= 0:
        raise ValueError(f"analysis.logreg_c must be > 0, got {c}")
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, tol=tol, random_state=seed)
    )


def linear_svm(c: float = 1.0, max_iter: int = 2000, seed: int = 0, tol: float = 1e-4) -> Pipeline:
    """One-vs-rest linear SVM (squared hinge, L2, inverse strength ``c``) on standardised
    features. The primal problem is solved when there are more images than dimensions (faster
    there), the dual otherwise."""
    if c <= 0:
        raise ValueError(f"analysis.svm_c must be > 0, got {c}")
    return make_pipeline(
        StandardScaler(),
        LinearSVC(C=c, dual="auto", max_iter=max_iter, tol=tol, random_state=seed),
    )


def _probe(
    kind: str,
    train_features: torch.Tensor | np.ndarray | StandardisedFeatures,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    c: float,
    max_iter: int,
    tol: float,
    seed: int,
    backend: str,
) -> ProbeResult:
    check_backend(backend)
    if backend == "torch":
        if not isinstance(train_features, StandardisedFeatures):
            train_features = torch.as_tensor(train_features)
        fit = (fit_logistic_regression if kind == "logreg" else fit_linear_svm)(
            train_features, torch.as_tensor(train_labels), c, max_iter, tol
        )
        test = torch.as_tensor(test_features).to(fit.weight.device)
        return ProbeResult(
            accuracy=fit.accuracy(test, torch.as_tensor(test_labels)),
            backend=backend,
            iterations=fit.iterations,
            converged=fit.converged,
            tolerance=tol,
            max_iter=max_iter,
            gradient_max=fit.gradient_max,
            stop_reason=fit.stop_reason,
        )
    if isinstance(train_features, StandardisedFeatures):
        raise TypeError("the sklearn backend standardises the features itself: pass them raw")
    model = (logistic_regression if kind == "logreg" else linear_svm)(c, max_iter, seed, tol)
    accuracy, converged, iterations = fit_and_score(
        model, *(_cpu(a) for a in (train_features, train_labels, test_features, test_labels))
    )
    return ProbeResult(accuracy, backend, iterations, converged, tol, max_iter)


def _cpu(array: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    return array.cpu() if isinstance(array, torch.Tensor) else array


def logistic_regression_probe(
    train_features: torch.Tensor | np.ndarray | StandardisedFeatures,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    c: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-4,
    seed: int = 0,
    backend: str = "torch",
) -> ProbeResult:
    """Multinomial logistic regression's test accuracy and how its solver ended (torch:
    ``train_features`` may come standardised, :func:`torch_linear.standardise`)."""
    return _probe(
        "logreg",
        train_features,
        train_labels,
        test_features,
        test_labels,
        c,
        max_iter,
        tol,
        seed,
        backend,
    )


def linear_svm_probe(
    train_features: torch.Tensor | np.ndarray | StandardisedFeatures,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    c: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-4,
    seed: int = 0,
    backend: str = "torch",
) -> ProbeResult:
    """The one-vs-rest squared-hinge linear SVM's test accuracy and how its solver ended
    (torch: ``train_features`` may come standardised, :func:`torch_linear.standardise`)."""
    return _probe(
        "svm",
        train_features,
        train_labels,
        test_features,
        test_labels,
        c,
        max_iter,
        tol,
        seed,
        backend,
    )
