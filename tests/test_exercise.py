"""The exercise presets (CIFAR-10 / Fashion-MNIST SimCLR and their baselines), the native
precision resolver, and, when Debian's dataset-fashion-mnist is installed, a short SimCLR run on
the real Fashion-MNIST against a random encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_train

from reprlab import precision
from reprlab.data import torchvision_datasets as tvd
from reprlab.train import train

FASHION_FILES = [
    tvd.DEBIAN_FASHION_MNIST / f"{name}.gz" for name in (*tvd._IDX_TRAIN, *tvd._IDX_TEST)
]


def test_native_precision_follows_the_cpu_flags(tmp_path: Path, monkeypatch) -> None:
    mkldnn = torch.backends.mkldnn.is_available()
    assert precision.cpu_has_native_bf16(frozenset({"avx2", "amx_bf16"})) == mkldnn
    assert precision.cpu_has_native_bf16(frozenset({"avx512_bf16"})) == mkldnn
    assert not precision.cpu_has_native_bf16(frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.native_precision("cpu") == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.native_precision("cpu") == "32-true"
    assert precision.native_precision("mps") == "32-true"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512_bf16\n")
    assert "avx512_bf16" in precision.cpu_flags.__wrapped__(cpuinfo)
    assert precision.cpu_flags.__wrapped__(tmp_path / "none") == frozenset()


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_exercise_presets_set_the_protocol(dataset: str) -> None:
    cfg = compose_train(f"experiment={dataset}_exercise")
    assert cfg.encoder._target_.endswith("SimpleCNN") and not cfg.encoder.global_pool
    method = cfg.method
    assert method._target_.endswith("SimCLR") and method.projector == "mlp"
    assert (method.projector_hidden, method.projector_out) == (256, 128)
    assert method.neg_pairs == "all" and not method.decoupled  # NT-Xent, not positives alone
    assert cfg.trainer.precision == precision.native_precision(cfg.trainer.accelerator)
    size = 28 if dataset == "fashion_mnist" else 32
    assert cfg.augment.size == size
    if dataset == "fashion_mnist":
        assert cfg.data.dataset == "FashionMNIST" and cfg.data.channels == 1
        assert (cfg.augment.saturation, cfg.augment.hue, cfg.augment.grayscale_p) == (0, 0, 0)
    else:
        assert cfg.data._target_.endswith("CIFAR10DataModule") and cfg.augment.saturation > 0
    analysis = cfg.analysis
    assert all(analysis[key] for key in ("logreg", "svm", "pca", "tsne", "kmeans", "knn"))
    baselines = {
        "raw": ("IdentityEncoder", None),
        "random": ("SimpleCNN", None),
        "supervised": ("SimpleCNN", "reprlab.methods.Supervised"),
    }
    for name, (encoder, target) in baselines.items():
        baseline = compose_train(f"experiment={dataset}_{name}")
        assert baseline.encoder._target_.endswith(encoder)
        assert baseline.method.get("_target_") == target
        assert baseline.data == cfg.data and baseline.probe == cfg.probe


def real_fashion_mnist() -> None:
    missing = [str(path) for path in FASHION_FILES if not path.is_file()]
    if missing:
        pytest.skip(
            f"real Fashion-MNIST not installed ({', '.join(missing)} missing): "
            f"apt-get install dataset-fashion-mnist"
        )


SHORT = (
    "logger=csv",
    "callbacks=none",
    "trainer.accelerator=cpu",
    "data.num_images=10000",
    "data.batch_size=250",
    "encoder.global_pool=true",
    "probe.epochs=15",
    "probe.lr=1e-2",
    "analysis.svm=false",
    "analysis.rsm_images=300",
    "analysis.tsne_images=300",
    "analysis.projector_images=0",
)


@pytest.mark.slow
def test_simclr_on_real_fashion_mnist_beats_a_random_encoder(tmp_path: Path) -> None:
    real_fashion_mnist()
    root = f"data.root={tmp_path / 'data'}"  # unpacked from Debian's folder
    simclr = train(
        compose_train(
            "experiment=fashion_mnist_exercise", root, *SHORT, "method.epochs=4", "method.lr=3e-3"
        ),
        tmp_path / "simclr",
    )
    random = train(
        compose_train("experiment=fashion_mnist_random", root, *SHORT), tmp_path / "random"
    )
    # Pooled (128-d) features: SimCLR's views teach invariances a random network lacks.
    assert simclr["test/acc"] > random["test/acc"] + 0.05, (simclr["test/acc"], random["test/acc"])
    assert simclr["test/acc"] > 0.65  # chance 0.1
    for key in ("knn_acc", "logreg_acc", "kmeans_nmi", "kmeans_ari", "kmeans_acc"):
        assert 0 < simclr[f"analysis/{key}"] <= 1
    assert (tmp_path / "simclr" / "analysis" / "tsne.png").stat().st_size > 10_000
    assert (tmp_path / "simclr" / "analysis" / "pca.png").is_file()
    written = json.loads((tmp_path / "simclr" / "metrics.json").read_text())
    assert written["num_test"] == 1429 and written["chance"] == pytest.approx(0.1)
