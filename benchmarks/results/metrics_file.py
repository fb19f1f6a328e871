"""metrics.json read back: one typed reader for every tool that consumes a run's results.

`compare`, `tables`, `submit` and the trainer's before/after report all read the file a run
leaves behind; they read it here, in bounded memory (a file given to `compare` or `tables` may
come from elsewhere), checked for the shape the suite writes, with an error that names the
file. The document stays available whole for the fields a tool carries on unread.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mibench.bounded_json import read_json_file
from mibench.errors import MibenchError
from mibench.records import CLEAN

METRICS_FILE = "metrics.json"
# The full cai2025 grid's metrics.json is well under 1 MiB and nests about 8 levels.
MAX_METRICS_BYTES = 64 << 20
MAX_METRICS_DEPTH = 64

Estimate = dict[str, Any]  # {"value", "low", "high", "n", ...} as scoring.Estimate writes it
Results = dict[str, dict[str, dict[str, Estimate]]]  # task -> condition -> metric -> estimate


class MetricsFileError(MibenchError, ValueError):
    """A metrics.json that is missing or not in the shape the suite writes (names the file)."""


@dataclass(frozen=True)
class RunMetrics:
    """One run's metrics.json: its results by task, condition and metric, and what failed."""

    source: Path
    document: dict

    @property
    def results(self) -> Results:
        return self.document["results"]

    @property
    def failed(self) -> list[dict]:
        return list(self.document.get("failed") or [])

    @property
    def model(self) -> dict:
        return self.document.get("model") or {}

    @property
    def model_name(self) -> str | None:
        return self.model.get("name")

    @property
    def tasks(self) -> dict[str, dict]:
        """Each task's describe(): category, source, data digest, reference condition."""
        return self.document.get("tasks") or {}

    @property
    def conditions(self) -> dict[str, dict]:
        """Each condition's describe(): the perturbation's settings or the threat model."""
        return self.document.get("conditions") or {}

    @property
    def prompt(self) -> Any:
        return self.document.get("prompt")

    @property
    def seed(self) -> int | None:
        return self.document.get("seed")

    @property
    def config(self) -> dict:
        return self.document.get("config") or {}

    @property
    def setup(self) -> dict:
        """What makes two runs' numbers comparable: tasks, conditions, prompt and seed."""
        return {"tasks": self.tasks, "conditions": self.conditions, "prompt": self.prompt,
                "seed": self.seed}

    def category(self, task: str) -> str:
        return self.tasks.get(task, {}).get("category", "other")

    def estimate(self, task: str, condition: str, metric: str) -> Estimate | None:
        return self.results.get(task, {}).get(condition, {}).get(metric)

    def cells(self) -> Iterator[tuple[str, str]]:
        """(task, condition) in the order the run lists them, clean first per task."""
        for task, conditions in self.results.items():
            for condition in sorted(conditions, key=lambda c: c != CLEAN):
                yield task, condition


def metrics_of(document: Mapping, source: str | Path = METRICS_FILE) -> RunMetrics:
    """A metrics document already in memory (a run's own), checked like a file's."""
    _check_shape(document, Path(source))
    return RunMetrics(Path(source), dict(document))


def read_metrics(path: str | Path) -> RunMetrics:
    """A run directory's metrics.json, or the file itself."""
    path = Path(path)
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise MetricsFileError(f"no {METRICS_FILE} at {file} (give a run directory or the "
                               "metrics.json file)")
    try:  # NaN is how a run writes an undefined interval: allowed, unlike in submissions
        document = read_json_file(file, MAX_METRICS_BYTES, MAX_METRICS_DEPTH, strict=False)
    except MibenchError as err:
        raise MetricsFileError(f"{file}: {err}") from err
    return metrics_of(document, file)


def _check_shape(document: Any, file: Path) -> None:
    if not isinstance(document, Mapping) or "results" not in document:
        raise MetricsFileError(f"{file} has no 'results': is it a mibench metrics.json?")
    results = document["results"]
    if not isinstance(results, Mapping):
        raise MetricsFileError(f"{file}: 'results' is not an object of tasks")
    for task, conditions in results.items():
        if not isinstance(conditions, Mapping):
            raise MetricsFileError(f"{file}: results.{task} is not an object of conditions")
        for condition, metrics in conditions.items():
            if not isinstance(metrics, Mapping) or not all(
                    isinstance(e, Mapping) for e in metrics.values()):
                raise MetricsFileError(f"{file}: results.{task}.{condition} is not an object "
                                       "of estimates")
    if not isinstance(document.get("failed", []), list):
        raise MetricsFileError(f"{file}: 'failed' is not a list")
