"""Figures of a run: accuracy per condition with its interval, one panel per task."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_bars(results: dict, path: str | Path) -> Path:
    """Bars of accuracy (95% interval as error bars) per condition, a panel per task."""
    tasks = list(results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1, 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        conds = list(results[task])
        acc = [results[task][c]["accuracy"] for c in conds]
        values = [100 * a["value"] for a in acc]
        errors = [[100 * (a["value"] - a["low"]) for a in acc],
                  [100 * (a["high"] - a["value"]) for a in acc]]
        colours = ["#4c72b0" if c == "clean" else "#dd8452" for c in conds]
        ax.bar(range(len(conds)), values, yerr=errors, color=colours, capsize=3)
        ax.set_xticks(range(len(conds)), conds, rotation=40, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.6, max(len(conds), 3) - 0.4)  # a lone clean bar keeps its width
        ax.set_title(task, fontsize=9)
        ax.set_ylabel("accuracy %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
