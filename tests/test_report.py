"""reprlab-report: a results table from a multirun folder, failed runs listed, plots and CSV."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_cli import SMOKE, run_cli

from reprlab import report


def test_report_of_a_real_multirun_with_a_failed_job(tmp_path: Path) -> None:
    run_cli(
        "reprlab.train",
        "-m",
        *SMOKE,
        "method=none",
        "encoder=identity",
        "callbacks=none",
        "probe.label_fractions=[0.5,1.0]",
        "data.target=colour,shape",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        check=False,  # the sweep exits non-zero: one job fails
    )
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "reprlab.report", str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    finished = json.loads((sweep / "1_none_identity" / "metrics.json").read_text())
    # One row, a column per fraction of labels: the sweep's two probes.
    assert "| model | labels=0.5 | labels=1 |" in result.stdout
    assert f"| none/identity | {100 * finished['frac_0.5/test/acc']:.2f} |" in result.stdout
    assert f"{100 * finished['test/acc']:.2f} |" in result.stdout
    assert "## Runs without results (1)" in result.stdout
    assert "`0_none_identity`: ValueError: unknown data.target 'colour'" in result.stdout
    assert "overrides: " in result.stdout and "data.target=colour" in result.stdout
    assert (sweep / "report.md").read_text() == result.stdout
    assert (sweep / "label_fractions.png").stat().st_size > 1000
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [(r["model"], r["labels"], r["n"]) for r in rows] == [
        ("none/identity", "0.5", "1"),
        ("none/identity", "1.0", "1"),
    ]
    assert float(rows[1]["test/acc mean"]) == pytest.approx(finished["test/acc"], rel=1e-5)


def fake_run(
    folder: Path,
    config: dict,
    metrics: dict | None,
    log: str | None = None,
    hydra_only: bool = False,
) -> Path:
    """A run folder as reprlab-train leaves it (config.yaml, metrics.json, <job>.log)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(config.pop("_overrides", [])))
    target = folder / (".hydra/config.yaml" if hydra_only else "config.yaml")
    target.write_text(yaml.safe_dump(config))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (folder / "train.log").write_text(log)
    return folder


def config(method: str | None, encoder: str = "Core", seed: int = 0, **settings) -> dict:
    tree = {
        "seed": seed,
        "method": {"_target_": f"reprlab.methods.{method}" if method else None, "epochs": 5},
        "encoder": {"_target_": f"reprlab.encoders.{encoder}Encoder"},
        "data": {
            "target": "shape",
            "label_fraction": 1.0,
            "path": f"/data/{seed}.npz",
            "batch_size": 1000,
        },
        "bias": {"name": "none", "control": False},
        "probe": {"label_fraction": 1.0, "label_seed": seed, "epochs": 3},
        "trainer": {"max_epochs": seed},  # how it ran, not what it measured: ignored
    }
    for key, value in settings.items():
        group, name = key.split("__")
        tree[group][name] = value
    return tree


def test_seeds_are_averaged_and_conditions_become_columns(tmp_path: Path) -> None:
    root = tmp_path / "study"
    accuracies = {(False, 1): 0.90, (False, 2): 0.94, (True, 1): 0.70, (True, 2): 0.80}
    for (control, seed), acc in accuracies.items():
        fake_run(
            root / "sweep_a" / f"simclr_{control}_{seed}",
            config("SimCLR", seed=seed, bias__control=control, method__neg_pairs="all"),
            {"test/acc": acc, "chance": 1 / 3},
        )
    fake_run(
        root / "sweep_b" / "0",
        config("SimCLR", seed=1, method__neg_pairs=2),
        {"test/acc": 0.6, "chance": 1 / 3},
    )
    fake_run(root / "sweep_b" / "1", config(None, "Identity"), {"test/acc": 0.4, "chance": 1 / 3})
    fake_run(root / "sweep_b" / "2", config("VAE"), None, log="Traceback\nRuntimeError: boom\n")
    (fake_run(root / "sweep_b" / "3", config("VAE"), None).joinpath("metrics.json")).write_text(
        "{not json"
    )
    fake_run(root / "sweep_b" / "4", config("VAE"), None, hydra_only=True)

    text, table, failed = report.build_report(root, compare="tutorial")
    assert table.condition_keys == ["bias.control"]
    assert "| model | control=False | control=True |" in text
    # Two seeds per cell: mean ± sample standard deviation (n).
    assert "| simclr/core (neg_pairs=all) | 92.00 ± 2.83 (2) | 75.00 ± 7.07 (2) |" in text
    assert "| simclr/core (neg_pairs=2) | 60.00 | – |" in text
    assert "| none/identity | 40.00 | – |" in text
    assert len(failed) == 3
    assert "`sweep_b/2`: RuntimeError: boom" in text
    assert "`sweep_b/3`: metrics.json unreadable" in text
    assert "`sweep_b/4`: no metrics.json" in text
    # Beside the tutorial: our unbiased runs with every label.
    assert "| SimCLR | 97.53 | 92.00 ± 2.83 (2) |" in text
    assert "| SimCLR, 2 negative pairs | 66.75 | 60.00 |" in text
    assert "| raw pixels | 39.55 | 40.00 |" in text
    assert "| VAE | 45.75 | – |" in text
    assert (root / "report.md").read_text() == text and (root / "report.csv").is_file()


def test_two_configurations_of_one_tutorial_model_are_not_averaged(tmp_path: Path) -> None:
    for temperature, seeds in ((0.5, (1, 2)), (0.1, (1,))):
        for seed in seeds:
            fake_run(
                tmp_path / f"t{temperature}_{seed}",
                config(
                    "SimCLR", seed=seed, method__neg_pairs="all", method__temperature=temperature
                ),
                {
                    "test/acc": 0.8 + temperature / 10 + seed / 100,
                    "frac_0.1/test/acc": 0.5 + temperature / 10,
                    "chance": 1 / 3,
                },
            )
    text, _, _ = report.build_report(tmp_path, compare="tutorial")
    # Seeds of one configuration are averaged; the two temperatures get a row each.
    assert "| SimCLR (temperature=0.1) | 97.53 | 82.00 |" in text
    assert "| SimCLR (temperature=0.5) | 97.53 | 86.50 ± 0.71 (2) |" in text
    assert "| SimCLR | 97.53 |" not in text
    # ... and a column each beside the tutorial's few-label curve.
    ours = "SimCLR ours (temperature=0.1) | SimCLR ours (temperature=0.5)"
    assert f"| labels | SimCLR tutorial | {ours} |" in text
    assert "| 0.1 | ~93 | 51.00 | 55.00 ± 0.00 (2) | ~52 | – |" in text


def test_fraction_sweeps_and_supervised_retraining_share_one_curve(tmp_path: Path) -> None:
    sweep = {"frac_0.1/test/acc": 0.5, "frac_0.5/test/acc": 0.7, "frac_1/test/acc": 0.9}
    fake_run(tmp_path / "vae", config("VAE"), {"test/acc": 0.9, "chance": 0.25, **sweep})
    for fraction, acc in ((0.1, 0.3), (0.5, 0.6), (1.0, 0.95)):
        fake_run(
            tmp_path / "supervised" / str(fraction),
            config("Supervised", data__label_fraction=fraction),
            {"test/acc": acc, "label_fraction": fraction, "chance": 0.25},
        )
    text, table, failed = report.build_report(tmp_path, compare="tutorial")
    assert table.condition_keys == ["label_fraction"] and not failed
    assert "| supervised/core | 30.00 | 60.00 | 95.00 |" in text
    assert "| vae/core | 50.00 | 70.00 | 90.00 |" in text
    assert "| 0.1 | ~93 | – | ~52 | 30.00 | 40–47 | 50.00 |" in text
    assert (tmp_path / "label_fractions.png").stat().st_size > 1000


def test_biased_runs_get_a_table_per_shape_and_position(tmp_path: Path) -> None:
    groups = {
        f"test/acc_shape_{s}_posX_third_{t}": float(s == ("square", "ellipse", "heart")[t - 1])
        for s in ("square", "ellipse", "heart")
        for t in (1, 2, 3)
    }
    for control in (False, True):
        fake_run(
            tmp_path / str(control),
            config("Supervised", bias__name="shape_posX_spaced", bias__control=control),
            {"test/acc": 0.33, "chance": 1 / 3, **groups},
        )
    text, _, _ = report.build_report(tmp_path)
    assert "## `test/acc` per shape and third of the posX range (%)" in text
    row = "| supervised/core | control=True | 100.00 | 0.00 | 0.00 | 0.00 | 100.00 | 0.00 |"
    assert row in text
    assert (tmp_path / "bias_groups.png").stat().st_size > 1000


def test_report_cli_refuses_a_missing_folder_and_an_empty_one(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as error:
        report.main([str(tmp_path / "nowhere")])
    assert error.value.code == 2 and "nowhere is not a folder" in capsys.readouterr().err
    assert report.main([str(tmp_path)]) == 1
    assert "no run with a metrics.json" in capsys.readouterr().err


def test_reproduction_script_is_valid_bash_and_checks_its_data_file(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_tutorial.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    result = subprocess.run(
        ["bash", str(script), str(tmp_path / "missing.npz")],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")},
    )
    assert result.returncode == 2 and "no file at" in result.stderr
    assert not (tmp_path / "out").exists()


def test_objectives_script_is_valid_bash_and_refuses_bad_arguments(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "objectives_study.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0

    def refused(*args: str) -> str:
        """The script's message for arguments it must refuse (exit status 2)."""
        result = subprocess.run(
            ["bash", str(script), *args],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")},
        )
        assert result.returncode == 2, result
        return result.stderr

    assert "missing.npz" in refused(str(tmp_path / "missing.npz"))
    data = tmp_path / "data.npz"
    data.write_bytes(b"")
    assert "'nonsense'" in refused("--only", "baselines,nonsense", str(data))
    message = refused("--objectives", "byol,moco", str(data))
    assert "'moco'" in message and "supervised" in message
    assert not (tmp_path / "out").exists()


def test_a_key_missing_from_older_runs_does_not_split_rows() -> None:
    def record(settings: dict) -> report.Record:
        return report.Record(Path("run"), "simclr/core", settings, {"test/acc": 0.9})

    old = record({"method.lr": 2e-3})
    new = record({"method.lr": 2e-3, "method.optim.name": "adam"})
    other = record({"method.lr": 1e-3, "method.optim.name": "adam"})
    keys = {"method.lr", "method.optim.name"}
    assert report.varying_keys([[old, new]], keys) == []
    assert report.varying_keys([[old, new, other]], keys) == ["method.lr"]


def test_the_tutorials_own_encoders_get_their_own_columns(tmp_path: Path) -> None:
    folder = "/somewhere/tutorial-checkpoints/"
    simclr = folder + "simclr_encoder_60ep_bs1000_deg90_trans0-2_scale0-8to1-2_seed2021.pth"
    for precise, acc in ((True, 0.976), (False, 0.969)):
        run = config(None, encoder__weights=simclr)
        run["precise_bn"] = precise
        fake_run(tmp_path / f"theirs_{precise}", run, {"test/acc": acc, "chance": 1 / 3})
    # A run of ours started from other weights is neither theirs nor ours from scratch.
    fake_run(
        tmp_path / "finetuned",
        config("SimCLR", method__neg_pairs="all", encoder__weights="/x/mine.pth"),
        {"test/acc": 0.5, "chance": 1 / 3},
    )
    fake_run(
        tmp_path / "ours",
        config("SimCLR", method__neg_pairs="all"),
        {"test/acc": 0.98, "chance": 1 / 3},
    )
    text, _, _ = report.build_report(tmp_path, compare="tutorial")
    their = "their encoder + our probe"
    assert f"| model | tutorial | {their} (precise BN) | {their} (stored BN) | ours |" in text
    assert "| SimCLR | 97.53 | 97.60 | 96.90 | 98.00 |" in text
    # The tutorial's SimCLR file is not its random encoder, though both are method none / core.
    assert "| random encoder | 44.67 | – | – | – |" in text


def test_the_study_layout_gives_one_row_per_model(tmp_path: Path) -> None:
    """baselines/, few_labels/ and bias/ (as the study scripts write them) become one table: the
    longer bias runs and the retrained few-label runs stay in their model's row."""
    fake_run(
        tmp_path / "baselines" / "vicreg",
        config("VICReg", method__epochs=60),
        {"test/acc": 0.9977, "chance": 1 / 3},
    )
    fake_run(
        tmp_path / "few_labels" / "vicreg",
        config("VICReg", method__epochs=60),
        {"test/acc": 0.98, "frac_0.05/test/acc": 0.80, "frac_1/test/acc": 0.98},
    )
    for control, acc in ((False, 0.89), (True, 0.854)):
        fake_run(
            tmp_path / "bias" / f"vicreg_control_{control}",
            config(
                "VICReg", method__epochs=150, bias__name="shape_posX_spaced", bias__control=control
            ),
            {"test/acc": acc},
        )
    for fraction, acc in ((0.05, 0.45), (1.0, 0.98)):
        fake_run(
            tmp_path / "few_labels" / "supervised" / str(fraction),
            config("Supervised", method__lr=1e-3, data__label_fraction=fraction),
            {"test/acc": acc},
        )
    fake_run(
        tmp_path / "baselines" / "supervised",
        config("Supervised", method__lr=2e-3),
        {"test/acc": 0.985},
    )
    text, _, _ = report.build_report(tmp_path, compare="tutorial")
    study = text.split("## The study, one row per model", 1)[1].split("## Beside", 1)[0]
    header = "| model | tutorial | full labels | 5% labels | 100% labels | biased training set |"
    assert header + " its control |" in study
    assert "| supervised/core | 98.70 | 98.50 | 45.00 | 98.00 | – | – |" in study
    assert "| vicreg/core | – | 99.77 | 80.00 | 98.00 | 89.00 | 85.40 |" in study
    # A run on other batches is another row, not a seed of the same one.
    fake_run(
        tmp_path / "baselines" / "vicreg_256",
        config("VICReg", method__epochs=60, data__batch_size=256),
        {"test/acc": 0.95},
    )
    text, _, _ = report.build_report(tmp_path, compare="tutorial")
    assert "| vicreg/core (batch=256) | – | 95.00 | – | – | – | – |" in text
    assert "| vicreg/core (batch=1000) | – | 99.77 | 80.00 |" in text
    # A schedule setting that differs within one study names the row: not averaged as seeds.
    fake_run(
        tmp_path / "baselines" / "supervised_slow",
        config("Supervised", method__lr=1e-4),
        {"test/acc": 0.5},
    )
    text, _, _ = report.build_report(tmp_path, compare="tutorial")
    assert "| supervised/core (lr=0.0001) | 98.70 | 50.00 |" in text
    assert "| supervised/core (lr=0.002) | 98.70 | 98.50 |" in text
    # Without the layout there is no such table.
    text, _, _ = report.build_report(tmp_path / "bias", compare="tutorial")
    assert "## The study" not in text
