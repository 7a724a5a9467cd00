"""Reading run folders: each run's config, metrics and, for one that failed, the error its log
ends with; then one :class:`Record` per measurement (a run, or one fraction of its label-fraction
sweep), the rows ``reprlab-report`` groups into tables."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from reprlab.metric_keys import REPORT_IGNORED_KEYS, REPORT_IGNORED_PREFIXES, split_fraction_key
from reprlab.names import short_name

LABEL_FRACTION = "label_fraction"
ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*")
# Hydra's instantiate reports the cause as `ValueError("message")`: shown as `ValueError: message`.
WRAPPED_ERROR = re.compile(r"""^(?P<name>[\w.]+)\((?P<quote>["'])(?P<message>.*)(?P=quote)\)$""")


@dataclass
class Job:
    """One run folder: its config and metrics, or why it has none."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    problem: str | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class Record:
    """One measurement: a run, or one fraction of a run's label-fraction sweep."""

    job: Path
    model: str  # method/encoder, refined later
    settings: dict[str, Any]  # flattened config keys + the synthetic label fraction
    metrics: dict[str, Any]
    # The settings that tell this model from others of the same method/encoder, as shown in its
    # name: "temperature=0.1" in "simclr/core (temperature=0.1)". Set by build_table.
    refinement: str = ""


# -- reading ------------------------------------------------------------------------------------
def is_run_folder(path: Path) -> bool:
    return (
        (path / "metrics.json").is_file()
        or (path / "config.yaml").is_file()
        or (path / ".hydra").is_dir()
    )


def natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def find_run_folders(root: Path) -> list[Path]:
    """Run folders at or under ``root`` (not looking inside a run folder)."""
    if is_run_folder(root):
        return [root]
    found = []
    for child in sorted((p for p in root.iterdir() if p.is_dir()), key=natural_key):
        if not child.name.startswith("."):
            found.extend(find_run_folders(child))
    return found


def read_config(path: Path) -> dict[str, Any]:
    config = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(config, resolve=True)
    except Exception:  # an interpolation only Hydra can resolve: keep the raw values
        return OmegaConf.to_container(config, resolve=False)


def last_error(run_dir: Path) -> str | None:
    """The exception line a failed run's log ends with (Hydra writes <job name>.log)."""
    for log_file in sorted(run_dir.glob("*.log")):
        lines = log_file.read_text(errors="replace").splitlines()
        for line in reversed(lines):
            if ERROR_LINE.match(line.strip()):
                wrapped = WRAPPED_ERROR.match(line.strip())
                return f"{wrapped['name']}: {wrapped['message']}" if wrapped else line.strip()
    return None


def load_job(run_dir: Path) -> Job:
    job = Job(run_dir)
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        job.overrides = [str(o) for o in (OmegaConf.load(overrides) or [])]
    for name in ("config.yaml", ".hydra/config.yaml"):
        if (run_dir / name).is_file():
            try:
                job.config = read_config(run_dir / name)
            except Exception as error:
                job.problem = f"{name} unreadable: {error}"
                return job
            break
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        job.problem = last_error(run_dir) or "no metrics.json (unfinished, killed, or failed)"
        return job
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError) as error:
        job.problem = f"metrics.json unreadable: {error}"
        return job
    if not isinstance(metrics, dict):
        job.problem = "metrics.json does not hold an object"
        return job
    if not job.config:
        job.problem = "metrics.json but no config.yaml or .hydra/config.yaml"
        return job
    job.metrics = metrics
    return job


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(tree, list):
        return {prefix[:-1]: json.dumps(tree)}
    return {prefix[:-1]: tree}


def round_fraction(value: float) -> float:
    return float(f"{value:.6g}")


def records_of(job: Job) -> list[Record]:
    """The run's own record, plus one per fraction of its label-fraction sweep."""
    assert job.metrics is not None
    flat = flatten(job.config)
    model = f"{short_name(flat.get('method._target_'))}/{short_name(flat.get('encoder._target_'))}"
    settings = {
        key: value
        for key, value in flat.items()
        if key not in REPORT_IGNORED_KEYS and not key.startswith(REPORT_IGNORED_PREFIXES)
    }
    data_fraction = float(flat.get("data.label_fraction", 1.0))
    own_fraction = job.metrics.get(LABEL_FRACTION)
    if not isinstance(own_fraction, int | float):
        own_fraction = data_fraction * float(flat.get("probe.label_fraction", 1.0))
    records = [
        Record(
            job.path, model, {**settings, LABEL_FRACTION: round_fraction(own_fraction)}, job.metrics
        )
    ]
    sweep: dict[float, dict[str, Any]] = defaultdict(dict)
    for key, value in job.metrics.items():
        parsed = split_fraction_key(key)
        if parsed is not None:
            fraction, metric = parsed
            sweep[round_fraction(fraction * data_fraction)][metric] = value
    shared = {k: v for k, v in job.metrics.items() if k in ("chance", "chance_majority")}
    for fraction, metrics in sorted(sweep.items()):
        if fraction != records[0].settings[LABEL_FRACTION]:
            records.append(
                Record(
                    job.path, model, {**settings, LABEL_FRACTION: fraction}, {**shared, **metrics}
                )
            )
    return records
