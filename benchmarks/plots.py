"""Figures of a run: accuracy per condition with its interval, one panel per task."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

CLEAN_COLOUR, PERTURBED_COLOUR, CHANCE_COLOUR = "#4c72b0", "#dd8452", "#555555"


def accuracy_bars(results: dict, path: str | Path, *, model: str | None = None,
                  chance: dict[str, float] | None = None) -> Path:
    """Writes `accuracy_figure` as a PNG."""
    fig = accuracy_figure(results, model=model, chance=chance)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def accuracy_figure(results: dict, *, model: str | None = None,
                    chance: dict[str, float] | None = None) -> plt.Figure:
    """Bars of accuracy per condition, a panel per task, with what a reader needs to read
    them alone: the model, a legend, each task's chance level (1/#options) and what the
    error bars are (95% Wilson intervals of the exact binomial)."""
    tasks = list(results)
    chance = chance or {}
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1, 3.9), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        conds = list(results[task])
        acc = [results[task][c]["accuracy"] for c in conds]
        values = [100 * a["value"] for a in acc]
        errors = [[100 * (a["value"] - a["low"]) for a in acc],
                  [100 * (a["high"] - a["value"]) for a in acc]]
        colours = [CLEAN_COLOUR if c == "clean" else PERTURBED_COLOUR for c in conds]
        ax.bar(range(len(conds)), values, yerr=errors, color=colours, capsize=3)
        if task in chance:
            ax.axhline(100 * chance[task], color=CHANCE_COLOUR, linestyle="--", linewidth=1)
        ax.set_xticks(range(len(conds)), conds, rotation=40, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.6, max(len(conds), 3) - 0.4)  # a lone clean bar keeps its width
        ax.set_title(task, fontsize=9)
        ax.set_ylabel("accuracy %")
    handles = [Patch(color=CLEAN_COLOUR, label="clean"),
               Patch(color=PERTURBED_COLOUR, label="perturbed")]
    if chance:
        handles.append(Line2D([], [], color=CHANCE_COLOUR, linestyle="--",
                              label="chance (1/#options)"))
    handles.append(Line2D([], [], color="black", marker="|", linestyle="none", markersize=10,
                          label="95% Wilson interval"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle(f"{model}: accuracy per condition" if model else "accuracy per condition",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
