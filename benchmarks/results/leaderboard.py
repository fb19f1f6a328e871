"""The leaderboard: accepted submissions ranked by one headline number, as markdown and HTML.

The interference score is the mean flip rate over a benchmark's heuristic (task, condition)
cells: the share of answers that change when only the modality the question does not need is
perturbed. Lower is better. A model that ignores its inputs altogether would flip nothing, so a
model is ranked only if its clean accuracy on every task is above chance, and clean accuracy is
shown beside the score. Submissions are grouped by benchmark and scorer: only the same tasks,
threat models, prompt and seed, with answers read the same way (option likelihood, or
generation with the same parser and settings), give comparable numbers.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mibench import scoring
from mibench.registry import registry
from mibench.report import config_hash, format_table
from mibench.runner import CLEAN
from mibench.scorers import scorer_of

from .submission import SUBMISSION_FILE, Submission, SubmissionError, load_submission

MARKDOWN_FILE = "LEADERBOARD.md"
HTML_FILE = "leaderboard.html"
BOOTSTRAP_RESAMPLES = 2000
SCORE_DEFINITION = (
    "**Interference score** (lower is better): the mean flip rate over the benchmark's "
    "heuristic cells, i.e. over every (task, condition) pair where a model-free perturbation "
    "changes only the modality the question does not need (text added to image questions; "
    "blank, noise or another sample's image added to text questions). A cell's flip rate is "
    "the share of samples whose chosen option differs from the clean answer (the study's "
    "δ_cp), whether or not the clean answer was right. Every cell counts once, whatever its "
    "task's size. Adversarial (attack) cells are shown apart and not averaged in. A model is "
    "ranked only if its clean accuracy on every task is above chance (the Wilson 95% lower "
    "bound exceeds the mean of 1/options): a model that ignores its input flips nothing but "
    "is no better for it. The score's 95% interval is a percentile bootstrap that resamples "
    "each task's samples (2000 resamples, seeded by the run's seed)."
)


@dataclass
class Entry:
    """One submission's leaderboard numbers."""

    submission: Submission
    components: dict[str, dict]  # "task/condition" -> flip_rate estimate, heuristic cells
    attack_components: dict[str, dict] = field(default_factory=dict)
    clean: dict[str, dict] = field(default_factory=dict)  # task -> accuracy estimate
    chance: dict[str, float] = field(default_factory=dict)  # task -> mean 1/options
    interval: tuple[float, float] = (float("nan"), float("nan"))  # of the score, 95%
    rank: int | None = None
    duplicate_of: str | None = None  # an entry above with the very same weights

    @property
    def weights(self) -> str | None:
        return (self.submission.document.get("model") or {}).get("weights_sha256")

    @property
    def name(self) -> str:
        return self.submission.name

    @property
    def score(self) -> float:
        values = [c["value"] for c in self.components.values() if c["value"] is not None]
        return float(np.mean(values)) if values else float("nan")

    @property
    def clean_accuracy(self) -> float:
        return float(np.mean([e["value"] for e in self.clean.values()]))

    @property
    def above_chance(self) -> bool:
        return all(self.clean[t]["low"] is not None and self.clean[t]["low"] > self.chance[t]
                   for t in self.clean)

    @property
    def unranked_reason(self) -> str:
        if self.duplicate_of:
            return (f"the same weights (sha256 {self.weights[:12]}) as {self.duplicate_of}, "
                    "ranked once")
        if not np.isfinite(self.score):
            return "no heuristic cell"
        at_chance = [t for t in self.clean if self.clean[t]["low"] is None
                     or self.clean[t]["low"] <= self.chance[t]]
        if at_chance:
            return "clean accuracy not above chance on " + ", ".join(at_chance)
        return ""

    @property
    def attack_score(self) -> float | None:
        values = [c["value"] for c in self.attack_components.values() if c["value"] is not None]
        return float(np.mean(values)) if values else None


def entry_for(submission: Submission) -> Entry:
    doc = submission.document
    kinds = doc["condition_kinds"]
    entry = Entry(submission, components={})
    chance = scoring.chance_accuracy(submission.records, CLEAN)
    for task, conditions in doc["results"].items():
        entry.clean[task] = conditions[CLEAN]["accuracy"]
        entry.chance[task] = chance[task]
        for cond, metrics in conditions.items():
            if cond == CLEAN:
                continue
            target = entry.components if kinds.get(cond) == "heuristic" else (
                entry.attack_components)
            target[f"{task}/{cond}"] = metrics["flip_rate"]
    entry.interval = score_interval(submission.records, list(entry.components), doc["seed"])
    return entry


def score_interval(records: list, cells: list[str], seed: int,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """95% percentile bootstrap of the score, resampling samples within each task.

    A task's conditions share its samples, so one resample of a task's samples moves all of
    its cells together (their flips are correlated through the sample).
    """
    if not cells:
        return (float("nan"), float("nan"))
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for record in records:
        grouped[(record.task, record.condition)].append(record)
    by_task: dict[str, list[str]] = defaultdict(list)
    for cell in cells:
        task, cond = cell.split("/", 1)
        by_task[task].append(cond)
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for task, conds in by_task.items():
        flips = np.column_stack([
            [c.prediction != p.prediction
             for c, p in scoring.pair_records(grouped[(task, CLEAN)], grouped[(task, cond)])]
            for cond in conds])  # (samples, conditions), rows aligned by sample id
        rows = rng.integers(0, flips.shape[0], size=(resamples, flips.shape[0]))
        total += flips[rows].mean(axis=1).sum(axis=1)
    low, high = np.percentile(total / len(cells), [2.5, 97.5])
    return (float(low), float(high))


def rank(entries: list[Entry]) -> list[Entry]:
    """Ranked entries (lowest score first, ties by higher clean accuracy), then unranked."""
    def order(e: Entry) -> tuple:
        return (np.nan_to_num(e.score, nan=np.inf), -e.clean_accuracy, e.name)

    eligible = [e for e in entries if e.above_chance and np.isfinite(e.score)]
    ranked: list[Entry] = []
    first_with: dict[str, str] = {}  # weights digest -> the best entry that has them
    for entry in sorted(entries, key=lambda e: (e not in eligible, *order(e))):
        entry.duplicate_of = first_with.get(entry.weights) if entry.weights else None
        if entry.weights:
            first_with.setdefault(entry.weights, entry.name)
        if entry in eligible and not entry.duplicate_of:
            ranked.append(entry)
    unranked = sorted((e for e in entries if e not in ranked), key=order)
    for i, entry in enumerate(ranked, 1):
        entry.rank = i
    for entry in unranked:
        entry.rank = None
    return ranked + unranked


def registry_problems(document: dict) -> list[str]:
    """Benchmark, task and condition names must be the suite's own: they are shown as text."""
    reg = registry()
    problems = []
    name = document["benchmark"]["name"]
    if name is not None and name not in reg.benchmarks:
        problems.append(f"benchmark.name: {str(name)[:60]!r} is not a benchmark of this suite")
    tasks = set(document["tasks"]) | set(document["results"])
    conditions = set(document["threat_models"]) | set(document["condition_kinds"]) | {
        c for conds in document["results"].values() for c in conds} - {CLEAN}
    problems += [f"task {str(t)[:60]!r} is not a task of this suite"
                 for t in sorted(tasks - set(reg.tasks))]
    problems += [f"condition {str(c)[:60]!r} is not a condition of this suite"
                 for c in sorted(conditions - set(reg.perturbations))]
    return problems


def load_board(results_dir: str | Path) -> dict[tuple[str, str], list[Entry]]:
    """Accepted submissions grouped by benchmark key and scorer, each group ranked."""
    root = Path(results_dir) / "submissions"
    groups: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    paths = sorted(root.glob(f"*/{SUBMISSION_FILE}")) if root.is_dir() else []
    for path in paths:
        submission = load_submission(path)
        if submission.name != path.parent.name:
            raise SubmissionError(path, [f"name {submission.name!r} differs from its folder "
                                         f"{path.parent.name!r}"])
        problems = registry_problems(submission.document)
        if problems:
            raise SubmissionError(path, problems)
        document = submission.document
        groups[(document["benchmark"]["key"], config_hash(scorer_of(document)))].append(
            entry_for(submission))
    return {key: rank(entries) for key, entries in sorted(groups.items())}


# -- text ----------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


# Characters Markdown gives a meaning anywhere in a line (table cells, links and images,
# code, emphasis, strike-through), an underscore that is not inside a word, and what starts a
# heading, list, quote or rule at the beginning of a line.
_MD_INLINE = re.compile(r"([\\`*|\[\]~!]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_MD_LEADING = re.compile(r"^(\d*)([#>+=.)-])")
_AUTOLINK = re.compile(r"(?i)\b(https?|ftp)://|\b(www)\.")


def md(text: object) -> str:
    """Submission-controlled text as inert Markdown: one line, its HTML escaped, every
    character with a Markdown meaning escaped, no bare URL left to autolink."""
    flat = html.escape(" ".join(str(text).split()), quote=False)
    flat = _MD_LEADING.sub(r"\1\\\2", _MD_INLINE.sub(r"\\\1", flat))
    return _AUTOLINK.sub(lambda m: f"{m[1]}:\\/\\/" if m[1] else f"{m[2]}\\.", flat)


def benchmark_title(entries: list[Entry], inline=md) -> str:
    """The group's title, from the suite's benchmark definitions (a submission's own text
    never titles a group): a shipped benchmark whose tasks and conditions the group measures,
    else a custom one; then the scorer (its name through `inline`, and a digest of its
    settings)."""
    doc = entries[0].submission.document
    scorer = scorer_of(doc)
    tasks, conditions = set(doc["tasks"]), set(doc["threat_models"])
    names = [b.name for b in registry().benchmarks.values()
             if (set(b.tasks), set(b.conditions)) == (tasks, conditions)]
    title = f"Benchmark `{names[0]}`" if names else "Custom benchmark"
    return (f"{title} (key {doc['benchmark']['key'][:12]}; {len(tasks)} tasks, "
            f"{len(conditions)} conditions, seed {int(doc['seed'])}; scorer "
            f"{inline(str(scorer.get('name'))[:40])} {config_hash(scorer)[:8]})")


def _model_ref(entry: Entry) -> str:
    model = entry.submission.document["model"]
    ref = model.get("commit") or model.get("revision") or model.get("weights_sha256")
    return str(ref or "-")[:12]


FIXED_HEADER = 5  # the ranking table's own columns; cell names (submitted text) follow
TEXT_COLUMNS = (1, 2)  # model name and revision / weights: submitted text


def ranking_rows(entries: list[Entry]) -> tuple[list[str], list[list[tuple[str, float | None]]]]:
    """Header and rows of the ranking table as (text, sort value) cells."""
    cells = list(entries[0].components)
    attacks = any(e.attack_components for e in entries)
    header = ["rank", "model", "revision / weights", "interference score % ↓ [95% CI]",
              "clean accuracy %", *[f"{c} flip %" for c in cells]]
    if attacks:
        header.append("attack flip % (not ranked)")
    rows = []
    for e in entries:
        row = [(str(e.rank) if e.rank else "unranked", e.rank or 10**6),
               (e.name, None), (_model_ref(e), None),
               (f"{_pct(e.score)} [{_pct(e.interval[0])}, {_pct(e.interval[1])}]", e.score),
               (_pct(e.clean_accuracy), e.clean_accuracy)]
        row += [(_pct(e.components.get(c, {}).get("value")), e.components.get(c, {}).get("value"))
                for c in cells]
        if attacks:
            row.append((_pct(e.attack_score), e.attack_score))
        rows.append(row)
    return header, rows


def markdown(board: dict[tuple[str, str], list[Entry]]) -> str:
    lines = ["# mibench leaderboard", "",
             "_Built by `mibench leaderboard` from `results/submissions/`; do not edit by "
             "hand. Interactive version with plots: `leaderboard.html`._", "",
             SCORE_DEFINITION]
    if not board:
        lines += ["", "No accepted submissions yet."]
    for entries in board.values():
        header, rows = ranking_rows(entries)
        lines += ["", f"## {benchmark_title(entries)}", "",
                  "| " + " | ".join(md(h) if i >= FIXED_HEADER else h
                                    for i, h in enumerate(header)) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(md(text) if i in TEXT_COLUMNS else text
                                    for i, (text, _) in enumerate(row)) + " |" for row in rows]
        notes = [f"- {md(e.name)}: unranked, {md(e.unranked_reason)}"
                 for e in entries if not e.rank]
        lines += ["", *notes] if notes else []
        for e in entries:
            lines += ["", f"### {md(e.name)}", "", _escaped_table(e.submission.document)]
    return "\n".join(lines) + "\n"


def _escaped_table(document: dict) -> str:
    """A submission's results table, with its task and condition names escaped."""
    results = {md(task): {md(cond): m for cond, m in conds.items()}
               for task, conds in document["results"].items()}
    return format_table(results)


def build(results_dir: str | Path
          ) -> tuple[Path, Path, dict[tuple[str, str], list[Entry]]]:
    """Rebuild LEADERBOARD.md and leaderboard.html from the accepted submissions."""
    results_dir = Path(results_dir)
    from .leaderboard_page import page  # matplotlib only when a page is built

    board = load_board(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    md, page_path = results_dir / MARKDOWN_FILE, results_dir / HTML_FILE
    md.write_text(markdown(board))
    page_path.write_text(page(board))
    return md, page_path, board


def leaderboard_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mibench leaderboard",
        description="Rebuild LEADERBOARD.md and leaderboard.html from accepted submissions.")
    parser.add_argument("--results", default="results",
                        help="folder holding submissions/<name>/ (default: results)")
    args = parser.parse_args(argv)
    try:
        md, page_path, board = build(args.results)
    except SubmissionError as err:
        print(f"mibench leaderboard: {err}", file=sys.stderr)
        return 1
    for entries in board.values():
        print(benchmark_title(entries))
        for e in entries:
            print(f"  {e.rank or '-':>3}  {e.name:30s} interference {_pct(e.score):>5}%  "
                  f"clean {_pct(e.clean_accuracy):>5}%")
    print(f"wrote {md} and {page_path}")
    return 0
