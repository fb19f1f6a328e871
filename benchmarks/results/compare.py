"""Compare two checkpoints sample by sample: paired differences, exact McNemar, Holm.

Both runs must have scored the same samples under the same tasks, threat models, prompt,
seed and scorer (a generated answer is never paired with a likelihood one); then each
(task, condition) cell gives two paired tests, on accuracy and on flip rate (answer changed
vs clean; an unread generated answer is an answer of its own), and Holm's step-down adjusts
all p-values of the report together.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mibench.errors import MibenchError
from mibench.records import Record
from mibench.runner import CLEAN
from mibench.scorers import scorer_of
from mibench.scoring import Estimate
from mibench.store import RECORDS_FILE

from .metrics_file import METRICS_FILE, read_metrics
from .stats import McNemar, holm, mcnemar_exact, paired_difference
from .submission import SUBMISSION_FILE, load_submission, read_records_jsonl

ALPHA = 0.05
METRICS = {"accuracy": "Accuracy", "flip_rate": "Flip rate (answer changed vs clean)"}


class IncomparableRunsError(MibenchError, ValueError):
    """Two runs that did not measure the same thing; the message says what differs."""


@dataclass(frozen=True)
class Run:
    """What a comparison needs from a run directory or a submission."""

    path: Path
    label: str
    setup: dict  # tasks, conditions (threat models), prompt, seed, scorer
    cells: dict[str, list[str]]  # task -> conditions, clean first
    records: dict[tuple[str, str, str], Record]


@dataclass(frozen=True)
class CellTest:
    task: str
    condition: str
    metric: str
    n: int
    a: float
    b: float
    difference: Estimate  # b - a over the same samples
    mcnemar: McNemar
    p_holm: float = float("nan")

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


def load_run(path: str | Path) -> Run:
    """A run directory (metrics.json + records.jsonl) or a submission (submission.json)."""
    path = Path(path)
    if path.name == SUBMISSION_FILE or (path / SUBMISSION_FILE).is_file():
        sub = load_submission(path)
        doc = sub.document
        setup = {"tasks": doc["tasks"], "conditions": doc["threat_models"],
                 "prompt": doc["prompt"], "seed": doc["seed"], "scorer": scorer_of(doc)}
        label, results, records = doc["name"], doc["results"], sub.records
    elif (path / METRICS_FILE).is_file():
        metrics = read_metrics(path)
        setup = {**metrics.setup, "scorer": scorer_of(metrics.document)}
        label, results = metrics.model_name or path.name, metrics.results
        records = [Record.from_json(r) for r in read_records_jsonl(path / RECORDS_FILE)]
    else:
        raise FileNotFoundError(f"{path}: neither a run directory ({METRICS_FILE} + "
                                f"{RECORDS_FILE}) nor a submission ({SUBMISSION_FILE})")
    by_key: dict[tuple[str, str, str], Record] = {}
    for record in records:
        if record.key in by_key:
            raise IncomparableRunsError(f"{path}: sample {record.key} is recorded twice")
        by_key[record.key] = record
    cells = {task: [CLEAN, *(c for c in conds if c != CLEAN)] for task, conds in results.items()}
    return Run(path, label, setup, cells, by_key)


def _describe_difference(a: object, b: object) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return "; ".join(f"{k}: {_describe_difference(a.get(k), b.get(k))}" for k in keys)
    return f"{a!r} vs {b!r}"


def check_comparable(a: Run, b: Run) -> None:
    """Refuse runs that differ in what was measured or in which samples, saying what differs."""
    reasons = []
    for key, what in (("tasks", "tasks (samples)"), ("conditions", "threat models / conditions"),
                      ("prompt", "prompt"), ("seed", "seed"),
                      ("scorer", "scorers (how answers were read)")):
        if a.setup[key] != b.setup[key]:
            reasons.append(f"different {what}: "
                           f"{_describe_difference(a.setup[key], b.setup[key])}")
    if {t: set(c) for t, c in a.cells.items()} != {t: set(c) for t, c in b.cells.items()}:
        reasons.append(f"different cells: {a.cells} vs {b.cells}")
    only_a, only_b = set(a.records) - set(b.records), set(b.records) - set(a.records)
    for label, keys in ((a.label, only_a), (b.label, only_b)):
        if keys:
            shown = ", ".join("/".join(k) for k in sorted(keys)[:5])
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            reasons.append(f"different samples: only {label} has {shown}{more}")
    if reasons:
        raise IncomparableRunsError(
            f"cannot compare {a.path} with {b.path}; a paired comparison needs the same "
            "samples under the same conditions:\n" + "\n".join(f"  - {r}" for r in reasons))


def compare_runs(a: Run, b: Run) -> list[CellTest]:
    """Paired tests of B against A in every (task, condition) cell, Holm-adjusted together."""
    check_comparable(a, b)
    seed = int(a.setup["seed"])
    ids: dict[str, list[str]] = defaultdict(list)
    for task, cond, sid in sorted(a.records):
        if cond == CLEAN:
            ids[task].append(sid)
    tests = []
    for task, conditions in a.cells.items():
        def column(run: Run, cond: str, field: str, task: str = task) -> np.ndarray:
            return np.array([getattr(run.records[(task, cond, s)], field) for s in ids[task]])

        clean_a, clean_b = column(a, CLEAN, "prediction"), column(b, CLEAN, "prediction")
        for cond in conditions:
            outcomes = {"accuracy": (column(a, cond, "correct"), column(b, cond, "correct"))}
            if cond != CLEAN:
                outcomes["flip_rate"] = (column(a, cond, "prediction") != clean_a,
                                         column(b, cond, "prediction") != clean_b)
            for metric, (xa, xb) in outcomes.items():
                tests.append(CellTest(
                    task, cond, metric, int(xa.size), float(xa.mean()), float(xb.mean()),
                    paired_difference(xa.astype(float), xb.astype(float), seed),
                    mcnemar_exact(xa, xb)))
    adjusted = holm([t.mcnemar.pvalue for t in tests])
    return [CellTest(**{**t.__dict__, "p_holm": float(p)}) for t, p in zip(tests, adjusted)]


def _points(e: Estimate) -> str:
    value, low, high = (100 * x + 0.0 for x in (e.value, e.low, e.high))
    return f"{value:+.1f} [{low:+.1f}, {high:+.1f}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def format_report(a: Run, b: Run, tests: list[CellTest], plot: str | None = None) -> str:
    """The comparison as markdown: one table per metric, differences B - A in points."""
    lines = [
        f"# {b.label} (B) vs {a.label} (A)",
        "",
        f"- A: `{a.path}`",
        f"- B: `{b.path}`",
        f"- {len({(t.task, t.condition) for t in tests})} cells over the same samples, seed "
        f"{a.setup['seed']}, answers read by scorer `{a.setup['scorer']['name']}`. B − A in "
        "percentage points with a 95% paired bootstrap (BCa) interval over samples; exact "
        "McNemar test on the discordant pairs (b: only A succeeds / flips, c: only B "
        f"does); Holm-adjusted across all {len(tests)} tests of "
        f"this report; * marks Holm p < {ALPHA}.",
    ]
    for metric, title in METRICS.items():
        rows = [t for t in tests if t.metric == metric]
        if not rows:
            continue
        lines += ["", f"## {title}", "",
                  "| task | condition | n | A % | B % | B − A (points) | b / c | p | p Holm |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in rows:
            lines.append(
                f"| {t.task} | {t.condition} | {t.n} | {100 * t.a:.1f} | {100 * t.b:.1f} | "
                f"{_points(t.difference)} | {t.mcnemar.b} / {t.mcnemar.c} | "
                f"{_p(t.mcnemar.pvalue)} | {_p(t.p_holm)}{' *' if t.significant else ''} |")
    if plot:
        lines += ["", f"![B − A per cell]({plot})"]
    return "\n".join(lines) + "\n"


def plot_comparison(a: Run, b: Run, tests: list[CellTest], path: str | Path) -> Path:
    """A forest plot: B − A per cell with its interval, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [m for m in METRICS if any(t.metric == m for t in tests)]
    height = max(2.5, 0.35 * max(sum(t.metric == m for t in tests) for m in panels) + 1.2)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), height),
                             squeeze=False)
    for ax, metric in zip(axes[0], panels):
        rows = [t for t in tests if t.metric == metric][::-1]
        y = np.arange(len(rows))
        values = np.array([100 * t.difference.value for t in rows])
        low = values - np.array([100 * t.difference.low for t in rows])
        high = np.array([100 * t.difference.high for t in rows]) - values
        for i, t in enumerate(rows):
            colour = "tab:red" if t.significant else "tab:gray"
            ax.errorbar(values[i], y[i], xerr=[[low[i]], [high[i]]], fmt="o", color=colour,
                        capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, [f"{t.task} / {t.condition}" for t in rows], fontsize=8)
        ax.set_xlabel(f"{METRICS[metric].split(' (')[0]}: B − A (points)")
    fig.suptitle(f"{b.label} (B) − {a.label} (A), 95% paired CIs; red: Holm p < {ALPHA}",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def compare_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mibench compare",
        description="Paired comparison of two checkpoints on the same samples: B − A per "
                    "(task, condition) in accuracy and flip rate, exact McNemar, Holm.")
    parser.add_argument("run_a", help="run directory or submission (A, the reference)")
    parser.add_argument("run_b", help="run directory or submission (B)")
    parser.add_argument("--out", help="write the markdown report here (and a PNG beside it)")
    args = parser.parse_args(argv)
    try:
        a, b = load_run(args.run_a), load_run(args.run_b)
        tests = compare_runs(a, b)
    except (IncomparableRunsError, FileNotFoundError, ValueError) as err:
        print(f"mibench compare: {err}", file=sys.stderr)
        return 1
    plot = None
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        plot = plot_comparison(a, b, tests, out.with_suffix(".png"))
    report = format_report(a, b, tests, plot.name if plot else None)
    if args.out:
        out.write_text(report)
        print(f"wrote {out} and {plot}", file=sys.stderr)
    print(report)
    return 0
