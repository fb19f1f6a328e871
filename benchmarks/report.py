"""metrics.json and the printed table: what a run leaves behind for people and for tools."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from mibench import __version__

from .atomic import write_text_atomic
from .results.metrics_file import METRICS_FILE
from .runner import CLEAN, BenchmarkResult

SCHEMA_VERSION = 1


def git_sha() -> str | None:
    """The suite's commit, when it runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def config_hash(config: Any) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def metrics_document(result: BenchmarkResult, fingerprint: dict, config: Any) -> dict:
    """Every number with its interval, every input that changes a number, what failed
    (`failed`: task, condition or null for the whole task, error), and the metrics the
    scorer could not give with the reason (`omitted_metrics`, only when there are any)."""
    document = {
        "schema_version": SCHEMA_VERSION,
        "suite_version": __version__,
        "git_sha": git_sha(),
        "config_hash": config_hash(fingerprint),
        **fingerprint,
        "config": config,
        "results": {
            task: {cond: {k: e.to_json() for k, e in ms.items()} for cond, ms in conds.items()}
            for task, conds in result.metrics.items()
        },
        "failed": [failure.to_json() for failure in result.failures],
    }
    if result.omitted:
        document["omitted_metrics"] = dict(result.omitted)
    return document


def write_metrics(document: dict, out_dir: str | Path) -> Path:
    return write_text_atomic(Path(out_dir) / METRICS_FILE,
                             json.dumps(document, indent=2, default=str) + "\n")


def format_estimate(estimate: dict | None, percent: bool = True, signed: bool = False) -> str:
    """'43.5 [40.1, 47.0]': an estimate and its 95% interval, in percent (1 decimal) or as
    is (3 decimals); '-' where there is none."""
    if estimate is None or estimate.get("value") is None:
        return "-"
    scale, digits = (100, 1) if percent else (1, 3)
    spec = f"{'+' if signed else ''}.{digits}f"
    value, low, high = (scale * estimate[k] + 0.0 for k in ("value", "low", "high"))  # no -0.0
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def format_table(results: dict, failed: list[dict] | tuple = (),
                 references: dict[str, str] | None = None) -> str:
    """A markdown table: accuracy, change vs clean, flip rate, JS divergence, with 95% CIs;
    for generated answers also the share no parser could read ("unparsed"); a FAILED row
    per failed task or condition (metrics.json's `failed`), errors below.

    `references`: per task, the condition its changes are measured against where that is not
    clean (a task's `reference`, in metrics.json's `tasks`); that row is marked so."""
    references = references or {}
    parsed = any("parse_failure_rate" in m for conds in results.values() for m in conds.values())
    header = ("| task | condition | n | accuracy % | change (points) | flip rate % "
              "| JS div. (bits) |" + (" unparsed % |" if parsed else ""))
    columns = 7 + parsed
    lines = [header, "|" + "---|" * columns]
    for task, conditions in results.items():
        for cond, m in conditions.items():
            drop = m.get("drop")
            change = None if drop is None else {
                "value": -drop["value"], "low": -drop["high"], "high": -drop["low"]}
            shown = f"{cond} (reference)" if references.get(task, CLEAN) == cond != CLEAN else cond
            lines.append(
                f"| {task} | {shown} | {m['accuracy']['n']} | {format_estimate(m['accuracy'])} | "
                f"{'-' if cond == CLEAN else format_estimate(change, signed=True)} | "
                f"{format_estimate(m.get('flip_rate'))} | "
                f"{format_estimate(m.get('js_divergence'), percent=False)} |"
                + (f" {format_estimate(m.get('parse_failure_rate'))} |" if parsed else "")
            )
    marked = {t: r for t, r in references.items() if r != CLEAN and t in results}
    for failure in failed:
        lines.append(f"| {failure['task']} | {failure['condition'] or 'all'} | - | FAILED |"
                     + " - |" * (columns - 4))
    if marked:
        lines += ["", "Changes, flips and JS are measured against clean, except for "
                  + ", ".join(f"{t} (against {r})" for t, r in marked.items()) + "."]
    if failed:
        lines += ["", f"{len(failed)} failed (their errors; every other result is complete):"]
        lines += [f"- {f['task']}{' / ' + f['condition'] if f['condition'] else ''}: "
                  f"{f['error']}" for f in failed]
    return "\n".join(lines)
