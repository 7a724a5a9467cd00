"""k-nearest-neighbour classification on frozen features, the weighted cosine kNN of the
instance-discrimination literature (Wu et al., 2018, used since by SimCLR-style papers).

Each query takes the ``k`` training features most cosine-similar to it; neighbour ``i`` votes for
its label with weight ``exp(s_i / temperature)``, and the label with the largest summed weight
wins. A small temperature makes the closest neighbours dominate the vote.

On a CPU with native bf16 arithmetic the neighbours are found in two passes, with the same
result as one float32 pass: a bf16 product over the whole bank screens ``screen x k``
candidates per query, their float32 similarities pick the ``k``, and a query whose candidates
cannot be shown to hold its exact ``k`` (by the bf16 product's error bound, see
:func:`bf16_error_bound`) is searched again in float32. The bf16 product runs about twice as
fast as float32 there (``scripts/bench_analysis.py`` times both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reprlab.precision import cpu_has_native_bf16

# Candidates per neighbour in the bf16 screen: enough that nearly every query's k are certain.
SCREEN = 4
# bf16's unit roundoff (8 significant bits).
_BF16_ROUNDOFF = 2.0**-8


def bf16_error_bound(dims: int) -> float:
    """A bound on |bf16 similarity - exact similarity| for two unit vectors of ``dims``.

    Rounding both inputs to bf16 moves each product term by at most ``(2u + u^2) |q_i b_i|``
    (``u = 2^-8``), so the dot product by ``(2u + u^2) ||q|| ||b||``; oneDNN accumulates in
    float32 (at most ``dims 2^-24`` more) and rounds the result to bf16 (``u`` more). The
    constants are rounded up.
    """
    u = _BF16_ROUNDOFF
    return 3.1 * u + 1.1 * dims * 2.0**-24


def use_bf16_screen(device: torch.device) -> bool:
    """The bf16 screen pays where bf16 products are native and float32 ones are the cost: CPUs
    with AVX-512 BF16 or AMX (a GPU's float32 product is fast enough)."""
    return device.type == "cpu" and cpu_has_native_bf16()


def nearest(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    bank_bf16: torch.Tensor | None = None,
    screen: int = SCREEN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, k) float32 similarities and bank rows of each unit-length query's ``k`` most similar
    unit-length ``bank`` rows, largest first: exactly float32's top ``k`` (ties aside), screened
    in bf16 when ``bank_bf16`` (the bank in bf16) is given."""
    candidates = min(len(bank), screen * k)
    if bank_bf16 is None or candidates == len(bank):
        return (queries @ bank.T).topk(k, dim=1)
    rough, index = (queries.bfloat16() @ bank_bf16.T).topk(candidates, dim=1)  # (Q, m)
    # The candidates' float32 similarities, a few queries at a time: (q, m, D) gathered rows.
    rows = max(1, 2**24 // (candidates * bank.shape[1]))
    exact = torch.cat(
        [
            torch.einsum("qd,qmd->qm", chunk, bank[chunk_index])
            for chunk, chunk_index in zip(queries.split(rows), index.split(rows), strict=True)
        ]
    )
    similarity, position = exact.topk(k, dim=1)
    neighbours = index.gather(1, position)
    # A bank row outside the candidates has a bf16 similarity of at most the last candidate's,
    # so an exact one of at most that plus the bound: below the k-th exact one, it cannot be
    # among the k.
    bound = bf16_error_bound(bank.shape[1])
    unsure = (rough[:, -1].float() + bound >= similarity[:, -1]).nonzero().flatten()
    if len(unsure):
        similarity[unsure], neighbours[unsure] = (queries[unsure] @ bank.T).topk(k, dim=1)
    return similarity, neighbours


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    screen: bool | None = None,
) -> torch.Tensor:
    """Predicted label of every row of ``query_features`` (see the module doc for the vote);
    ``screen``: the bf16 screen on or off (None: where it pays, :func:`use_bf16_screen`)."""
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
    if screen is None:
        screen = use_bf16_screen(bank.device)
    bank_bf16 = bank.bfloat16() if screen else None
    predictions = []
    # Chunks bound the (queries x training images) similarity matrix held at once.
    for start in range(0, len(query_features), chunk_size):
        queries = F.normalize(query_features[start : start + chunk_size], dim=1)
        similarity, neighbours = nearest(queries, bank, k, bank_bf16)
        # Shifted by each query's top similarity: the same vote, without overflow at small T.
        weights = ((similarity - similarity[:, :1]) / temperature).exp()
        votes = torch.zeros(len(queries), classes, device=queries.device)
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
