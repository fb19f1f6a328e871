"""The leaderboard's HTML page: sortable tables, bar and radar plots inlined as PNG.

Apart from the ranking (leaderboard.py) because it is presentation only: nothing here decides
a number or an order.
"""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np

from mibench.report import format_estimate

from .leaderboard import SCORE_DEFINITION, Entry, benchmark_title, ranking_rows


# -- plots ---------------------------------------------------------------------------------
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars_png(entries: list[Entry]) -> str:
    """Clean accuracy per task and flip rate per heuristic cell, one bar per model, 95% CIs."""
    plt = _pyplot()
    tasks, cells = list(entries[0].clean), list(entries[0].components)
    fig, (left, right) = plt.subplots(1, 2, figsize=(4 + 0.9 * len(cells) * len(entries) ** 0.5,
                                                       4.2),
                                      gridspec_kw={"width_ratios": [max(1, len(tasks)),
                                                                    max(1, len(cells))]})
    width = 0.8 / len(entries)
    for ax, keys, getter, title in (
            (left, tasks, lambda e, k: e.clean.get(k), "clean accuracy % (higher is better)"),
            (right, cells, lambda e, k: e.components.get(k), "flip rate % (lower is better)")):
        for i, e in enumerate(entries):
            est = [getter(e, k) or {} for k in keys]
            values = np.array([100 * (x.get("value") or 0) for x in est])
            err = np.array([[100 * ((x.get("value") or 0) - (x.get("low") or 0)) for x in est],
                            [100 * ((x.get("high") or 0) - (x.get("value") or 0)) for x in est]])
            ax.bar(np.arange(len(keys)) + (i - (len(entries) - 1) / 2) * width, values, width,
                   yerr=err, capsize=2, label=e.name)
        ax.set_xticks(np.arange(len(keys)), [k.replace("/", "\n") for k in keys], fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_title(title, fontsize=9)
    right.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def radar_png(entry: Entry) -> str | None:
    """The model's flip rate per heuristic cell on a radar (needs at least three cells)."""
    cells = list(entry.components)
    if len(cells) < 3:
        return None
    plt = _pyplot()
    values = [100 * (entry.components[c]["value"] or 0) for c in cells]
    angles = np.linspace(0, 2 * np.pi, len(cells), endpoint=False)
    fig = plt.figure(figsize=(3.6, 3.6))
    ax = fig.add_subplot(projection="polar")
    ax.plot(np.append(angles, angles[0]), values + values[:1], color="tab:red")
    ax.fill(np.append(angles, angles[0]), values + values[:1], color="tab:red", alpha=0.25)
    ax.set_xticks(angles, [c.replace("/", "\n") for c in cells], fontsize=6)
    ax.set_ylim(0, 100)
    ax.set_yticks([25, 50, 75], ["25", "50", "75"], fontsize=6)
    ax.set_title(f"{entry.name}: flip rate %", fontsize=9)
    fig.tight_layout()
    return _png(fig)


# -- HTML ----------------------------------------------------------------------------------
SORT_SCRIPT = """
function cellKey(cell) {
  var v = cell.getAttribute("data-value");
  return v === null || v === "" ? cell.textContent.trim().toLowerCase() : parseFloat(v);
}
function sortTable(table, col, dir) {
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = cellKey(a.cells[col]), y = cellKey(b.cells[col]);
    var numeric = typeof x === "number" && typeof y === "number";
    var c = numeric ? x - y : String(x).localeCompare(String(y));
    return dir === "asc" ? c : -c;
  });
  rows.forEach(function (r) { body.appendChild(r); });
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
    th.setAttribute("aria-sort", i === col ? (dir === "asc" ? "ascending" : "descending") : "none");
  });
  table.setAttribute("data-sorted-by", String(col));
}
document.querySelectorAll("table.sortable").forEach(function (table) {
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    th.addEventListener("click", function () {
      sortTable(table, col, th.getAttribute("aria-sort") === "ascending" ? "desc" : "asc");
    });
  });
  sortTable(table, 0, "asc");
  table.setAttribute("data-sortable", "ready");
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; cursor: pointer; user-select: none; max-width: 9em;
     overflow-wrap: normal; word-break: normal; hyphens: manual; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.text, th.text { text-align: left; } .unranked { color: #888; }
.radars img { display: inline-block; margin: 0.3em; } p.def { max-width: 70em; }
"""


def _table_html(header: list[str], rows: list[list[tuple[str, float | None]]],
                row_class: list[str] | None = None) -> str:
    out = ['<table class="sortable"><thead><tr>']
    out += [f"<th>{_header_html(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        css = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        out.append(f"<tr{css}>")
        for text, value in row:
            if value is None or not np.isfinite(value):
                out.append(f'<td class="text">{html.escape(text)}</td>')
            else:
                out.append(f'<td data-value="{value:.10g}">{html.escape(text)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _header_html(text: str) -> str:
    """A column header that wraps between words only: at spaces, and after the `/` and `_`
    that join the words of a cell name ("toy_image_heavy/misleading_text")."""
    return re.sub(r"([/_])", r"\1<wbr>", html.escape(text))


def _detail_rows(entry: Entry) -> list[list[tuple[str, float | None]]]:
    rows = []
    for task, conditions in entry.submission.document["results"].items():
        for cond, m in conditions.items():
            acc, flip = m["accuracy"], m.get("flip_rate")

            rows.append([(task, None), (cond, None), (str(acc["n"]), acc["n"]),
                         (format_estimate(acc), acc["value"]),
                         (format_estimate(flip), flip and flip["value"])])
    return rows


def page(board: dict[tuple[str, str], list[Entry]]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>mibench leaderboard</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>mibench leaderboard</h1>",
             "<p>Built by <code>mibench leaderboard</code> from <code>results/submissions/"
             "</code>. Click a column header to sort.</p>",
             f'<p class="def">{_inline_md(SCORE_DEFINITION)}</p>']
    if not board:
        parts.append("<p>No accepted submissions yet.</p>")
    for entries in board.values():
        header, rows = ranking_rows(entries)
        parts += [f"<h2>{_inline_md(html.escape(benchmark_title(entries, str)))}</h2>",
                  _table_html(header, rows, ["" if e.rank else "unranked" for e in entries]),
                  *[f'<p class="unranked">{html.escape(e.name)}: unranked, '
                    f"{html.escape(e.unranked_reason)}</p>" for e in entries if not e.rank],
                  f'<img alt="per-condition bars" src="data:image/png;base64,'
                  f'{bars_png(entries)}">', '<div class="radars">']
        for e in entries:
            radar = radar_png(e)
            if radar:
                parts.append(f'<img alt="radar {html.escape(e.name)}" '
                             f'src="data:image/png;base64,{radar}">')
        parts.append("</div>")
        for e in entries:
            parts += [f"<h3>{html.escape(e.name)}</h3>",
                      _table_html(["task", "condition", "n", "accuracy % [95% CI]",
                                   "flip rate % [95% CI]"], _detail_rows(e))]
    parts += [f"<script>{SORT_SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _inline_md(text: str) -> str:
    """`**bold**` and `code` spans of already-escaped text, as HTML."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)
