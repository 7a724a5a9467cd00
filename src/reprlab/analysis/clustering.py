"""k-means on frozen features, scored against the labels: does the representation group the
images by class without being told the classes?

- NMI (normalised mutual information) and ARI (adjusted Rand index), from scikit-learn;
- cluster accuracy: the accuracy of the best one-to-one assignment of clusters to classes
  (Hungarian algorithm), the usual score of deep-clustering papers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


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


def kmeans_clusters(
    features: torch.Tensor | np.ndarray,
    num_clusters: int,
    seed: int = 0,
    n_init: int = 4,
    normalize: bool = True,
) -> np.ndarray:
    """k-means cluster id of every row of ``features``. With ``normalize``, the rows are scaled to
    unit length first, so clusters follow cosine similarity as the RSM and kNN do."""
    features = torch.as_tensor(features).float()
    if num_clusters < 2 or num_clusters > len(features):
        raise ValueError(
            f"k-means needs 2 <= clusters <= images ({len(features)}), got {num_clusters}"
        )
    if normalize:
        features = F.normalize(features, dim=1)
    model = KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed)
    return model.fit_predict(features.numpy())


def clustering_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """NMI, ARI and cluster accuracy of ``clusters`` against ``labels``."""
    labels = np.asarray(labels)
    clusters = np.asarray(clusters)
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "acc": cluster_accuracy(labels, clusters),
    }
