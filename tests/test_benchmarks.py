"""The benchmark scripts run end to end on tiny settings and refuse bad arguments."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script

bench_precision = load_script("bench_precision")


def test_bench_precision_times_both_precisions(tmp_path) -> None:
    out = tmp_path / "precision.json"
    rows = bench_precision.main(
        ["--encoders", "core", "--methods", "simclr,supervised", "--warmup", "0", "--steps", "1",
         "--batch-size", "32", "--json", str(out)]
    )  # fmt: skip
    assert [(r["encoder"], r["method"]) for r in rows] == [
        ("core", "simclr"),
        ("core", "supervised"),
    ]
    for row in rows:
        assert row["batch"] == 32
        assert row["32-true"] > 0 and row["bf16-mixed"] > 0
        assert row["ratio"] == pytest.approx(row["bf16-mixed"] / row["32-true"])
    assert out.is_file()


@pytest.mark.parametrize("argv", [["--encoders", "vgg"], ["--methods", "moco"], ["--steps", "0"]])
def test_bench_precision_refuses_bad_arguments(argv, capsys) -> None:
    with pytest.raises(SystemExit):
        bench_precision.parse_args(argv)
    err = capsys.readouterr().err
    assert argv[1] in err and ("choose from" in err or ">= 1" in err)


profile_steps = load_script("profile_steps")

# The core encoder's convolutions per 64x64 image, as multiply-adds x 2: conv1 (1->6, 5x5) has
# 60x60 outputs, conv2 (6->16, 5x5) 26x26. Backward: conv1's weight gradient only (the images
# need none), conv2's weight and input gradients.
CONV1_FLOPS = 2 * 6 * 1 * 25 * 60 * 60
CONV2_FLOPS = 2 * 16 * 6 * 25 * 26 * 26


def test_profile_steps_counts_the_core_encoders_work(tmp_path) -> None:
    out = tmp_path / "steps.json"
    rows = profile_steps.main(
        ["--methods", "supervised,simclr", "--batch-size", "16", "--compile", "false",
         "--warmup", "1", "--steps", "1", "--json", str(out)]
    )  # fmt: skip
    assert [r["case"] for r in rows] == ["supervised", "simclr"]
    for row, images in zip(rows, (16, 32), strict=True):  # SimCLR encodes two views per image
        flops = row["gflop_by_op"]
        assert flops["convolution"] * 1e9 == pytest.approx(images * (CONV1_FLOPS + CONV2_FLOPS))
        assert flops["convolution_backward"] * 1e9 == pytest.approx(
            images * (CONV1_FLOPS + 2 * CONV2_FLOPS)
        )
        assert row["step_s"] > 0 and row["floor_s"] > 0
        assert sum(row["seconds_by_kind"].values()) == pytest.approx(row["step_s"])
        assert row["seconds_by_kind"]["compiled kernels"] == 0  # eager
        assert row["saved_mb"] > 0
    assert out.is_file()


def test_profile_steps_times_each_convolution_with_its_work(capsys) -> None:
    (row,) = profile_steps.main(
        ["--methods", "supervised", "--batch-size", "16", "--compile", "false",
         "--warmup", "1", "--steps", "1", "--convolutions"]
    )  # fmt: skip
    first, second = row["convolutions"]
    assert first["layer"] == "encoder.features.0" and first["shape"] == [16, 1, 64, 64]
    assert not first["input_grad"] and second["input_grad"]  # the images need no gradient
    # forward + weight gradient for conv1; forward + input and weight gradients for conv2
    assert first["gflop"] * 1e9 == pytest.approx(16 * 2 * CONV1_FLOPS)
    assert second["gflop"] * 1e9 == pytest.approx(16 * 3 * CONV2_FLOPS)
    assert all(conv["seconds"] > 0 for conv in row["convolutions"])
    assert "all convolutions" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--methods", "moco"], ["--steps", "0"], ["--batch-size", "1"]])
def test_profile_steps_refuses_bad_arguments(argv, capsys) -> None:
    with pytest.raises(SystemExit):
        profile_steps.parse_args(argv)
    err = capsys.readouterr().err
    assert argv[1] in err and ("choose from" in err or ">= 1" in err)


bench_few_channel_layers = load_script("bench_few_channel_layers")


def test_bench_few_channel_layers_times_both_kinds_of_layer(capsys) -> None:
    ratios = bench_few_channel_layers.main(
        ["--methods", "supervised,vae", "--batch-size", "4", "--repeats", "1", "--steps", "1",
         "--warmup", "1", "--step-batch-size", "16"]
    )  # fmt: skip
    assert set(ratios) == {"supervised", "vae"} and all(r > 0 for r in ratios.values())
    out = capsys.readouterr().out
    for layer in (
        "encoder pool",
        "encoder ReLU+pool",
        "encoder BN",
        "decoder upsample",
        "decoder BN",
        "decoder BN+ReLU 8x64x64",
    ):
        assert layer in out


def test_bench_few_channel_layers_swaps_in_pytorchs_classes_only() -> None:
    from reprlab.encoders import CoreEncoder
    from reprlab.few_channel_layers import as_pytorch_layers

    encoder = as_pytorch_layers(CoreEncoder((1, 64, 64)))
    kinds = {type(m) for m in encoder.modules()}
    assert torch.nn.BatchNorm2d in kinds and torch.nn.AvgPool2d in kinds
    assert not any(k.__module__ == "reprlab.few_channel_layers" for k in kinds)


@pytest.mark.parametrize(
    "argv", [["--methods", "moco"], ["--repeats", "0"], ["--step-batch-size", "1"]]
)
def test_bench_few_channel_layers_refuses_bad_arguments(argv, capsys) -> None:
    with pytest.raises(SystemExit):
        bench_few_channel_layers.parse_args(argv)
    err = capsys.readouterr().err
    assert argv[1] in err and ("choose from" in err or ">= " in err)


bench_vae = load_script("bench_vae")


@pytest.mark.parametrize(("argv", "channels_last"), [([], True), (["--no-channels-last"], False)])
def test_bench_vae_builds_the_model_as_a_run_does(argv, channels_last) -> None:
    # A run defaults to channels_last=true (conf/train.yaml); timing NCHW modules instead
    # measured a slower model than the one users train.
    args = bench_vae.parse_args(argv)
    module = bench_vae.build_vae(torch.device("cpu"), 0, channels_last=args.channels_last)
    weights = [p for p in module.parameters() if p.dim() == 4]
    assert weights
    fmt = torch.channels_last
    assert all(w.is_contiguous(memory_format=fmt) for w in weights) == channels_last


def test_bench_vae_conventional_model_computes_the_same_objective() -> None:
    torch.manual_seed(0)
    ours = bench_vae.build_vae(torch.device("cpu"), 0)
    conventional = bench_vae.conventional_vae(bench_vae.build_vae(torch.device("cpu"), 0))
    assert not any(
        m.__module__ == "reprlab.few_channel_layers" for m in map(type, conventional.modules())
    )
    assert any(m.__module__ == "reprlab.few_channel_layers" for m in map(type, ours.modules()))
    images = torch.rand(16, 1, 64, 64).round().contiguous(memory_format=torch.channels_last)
    losses = []
    for module in (ours, conventional):  # training mode: batch statistics, the same noise
        torch.manual_seed(1)
        losses.append(module.objective(images, "train")[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-3)


def test_bench_vae_times_both_loops(tmp_path, capsys) -> None:
    out = tmp_path / "vae.json"
    bench_vae.main(
        ["--images", "40", "--batch-size", "20", "--epochs", "2", "--profile-batches", "1",
         "--json", str(out)]
    )  # fmt: skip
    figures = json.loads(out.read_text())
    assert figures["plain_seconds_per_epoch"] > 0
    assert figures["conventional_over_ours"] > 0
    assert "conventional loop (PyTorch's layers and BCE): epoch times" in capsys.readouterr().out
    bench_vae.main(["--images", "40", "--batch-size", "20", "--no-baseline", "--json", str(out)])
    assert "conventional_over_ours" not in json.loads(out.read_text())


bench_analysis = load_script("bench_analysis")


def _bench_analysis_rows(capsys, backends: str) -> dict[str, dict[str, list[str]]]:
    """Each size's table as {size: {analysis: [torch s, sklearn s, ratio]}}."""
    bench_analysis.main(
        ["--sizes", "600x16,800x16", "--test", "200", "--analyses", "knn,logreg",
         "--skip-sklearn-above", "10000", "--backends", backends]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "keep freed memory (glibc mallopt)" in out
    assert "nan" not in out
    small, large = out.split("\n800 x 16")
    assert "scikit-learn skipped" in large and "skipped" not in small
    tables = {}
    for size, text in (("600x16", small), ("800x16", large)):
        lines = [line.split() for line in text.splitlines()]
        tables[size] = {w[0]: w[1:4] for w in lines if w and w[0] in ("knn", "logreg", "all")}
    return tables


def test_bench_analysis_marks_what_scikit_learn_did_not_run(capsys) -> None:
    both = _bench_analysis_rows(capsys, "torch,sklearn")
    # 600 x 16 is under the limit: both backends' seconds and their ratio on every row; kNN is
    # torch in both, timed once.
    for row in both["600x16"].values():
        assert row[2].endswith("x") and "-" not in row
    assert both["600x16"]["knn"][0] == both["600x16"]["knn"][1]
    # 800 x 16 is above it: torch's seconds only, "-" for scikit-learn and the ratio.
    for row in both["800x16"].values():
        assert row[0] != "-" and row[1:] == ["-", "-"]
    only_sklearn = _bench_analysis_rows(capsys, "sklearn")
    for row in only_sklearn["600x16"].values():
        assert row[0] == "-" and row[1] != "-" and row[2] == "-"
    for row in only_sklearn["800x16"].values():
        assert row == ["-", "-", "-"]


def test_bench_analysis_refuses_an_unknown_backend() -> None:
    with pytest.raises(SystemExit, match="accepted: torch, sklearn"):
        bench_analysis.main(["--backends", "torch,faiss"])
