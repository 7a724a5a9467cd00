"""The benchmark scripts run end to end on tiny settings and refuse bad arguments."""

from __future__ import annotations

import pytest
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
