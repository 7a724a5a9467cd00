"""``reprlab-report FOLDER``: one results table from many runs.

FOLDER is a Hydra multirun folder, a folder of run folders, or a folder of such folders. Every
run's ``metrics.json`` and config (``config.yaml``, the resolved config the run used, else
``.hydra/config.yaml``) are read. Rows are models (method/encoder, refined by any method,
encoder or augmentation setting that varies); columns are the conditions that vary between the
runs of a model (bias, control, fraction of labels, target, ...); runs that differ only in their
seeds are averaged (mean ± standard deviation). A label-fraction sweep (``frac_<f>/...`` keys)
counts as one run per fraction.

Writes report.md, report.csv and, when fractions of labels vary, label_fractions.png (and, when a
bias was used, bias_groups.png) into FOLDER. Runs that failed or have not finished (no
metrics.json) are listed with the error their log ends with. With ``--compare tutorial``, a
FOLDER holding the study folders baselines/, few_labels/ and bias/ also gets one table with a
row per model across the three.

    reprlab-report outputs/multirun/2026-11-22/10-00-00
    reprlab-report outputs/reproduce/baselines --compare tutorial
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprlab import tutorial_results
from reprlab.metric_keys import (
    POSX_THIRDS,
    SHAPES,
    THIRD_NAMES,
    group_key,
    shape_group,
    shape_third_group,
    third_group,
)
from reprlab.run_folders import (
    LABEL_FRACTION,
    Job,
    Record,
    find_run_folders,
    load_job,
    records_of,
)

# Settings that pick a different model (rows) rather than a different condition (columns).
MODEL_PREFIXES = ("method.", "encoder.", "augment.")
ALIASES = {
    "bias.name": "bias",
    "bias.control": "control",
    LABEL_FRACTION: "labels",
    "data.target": "target",
}
MODEL_ORDER = (
    "none/identity",
    "none/core",
    "supervised/core",
    "vae/core",
    "simclr/core",
    "byol/core",
    "simsiam/core",
    "vicreg/core",
    "barlowtwins/core",
)


@dataclass
class Cell:
    model: str
    condition: tuple[tuple[str, Any], ...]
    records: list[Record]

    def values(self, key: str) -> list[float]:
        return [
            float(r.metrics[key])
            for r in self.records
            if isinstance(r.metrics.get(key), int | float) and not math.isnan(r.metrics[key])
        ]


# -- grouping -----------------------------------------------------------------------------------
def varying_keys(groups: Iterable[list[Record]], candidates: set[str]) -> list[str]:
    """Keys among ``candidates`` whose value differs between records of some group.

    Only records that have the key count: a key that a newer version of the configs added is
    missing from older runs, which ran with its default behaviour."""
    varying = set()
    for records in groups:
        for key in candidates - varying:
            if len({repr(r.settings[key]) for r in records if key in r.settings}) > 1:
                varying.add(key)
    return sorted(varying)


def replicate_keys(records: Sequence[Record]) -> set[str]:
    """``seed`` and the seeds that follow it (``probe.label_seed: ${seed}``): averaged over."""
    keys = {"seed"}
    for key in {k for r in records for k in r.settings if k.endswith("_seed")}:
        if all(r.settings.get(key) == r.settings.get("seed") for r in records):
            keys.add(key)
    return keys


def describe_setting(key: str, value: Any) -> str:
    if key in ALIASES:
        name = ALIASES[key]
    elif key.startswith(MODEL_PREFIXES):  # shown beside the model's name: "method." is implied
        name = key.split(".", 1)[1]
    else:
        name = key
    if isinstance(value, float):
        value = f"{value:g}"
    return f"{name}={value}"


def model_sort_key(model: str) -> tuple[int, str]:
    base = model.split(" ", 1)[0]
    return (MODEL_ORDER.index(base) if base in MODEL_ORDER else len(MODEL_ORDER), model)


def value_sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value))


@dataclass
class Table:
    cells: list[Cell]
    models: list[str]
    conditions: list[tuple[tuple[str, Any], ...]]
    condition_keys: list[str]
    model_keys: list[str]


def build_table(records: list[Record]) -> Table:
    replicates = replicate_keys(records)
    all_keys = {k for r in records for k in r.settings} - replicates
    model_candidates = {k for k in all_keys if k.startswith(MODEL_PREFIXES)}
    by_model: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_model[record.model].append(record)
    model_keys = [
        k for k in varying_keys(by_model.values(), model_candidates) if not k.endswith("_target_")
    ]
    for record in records:
        refinements = [
            describe_setting(k, record.settings.get(k)) for k in model_keys if k in record.settings
        ]
        if refinements:
            record.refinement = ", ".join(refinements)
            record.model = f"{record.model} ({record.refinement})"
    by_model = defaultdict(list)
    for record in records:
        by_model[record.model].append(record)
    condition_keys = varying_keys(by_model.values(), all_keys - model_candidates)
    cells: dict[tuple[str, tuple], Cell] = {}
    for record in records:
        condition = tuple((k, record.settings.get(k)) for k in condition_keys)
        cell = cells.setdefault((record.model, condition), Cell(record.model, condition, []))
        cell.records.append(record)
    models = sorted(by_model, key=model_sort_key)
    conditions = sorted(
        {cell.condition for cell in cells.values()},
        key=lambda c: [value_sort_key(v) for _, v in c],
    )
    return Table(list(cells.values()), models, conditions, condition_keys, model_keys)


def cell_at(table: Table, model: str, condition: tuple) -> Cell | None:
    for cell in table.cells:
        if cell.model == model and cell.condition == condition:
            return cell
    return None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def format_cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f} ({len(values)})"


def condition_label(condition: tuple) -> str:
    return ", ".join(describe_setting(k, v) for k, v in condition) or "all runs"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main_table(table: Table, metric: str) -> str:
    header = ["model", *(condition_label(c) for c in table.conditions)]
    if not table.condition_keys:
        header = ["model", metric]
    rows = []
    for model in table.models:
        row = [model]
        for condition in table.conditions:
            cell = cell_at(table, model, condition)
            row.append(format_cell(cell.values(metric)) if cell else "–")
        rows.append(row)
    return markdown_table(header, rows)


# The nine shape-by-position cells: a model that learned a shape-position shortcut from a biased
# training set is right where the test image agrees with the bias and wrong elsewhere.
GROUP_COLUMNS = tuple(
    (shape_third_group(shape, third), f"{shape} {THIRD_NAMES[third]}")
    for shape in SHAPES
    for third in POSX_THIRDS
)
MARGINAL_GROUPS = tuple(shape_group(shape) for shape in SHAPES) + tuple(
    third_group(third) for third in POSX_THIRDS
)


def has_groups(table: Table, metric: str) -> bool:
    keys = {group_key(metric, group) for group, _ in GROUP_COLUMNS}
    return any(keys & r.metrics.keys() for cell in table.cells for r in cell.records)


def group_table(table: Table, metric: str) -> str:
    header = ["model", "condition", *(label for _, label in GROUP_COLUMNS), "all"]
    rows = []
    for model in table.models:
        for condition in table.conditions:
            cell = cell_at(table, model, condition)
            if cell is None:
                continue
            row = [model, condition_label(condition)]
            row += [format_cell(cell.values(group_key(metric, g))) for g, _ in GROUP_COLUMNS]
            row.append(format_cell(cell.values(metric)))
            rows.append(row)
    return markdown_table(header, rows)


# -- the tutorial's numbers ---------------------------------------------------------------------
def matches(record: Record, match: dict[str, Any]) -> bool:
    method, encoder = record.model.split(" ", 1)[0].split("/")
    for key, wanted in match.items():
        actual = {"method": method, "encoder": encoder}.get(key, record.settings.get(key))
        if str(actual) != str(wanted):
            return False
    return True


def plain_condition(record: Record, fraction: float) -> bool:
    """The tutorial's unbiased shape task at ``fraction`` of the labels."""
    return (
        record.settings.get("bias.name", "none") == "none"
        and not record.settings.get("bias.control", False)
        and record.settings.get("data.target", "shape") == "shape"
        and math.isclose(record.settings[LABEL_FRACTION], fraction, rel_tol=1e-6)
    )


def ours(records: list[Record], match: dict[str, Any], fraction: float, metric: str) -> str:
    values = [
        float(r.metrics[metric])
        for r in records
        if matches(r, match) and plain_condition(r, fraction) and metric in r.metrics
    ]
    return format_cell(values)


def comparison_groups(
    records: list[Record], match: dict[str, Any]
) -> list[tuple[str, list[Record]]]:
    """``(name suffix, records)`` for each of our configurations that stands for one of the
    tutorial's models: one group with no suffix when there is at most one.

    Two SimCLR configurations both match the tutorial's SimCLR; averaging them as if they were
    seeds would hide the difference, so each gets its own row or column, named by the settings
    that tell them apart."""
    models = sorted(
        {
            r.model
            for r in records
            if matches(r, match) and plain_condition(r, r.settings[LABEL_FRACTION])
        },
        key=model_sort_key,
    )
    if len(models) <= 1:
        return [("", records)]
    groups = [[r for r in records if r.model == model] for model in models]
    return [(f" ({group[0].refinement or group[0].model})", group) for group in groups]


def published_few_labels(entry: dict[str, Any], fraction: float) -> str:
    if "band" in entry:
        return "{:.0f}–{:.0f}".format(*entry["band"])
    published = entry["acc"].get(fraction)
    return f"~{published:g}" if published is not None else "–"


def weights_file(record: Record) -> str | None:
    """The name of the file the run's encoder was initialised from (``encoder.weights``)."""
    weights = record.settings.get("encoder.weights")
    return None if weights in (None, "None", "") else Path(str(weights)).name


def theirs_columns(records: list[Record]) -> list[tuple[str, list[Record]]]:
    """The tutorial's own encoders probed by reprlab, one column per precise_bn setting."""
    published = {entry.get("file") for entry in tutorial_results.FULL_LABELS} - {None}
    theirs = [r for r in records if weights_file(r) in published]
    settings = sorted({bool(r.settings.get("precise_bn", True)) for r in theirs}, reverse=True)
    label = {True: " (precise BN)", False: " (stored BN)"}
    return [
        (
            "their encoder + our probe" + (label[on] if len(settings) > 1 else ""),
            [r for r in theirs if bool(r.settings.get("precise_bn", True)) == on],
        )
        for on in settings
    ]


def theirs_cell(records: list[Record], entry: dict[str, Any], metric: str) -> str:
    return format_cell(
        [
            float(r.metrics[metric])
            for r in records
            if entry.get("file")
            and weights_file(r) == entry["file"]
            and plain_condition(r, 1.0)
            and metric in r.metrics
        ]
    )


def tutorial_comparison(records: list[Record], metric: str) -> str:
    parts = [f"Published: {tutorial_results.SOURCE}. Ours: `{metric}` (%)."]
    theirs = theirs_columns(records)
    # "ours": encoders reprlab trained from their own initialisation.
    records = [r for r in records if weights_file(r) is None]
    rows = [
        [
            entry["name"] + suffix,
            f"{entry['acc']:.2f}",
            *(theirs_cell(group, entry, metric) for _, group in theirs),
            ours(group, entry["match"], 1.0, metric),
        ]
        for entry in tutorial_results.FULL_LABELS
        for suffix, group in comparison_groups(records, entry["match"])
    ]
    header = ["model", "tutorial", *(name for name, _ in theirs), "ours"]
    parts.append(markdown_table(header, rows))
    fractions = sorted(
        {r.settings[LABEL_FRACTION] for r in records} | set(tutorial_results.FRACTIONS)
    )
    if len({r.settings[LABEL_FRACTION] for r in records}) > 1:
        columns = [
            (entry, comparison_groups(records, entry["match"]))
            for entry in tutorial_results.FEW_LABELS
        ]
        header = ["labels"]
        for entry, groups in columns:
            header.append(f"{entry['name']} tutorial")
            header += [f"{entry['name']} ours{suffix}" for suffix, _ in groups]
        rows = []
        for fraction in fractions:
            row = [f"{fraction:g}"]
            for entry, groups in columns:
                row.append(published_few_labels(entry, fraction))
                row += [ours(group, entry["match"], fraction, metric) for _, group in groups]
            rows.append(row)
        parts.append(
            "Few labels (tutorial values read off its figure):\n\n" + markdown_table(header, rows)
        )
    return "\n\n".join(parts)


# -- the study layout: baselines/, few_labels/, bias/ -------------------------------------------
# The folders scripts/reproduce_tutorial.sh and scripts/objectives_study.sh write under one $OUT.
STUDIES = ("baselines", "few_labels", "bias")
# Settings each study sets for itself (the bias runs train 150 epochs, the supervised few-label
# runs 20 at another rate): they make a model a different row of the study table only where
# they differ within one study.
STUDY_SCHEDULE_KEYS = ("method.epochs", "method.lr", "method.cosine_epochs")


def study_of(record: Record, root: Path) -> str | None:
    """The study folder directly under ``root`` that the record's run lies in, if any."""
    try:
        first = record.job.relative_to(root).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in STUDIES else None


def study_row(record: Record, keys: Sequence[str], split_batch: bool) -> str:
    """The record's model named by ``keys``, and its pretraining batch where runs of its method
    and encoder were pretrained on different batches."""
    kept = [describe_setting(k, record.settings[k]) for k in keys if k in record.settings]
    if split_batch and "data.batch_size" in record.settings:
        kept.append(f"batch={record.settings['data.batch_size']}")
    base = record.model.split(" ", 1)[0]
    return f"{base} ({', '.join(kept)})" if kept else base


def study_table(records: list[Record], root: Path, model_keys: Sequence[str], metric: str) -> str:
    """One row per model: the tutorial's published full-label accuracy, ours from baselines/,
    each fraction of the labels from few_labels/, each bias's training set and its control from
    bias/ (all tested on the unbiased shape task).

    A schedule key (STUDY_SCHEDULE_KEYS) names the row only where it differs within one study of
    one model; elsewhere the studies' own schedules share the model's row."""
    # (record, its study) once: the study is read off the run's path.
    studied = [
        (r, study)
        for r in records
        if (study := study_of(r, root)) is not None
        and r.settings.get("data.target", "shape") == "shape"
    ]
    batches: dict[str, set[Any]] = defaultdict(set)
    for record, _ in studied:
        base = record.model.split(" ", 1)[0]
        if not base.startswith("none/") and "data.batch_size" in record.settings:
            batches[base].add(record.settings["data.batch_size"])
    split_batch = {base for base, sizes in batches.items() if len(sizes) > 1}

    def row_of(record: Record, keys: Sequence[str]) -> str:
        return study_row(record, keys, record.model.split(" ", 1)[0] in split_batch)

    others = [k for k in model_keys if k not in STUDY_SCHEDULE_KEYS]
    schedule = {k for k in model_keys if k in STUDY_SCHEDULE_KEYS}
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record, study in studied:
        groups[(row_of(record, others), study)].append(record)
    keys = others + varying_keys(groups.values(), schedule)
    biases = sorted(
        {str(r.settings.get("bias.name")) for r, s in studied if s == "bias"} - {"none"}
    )
    fractions = sorted({r.settings[LABEL_FRACTION] for r, s in studied if s == "few_labels"})
    rows_of: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    published: dict[str, str] = {}
    for record, study in studied:
        value = record.metrics.get(metric)
        if not isinstance(value, int | float) or math.isnan(value):
            continue
        row = row_of(record, keys)
        fraction = record.settings[LABEL_FRACTION]
        bias = str(record.settings.get("bias.name", "none"))
        control = bool(record.settings.get("bias.control", False))
        if study == "baselines" and plain_condition(record, 1.0):
            rows_of[row]["ours"].append(float(value))
            for entry in tutorial_results.FULL_LABELS:
                if matches(record, entry["match"]) and weights_file(record) is None:
                    published.setdefault(row, f"{entry['acc']:.2f}")
        elif study == "few_labels" and plain_condition(record, fraction):
            rows_of[row][f"{fraction:g}"].append(float(value))
        elif study == "bias" and math.isclose(fraction, 1.0) and bias != "none":
            rows_of[row][f"{bias}:{control}"].append(float(value))
    columns = ["ours", *(f"{f:g}" for f in fractions)]
    header = ["model", "tutorial", "full labels", *(f"{100 * f:g}% labels" for f in fractions)]
    for bias in biases:
        columns += [f"{bias}:False", f"{bias}:True"]
        if len(biases) == 1:
            header += ["biased training set", "its control"]
        else:
            header += [f"{bias}", f"{bias} control"]
    rows = [
        [row, published.get(row, "–"), *(format_cell(rows_of[row][c]) for c in columns)]
        for row in sorted(rows_of, key=model_sort_key)
    ]
    return (
        f"`{metric}` (%) on the unbiased test set: the tutorial's published figure, ours from "
        "`baselines/`, each fraction of the training labels from `few_labels/`, trained on the "
        "biased set and on its control from `bias/`.\n\n" + markdown_table(header, rows)
    )


# -- outputs ------------------------------------------------------------------------------------
def csv_text(table: Table, metric: str) -> str:
    metric_keys = [metric, "pretrain/test/acc", "chance"]
    metric_keys += [group_key(metric, g) for g in MARGINAL_GROUPS]
    metric_keys += [group_key(metric, g) for g, _ in GROUP_COLUMNS]
    metric_keys = list(dict.fromkeys(metric_keys))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["model", *(ALIASES.get(k, k) for k in table.condition_keys), "n"]
    for key in metric_keys:
        header += [f"{key} mean", f"{key} std"]
    writer.writerow([*header, "runs"])
    for model in table.models:
        for condition in table.conditions:
            cell = cell_at(table, model, condition)
            if cell is None:
                continue
            row: list[Any] = [model, *(v for _, v in condition), len(cell.records)]
            for key in metric_keys:
                values = cell.values(key)
                row += [f"{x:.6g}" for x in mean_std(values)] if values else ["", ""]
            runs = sorted({str(r.job) for r in cell.records})
            writer.writerow([*row, " ".join(runs)])
    return buffer.getvalue()


def chance_of(records: list[Record]) -> float | None:
    chances = [float(r.metrics["chance"]) for r in records if "chance" in r.metrics]
    return statistics.fmean(chances) if chances else None


def write_plots(table: Table, records: list[Record], folder: Path, metric: str) -> list[Path]:
    from reprlab import plots  # matplotlib only when there is something to draw

    written = []
    if LABEL_FRACTION in table.condition_keys:
        other_keys = [k for k in table.condition_keys if k != LABEL_FRACTION]
        curves: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        for cell in table.cells:
            condition = dict(cell.condition)
            values = cell.values(metric)
            if not values:
                continue
            others = condition_label(tuple((k, condition[k]) for k in other_keys))
            label = cell.model if not other_keys else f"{cell.model}, {others}"
            curves[label].append((float(condition[LABEL_FRACTION]), *mean_std(values)))
        curves = {k: v for k, v in curves.items() if len(v) > 1}
        if curves:
            written.append(
                plots.plot_label_fractions(
                    dict(sorted(curves.items(), key=lambda item: model_sort_key(item[0]))),
                    folder / "label_fractions.png",
                    chance=chance_of(records),
                    title=f"{metric} against the fraction of training labels",
                )
            )
    if has_groups(table, metric) and any(
        r.settings.get("bias.name", "none") != "none" for r in records
    ):
        bars: dict[str, dict[str, dict[str, float]]] = {}
        for model in table.models:
            for condition in table.conditions:
                cell = cell_at(table, model, condition)
                if cell is None:
                    continue
                accuracies = {}
                for group, label in GROUP_COLUMNS:
                    values = cell.values(group_key(metric, group))
                    if values:
                        accuracies[label] = statistics.fmean(values)
                bars.setdefault(model, {})[condition_label(condition)] = accuracies
        written.append(
            plots.plot_group_accuracies(
                bars,
                [label for _, label in GROUP_COLUMNS],
                folder / "bias_groups.png",
                chance=chance_of(records),
            )
        )
    return written


def failed_section(failed: list[Job], root: Path) -> str:
    lines = [f"## Runs without results ({len(failed)})", ""]
    for job in failed:
        overrides = f" (overrides: {' '.join(job.overrides)})" if job.overrides else ""
        lines.append(f"- `{relative(job.path, root)}`: {job.problem}{overrides}")
    return "\n".join(lines)


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def build_report(
    folder: Path, metric: str = "test/acc", compare: str | None = None
) -> tuple[str, Table | None, list[Job]]:
    """The report's Markdown text, its table (None without results) and the failed runs; writes
    report.md, report.csv and the plots into ``folder``."""
    from reprlab.io import atomic_write

    jobs = [load_job(path) for path in find_run_folders(folder)]
    finished = [job for job in jobs if job.metrics is not None]
    failed = [job for job in jobs if job.metrics is None]
    records = [record for job in finished for record in records_of(job)]
    sections = [f"# reprlab report: {folder}", ""]
    sections.append(
        f"{len(jobs)} runs: {len(finished)} with results, {len(failed)} without. "
        f"Cells: `{metric}` in %, mean ± standard deviation (number of seeds) where several."
    )
    table = None
    if records:
        table = build_table(records)
        sections += ["", "## Results", "", main_table(table, metric)]
        if has_groups(table, metric) and any(
            r.settings.get("bias.name", "none") != "none" for r in records
        ):
            sections += [
                "",
                f"## `{metric}` per shape and third of the posX range (%)",
                "",
                group_table(table, metric),
            ]
        if compare == "tutorial":
            if any(study_of(r, folder) for r in records):
                sections += ["", "## The study, one row per model", ""]
                sections.append(study_table(records, folder, table.model_keys, metric))
            sections += ["", "## Beside the tutorial", "", tutorial_comparison(records, metric)]
        written = write_plots(table, records, folder, metric)
        atomic_write(folder / "report.csv", lambda h: h.write(csv_text(table, metric).encode()))
        if written:
            sections += ["", "Plots: " + ", ".join(f"`{p.name}`" for p in written)]
    if failed:
        sections += ["", failed_section(failed, folder)]
    text = "\n".join(sections) + "\n"
    atomic_write(folder / "report.md", lambda h: h.write(text.encode()))
    return text, table, failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reprlab-report",
        description="Tabulate the runs in a multirun folder (or a folder of run folders).",
    )
    parser.add_argument("folder", type=Path, help="multirun folder or folder of run folders")
    parser.add_argument("--metric", default="test/acc", help="metrics.json key to tabulate")
    parser.add_argument(
        "--compare",
        choices=["tutorial"],
        help="also set the runs beside the tutorial's published numbers",
    )
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    text, table, _ = build_report(args.folder, args.metric, args.compare)
    print(text, end="")
    if table is None:
        print(f"reprlab-report: no run with a metrics.json under {args.folder}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
