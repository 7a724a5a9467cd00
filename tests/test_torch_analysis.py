"""The torch backend of the analyses against scikit-learn run to convergence: the linear probes
(same objective, same accuracy), k-means (same NMI), PCA (same components), on features of the
default job's size class (a few thousand images, tens to hundreds of dimensions, 3 classes)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from reprlab.analysis import Factor, FeatureSet, RepresentationAnalysis
from reprlab.analysis.clustering import kmeans_clustering
from reprlab.analysis.linear_models import linear_svm_probe, logistic_regression_probe
from reprlab.analysis.projection import pca_torch
from reprlab.analysis.torch_kmeans import kmeans
from reprlab.analysis.torch_linear import (
    fit_linear_svm,
    fit_logistic_regression,
    standardisation,
    standardise,
    thin_product,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def overlapping_classes(n: int, dims: int, classes: int, seed: int = 0, offset: float = 3.0):
    """Gaussian classes that overlap (accuracy well below 100%, so the probes can disagree),
    correlated dimensions with a large common mean (so standardising matters)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims)) * 0.25
    mix = rng.normal(size=(dims, dims)) / np.sqrt(dims)
    labels = rng.integers(0, classes, n)
    features = (centres[labels] + rng.normal(size=(n, dims))) @ mix + offset
    return torch.from_numpy(features).float(), torch.from_numpy(labels)


def split(n_train: int, dims: int, classes: int, seed: int = 0):
    features, labels = overlapping_classes(n_train + 2000, dims, classes, seed)
    return features[:n_train], labels[:n_train], features[n_train:], labels[n_train:]


def logreg_objective(x: np.ndarray, y: np.ndarray, weight, bias, c: float) -> float:
    """sklearn's LogisticRegression objective over C n, in float64 (binary: one column)."""
    scores = x @ weight + bias
    if weight.shape[1] == 1:
        loss = np.logaddexp(0, scores[:, 0]) - y * scores[:, 0]
    else:
        loss = np.logaddexp.reduce(scores, axis=1) - scores[np.arange(len(y)), y]
    return float(loss.mean() + (weight**2).sum() / (2 * c * len(y)))


def svm_objective(x: np.ndarray, y: np.ndarray, weight, bias, c: float) -> float:
    """liblinear's L2-regularised squared-hinge objective (intercept penalised) over C n,
    summed over the one-vs-rest classifiers."""
    classes = weight.shape[1]
    targets = (y[:, None] == (np.arange(classes) if classes > 1 else np.array([1]))) * 2.0 - 1
    hinge = np.maximum(0, 1 - targets * (x @ weight + bias)) ** 2
    penalty = (weight**2).sum() + (bias**2).sum()
    return float(hinge.sum() / len(y) + penalty / (2 * c * len(y)))


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("kind", ["logreg", "svm"])
def test_torch_probes_reach_sklearn_optimum_and_accuracy(kind: str, classes: int) -> None:
    train_x, train_y, test_x, test_y = split(4000, 48, classes)
    c = 0.5
    scaler = StandardScaler().fit(train_x.numpy())
    x = scaler.transform(train_x.numpy()).astype(np.float64)
    if kind == "logreg":
        fit = fit_logistic_regression(train_x, train_y, c=c, tol=3e-5)
        reference = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, train_y.numpy())
        objective = logreg_objective
    else:
        fit = fit_linear_svm(train_x, train_y, c=c, tol=3e-5)
        reference = LinearSVC(C=c, tol=1e-10, max_iter=100_000, dual=False)
        reference.fit(x, train_y.numpy())
        objective = svm_objective
    assert fit.converged and fit.stop_reason == "tolerance" and 0 < fit.iterations < 1000
    assert fit.gradient_max <= 3e-5
    # The same standardisation as StandardScaler.
    torch.testing.assert_close(
        fit.mean.double(), torch.from_numpy(scaler.mean_), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        fit.scale.double(), torch.from_numpy(scaler.scale_), rtol=1e-4, atol=0
    )
    # The same problem: torch's solution is as low as scikit-learn's under scikit-learn's
    # objective (a different penalty or intercept handling would leave it higher).
    y = train_y.numpy()
    ours = objective(x, y, fit.weight.double().numpy(), fit.bias.double().numpy(), c)
    theirs = objective(x, y, reference.coef_.T, reference.intercept_, c)
    assert ours <= theirs + 2e-6 * abs(theirs)
    assert ours >= theirs - 1e-6 * abs(theirs)  # theirs is the tighter optimum
    accuracy = fit.accuracy(test_x, test_y)
    reference_accuracy = reference.score(scaler.transform(test_x.numpy()), test_y.numpy())
    assert abs(accuracy - reference_accuracy) <= 0.005
    assert accuracy > 1 / classes + 0.15  # far above chance, but not separable
    assert accuracy < 0.99


def test_probe_functions_agree_across_backends() -> None:
    data = split(3000, 32, 3, seed=1)
    for probe in (logistic_regression_probe, linear_svm_probe):
        torch_result = probe(*data, backend="torch")
        sklearn_result = probe(*data, backend="sklearn")
        assert abs(torch_result.accuracy - sklearn_result.accuracy) <= 0.005
        assert torch_result.converged and sklearn_result.converged
        assert torch_result.details()["tolerance"] == 1e-4


def test_probes_on_features_standardised_once_equal_the_probes_on_raw_features() -> None:
    train_x, train_y, test_x, test_y = split(2000, 40, 3, seed=2)
    shared = standardise(train_x)
    assert shared.x.shape == train_x.shape and shared.directions is not None
    assert torch.allclose(shared.x.mean(0), torch.zeros(40), atol=1e-4)
    for fit in (fit_logistic_regression, fit_linear_svm):
        raw, reused = fit(train_x, train_y), fit(shared, train_y)
        assert torch.equal(raw.weight, reused.weight) and raw.iterations == reused.iterations
        assert raw.accuracy(test_x, test_y) == reused.accuracy(test_x, test_y)
    with pytest.raises(TypeError, match="sklearn backend standardises the features itself"):
        logistic_regression_probe(shared, train_y, test_x, test_y, backend="sklearn")


def test_a_solver_that_reaches_its_cap_says_so(caplog) -> None:
    train_x, train_y, *_ = split(2000, 32, 3)
    with caplog.at_level(logging.WARNING):
        fit = fit_logistic_regression(train_x, train_y, max_iter=3, tol=1e-8)
    assert not fit.converged and fit.stop_reason == "max_iter" and fit.iterations == 3
    assert fit.gradient_max > 1e-8
    assert "logreg did not converge" in caplog.text and "logreg_max_iter" in caplog.text


def test_probes_reject_bad_input() -> None:
    features = torch.randn(10, 3)
    with pytest.raises(ValueError, match="at least 2 classes in the training labels, got 1"):
        fit_logistic_regression(features, torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="analysis.svm_c must be > 0, got 0"):
        fit_linear_svm(features, torch.arange(10) % 2, c=0)
    with pytest.raises(ValueError, match="10 training features but 9 labels"):
        fit_linear_svm(features, torch.arange(9) % 2)


def test_standardisation_keeps_constant_dimensions_at_one() -> None:
    features = torch.randn(500, 4) * 3 + 1000
    features[:, 2] = 7.0
    mean, scale = standardisation(features)
    scaler = StandardScaler().fit(features.double().numpy())
    np.testing.assert_allclose(mean.numpy(), scaler.mean_, rtol=1e-6)
    np.testing.assert_allclose(scale.numpy(), scaler.scale_, rtol=1e-4)
    assert scale[2] == 1.0


def test_kmeans_matches_sklearn_nmi() -> None:
    features, labels = overlapping_classes(3000, 16, 5, seed=2, offset=0.0)
    features = (
        features
        + torch.from_numpy(np.random.default_rng(3).normal(size=(5, 16)))[labels].float() * 0.8
    )
    ours = kmeans_clustering(features, 5, seed=0, n_init=4, backend="torch")
    theirs = kmeans_clustering(features, 5, seed=0, n_init=4, backend="sklearn")
    nmi = normalized_mutual_info_score(labels.numpy(), ours.labels)
    reference = normalized_mutual_info_score(labels.numpy(), theirs.labels)
    assert abs(nmi - reference) <= 0.02 and 0.3 < nmi < 0.99
    assert ours.converged and ours.iterations < 300
    assert ours.inertia <= theirs.inertia * 1.01
    # The inertia reported is that of the labels returned.
    unit = torch.nn.functional.normalize(features, dim=1).numpy()
    centres = np.stack([unit[ours.labels == k].mean(0) for k in range(5)])
    assert ours.inertia == pytest.approx(((unit - centres[ours.labels]) ** 2).sum(), rel=1e-3)


def test_kmeans_finds_separated_clusters_and_seeds_on_data_points() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 10
    labels = np.repeat(np.arange(4), 50)
    features = torch.from_numpy(centres[labels] + rng.normal(size=(200, 8)) * 0.1).float()
    fit = kmeans(features, 4, n_init=1, seed=0)
    assert normalized_mutual_info_score(labels, fit.labels.numpy()) == pytest.approx(1.0)
    sk = KMeans(4, n_init=1, random_state=0).fit(features.numpy())
    assert fit.inertia == pytest.approx(sk.inertia_, rel=1e-4)
    with pytest.raises(ValueError, match="2 <= clusters <= images"):
        kmeans(features, 1)


@pytest.mark.parametrize("dims", [6, 300, 2500])  # exact eigensolves, and the randomised SVD
def test_pca_matches_sklearn(dims: int) -> None:
    rng = np.random.default_rng(4)
    # A decaying spectrum, as features have: the leading variances stand apart.
    basis = np.linalg.qr(rng.normal(size=(dims, min(dims, 200))))[0]
    spectrum = 5.0 * 0.9 ** np.arange(basis.shape[1])
    latent = rng.normal(size=(1500, basis.shape[1])) * spectrum
    features = torch.from_numpy(latent @ basis.T + 2.0).float()
    points, explained = pca_torch(features, 2)
    reference = PCA(n_components=2, svd_solver="full").fit(features.double().numpy())
    np.testing.assert_allclose(explained.numpy(), reference.explained_variance_ratio_, rtol=1e-3)
    expected = reference.transform(features.double().numpy())
    # scikit-learn's own sign rule (svd_flip) is the one we follow: same signs.
    np.testing.assert_allclose(points.numpy(), expected, rtol=0, atol=2e-3 * np.abs(expected).max())


def feature_set(n_train: int = 1500, seed: int = 0) -> FeatureSet:
    train_x, train_y, test_x, test_y = split(n_train, 24, 3, seed)
    return FeatureSet(
        train_features=train_x,
        train_labels=train_y,
        test_features=test_x,
        test_labels=test_y,
        test_factors={"label": Factor("label", test_y.numpy())},
        num_classes=3,
    )


def test_stage_backends_agree_and_json_reports_the_solver(tmp_path) -> None:
    data = feature_set()
    settings = dict(rsm=False, knn=False, tsne=False, log_to_logger=False)
    results = {}
    for backend in ("torch", "sklearn"):
        analysis = RepresentationAnalysis(backend=backend, **settings)
        results[backend] = analysis.analyse(data, tmp_path / backend).metrics
    for key in ("logreg_acc", "svm_acc"):
        assert abs(results["torch"][f"analysis/{key}"] - results["sklearn"][f"analysis/{key}"]) <= (
            0.005
        )
    assert (
        abs(results["torch"]["analysis/kmeans_nmi"] - results["sklearn"]["analysis/kmeans_nmi"])
        <= 0.02
    )
    assert results["torch"]["analysis/pca_explained_variance"] == pytest.approx(
        results["sklearn"]["analysis/pca_explained_variance"], rel=1e-3
    )
    logreg = json.loads((tmp_path / "torch" / "logreg.json").read_text())
    assert logreg["converged"] is True and logreg["backend"] == "torch"
    assert logreg["tolerance"] == 1e-4 and 0 < logreg["iterations"] <= logreg["max_iter"]
    assert "intercept not penalised" in logreg["objective"]
    svm = json.loads((tmp_path / "sklearn" / "svm.json").read_text())
    assert svm["backend"] == "sklearn" and "converged" in svm and svm["iterations"] > 0
    kmeans_json = json.loads((tmp_path / "torch" / "kmeans.json").read_text())
    assert kmeans_json["converged"] is True and kmeans_json["iterations"] >= 1


def test_stage_reports_an_unconverged_probe_in_its_json(tmp_path) -> None:
    analysis = RepresentationAnalysis(
        rsm=False,
        knn=False,
        svm=False,
        kmeans=False,
        pca=False,
        tsne=False,
        log_to_logger=False,
        logreg_max_iter=2,
        logreg_tol=1e-9,
    )
    analysis.analyse(feature_set(), tmp_path)
    logreg = json.loads((tmp_path / "logreg.json").read_text())
    assert logreg["converged"] is False and logreg["stop_reason"] == "max_iter"
    assert logreg["iterations"] == 2


@CUDA
def test_torch_backend_runs_on_cuda_and_agrees_with_the_cpu() -> None:
    train_x, train_y, test_x, test_y = split(3000, 32, 3)
    cuda = [t.cuda() for t in (train_x, train_y, test_x, test_y)]
    for fit_fn in (fit_logistic_regression, fit_linear_svm):
        gpu, cpu = fit_fn(cuda[0], cuda[1]), fit_fn(train_x, train_y)
        assert gpu.weight.is_cuda and gpu.converged
        assert abs(gpu.accuracy(cuda[2], cuda[3]) - cpu.accuracy(test_x, test_y)) <= 0.005
    fit = kmeans(cuda[2], 3, seed=0)
    assert fit.labels.is_cuda
    points, explained = pca_torch(cuda[2], 2)
    torch.testing.assert_close(explained.cpu(), pca_torch(test_x, 2)[1], rtol=1e-3, atol=1e-5)
    analysis = RepresentationAnalysis(device="cuda", rsm=False, tsne=False, log_to_logger=False)
    assert analysis.device.type == "cuda"


def test_thin_product_matches_autograds_product_and_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=generator)
    weight = torch.randn(40, 3, generator=generator, requires_grad=True)
    upstream = torch.randn(300, 3, generator=generator)
    (reference,) = torch.autograd.grad((x @ weight * upstream).sum(), weight)
    product = thin_product(x, weight)
    (gradient,) = torch.autograd.grad((product * upstream).sum(), weight)
    torch.testing.assert_close(product, x @ weight.detach())
    torch.testing.assert_close(gradient, reference)
