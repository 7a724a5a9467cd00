"""k-means on frozen features, scored against the labels: does the representation group the
images by class without being told the classes?

- NMI (normalised mutual information) and ARI (adjusted Rand index), from scikit-learn;
- cluster accuracy: the accuracy of the best one-to-one assignment of clusters to classes
  (Hungarian algorithm), the usual score of deep-clustering papers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from reprlab.analysis.projection import check_backend
from reprlab.analysis.torch_kmeans import kmeans


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy of the best one-to-one matching of cluster ids to labels.

    Each cluster is assigned to at most one label and each label to at most one cluster (so two
    clusters can never both be counted as the same class); images in unmatched clusters count as
    wrong. Any relabelling of perfectly separated clusters scores 1.0.
    """
    labels = np.asarray(labels).ravel()
    clusters = np.asarray(clusters).ravel()
    if len(labels) != len(clusters):
        raise ValueError(f"{len(labels)} labels but {len(clusters)} cluster ids")
    if len(labels) == 0:
        raise ValueError("cluster_accuracy needs at least one image")
    label_ids, label_index = np.unique(labels, return_inverse=True)
    cluster_ids, cluster_index = np.unique(clusters, return_inverse=True)
    counts = np.zeros((len(cluster_ids), len(label_ids)), dtype=np.int64)
    np.add.at(counts, (cluster_index, label_index), 1)
    rows, columns = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, columns].sum() / len(labels))


@dataclass
class Clustering:
    labels: np.ndarray  # (N,) cluster id of every row
    inertia: float  # sum of squared distances to the assigned centres
    iterations: int  # Lloyd iterations of the kept run
    converged: bool  # every run ended before max_iter


def kmeans_clustering(
    features: torch.Tensor | np.ndarray,
    num_clusters: int,
    seed: int = 0,
    n_init: int = 4,
    normalize: bool = True,
    backend: str = "torch",
    max_iter: int = 300,
) -> Clustering:
    """k-means of the rows of ``features``. With ``normalize``, the rows are scaled to unit
    length first, so clusters follow cosine similarity as the RSM and kNN do. ``backend`` torch
    (:mod:`torch_kmeans`, on the features' device) or sklearn (``KMeans``): the same algorithm
    (greedy k-means++ seeding, Lloyd, ``n_init`` restarts, the same tolerance)."""
    check_backend(backend)
    features = torch.as_tensor(features).float()
    if num_clusters < 2 or num_clusters > len(features):
        raise ValueError(
            f"k-means needs 2 <= clusters <= images ({len(features)}), got {num_clusters}"
        )
    if normalize:
        features = F.normalize(features, dim=1)
    if backend == "torch":
        fit = kmeans(features, num_clusters, n_init=n_init, max_iter=max_iter, seed=seed)
        return Clustering(fit.labels.cpu().numpy(), fit.inertia, fit.iterations, fit.converged)
    model = KMeans(n_clusters=num_clusters, n_init=n_init, max_iter=max_iter, random_state=seed)
    labels = model.fit_predict(features.cpu().numpy())
    return Clustering(labels, float(model.inertia_), int(model.n_iter_), model.n_iter_ < max_iter)


def kmeans_clusters(
    features: torch.Tensor | np.ndarray,
    num_clusters: int,
    seed: int = 0,
    n_init: int = 4,
    normalize: bool = True,
    backend: str = "torch",
) -> np.ndarray:
    """k-means cluster id of every row of ``features`` (see :func:`kmeans_clustering`)."""
    return kmeans_clustering(features, num_clusters, seed, n_init, normalize, backend).labels


def clustering_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """NMI, ARI and cluster accuracy of ``clusters`` against ``labels``."""
    labels = np.asarray(labels)
    clusters = np.asarray(clusters)
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "acc": cluster_accuracy(labels, clusters),
    }
