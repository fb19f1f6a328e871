"""Tables and radar plots of several runs (Cai et al., 2505.19616) from their metrics.json.

Two layouts:
- `suite` (default): one markdown table per task category (image-heavy, text-heavy, VQA): a
  row per run (model), a column per dataset x condition, each cell the metric in percent with
  its 95% interval, "43.5 [40.1, 47.0]"; one radar plot with an axis per column and a polygon
  per run (compares checkpoints).
- `study`: the orientation of the study's Figure 1: one panel per dataset, an axis per run
  (model), a polygon per condition, the task's reference condition marked; and one markdown
  table per dataset, a row per condition and a column per model.
Input: run directories (holding metrics.json) or metrics.json files.

    mibench tables outputs/llava7b outputs/llava7b-ft --out tables/
    mibench tables runs/* --layout study --conditions clean unrelated_text misleading_text \
        random_pixels black_image switched_image     # the conditions Figure 1 draws
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mibench.errors import MibenchError
from mibench.report import format_estimate

from .metrics_file import RunMetrics, read_metrics
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
        _polygon(ax, angles, [lookup(run, t, c, metric) for t, c in cols], scale, run.label,
                 alpha=0.1)
    ax.set_xticks(angles)
    ax.set_xticklabels([f"{t}\n{c}" for t, c in cols], fontsize=7)
    if metric in PERCENT_METRICS:
        ax.set_ylim(0, 100)
    ax.set_title(f"{metric} by dataset and condition", pad=20)
    ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.1), fontsize=8)
    return _save(fig, path, dpi=120)


def _polygon(ax, angles, estimates: Sequence[dict | None], scale: float, label: str,
             alpha: float) -> None:
    """One closed, filled polygon of estimates (a missing one is a gap, filled as 0)."""
    import numpy as np

    points = np.array([np.nan if v is None else scale * v["value"] for v in estimates])
    closed, around = np.append(points, points[:1]), np.append(angles, angles[:1])
    ax.plot(around, closed, marker="o", label=label)
    ax.fill(around, np.nan_to_num(closed), alpha=alpha)


def _save(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    return path


# -- the study's orientation (Figure 1) ------------------------------------------------------
# The study's names for the conditions (its Figure 1 legend; "White Canvas" is not drawn there).
STUDY_NAMES = {"clean": "No Interference", "unrelated_text": "Irrelevant Text",
               "misleading_text": "Misleading Text", "random_pixels": "Random Pixels",
               "black_image": "Black Canvas", "white_image": "White Canvas",
               "switched_image": "Irrelevant Image"}


def reference(runs: Sequence[Run], task: str) -> str:
    """The condition a task's changes were measured against (recorded in metrics.json)."""
    for run in runs:
        found = run.document.get("tasks", {}).get(task, {}).get("reference")
        if found:
            return str(found)
    return "clean"


def condition_label(runs: Sequence[Run], task: str, condition: str) -> str:
    """A condition as the study's figure names it; the reference marked "(Clean)" as the
    study marks its random-pixel reference, an image-free clean called what it is."""
    ref = reference(runs, task)
    text_only = any(r.category(task) == "text_heavy" for r in runs)
    name = "No Image" if condition == "clean" and text_only else STUDY_NAMES.get(
        condition, condition)
    return f"{name} (Clean)" if condition == ref else name


def study_table(runs: Sequence[Run], task: str, conditions: Sequence[str],
                metric: str = "accuracy") -> str:
    """One dataset: a row per condition, a column per run (the study's orientation)."""
    lines = ["| condition | " + " | ".join(r.label for r in runs) + " |",
             "|" + "---|" * (len(runs) + 1)]
    for condition in conditions:
        cells = [format_cell(lookup(run, task, condition, metric), metric) for run in runs]
        lines.append(f"| {condition_label(runs, task, condition)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dataset_conditions(runs: Sequence[Run], keep: Sequence[str] | None = None
                       ) -> dict[str, list[str]]:
    """Per dataset (task), its conditions in the runs' order, clean first; `keep` filters."""
    found: dict[str, list[str]] = {}
    for task, condition in columns(runs):
        if keep is None or condition in keep:
            found.setdefault(task, []).append(condition)
    return found


def render_study_tables(runs: Sequence[Run], metric: str = "accuracy",
                        conditions: Sequence[str] | None = None) -> str:
    unit = "%, 95% CI" if metric in PERCENT_METRICS else "95% CI"
    parts = [f"### {task}: {metric} ({unit})\n\n{study_table(runs, task, conds, metric)}"
             for task, conds in dataset_conditions(runs, conditions).items()]
    return "\n\n".join(parts) + "\n"


def study_radar_plot(runs: Sequence[Run], path: str | Path, metric: str = "accuracy",
                     conditions: Sequence[str] | None = None) -> Path:
    """The study's Figure 1 orientation: a panel per dataset, an axis per run (model), a
    filled polygon per condition; 0-100 with rings every 20 for percentages (PNG)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = dataset_conditions(runs, conditions)
    if not panels:
        raise ValueError("no dataset x condition cell to plot")
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(6 * cols, 6.6 * rows))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(hspace=0.4, wspace=0.5)
    angles = np.linspace(0, 2 * np.pi, len(runs), endpoint=False)
    for k, (task, conds) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, k + 1, projection="polar")
        ax.set_theta_zero_location("N")
        ax.set_theta_direction(-1)  # clockwise from the top, as the study's figure
        for condition in conds:
            _polygon(ax, angles, [lookup(run, task, condition, metric) for run in runs], scale,
                     condition_label(runs, task, condition), alpha=0.15)
        ax.set_xticks(angles)
        ax.set_xticklabels([r.label for r in runs], fontsize=8)
        if metric in PERCENT_METRICS:
            ax.set_ylim(0, 100)
            ax.set_yticks([20, 40, 60, 80, 100])
        ax.set_title(f"{task}: {metric}", pad=18)
        ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.12), fontsize=7)
    return _save(fig, path, dpi=110)


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
    parser.add_argument("--layout", choices=("suite", "study"), default="suite",
                        help="suite: a row and a polygon per run; study: the study's Figure 1, "
                             "a panel per dataset, an axis per model, a polygon per condition")
    parser.add_argument("--conditions", nargs="+",
                        help="only these conditions (default: all the runs have)")
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
    if args.layout == "study":
        return _study_layout(runs, out, args)
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


def _study_layout(runs: Sequence[Run], out: Path, args: argparse.Namespace) -> int:
    text = render_study_tables(runs, args.metric, args.conditions)
    table_path = out / f"tables_study_{args.metric}.md"
    table_path.write_text(text)
    print(text)
    print(f"tables in {table_path}")
    if not args.no_radar:
        if len(runs) < 3:
            print(f"note: {len(runs)} run(s), so {len(runs)} axis per panel; the study's "
                  "polygons need 3 models or more")
        png = study_radar_plot(runs, out / f"radar_study_{args.metric}.png", args.metric,
                               args.conditions)
        print(f"radar plot in {png}")
    return 0
