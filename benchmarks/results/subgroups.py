"""Every metric per subgroup of samples: `mibench tables RUN... --by meta.KEY`.

A sample's subgroup is a value of its metadata as its record's audit holds it (a dataset
column such as MMLU's subject or SEED-Bench's question type, the toy's attribute, or what a
condition noted, e.g. a switched image's donor). Per (task, condition, subgroup) the suite's
own scoring gives each metric with its 95% interval and n, over the subgroup's samples only;
subgroups smaller than `min_n` samples are pooled into one "other" row, and the output lists
what was pooled.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mibench import scoring
from mibench.atomic import write_text_atomic
from mibench.records import CLEAN, Record
from mibench.report import format_estimate

OTHER = "other"
MISSING = "(missing)"
MIN_N = 30  # default: a subgroup with fewer samples is pooled into "other"
METRIC_ORDER = ("accuracy", "drop", "flip_rate", "harm_rate", "js_divergence", "lure_rate")
PERCENT = {"accuracy", "drop", "flip_rate", "harm_rate", "lure_rate"}


class SubgroupError(ValueError):
    """A key or run that cannot be split; the message says what there is instead."""


@dataclass(frozen=True)
class Row:
    """One subgroup of one (task, condition): its metrics, and what it pools, if "other"."""

    task: str
    condition: str
    group: str
    metrics: dict[str, scoring.Estimate]
    pooled: tuple[tuple[str, int], ...] = ()  # (value, n) of the subgroups pooled here

    @property
    def n(self) -> int:
        return self.metrics["accuracy"].n

    def to_json(self) -> dict:
        return {"task": self.task, "condition": self.condition, "group": self.group,
                "n": self.n, "pooled": [list(p) for p in self.pooled],
                "metrics": {k: e.to_json() for k, e in self.metrics.items()}}


@dataclass
class Split:
    """A run split by one key: rows, and the tasks that could not be split and why."""

    label: str
    key: str
    min_n: int
    rows: list[Row] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why

    def to_json(self) -> dict:
        return {"run": self.label, "by": f"meta.{self.key}", "min_n": self.min_n,
                "rows": [r.to_json() for r in self.rows], "skipped": self.skipped}


def parse_key(by: str) -> str:
    """'meta.subject' -> 'subject' (only metadata keys split samples)."""
    if not by.startswith("meta.") or len(by) <= len("meta."):
        raise SubgroupError(f"--by {by!r}: give a metadata key as meta.KEY, e.g. "
                            "meta.subject or meta.attribute")
    return by[len("meta."):]


def value_of(record: Record, key: str) -> str | None:
    """The record's metadata value as a group name (lists as JSON), None if absent."""
    if record.audit is None or key not in record.audit.meta:
        return None
    value = record.audit.meta[key]
    return value if isinstance(value, str) else json.dumps(value)


def _pooling(sizes: Counter, min_n: int) -> tuple[dict[str, str], tuple[tuple[str, int], ...]]:
    """Each value's row name, and the (value, n) pooled into "other"."""
    small = sorted((v, n) for v, n in sizes.items() if n < min_n)
    names = {v: (OTHER if n < min_n else v) for v, n in sizes.items()}
    return names, tuple(small)


def split_run(label: str, records: dict[tuple[str, str, str], Record],
              cells: dict[str, list[str]], key: str, min_n: int = MIN_N, seed: int = 0
              ) -> Split:
    """Every metric per subgroup of every (task, condition) cell of one run.

    A clean record's group is its own metadata value; a condition's record takes its own
    value where it has the key (a condition may note one, e.g. `donor`), else its clean
    record's. Groups of fewer than `min_n` samples are pooled into "other".
    """
    if min_n < 1:
        raise SubgroupError(f"--min-n must be at least 1, got {min_n}")
    split = Split(label, key, min_n)
    for task, conditions in cells.items():
        clean = {sid: r for (t, c, sid), r in records.items() if t == task and c == CLEAN}
        if not clean:
            continue
        if all(r.audit is None for r in clean.values()):
            split.skipped[task] = ("its records carry no audit trail (scored before it "
                                   "existed); score the run again to split it")
            continue
        known = {k for r in records.values() if r.task == task and r.audit is not None
                 for k in r.audit.meta}
        if key not in known:
            split.skipped[task] = (f"no meta.{key} in its records (they hold: "
                                   f"{', '.join(sorted(known)) or 'no metadata'})")
            continue
        base = {sid: value_of(r, key) for sid, r in clean.items()}
        for condition in conditions:
            cell = {sid: r for (t, c, sid), r in records.items()
                    if t == task and c == condition and sid in clean}
            groups = {sid: value_of(r, key) or base[sid] or MISSING for sid, r in cell.items()}
            if set(groups.values()) <= {MISSING}:
                continue  # a key only some conditions note (a donor): not this cell's
            names, pooled = _pooling(Counter(groups.values()), min_n)
            members: dict[str, list[str]] = {}
            for sid in sorted(cell):
                members.setdefault(names[groups[sid]], []).append(sid)
            for group in sorted(members, key=lambda g: (g == OTHER, g)):
                ids = members[group]
                perturbed = [cell[s] for s in ids]
                metrics = (scoring.clean_metrics(perturbed) if condition == CLEAN else
                           scoring.condition_metrics([clean[s] for s in ids], perturbed, seed))
                split.rows.append(Row(task, condition, group, metrics,
                                      pooled if group == OTHER else ()))
    return split


def format_split(splits: Sequence[Split]) -> str:
    """A markdown table per run, notes on pooled and skipped groups below it."""
    parts = []
    for split in splits:
        header = (f"| task | condition | meta.{split.key} | n | accuracy % | change (points) "
                  "| flip rate % | harm rate % | JS div. (bits) | lure rate % |")
        lines = [f"### {split.label}: by meta.{split.key} (95% CI; groups under "
                 f"{split.min_n} samples pooled into \"{OTHER}\")", "", header,
                 "|" + "---|" * 10]
        for row in split.rows:
            m = row.metrics
            drop = m.get("drop")
            change = None if drop is None else {
                "value": -drop.value, "low": -drop.high, "high": -drop.low}
            cells = [format_estimate(m["accuracy"].to_json()),
                     "-" if change is None else format_estimate(change, signed=True),
                     *(format_estimate(m[k].to_json()) if k in m else "-"
                       for k in ("flip_rate", "harm_rate")),
                     format_estimate(m["js_divergence"].to_json(), percent=False)
                     if "js_divergence" in m else "-",
                     format_estimate(m["lure_rate"].to_json()) if "lure_rate" in m else "-"]
            lines.append(f"| {row.task} | {row.condition} | {row.group} | {row.n} | "
                         + " | ".join(cells) + " |")
        notes = []
        pooled = {(r.task, r.pooled) for r in split.rows if r.pooled}
        for task, groups in sorted(pooled):
            shown = ", ".join(f"{v} (n={n})" for v, n in groups)
            notes.append(f"- {task}: pooled into \"{OTHER}\" (each under {split.min_n} "
                         f"samples): {shown}")
        notes += [f"- {task}: not split: {why}" for task, why in split.skipped.items()]
        parts.append("\n".join(lines + ([""] + notes if notes else [])))
    return "\n\n".join(parts) + "\n"


def plot_split(splits: Sequence[Split], path: str | Path, metric: str = "accuracy") -> Path:
    """Bars of `metric` per condition, one bar per subgroup (95% interval as error bars),
    one panel per run and task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [(s, t) for s in splits for t in dict.fromkeys(r.task for r in s.rows)]
    if not panels:
        raise SubgroupError("nothing to plot: no task could be split")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1, 3.8),
                             squeeze=False)
    scale = 100.0 if metric in PERCENT else 1.0
    for ax, (split, task) in zip(axes[0], panels):
        rows = [r for r in split.rows if r.task == task and metric in r.metrics]
        conditions = list(dict.fromkeys(r.condition for r in rows))
        groups = list(dict.fromkeys(r.group for r in rows))
        width = 0.8 / max(1, len(groups))
        for g, group in enumerate(groups):
            at = {r.condition: r.metrics[metric] for r in rows if r.group == group}
            xs = [i + (g - (len(groups) - 1) / 2) * width
                  for i, c in enumerate(conditions) if c in at]
            est = [at[c] for c in conditions if c in at]
            values = np.array([scale * e.value for e in est])
            errors = [values - [scale * e.low for e in est], [scale * e.high for e in est]
                      - values]
            n = [e.n for e in est]
            ax.bar(xs, values, width, yerr=errors, capsize=2,
                   label=f"{group} (n={min(n)}{'' if len(set(n)) == 1 else '+'})")
        ax.set_xticks(range(len(conditions)), conditions, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{split.label}: {task}", fontsize=9)
        ax.set_ylabel(f"{metric}{' %' if metric in PERCENT else ''}")
        ax.legend(title=f"meta.{split.key}", fontsize=7, title_fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def write_split(runs: Sequence[str | Path], by: str, out: Path, min_n: int = MIN_N,
                metric: str = "accuracy", labels: Sequence[str] | None = None
                ) -> tuple[str, list[Path]]:
    """Split each run (directory or submission) by `by`; write the markdown, JSON and plot."""
    from .compare import load_run

    key = parse_key(by)
    if labels is not None and len(labels) != len(runs):
        raise SubgroupError(f"{len(labels)} labels for {len(runs)} runs")
    splits = []
    for i, path in enumerate(runs):
        run = load_run(path)
        label = labels[i] if labels is not None else run.label
        splits.append(split_run(label, run.records, run.cells, key, min_n,
                                int(run.setup["seed"])))
    if not any(s.rows for s in splits):
        reasons = "; ".join(f"{s.label}/{t}: {why}" for s in splits for t, why in s.skipped.items())
        raise SubgroupError(f"no run could be split by meta.{key}: {reasons or 'no records'}")
    out.mkdir(parents=True, exist_ok=True)
    text = format_split(splits)
    stem = f"subgroups_{key}"
    written = [write_text_atomic(out / f"{stem}.md", text),
               write_text_atomic(out / f"{stem}.json",
                                 json.dumps([s.to_json() for s in splits], indent=2) + "\n"),
               plot_split(splits, out / f"{stem}_{metric}.png", metric)]
    return text, written
