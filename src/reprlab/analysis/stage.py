"""The analysis stage of a run: after the probe, study the frozen encoder's features.

``reprlab-train`` and ``reprlab-eval`` build it from the ``analysis`` config group
(:func:`build_analysis`, which checks the settings against the data before any training) and run
it on the features the probe cached: the labelled training images as the reference set (kNN
memory bank, scikit-learn probes' training set), the test images as the analysed set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from matplotlib.figure import Figure
from omegaconf import DictConfig
from threadpoolctl import threadpool_limits

from reprlab.analysis.clustering import clustering_scores, kmeans_clustering
from reprlab.analysis.experiment_log import Embedding, log_analysis, thumbnails
from reprlab.analysis.factors import (
    LABEL,
    Factor,
    available_factors,
    check_factor_names,
    image_factors,
)
from reprlab.analysis.knn import knn_accuracy
from reprlab.analysis.linear_models import linear_svm_probe, logistic_regression_probe
from reprlab.analysis.plotting import figure_png, write_png
from reprlab.analysis.projection import check_backend, pca_2d, plot_embedding, tsne_2d
from reprlab.analysis.rsm import (
    cosine_rsm,
    plot_rsm_grid,
    plot_rsm_histogram,
    save_rsm,
    within_between_similarity,
)
from reprlab.analysis.torch_linear import StandardisedFeatures, standardise
from reprlab.features import SplitFeatures
from reprlab.io import write_json
from reprlab.metric_keys import ANALYSIS
from reprlab.run_record import StageTimer

log = logging.getLogger(__name__)


@dataclass
class FeatureSet:
    """What the analyses look at: reference (training) and analysed (test) features, labels,
    and the test images' label and latents."""

    train_features: torch.Tensor
    train_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    test_factors: dict[str, Factor]
    num_classes: int
    test_images: torch.Tensor | None = None  # for the projector's thumbnails


@dataclass
class AnalysisResult:
    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)  # PNG bytes by name


def subsample(total: int, size: int | None, seed: int) -> np.ndarray:
    """``size`` distinct positions out of ``total``, drawn with ``seed`` (all when None or more)."""
    if size is None or size >= total:
        return np.arange(total)
    return np.random.default_rng(seed).choice(total, size=size, replace=False)


def _check_count(name: str, value: int | None, minimum: int, allow_null: bool = True) -> None:
    if value is None and allow_null:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        null = " or null (all)" if allow_null else ""
        raise ValueError(f"analysis.{name} must be an integer >= {minimum}{null}, got {value!r}")


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"analysis.{name} must be a number > 0, got {value!r}")


class RepresentationAnalysis:
    """Every analysis of a frozen representation, each switched on or off by its flag.

    - ``rsm``: cosine representational similarity matrix of ``rsm_images`` test images, sorted
      by each factor of ``sort_by`` (null: every latent, or the label when the data has none);
    - ``knn``: weighted kNN accuracy (``knn_k`` neighbours, vote weights exp(cos / T));
    - ``logreg``, ``svm``: linear probes on standardised features, solved to ``*_tol`` within
      ``*_max_iter`` iterations (the JSON says whether they converged);
    - ``kmeans``: k-means with k = classes, scored by NMI, ARI and cluster accuracy;
    - ``pca``, ``tsne``: 2-D scatter plots coloured by the label and each latent (t-SNE on
      ``tsne_images`` test images);
    - ``log_to_logger``: all of it in the run's logger (TensorBoard: images, scalars, hparams,
      and ``projector_images`` test features in the embedding projector; 0 leaves it out).

    ``backend`` torch solves the probes, k-means and PCA in torch on ``device`` (null: CUDA
    when there is one, else the CPU); sklearn runs scikit-learn's (the reference; same
    objectives). ``threads`` caps the CPU threads of torch, scikit-learn and BLAS (null: no cap,
    every core; 1 on a CPU shared with other jobs).
    """

    def __init__(
        self,
        seed: int = 0,
        rsm: bool = True,
        rsm_images: int | None = 1000,
        sort_by: Sequence[str] | None = None,
        knn: bool = True,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        logreg: bool = True,
        logreg_c: float = 1.0,
        logreg_max_iter: int = 1000,
        logreg_tol: float = 1e-4,
        svm: bool = True,
        svm_c: float = 1.0,
        svm_max_iter: int = 1000,
        svm_tol: float = 1e-4,
        kmeans: bool = True,
        kmeans_n_init: int = 4,
        kmeans_max_iter: int = 300,
        pca: bool = True,
        tsne: bool = True,
        tsne_images: int | None = 2000,
        tsne_perplexity: float = 30.0,
        tsne_iterations: int = 500,
        log_to_logger: bool = True,
        projector_images: int | None = 500,
        threads: int | None = None,
        backend: str = "torch",
        device: str | None = None,
    ) -> None:
        _check_count("rsm_images", rsm_images, 2)
        _check_count("knn_k", knn_k, 1, allow_null=False)
        _check_count("logreg_max_iter", logreg_max_iter, 1, allow_null=False)
        _check_count("svm_max_iter", svm_max_iter, 1, allow_null=False)
        _check_count("kmeans_n_init", kmeans_n_init, 1, allow_null=False)
        _check_count("kmeans_max_iter", kmeans_max_iter, 1, allow_null=False)
        _check_count("tsne_images", tsne_images, 5)
        _check_count("tsne_iterations", tsne_iterations, 250, allow_null=False)
        _check_count("projector_images", projector_images, 0)
        _check_count("threads", threads, 1)
        for name, value in [
            ("knn_temperature", knn_temperature),
            ("logreg_c", logreg_c),
            ("svm_c", svm_c),
            ("logreg_tol", logreg_tol),
            ("svm_tol", svm_tol),
            ("tsne_perplexity", tsne_perplexity),
        ]:
            _check_positive(name, value)
        check_backend(backend)
        if isinstance(sort_by, str):
            sort_by = [sort_by]
        self.seed = int(seed)
        self.rsm, self.rsm_images = bool(rsm), rsm_images
        self.sort_by = list(sort_by) if sort_by is not None else None
        self.knn, self.knn_k, self.knn_temperature = bool(knn), knn_k, float(knn_temperature)
        self.logreg, self.logreg_c, self.logreg_max_iter = bool(logreg), logreg_c, logreg_max_iter
        self.logreg_tol = float(logreg_tol)
        self.svm, self.svm_c, self.svm_max_iter = bool(svm), svm_c, svm_max_iter
        self.svm_tol = float(svm_tol)
        self.kmeans, self.kmeans_n_init = bool(kmeans), kmeans_n_init
        self.kmeans_max_iter = kmeans_max_iter
        self.backend = backend
        self.device = solver_device(device)
        self.pca, self.tsne = bool(pca), bool(tsne)
        self.tsne_images, self.tsne_perplexity = tsne_images, float(tsne_perplexity)
        self.tsne_iterations = tsne_iterations
        self.log_to_logger, self.projector_images = bool(log_to_logger), projector_images
        self.threads = threads
        self.sort_names: list[str] | None = None
        self._standardised: StandardisedFeatures | None = None

    # -- checks ---------------------------------------------------------------------------------
    def check(self, datamodule: L.LightningDataModule, num_train: int) -> None:
        """Settings that depend on the data: the sort factors, and ``knn_k`` against the
        ``num_train`` (labelled) training images."""
        self.sort_names = check_factor_names(
            self.sort_by, available_factors(datamodule), "analysis.sort_by"
        )
        if self.knn and self.knn_k > num_train:
            raise ValueError(
                f"analysis.knn_k={self.knn_k} is more than the {num_train} labelled training "
                "images; lower analysis.knn_k"
            )
        if self.kmeans and datamodule.num_classes < 2:
            raise ValueError("analysis.kmeans needs at least 2 classes; set analysis.kmeans=false")

    # -- the analyses ---------------------------------------------------------------------------
    def analyse(
        self, data: FeatureSet, out_dir: Path, timer: StageTimer | None = None
    ) -> AnalysisResult:
        """Run every enabled analysis on ``data``; PNG and JSON files go to ``out_dir``."""
        timer = timer or StageTimer()
        if self.sort_names is None:
            self.sort_names = check_factor_names(
                self.sort_by, list(data.test_factors), "analysis.sort_by"
            )
        result = AnalysisResult()
        steps = [
            ("rsm", self.rsm, self._rsm),
            ("knn", self.knn, self._knn),
            ("logreg", self.logreg, self._logreg),
            ("svm", self.svm, self._svm),
            ("kmeans", self.kmeans, self._kmeans),
            ("pca", self.pca, self._pca),
            ("tsne", self.tsne, self._tsne),
        ]
        # OpenMP's busy-waiting threads (t-SNE, k-means, BLAS) make a shared or busy CPU many
        # times slower, so the thread count is a setting.
        cpu_seconds: dict[str, float] = {}
        # The probes' standardised features live for this call only (_probe_splits).
        self._standardised = None
        with threadpool_limits(limits=self.threads), torch_thread_limit(self.threads):
            for name, enabled, step in steps:
                if not enabled:
                    continue
                cpu_start = time.process_time()
                with timer(f"analysis/{name}"):
                    details = step(data, result, out_dir)
                # CPU time beside wall time: on a shared machine the two differ many times over.
                cpu_seconds[name] = round(time.process_time() - cpu_start, 3)
                details["seconds"] = timer.seconds[f"analysis/{name}"]
                details["cpu_seconds"] = cpu_seconds[name]
                write_json(out_dir / f"{name}.json", details)
        self._standardised = None  # a copy of the training features: not kept past the call
        for name, png in result.figures.items():
            write_png(out_dir / f"{name}.png", png)
        write_json(
            out_dir / "summary.json",
            {
                "metrics": result.metrics,
                "seconds": {
                    key.removeprefix("analysis/"): value
                    for key, value in timer.seconds.items()
                    if key.startswith("analysis/")
                },
                "cpu_seconds": cpu_seconds,
                "num_train": len(data.train_features),
                "num_test": len(data.test_features),
            },
        )
        return result

    def _rsm(self, data: FeatureSet, result: AnalysisResult, out_dir: Path) -> dict[str, Any]:
        positions = subsample(len(data.test_features), self.rsm_images, self.seed)
        rsm = cosine_rsm(data.test_features[positions])
        factors = {name: f.subset(positions) for name, f in data.test_factors.items()}
        save_rsm(
            out_dir / "rsm.npz",
            rsm,
            {name: factor.values for name, factor in factors.items()},
            sort_by=self.sort_names,
            value_names={
                name: factor.value_names
                for name, factor in factors.items()
                if factor.value_names is not None
            },
        )
        entries = [
            (f"sorted by {name}", rsm, factors[name].values, factors[name].value_names)
            for name in self.sort_names
        ]
        result.figures["rsm"] = _png(plot_rsm_grid(entries))
        result.figures["rsm_histogram"] = _png(plot_rsm_histogram([("test features", rsm)]))
        similarity = {}
        for name in self.sort_names:
            within, between = within_between_similarity(rsm, factors[name].values)
            similarity[name] = {"within": within, "between": between, "contrast": within - between}
            result.metrics[f"analysis/rsm_contrast_{name}"] = within - between
        return {
            "images": len(positions),
            "sort_by": self.sort_names,
            "mean_similarity": similarity,
            "note": "contrast = mean similarity of pairs sharing the value minus pairs that do not",
        }

    def _knn(self, data: FeatureSet, result: AnalysisResult, _: Path) -> dict[str, Any]:
        accuracy = knn_accuracy(
            data.train_features,
            data.train_labels,
            data.test_features,
            data.test_labels,
            self.knn_k,
            self.knn_temperature,
            data.num_classes,
        )
        result.metrics["analysis/knn_acc"] = accuracy
        return {
            "accuracy": accuracy,
            "k": self.knn_k,
            "temperature": self.knn_temperature,
            "similarity": "cosine",
            "vote_weight": "exp(similarity / temperature)",
            "memory_bank": len(data.train_features),
        }

    def _on_device(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` where the torch solvers run (scikit-learn takes them as they are)."""
        return features.to(self.device) if self.backend == "torch" else features

    def _probe_splits(self, data: FeatureSet) -> tuple[Any, ...]:
        """The probes' four splits; for torch the training features standardised once, with
        the solvers' preconditioner, and shared by both probes."""
        train_features, *rest = _splits(data)
        if self.backend != "torch":
            return (train_features, *rest)
        if self._standardised is None:  # the first probe moves and standardises them
            self._standardised = standardise(self._on_device(train_features))
        return (self._standardised, *(self._on_device(split) for split in rest))

    def _logreg(self, data: FeatureSet, result: AnalysisResult, _: Path) -> dict[str, Any]:
        probe = logistic_regression_probe(
            *self._probe_splits(data),
            c=self.logreg_c,
            max_iter=self.logreg_max_iter,
            tol=self.logreg_tol,
            seed=self.seed,
            backend=self.backend,
        )
        result.metrics["analysis/logreg_acc"] = probe.accuracy
        return {**probe.details(), "C": self.logreg_c, "objective": LOGREG_OBJECTIVE}

    def _svm(self, data: FeatureSet, result: AnalysisResult, _: Path) -> dict[str, Any]:
        probe = linear_svm_probe(
            *self._probe_splits(data),
            c=self.svm_c,
            max_iter=self.svm_max_iter,
            tol=self.svm_tol,
            seed=self.seed,
            backend=self.backend,
        )
        result.metrics["analysis/svm_acc"] = probe.accuracy
        return {**probe.details(), "C": self.svm_c, "objective": SVM_OBJECTIVE}

    def _kmeans(self, data: FeatureSet, result: AnalysisResult, _: Path) -> dict[str, Any]:
        clustering = kmeans_clustering(
            self._on_device(data.test_features),
            data.num_classes,
            seed=self.seed,
            n_init=self.kmeans_n_init,
            backend=self.backend,
            max_iter=self.kmeans_max_iter,
        )
        scores = clustering_scores(data.test_labels.numpy(), clustering.labels)
        for name, value in scores.items():
            result.metrics[f"analysis/kmeans_{name}"] = value
        return {
            **scores,
            "clusters": data.num_classes,
            "n_init": self.kmeans_n_init,
            "backend": self.backend,
            "iterations": clustering.iterations,
            "max_iter": self.kmeans_max_iter,
            "converged": clustering.converged,
            "inertia": clustering.inertia,
        }

    def _pca(self, data: FeatureSet, result: AnalysisResult, _: Path) -> dict[str, Any]:
        points, explained = pca_2d(
            self._on_device(data.test_features), backend=self.backend, seed=self.seed
        )
        title = f"PCA of the test features ({explained.sum():.1%} of the variance)"
        result.figures["pca"] = _png(plot_embedding(points, _colourings(data.test_factors), title))
        result.metrics["analysis/pca_explained_variance"] = float(explained.sum())
        return {"explained_variance_ratio": explained.tolist(), "images": len(points)}

    def _tsne(self, data: FeatureSet, result: AnalysisResult, _: Path) -> dict[str, Any]:
        positions = subsample(len(data.test_features), self.tsne_images, self.seed)
        points = tsne_2d(
            self._on_device(data.test_features[positions]),
            self.seed,
            self.tsne_perplexity,
            self.tsne_iterations,
            backend=self.backend,
        )
        factors = {name: f.subset(positions) for name, f in data.test_factors.items()}
        title = f"t-SNE of {len(positions)} test features"
        result.figures["tsne"] = _png(plot_embedding(points, _colourings(factors), title))
        return {
            "images": len(positions),
            "perplexity": self.tsne_perplexity,
            "iterations": self.tsne_iterations,
        }

    # -- inside a run ---------------------------------------------------------------------------
    def run(
        self,
        features: SplitFeatures,
        train_positions: torch.Tensor,
        out_dir: Path,
        timer: StageTimer,
        logger: Logger | None = None,
        run_metrics: Mapping[str, Any] | None = None,
        hparams: Mapping[str, Any] | None = None,
    ) -> dict[str, float]:
        """Analyse the run's frozen features; returns the numbers for metrics.json
        (``analysis/...``). ``train_positions`` pick, within the labelled split, the probe's
        training images: the reference set. ``logger`` (when given) receives the figures, the
        numbers beside ``run_metrics`` and ``hparams``, and the embedding projector's points."""
        with timer(f"{ANALYSIS}features"):
            data = feature_set(features, train_positions)
        result = self.analyse(data, out_dir, timer)
        if self.log_to_logger and logger is not None:
            with timer(f"{ANALYSIS}logger"):
                final = {
                    key: float(value)
                    for key, value in (run_metrics or {}).items()
                    if "/" in key and isinstance(value, int | float) and not isinstance(value, bool)
                }
                log_analysis(
                    logger,
                    {f"{ANALYSIS}{name}": png for name, png in result.figures.items()},
                    {**final, **result.metrics},
                    dict(hparams or {}),
                    self._embedding(data),
                )
        print(summary_line(result.metrics, out_dir), flush=True)
        return result.metrics

    def _embedding(self, data: FeatureSet) -> Embedding | None:
        if not self.projector_images:
            return None
        positions = subsample(len(data.test_features), self.projector_images, self.seed)
        metadata = {
            name: _value_labels(factor.subset(positions))
            for name, factor in data.test_factors.items()
        }
        images = None if data.test_images is None else thumbnails(data.test_images[positions])
        return Embedding(data.test_features[positions], metadata, images)


LOGREG_OBJECTIVE = "mean cross-entropy + ||W||^2 / (2 C n), intercept not penalised"
SVM_OBJECTIVE = (
    "per class (one-vs-rest): mean squared hinge + (||w||^2 + b^2) / (2 C n), intercept penalised"
)


def solver_device(device: str | None) -> torch.device:
    """The device of the torch solvers: ``device``, or CUDA when there is one (null)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"analysis.device must be null, cpu, cuda or cuda:N, got {device!r}"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"analysis.device={device} but CUDA is not available; use null or cpu")
    return resolved


@contextmanager
def torch_thread_limit(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads capped at ``threads`` inside the block (threadpoolctl's cap
    does not reach torch's own OpenMP pool)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(min(threads, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _png(figure: Figure) -> bytes:
    return figure_png(figure)


def _splits(data: FeatureSet) -> tuple[torch.Tensor, ...]:
    return data.train_features, data.train_labels, data.test_features, data.test_labels


def _colourings(factors: Mapping[str, Factor]) -> list[Factor]:
    """The label first, then every latent that is not the label itself again."""
    label = factors[LABEL]
    return [label] + [
        factor
        for name, factor in factors.items()
        if name != LABEL and not np.array_equal(factor.values, label.values)
    ]


def _value_labels(factor: Factor) -> list[str]:
    names = factor.value_names
    if names is not None:
        return [str(names[int(v)]) for v in factor.values]
    return [f"{v:.4g}" if isinstance(v, float | np.floating) else str(v) for v in factor.values]


def feature_set(features: SplitFeatures, train_positions: torch.Tensor) -> FeatureSet:
    """The labelled training features at ``train_positions`` and the test features, their
    labels, and the test images' factors."""
    datamodule = features.datamodule
    train_index = datamodule.split_index("labelled")[train_positions]
    test_index = datamodule.split_index("test")
    return FeatureSet(
        train_features=features("labelled")[train_positions],
        train_labels=datamodule.targets[train_index],
        test_features=features("test"),
        test_labels=datamodule.targets[test_index],
        test_factors=image_factors(datamodule, test_index),
        num_classes=datamodule.num_classes,
        test_images=datamodule.images[test_index],
    )


def summary_line(metrics: Mapping[str, float], folder: Path) -> str:
    names = {
        "analysis/knn_acc": "kNN",
        "analysis/logreg_acc": "logreg",
        "analysis/svm_acc": "SVM",
        "analysis/kmeans_acc": "k-means acc",
        "analysis/kmeans_nmi": "NMI",
        "analysis/kmeans_ari": "ARI",
    }
    parts = [f"{label} {metrics[key]:.4f}" for key, label in names.items() if key in metrics]
    numbers = ", ".join(parts) if parts else "figures only"
    return f"reprlab: analysis {numbers}\n         analysis folder: {folder}"


def build_analysis(
    analysis_cfg: DictConfig, datamodule: L.LightningDataModule, num_train: int
) -> RepresentationAnalysis | None:
    """The configured analysis, checked against the data and the ``num_train`` images of the
    probe's training set; None when ``analysis=none``."""
    if analysis_cfg.get("_target_") is None:  # analysis=none has no target
        return None
    analysis = instantiate(analysis_cfg)
    analysis.check(datamodule, num_train=num_train)
    return analysis
