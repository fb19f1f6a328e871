"""`mibench diagnose --across RUN...`: does a diagnostic track interference across runs?

Each run directory holds metrics.json (`mibench`) and diagnostics.json (`mibench diagnose`)
of one model or checkpoint on the same tasks. For each task, every diagnostic (gaps and
probe per layer, clean entropy) is paired with every interference score of that task (by
default each condition's `drop`), and Spearman's rho across the runs is reported with a
bootstrap interval over runs and a permutation p-value, beside a scatter plot per score.
With fewer than 3 runs no correlation is meaningful, and the output says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_text_atomic
from .bounded_json import read_json_file
from .diagnose import DIAGNOSTICS_FILE, DiagnoseError
from .diagnostics import spearman
from .records import CLEAN
from .results.metrics_file import MAX_METRICS_BYTES, MAX_METRICS_DEPTH, METRICS_FILE, read_metrics

GAPS = ("gap_l2", "gap_l2_unit", "gap_cosine")
CORRELATION_FILE = "correlation"


@dataclass(frozen=True)
class Diagnosed:
    """One run: its label, metrics.json and diagnostics.json."""

    label: str
    path: Path
    metrics: dict
    diagnostics: dict


def load_diagnosed(paths: Sequence[str | Path]) -> list[Diagnosed]:
    """Each run directory's two files; rows are named after the model (dir name if twice)."""
    found = []
    for raw in paths:
        path = Path(raw)
        files = [path / METRICS_FILE, path / DIAGNOSTICS_FILE]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DiagnoseError(f"{path}: no {' or '.join(missing)} (run `mibench` and "
                                "`mibench diagnose` with the same overrides, or --out there)")
        metrics = read_metrics(files[0]).document
        diagnostics = read_json_file(files[1], MAX_METRICS_BYTES, MAX_METRICS_DEPTH, strict=False)
        found.append((path, metrics, diagnostics))
    names = [str(m.get("model", {}).get("name") or p.name) for p, m, _ in found]
    return [Diagnosed(f"{name} ({p.name})" if names.count(name) > 1 else name, p, m, d)
            for name, (p, m, d) in zip(names, found)]


def diagnostic_values(diagnostics: dict, task: str) -> dict[str, dict]:
    """{name: estimate} of one task: `entropy_bits`, and `gap_l2@LAYER`, ..., `probe@LAYER`."""
    result = diagnostics["tasks"].get(task)
    if result is None:
        return {}
    values = {"entropy_bits": result["entropy_bits"]}
    for layer, layer_values in result["layers"].items():
        for gap in GAPS:
            values[f"{gap}@{layer}"] = layer_values[gap]
        values[f"probe@{layer}"] = layer_values["probe"]["accuracy"]
    return values


def _check_alike(runs: Sequence[Diagnosed]) -> None:
    """Refuse runs whose diagnostics were measured differently, naming what differs."""
    first = runs[0]
    for run in runs[1:]:
        differs = []
        a, b = first.diagnostics, run.diagnostics
        if a["settings"] != b["settings"]:
            differs.append(f"settings {a['settings']} vs {b['settings']}")
        for task in set(a["tasks"]) | set(b["tasks"]):
            ta, tb = a["tasks"].get(task), b["tasks"].get(task)
            if ta is None or tb is None:
                differs.append(f"task {task!r} diagnosed in only one")
            elif (ta["task"], ta["measured_on"], ta["samples"]) != (
                    tb["task"], tb["measured_on"], tb["samples"]):
                differs.append(f"task {task!r} measured on other samples or condition")
        if differs:
            raise DiagnoseError(f"{first.path} and {run.path} were not diagnosed alike: "
                                + "; ".join(differs))


def default_scores(runs: Sequence[Diagnosed]) -> list[str]:
    """`TASK/CONDITION/drop` of every diagnosed task's conditions that every run scored."""
    specs = []
    for task in runs[0].diagnostics["tasks"]:
        shared = None
        for run in runs:
            conds = set(run.metrics.get("results", {}).get(task, {})) - {CLEAN}
            shared = conds if shared is None else shared & conds
        order = list(runs[0].metrics.get("results", {}).get(task, {}))
        specs += [f"{task}/{c}/drop" for c in order if c in (shared or set())]
    return specs


def score_value(run: Diagnosed, spec: str) -> dict:
    parts = spec.split("/")
    if len(parts) != 3:
        raise DiagnoseError(f"--score {spec!r}: give TASK/CONDITION/METRIC, e.g. "
                            "toy_image_heavy/misleading_text/drop")
    task, condition, metric = parts
    value = run.metrics.get("results", {}).get(task, {}).get(condition, {}).get(metric)
    if value is None:
        raise DiagnoseError(f"{run.path}: its metrics.json has no {spec}")
    return value


def correlate(runs: Sequence[Diagnosed], scores: Sequence[str] | None = None, seed: int = 0
              ) -> dict:
    """Spearman's rho of each diagnostic with each score of the same task, across runs."""
    if not runs:
        raise DiagnoseError("no runs given")
    _check_alike(runs)
    specs = list(scores) if scores else default_scores(runs)
    if not specs:
        raise DiagnoseError("no interference score shared by every run; give --score")
    values: dict[str, dict[str, dict]] = {r.label: {} for r in runs}
    rows = []
    for spec in specs:
        task = spec.split("/")[0]
        ys = [score_value(run, spec) for run in runs]
        per_run = [diagnostic_values(run.diagnostics, task) for run in runs]
        names = [n for n in per_run[0] if all(n in d for d in per_run)]
        if not names:
            raise DiagnoseError(f"--score {spec!r}: task {task!r} has no diagnostics in "
                                "every run")
        for run, y, diag in zip(runs, ys, per_run):
            values[run.label][spec] = y
            values[run.label].update({f"{task}/{n}": diag[n] for n in names})
        for name in names:
            corr = spearman([d[name]["value"] for d in per_run], [y["value"] for y in ys],
                            seed)
            rows.append({"task": task, "diagnostic": name, "score": spec, **corr.to_json()})
    return {"runs": {r.label: str(r.path) for r in runs}, "values": values,
            "correlations": rows}


def _num(value: float, digits: int = 3) -> str:
    return "-" if value != value else f"{value:+.{digits}f}"  # NaN -> "-"


def format_correlation(doc: dict) -> str:
    """The values per run, then rho per (diagnostic, score), as markdown."""
    runs = list(doc["values"])
    columns = list(dict.fromkeys(k for v in doc["values"].values() for k in v))
    lines = ["| run | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for run in runs:
        lines.append(f"| {run} | " + " | ".join(
            f"{doc['values'][run][c]['value']:.3f}" for c in columns) + " |")
    lines += ["", "| task | diagnostic | score | runs | Spearman rho [95% CI] | p (perm.) | note |",
              "|---|---|---|---|---|---|---|"]
    for row in doc["correlations"]:
        interval = ("-" if row["low"] != row["low"] else
                    f"[{_num(row['low'], 2)}, {_num(row['high'], 2)}]")
        p = "-" if row["pvalue"] != row["pvalue"] else f"{row['pvalue']:.2g}"
        lines.append(f"| {row['task']} | {row['diagnostic']} | {row['score']} | {row['n']} | "
                     f"{_num(row['rho'], 2)} {interval} | {p} | {row['note']} |")
    return "\n".join(lines) + "\n"


def scatter_plots(doc: dict, out: Path) -> list[Path]:
    """One PNG per score: a panel per diagnostic, a point per run (with both intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for spec in dict.fromkeys(r["score"] for r in doc["correlations"]):
        rows = [r for r in doc["correlations"] if r["score"] == spec]
        cols = min(4, len(rows))
        nrows = -(-len(rows) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 3.0 * nrows), squeeze=False)
        for ax, row in zip(axes.flat, rows):
            key = f"{row['task']}/{row['diagnostic']}"
            for run, vals in doc["values"].items():
                x, y = vals[key], vals[spec]
                ax.errorbar(x["value"], y["value"],
                            xerr=[[x["value"] - x["low"]], [x["high"] - x["value"]]],
                            yerr=[[y["value"] - y["low"]], [y["high"] - y["value"]]],
                            fmt="o", capsize=2)
                ax.annotate(run, (x["value"], y["value"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(row["diagnostic"], fontsize=8)
            ax.set_ylabel(spec.split("/", 1)[1], fontsize=7)
            ax.set_title(f"rho {_num(row['rho'], 2)} (n={row['n']})", fontsize=8)
        for ax in list(axes.flat)[len(rows):]:
            ax.axis("off")
        fig.suptitle(f"{spec} vs diagnostics, one point per run (95% intervals)", fontsize=9)
        fig.tight_layout()
        path = out / f"{CORRELATION_FILE}_{spec.replace('/', '__')}.png"
        fig.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
    return written


def correlation_scalars(doc: dict) -> dict[str, float]:
    flat = {}
    for row in doc["correlations"]:
        key = f"correlation/{row['score']}/{row['diagnostic']}"
        flat.update({f"{key}/rho": row["rho"], f"{key}/low": row["low"],
                     f"{key}/high": row["high"]})
    return flat


def run_across(paths: Sequence[str], scores: Sequence[str] | None, out: Path, logger,
               seed: int = 0) -> int:
    """The command: correlate, write correlation.{json,md} and the plots, log them."""
    doc = correlate(load_diagnosed(paths), scores, seed)
    out.mkdir(parents=True, exist_ok=True)
    text = format_correlation(doc)
    written = [write_text_atomic(out / f"{CORRELATION_FILE}.json",
                                 json.dumps(doc, indent=2) + "\n"),
               write_text_atomic(out / f"{CORRELATION_FILE}.md", text)]
    plots = scatter_plots(doc, out)
    logger.start({"diagnose_across": doc["runs"], "scores": scores}, out)
    try:
        logger.log_diagnostics(correlation_scalars(doc), plots)
    finally:
        logger.finish()
    print(text)
    print(f"correlations in {', '.join(str(p) for p in written + plots)}")
    return 0
