"""The representation analyses: RSMs, kNN, scikit-learn probes, k-means scores, projections, and
the analysis settings' early checks. End-to-end runs are in test_cli.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_train
from hydra.utils import instantiate
from omegaconf import OmegaConf
from threadpoolctl import threadpool_limits

from reprlab.analysis import (
    Factor,
    FeatureSet,
    RepresentationAnalysis,
    build_analysis,
    cluster_accuracy,
    clustering_scores,
    cosine_rsm,
    kmeans_clusters,
    knn_accuracy,
    knn_predict,
    linear_svm_probe,
    load_rsm,
    logistic_regression_probe,
    pca_2d,
    plot_embedding,
    plot_rsm_grid,
    save_rsm,
    sort_rsm,
    tsne_2d,
    within_between_similarity,
)
from reprlab.eval import run_config
from reprlab.features import labelled_positions


def blobs(per_class: int, classes: int = 3, dims: int = 16, spread: float = 0.3, seed: int = 0):
    """Gaussian clusters around random centres far apart: an easy, separable problem."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims)) * 3
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + spread * rng.normal(size=(len(labels), dims))
    order = rng.permutation(len(labels))
    return torch.from_numpy(features[order]).float(), torch.from_numpy(labels[order])


# -- RSM ---------------------------------------------------------------------------------------
def test_rsm_of_identical_features_is_all_ones() -> None:
    features = torch.tensor([[1.0, 2.0, -3.0]]).repeat(7, 1)
    np.testing.assert_allclose(cosine_rsm(features), np.ones((7, 7)), atol=1e-6)


def test_rsm_values_are_cosine_similarities() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    rsm = cosine_rsm(features)
    np.testing.assert_allclose(rsm[:4, :4].diagonal(), 1.0, atol=1e-6)
    assert rsm[0, 1] == pytest.approx(0.0, abs=1e-6) and rsm[0, 2] == pytest.approx(-1.0)
    assert rsm[0, 3] == pytest.approx(1 / np.sqrt(2)) and rsm[3, 0] == rsm[0, 3]
    assert np.isnan(rsm[4]).all() and np.isnan(rsm[:, 4]).all()  # a zero vector has no angle


def test_rsm_is_sorted_by_the_named_latent(tmp_path) -> None:
    rng = np.random.default_rng(1)
    features = torch.randn(40, 8)
    latents = {"shape": rng.integers(0, 3, 40), "scale": rng.uniform(0.5, 1.0, 40)}
    rsm = cosine_rsm(features)
    save_rsm(
        tmp_path / "rsm.npz",
        rsm,
        latents,
        sort_by=["shape", "scale"],
        value_names={"shape": ["square", "ellipse", "heart"]},
    )
    for name in ("shape", "scale"):
        loaded, values, names = load_rsm(tmp_path / "rsm.npz", name)
        order = np.argsort(latents[name], kind="stable")
        np.testing.assert_array_equal(values, latents[name][order])
        assert np.all(np.diff(values) >= 0)
        # float16 storage: equal to the re-ordered matrix to ~1e-3
        np.testing.assert_allclose(loaded, rsm[np.ix_(order, order)], atol=2e-3)
        assert names == (["square", "ellipse", "heart"] if name == "shape" else None)
    stored = np.load(tmp_path / "rsm.npz")
    assert stored["rsm"].dtype == np.float16
    assert np.all(np.diff(stored["values_shape"]) >= 0)  # stored sorted by the first sort_by
    with pytest.raises(ValueError, match="no values for sort_by='colour'.*shape"):
        load_rsm(tmp_path / "rsm.npz", "colour")


def test_sorted_rsm_has_blocks_and_within_class_similarity_is_higher() -> None:
    features, labels = blobs(20)
    rsm, values = sort_rsm(cosine_rsm(features), labels.numpy())
    np.testing.assert_array_equal(values, np.repeat([0, 1, 2], 20))
    assert rsm[:20, :20].mean() > 0.9 and rsm[:20, 20:].mean() < 0.5  # a block per class
    within, between = within_between_similarity(rsm, values)
    assert within > 0.9 and within - between > 0.5


def test_rsm_grid_puts_several_runs_side_by_side() -> None:
    features, labels = blobs(10)
    rsm = cosine_rsm(features)
    figure = plot_rsm_grid(
        [("a", rsm, labels.numpy()), ("b", rsm, labels.numpy(), ["x", "y", "z"])],
        sort_name="label",
    )
    panels = [ax for ax in figure.axes if ax.get_visible() and ax.images]
    assert [ax.get_title() for ax in panels] == ["a", "b"]
    assert [t.get_text() for t in panels[1].get_xticklabels()] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="one sort value per row"):
        plot_rsm_grid([("bad", rsm, labels.numpy()[:5])])


# -- kNN -----------------------------------------------------------------------------------------
def test_knn_is_right_on_a_separable_set() -> None:
    features, labels = blobs(60)
    assert knn_accuracy(features[:120], labels[:120], features[120:], labels[120:], k=5) == 1.0


def brute_force_knn(train, labels, queries, k, temperature, classes) -> np.ndarray:
    predictions = []
    for query in queries.numpy():
        similarity = np.array(
            [query @ row / np.linalg.norm(query) / np.linalg.norm(row) for row in train.numpy()]
        )
        votes = np.zeros(classes)
        for neighbour in np.argsort(-similarity)[:k]:
            votes[labels[neighbour]] += np.exp(similarity[neighbour] / temperature)
        predictions.append(votes.argmax())
    return np.array(predictions)


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (7, 0.5), (25, 2.0)])
def test_knn_matches_a_brute_force_reference(k: int, temperature: float) -> None:
    generator = torch.Generator().manual_seed(k)
    train, queries = (
        torch.randn(80, 6, generator=generator),
        torch.randn(30, 6, generator=generator),
    )
    labels = torch.randint(0, 4, (80,), generator=generator)
    predicted = knn_predict(train, labels, queries, k, temperature, num_classes=4, chunk_size=7)
    expected = brute_force_knn(train, labels.numpy(), queries, k, temperature, 4)
    np.testing.assert_array_equal(predicted.numpy(), expected)


def test_knn_rejects_bad_settings() -> None:
    features, labels = blobs(5)
    with pytest.raises(ValueError, match=r"knn_k must be in \[1, 15\].*got 16"):
        knn_predict(features, labels, features, k=16)
    with pytest.raises(ValueError, match="knn_temperature must be > 0, got 0"):
        knn_predict(features, labels, features, k=3, temperature=0)


# -- scikit-learn probes ------------------------------------------------------------------------
def test_sklearn_probes_are_well_above_chance_on_easy_data() -> None:
    features, labels = blobs(100, spread=1.5, seed=3)
    split = (features[:200], labels[:200], features[200:], labels[200:])
    assert logistic_regression_probe(*split).accuracy > 0.9  # chance 1/3
    assert linear_svm_probe(*split).accuracy > 0.9
    with pytest.raises(ValueError, match="logreg_c must be > 0, got -1"):
        logistic_regression_probe(*split, c=-1)


# -- clustering ---------------------------------------------------------------------------------
def test_cluster_accuracy_matches_clusters_to_classes_one_to_one() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_accuracy(labels, labels) == 1.0
    assert cluster_accuracy(labels, np.array([2, 2, 0, 0, 1, 1])) == 1.0  # any relabelling
    assert cluster_accuracy(labels, np.array([7, 7, 3, 3, 5, 5])) == 1.0
    # classes 0 and 1 merged into one cluster: only one of them can be matched to it
    assert cluster_accuracy(labels, np.array([0, 0, 0, 0, 1, 1])) == pytest.approx(4 / 6)
    # class 0 split over two clusters: only one of them counts (no two clusters per class)
    assert cluster_accuracy(np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 2, 2])) == (
        pytest.approx(4 / 6)
    )
    with pytest.raises(ValueError, match="6 labels but 5 cluster ids"):
        cluster_accuracy(labels, labels[:5])


def test_kmeans_recovers_separated_clusters() -> None:
    features, labels = blobs(30, classes=4)
    clusters = kmeans_clusters(features, 4, seed=0)
    assert clustering_scores(labels.numpy(), clusters) == {"nmi": 1.0, "ari": 1.0, "acc": 1.0}
    noise = kmeans_clusters(torch.randn(300, 8), 3, seed=0)
    scores = clustering_scores(np.random.default_rng(0).integers(0, 3, 300), noise)
    assert scores["nmi"] < 0.05 and abs(scores["ari"]) < 0.05 and scores["acc"] < 0.45


# -- projections --------------------------------------------------------------------------------
def test_pca_and_tsne_give_2d_points_and_a_figure_per_colouring() -> None:
    features, labels = blobs(30, dims=64)
    points, explained = pca_2d(features)
    assert points.shape == (90, 2) and 0.9 < explained.sum() <= 1.0  # 3 blobs: ~2-d data
    with threadpool_limits(1):  # OpenMP's spinning threads are slow on a busy CPU
        embedded = tsne_2d(features, seed=0, perplexity=10)
    assert embedded.shape == (90, 2) and np.isfinite(embedded).all()
    figure = plot_embedding(
        embedded,
        [
            Factor("label", labels.numpy(), ["a", "b", "c"]),
            Factor("angle", np.linspace(0, 6, 90), cyclic=True),
        ],
        "t-SNE",
    )
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["label", "angle"]


# -- the stage and its settings -----------------------------------------------------------------
def test_analyse_writes_every_file(tmp_path) -> None:
    features, labels = blobs(40)
    data = FeatureSet(
        train_features=features[:80],
        train_labels=labels[:80],
        test_features=features[80:],
        test_labels=labels[80:],
        test_factors={
            "size": Factor("size", np.arange(40) % 4 * 0.5),
            "label": Factor("label", labels[80:].numpy()),
        },
        num_classes=3,
    )
    analysis = RepresentationAnalysis(rsm_images=30, knn_k=5, tsne_images=30, tsne_perplexity=5)
    result = analysis.analyse(data, tmp_path)
    assert result.metrics["analysis/knn_acc"] == 1.0 and result.metrics["analysis/svm_acc"] == 1.0
    assert result.metrics["analysis/kmeans_acc"] == 1.0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "pca.png",
        "rsm.png",
        "rsm_histogram.png",
        "tsne.png",
    ]
    names = ["kmeans", "knn", "logreg", "pca", "rsm", "summary", "svm", "tsne"]
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == names
    assert json.loads((tmp_path / "knn.json").read_text())["vote_weight"].startswith("exp(")
    assert load_rsm(tmp_path / "rsm.npz", "size")[0].shape == (30, 30)


def test_analysis_options_compose_and_none_skips() -> None:
    cfg = compose_train("data.num_images=1000")
    assert isinstance(instantiate(cfg.analysis), RepresentationAnalysis)
    assert (
        OmegaConf.select(compose_train("analysis=none", "debug=fast"), "analysis._target_") is None
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("analysis.sort_by=[colour]", "unknown analysis.sort_by 'colour'; accepted: shape, scale"),
        ("analysis.knn_k=5000", "analysis.knn_k=5000 is more than the 1440 labelled training"),
        ("analysis.knn_temperature=-1", "knn_temperature must be a number > 0, got -1"),
        ("analysis.rsm_images=1", "rsm_images must be an integer >= 2 or null"),
        ("analysis.threads=0", "threads must be an integer >= 1 or null"),
        ("analysis.backend=jax", "analysis.backend must be one of torch, sklearn, got 'jax'"),
        ("analysis.svm_tol=0", "svm_tol must be a number > 0, got 0"),
        ("analysis.kmeans_max_iter=0", "kmeans_max_iter must be an integer >= 1"),
        ("analysis.device=tpu9", "analysis.device must be null, cpu, cuda or cuda:N, got 'tpu9'"),
    ],
)
def test_bad_analysis_settings_fail_before_training(override: str, message: str) -> None:
    cfg = compose_train("data.num_images=2000", override)
    datamodule = instantiate(cfg.data, bias=cfg.bias.name, bias_control=cfg.bias.control)
    datamodule.setup()
    probe_images = len(labelled_positions(datamodule, 1.0, cfg.probe.label_seed))
    with pytest.raises(Exception, match=message):  # Hydra wraps errors raised while building
        build_analysis(cfg.analysis, datamodule, num_train=probe_images)


def test_eval_of_an_older_checkpoint_gets_the_default_analysis() -> None:
    composed = compose_train()
    saved = OmegaConf.to_container(composed, resolve=True)
    del saved["analysis"]  # written before the analysis group existed
    cfg = run_config({"reprlab": {"config": saved}}, [], composed)
    assert cfg.analysis._target_.endswith("RepresentationAnalysis")
    assert cfg.analysis.seed == cfg.seed
