"""Analyses of a frozen representation: RSMs, kNN, linear probes, k-means, PCA / t-SNE,
and their TensorBoard view. Each analysis is a plain function usable on any feature matrix;
:class:`RepresentationAnalysis` runs them all as a stage of ``reprlab-train`` / ``reprlab-eval``.
"""

from reprlab.analysis.clustering import (
    cluster_accuracy,
    clustering_scores,
    kmeans_clustering,
    kmeans_clusters,
)
from reprlab.analysis.factors import Factor, image_factors
from reprlab.analysis.knn import knn_accuracy, knn_predict
from reprlab.analysis.linear_models import (
    ProbeResult,
    linear_svm_probe,
    logistic_regression_probe,
)
from reprlab.analysis.projection import pca_2d, pca_torch, plot_embedding, tsne_2d
from reprlab.analysis.rsm import (
    cosine_rsm,
    load_rsm,
    plot_rsm_grid,
    plot_rsm_histogram,
    save_rsm,
    sort_rsm,
    within_between_similarity,
)
from reprlab.analysis.stage import (
    AnalysisResult,
    FeatureSet,
    RepresentationAnalysis,
    build_analysis,
    feature_set,
)

__all__ = [
    "AnalysisResult",
    "Factor",
    "FeatureSet",
    "ProbeResult",
    "RepresentationAnalysis",
    "build_analysis",
    "cluster_accuracy",
    "clustering_scores",
    "cosine_rsm",
    "feature_set",
    "image_factors",
    "kmeans_clustering",
    "kmeans_clusters",
    "knn_accuracy",
    "knn_predict",
    "linear_svm_probe",
    "load_rsm",
    "logistic_regression_probe",
    "pca_2d",
    "pca_torch",
    "plot_embedding",
    "plot_rsm_grid",
    "plot_rsm_histogram",
    "save_rsm",
    "sort_rsm",
    "tsne_2d",
    "within_between_similarity",
]
