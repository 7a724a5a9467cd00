"""scikit-learn linear probes on frozen features: logistic regression and a linear SVM, each on
standardised features (zero mean, unit variance per dimension, fitted on the training features).

They complement the Lightning probe (Adam, a fixed number of epochs): both solvers here run to
convergence, so a gap between them and the Lightning probe says the latter was under-trained.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

log = logging.getLogger(__name__)


def _as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def fit_and_score(
    model: Pipeline,
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
) -> float:
    """Fit ``model`` on the training features and return its test accuracy."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(_as_numpy(train_features), _as_numpy(train_labels))
    name = model.steps[-1][0]
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            log.warning("%s did not converge in max_iter iterations; raise it", name)
        else:
            log.warning("%s: %s", name, warning.message)
    return float(model.score(_as_numpy(test_features), _as_numpy(test_labels)))


def logistic_regression(c: float = 1.0, max_iter: int = 1000, seed: int = 0) -> Pipeline:
    """Multinomial logistic regression (L2, inverse strength ``c``) on standardised features."""
    if c <= 0:
        raise ValueError(f"analysis.logreg_c must be > 0, got {c}")
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    )


def linear_svm(c: float = 1.0, max_iter: int = 2000, seed: int = 0) -> Pipeline:
    """One-vs-rest linear SVM (squared hinge, L2, inverse strength ``c``) on standardised
    features. The primal problem is solved when there are more images than dimensions (faster
    there), the dual otherwise."""
    if c <= 0:
        raise ValueError(f"analysis.svm_c must be > 0, got {c}")
    return make_pipeline(
        StandardScaler(), LinearSVC(C=c, dual="auto", max_iter=max_iter, random_state=seed)
    )


def logistic_regression_accuracy(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    c: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> float:
    return fit_and_score(
        logistic_regression(c, max_iter, seed),
        train_features,
        train_labels,
        test_features,
        test_labels,
    )


def linear_svm_accuracy(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    c: float = 1.0,
    max_iter: int = 2000,
    seed: int = 0,
) -> float:
    return fit_and_score(
        linear_svm(c, max_iter, seed), train_features, train_labels, test_features, test_labels
    )
