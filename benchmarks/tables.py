"""Tables and a radar plot in the layout of the study (Cai et al., 2505.19616) from metrics.json.

One markdown table per task category (image-heavy, text-heavy, VQA): a row per run (model),
a column per dataset x condition, each cell the metric in percent with its 95% interval,
"43.5 [40.1, 47.0]". The radar plot (the study's Figure 1) has one axis per column and one
polygon per run. Input: run directories (holding metrics.json) or metrics.json files.

    mibench tables outputs/llava7b outputs/llava7b-ft --out tables/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import MibenchError
from .metrics_file import RunMetrics, read_metrics
from .report import format_estimate
from .subgroups import MIN_N, SubgroupError, write_split

CATEGORY_TITLES = {"image_heavy": "Image-heavy", "text_heavy": "Text-heavy", "vqa": "VQA"}
PERCENT_METRICS = {"accuracy", "drop", "flip_rate", "harm_rate", "lure_rate"}


class TablesInputError(MibenchError, ValueError):
    """A run given to `mibench tables` cannot be read (names the file and what to give)."""


@dataclass(frozen=True)
class Run:
    """One run's metrics and the name its row gets."""

    label: str
    metrics: RunMetrics

    @property
    def document(self) -> dict:
        return self.metrics.document

    def category(self, task: str) -> str:
        return self.metrics.category(task)


def load_runs(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Run]:
    """Read each run directory's (or file's) metrics.json; rows are named after the model.

    Two runs of the same model name get their directory name appended, so rows stay apart.
    """
    found = [read_metrics(path) for path in paths]
    if labels is not None and len(labels) != len(found):
        raise TablesInputError(f"{len(labels)} labels for {len(found)} runs")
    names = list(labels) if labels is not None else [
        str(m.model_name or m.source.parent.name) for m in found]
    runs = []
    for metrics, name in zip(found, names):
        if labels is None and names.count(name) > 1:
            name = f"{name} ({metrics.source.parent.name})"
        runs.append(Run(name, metrics))
    return runs


def columns(runs: Sequence[Run], category: str | None = None) -> list[tuple[str, str]]:
    """(task, condition) pairs in the order the runs first list them, clean first per task."""
    seen: dict[tuple[str, str], None] = {}
    for run in runs:
        for task, condition in run.metrics.cells():
            if category is None or run.category(task) == category:
                seen.setdefault((task, condition), None)
    return list(seen)


def format_cell(estimate: dict | None, metric: str = "accuracy") -> str:
    """'43.5 [40.1, 47.0]' (percent for proportions; JS divergence as is, 3 decimals)."""
    return format_estimate(estimate, percent=metric in PERCENT_METRICS)


def lookup(run: Run, task: str, condition: str, metric: str) -> dict | None:
    return run.metrics.estimate(task, condition, metric)


def category_table(runs: Sequence[Run], category: str, metric: str = "accuracy") -> str:
    """A markdown table: a row per run, a column per dataset x condition of one category."""
    cols = columns(runs, category)
    if not cols:
        return ""
    header = "| model | " + " | ".join(f"{t} / {c}" for t, c in cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 1)]
    for run in runs:
        cells = [format_cell(lookup(run, t, c, metric), metric) for t, c in cols]
        lines.append(f"| {run.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_tables(runs: Sequence[Run], metric: str = "accuracy") -> str:
    """All category tables, each under a heading, in the study's order."""
    categories = [c for c in CATEGORY_TITLES if columns(runs, c)]
    others = sorted({r.category(t) for r in runs for t in r.metrics.results}
                    - set(CATEGORY_TITLES))
    unit = "%, 95% CI" if metric in PERCENT_METRICS else "95% CI"
    parts = []
    for category in [*categories, *others]:
        title = CATEGORY_TITLES.get(category, category)
        parts.append(f"### {title}: {metric} ({unit})\n\n{category_table(runs, category, metric)}")
    return "\n\n".join(parts) + "\n"


def radar_plot(runs: Sequence[Run], path: str | Path, metric: str = "accuracy",
               conditions: Sequence[str] | None = None) -> Path:
    """The study's Figure 1: an axis per dataset x condition, a polygon per run (PNG)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = [(t, c) for t, c in columns(runs) if conditions is None or c in conditions]
    if len(cols) < 3:
        raise ValueError(f"a radar plot needs at least 3 dataset x condition cells, got {cols}")
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    angles = np.linspace(0, 2 * np.pi, len(cols), endpoint=False)
    fig = Figure(figsize=(8, 8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="polar")
    for run in runs:
        values = [lookup(run, t, c, metric) for t, c in cols]
        points = np.array([np.nan if v is None else scale * v["value"] for v in values])
        closed = np.append(points, points[:1])
        ax.plot(np.append(angles, angles[:1]), closed, marker="o", label=run.label)
        ax.fill(np.append(angles, angles[:1]), np.nan_to_num(closed), alpha=0.1)
    ax.set_xticks(angles)
    ax.set_xticklabels([f"{t}\n{c}" for t, c in cols], fontsize=7)
    if metric in PERCENT_METRICS:
        ax.set_ylim(0, 100)
    ax.set_title(f"{metric} by dataset and condition", pad=20)
    ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.1), fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: render the study-layout tables (markdown) and radar plot (PNG) of some runs."""
    parser = argparse.ArgumentParser(
        prog="mibench tables", description="Study-layout tables and radar plot from metrics.json")
    parser.add_argument("runs", nargs="+", help="run directories or metrics.json files")
    parser.add_argument("--out", default=".", help="output directory (default: .)")
    parser.add_argument("--metric", default="accuracy",
                        choices=sorted(PERCENT_METRICS | {"js_divergence"}))
    parser.add_argument("--labels", nargs="+", help="row names, one per run (default: model)")
    parser.add_argument("--no-radar", action="store_true", help="skip the radar plot")
    parser.add_argument("--by", metavar="meta.KEY",
                        help="every metric per subgroup of samples (a metadata key of the "
                             "records, e.g. meta.subject), from the runs' records")
    parser.add_argument("--min-n", type=int, default=MIN_N,
                        help=f"with --by: subgroups under this many samples are pooled into "
                             f"'other' (default {MIN_N})")
    args = parser.parse_args(argv)
    if args.by:
        try:
            text, written = write_split(args.runs, args.by, Path(args.out), args.min_n,
                                        args.metric, args.labels)
        except (SubgroupError, FileNotFoundError) as err:
            print(f"mibench tables: {err}", file=sys.stderr)
            return 1
        print(text)
        print(f"subgroups in {', '.join(str(p) for p in written)}")
        return 0
    runs = load_runs(args.runs, args.labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = render_tables(runs, args.metric)
    table_path = out / f"tables_{args.metric}.md"
    table_path.write_text(text)
    print(text)
    print(f"tables in {table_path}")
    if not args.no_radar:
        if len(columns(runs)) >= 3:
            png = radar_plot(runs, out / f"radar_{args.metric}.png", args.metric)
            print(f"radar plot in {png}")
        else:
            print("radar plot skipped: fewer than 3 dataset x condition cells")
    return 0
