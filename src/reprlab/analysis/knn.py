"""k-nearest-neighbour classification on frozen features, the weighted cosine kNN of the
instance-discrimination literature (Wu et al., 2018, used since by SimCLR-style papers).

Each query takes the ``k`` training features most cosine-similar to it; neighbour ``i`` votes for
its label with weight ``exp(s_i / temperature)``, and the label with the largest summed weight
wins. A small temperature makes the closest neighbours dominate the vote.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted label of every row of ``query_features`` (see the module doc for the vote)."""
    train_features = torch.as_tensor(train_features).float()
    query_features = torch.as_tensor(query_features).float()
    train_labels = torch.as_tensor(train_labels).long()
    if k < 1 or k > len(train_features):
        raise ValueError(
            f"analysis.knn_k must be in [1, {len(train_features)}] (the training features), got {k}"
        )
    if temperature <= 0:
        raise ValueError(f"analysis.knn_temperature must be > 0, got {temperature}")
    if len(train_labels) != len(train_features):
        raise ValueError(f"{len(train_features)} training features but {len(train_labels)} labels")
    if train_features.shape[1:] != query_features.shape[1:]:
        raise ValueError(
            f"training features are {tuple(train_features.shape[1:])}-d, queries "
            f"{tuple(query_features.shape[1:])}-d"
        )
    classes = num_classes if num_classes is not None else int(train_labels.max()) + 1
    bank = F.normalize(train_features, dim=1)
    predictions = []
    # Chunks bound the (queries x training images) similarity matrix held at once.
    for start in range(0, len(query_features), chunk_size):
        queries = F.normalize(query_features[start : start + chunk_size], dim=1)
        similarity, neighbours = (queries @ bank.T).topk(k, dim=1)
        # Shifted by each query's top similarity: the same vote, without overflow at small T.
        weights = ((similarity - similarity[:, :1]) / temperature).exp()
        votes = torch.zeros(len(queries), classes)
        votes.scatter_add_(1, train_labels[neighbours], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Fraction of ``test_features`` whose kNN vote over the training features is right."""
    predicted = knn_predict(
        train_features, train_labels, test_features, k, temperature, num_classes
    )
    return float((predicted == torch.as_tensor(test_labels).long()).float().mean())
