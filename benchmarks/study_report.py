"""A `cai2025_official` run beside the figures the study published, with the tolerance expected.

The published numbers are those of the study's project page and figures (the repository's
`docs/`, at the commit mibench.study_release pins): its page text where it states a number,
else a reading of its figures (measured against the axis ticks, about +-0.5 point). Each
comparison says its source.

Tolerance, my estimate (the study states none): its runs used transformers 4.48.1 in fp16,
batches of 4 re-batched for retries (padding moves greedy fp16 answers a little), so even
fixed stimuli (clean, black and white canvases, the released facts) may move about 1.5 points;
its random stimuli (10 unrelated sentences, noise images, MMVP picks) were drawn unseeded per
batch, ours per sample from the run's seed, about 3 points; readings of a figure add 0.5,
readings of a marker hidden under another 1.

The study's two accuracies (src/batch_evaluate.py): over every sample with a record (an
unreadable answer counts as wrong), and over the samples it counts as answered: those whose
answer its rule reads as a letter (in range or not) plus, outside VQA, those whose raw answer
contains the gold option's text (counted answered but wrong: its `flag == True` is a no-op).

With generated answers (scorer=study) the report also gives those two per dataset and
condition: the run's items are rebuilt from its config (the evaluator's text check needs
each gold option's text) and must have the run's data digest.

    python -m mibench.study_report RUN_DIR [--model LLaVA-1.5-7B] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .errors import MibenchError
from .records import Record
from .results.metrics_file import read_metrics
from .store import RECORDS_FILE, read_records

PAGE = "docs/index.html L390-419 (project page text)"
FIG_PERTURBATION = "docs/static/images/perturbation_comparison.png (read off the figure)"
FIG_MMLU = "docs/static/images/mmlu_scores_pretrain_evaluation.png (read off the figure)"
FIG_ABLATION = "docs/static/images/ablation_2panel.png, 'Vanilla Clean (ref)' (read off)"
# Conditions whose stimulus the study drew at random (unseeded), here seeded per sample.
RANDOM_CONDITIONS = frozenset({"unrelated_text", "random_pixels", "switched_image"})
FIXED_TOLERANCE, RANDOM_TOLERANCE = 1.5, 3.0
READING, HIDDEN_READING = 0.5, 1.0


@dataclass(frozen=True)
class Published:
    """One number the study published: accuracy (%) of a model on a task under a condition."""

    model: str
    task: str
    condition: str
    value: float
    source: str
    reading: float = 0.0  # how far a reading off a figure may be from the plotted value
    note: str = ""

    @property
    def tolerance(self) -> float:
        base = RANDOM_TOLERANCE if self.condition in RANDOM_CONDITIONS else FIXED_TOLERANCE
        return base + self.reading


LLAVA = "LLaVA-1.5-7B"
PUBLISHED: tuple[Published, ...] = (
    Published(LLAVA, "study_mini_imagenet", "clean", 95.0, FIG_PERTURBATION, HIDDEN_READING,
              "partly hidden marker; Fig. 1 reads 95.3"),
    Published(LLAVA, "study_mini_imagenet", "unrelated_text", 93.1, FIG_PERTURBATION, READING),
    Published(LLAVA, "study_mini_imagenet", "misleading_text", 43.5, PAGE, 0.0,
              "'Mini-ImageNet (perturbed)'; the figure reads the same for misleading text"),
    Published(LLAVA, "study_caltech101", "clean", 97.1, FIG_ABLATION, READING),
    Published(LLAVA, "study_caltech101", "misleading_text", 57.4, PAGE, 0.0,
              "'Caltech-101 (perturbed)': the page's perturbed figures are each model's "
              "hardest condition, misleading text on image-heavy sets (not stated for this one)"),
    Published(LLAVA, "study_openbookqa", "random_pixels", 62.4, FIG_PERTURBATION, READING,
              "the study's clean reference"),
    Published(LLAVA, "study_openbookqa", "switched_image", 56.4, PAGE, 0.0,
              "'OpenBookQA (perturbed)'; the figure reads the same for the switched image"),
    Published(LLAVA, "study_openbookqa", "black_image", 62.5, FIG_PERTURBATION, READING),
    Published(LLAVA, "study_openbookqa", "white_image", 63.4, FIG_PERTURBATION, READING),
    Published(LLAVA, "study_mmlu", "random_pixels", 46.4, FIG_MMLU, HIDDEN_READING,
              "the study's clean reference"),
    Published(LLAVA, "study_mmlu", "switched_image", 45.3, FIG_MMLU, READING),
    Published(LLAVA, "study_mmlu", "black_image", 45.9, FIG_MMLU, HIDDEN_READING),
    Published(LLAVA, "study_mmlu", "white_image", 45.8, FIG_MMLU, HIDDEN_READING),
)
# Published, but not comparable: what it averages over is not stated.
UNMATCHED = {LLAVA: [f"VQA overall 63.8 ({PAGE}): which VQA sets and what weighting is not "
                     "stated; compare study_scienceqa, study_seed_bench, study_mmbench by hand"]}


@dataclass(frozen=True)
class Comparison:
    published: Published
    ours: float | None  # accuracy %, None where the run has no such cell
    low: float | None
    high: float | None
    n: int | None

    @property
    def difference(self) -> float | None:
        return None if self.ours is None else self.ours - self.published.value

    @property
    def within(self) -> bool | None:
        d = self.difference
        return None if d is None else abs(d) <= self.published.tolerance


def compare(results: dict, model: str = LLAVA) -> list[Comparison]:
    """Each published number of `model` beside the run's accuracy in the same cell."""
    rows = []
    for p in (p for p in PUBLISHED if p.model == model):
        found = results.get(p.task, {}).get(p.condition, {}).get("accuracy")
        if found is None:
            rows.append(Comparison(p, None, None, None, None))
        else:
            rows.append(Comparison(p, 100 * found["value"], 100 * found["low"],
                                   100 * found["high"], found["n"]))
    return rows


def format_comparison(rows: Sequence[Comparison], model: str = LLAVA) -> str:
    lines = [f"{model}: our accuracy beside the study's published figure (ours: over every "
             "sample, an answer no rule reads counting wrong: the study's all_report_accuracy)",
             "", "| dataset | condition | ours % [95% CI] (n) | published % | difference | "
             "tolerance | within | source |", "|" + "---|" * 8]
    for row in rows:
        p = row.published
        ours = ("not in this run" if row.ours is None else
                f"{row.ours:.1f} [{row.low:.1f}, {row.high:.1f}] ({row.n})")
        diff = "-" if row.difference is None else f"{row.difference:+.1f}"
        within = {None: "-", True: "yes", False: "NO"}[row.within]
        source = p.source + (f"; {p.note}" if p.note else "")
        lines.append(f"| {p.task} | {p.condition} | {ours} | {p.value:.1f} | {diff} | "
                     f"+-{p.tolerance:.1f} | {within} | {source} |")
    checked = [r for r in rows if r.within is not None]
    lines += ["", f"{sum(bool(r.within) for r in checked)} of {len(checked)} within tolerance "
              f"({len(rows) - len(checked)} not in this run)."]
    lines += [f"Not compared: {text}" for text in UNMATCHED.get(model, [])]
    lines += ["Tolerance: +-1.5 points where the stimulus is fixed, +-3 where the study drew it "
              "unseeded; +0.5 for a reading off a figure, +1 for a hidden marker (see "
              "mibench.study_report)."]
    return "\n".join(lines)


# -- the study's two accuracies ----------------------------------------------------------------
LETTER = {True: re.compile(r"\b([A-Za-z])\b"), False: re.compile(r"\b([A-Da-d])\b")}


@dataclass(frozen=True)
class Outcome:
    """What the study's evaluator looks at for one sample: whether the stored choice is the
    gold key, the raw answer, the gold option's text and the task category."""

    correct: bool
    response: str
    gold_text: str
    category: str


def counted_as_answered(outcome: Outcome) -> bool:
    """The study's `cnt_ignore` rule (see module doc)."""
    if LETTER[outcome.category == "image_heavy"].search(outcome.response):
        return True
    if outcome.category == "vqa" or not outcome.gold_text:
        return False
    text = content = outcome.gold_text  # its quote stripping, quirk included: a text quoted
    if text[0] == "'":                  # at both ends keeps the leading quote
        content = text[1:]
    if text[-1] == "'":
        content = text[:-1]
    return content in outcome.response


def study_accuracies(outcomes: Iterable[Outcome]) -> dict[str, float | int]:
    """`all_report_accuracy` (over every sample) and `ignore_accuracy` (over the samples it
    counts as answered), as src/batch_evaluate.py computes them."""
    outcomes = list(outcomes)
    correct = sum(o.correct for o in outcomes)
    answered = sum(o.correct or counted_as_answered(o) for o in outcomes)
    return {"all_report_accuracy": correct / len(outcomes) if outcomes else float("nan"),
            "ignore_accuracy": correct / answered if answered else float("nan"),
            "correct": correct, "reported": len(outcomes), "ignored": len(outcomes) - answered}


# The one task class whose items the report rebuilds from a run's config (the config is
# data read from a file: nothing else is instantiated from it).
STUDY_TASK_CLASS = "mibench.tasks.study_data.StudyDataTask"


class StudyReportError(MibenchError):
    """A run the study's accuracies cannot be computed for, with what to do."""


def gold_texts(document: dict, data_root: str | None = None) -> dict[str, tuple[str, dict]]:
    """task -> (category, {sample id: gold option text}) for the study's item tasks of a
    run, rebuilt from the run's own config (`data_root` replaces the one it ran with) and
    checked against the run's data digest: the evaluator's text check needs the options."""
    from .tasks.study_data import StudyDataTask  # lazy: the comparison alone needs no data

    tasks = document.get("config", {}).get("grid", {}).get("tasks", {})
    described = document.get("tasks", {})
    allowed = set(inspect.signature(StudyDataTask).parameters)
    out = {}
    for name, config in tasks.items():
        if not isinstance(config, dict) or config.get("_target_") != STUDY_TASK_CLASS:
            continue
        kwargs = {k: v for k, v in config.items() if k in allowed}
        if data_root is not None:
            kwargs["data_dir"] = data_root
        task = StudyDataTask(**kwargs)
        samples = task.samples()
        want = described.get(name, {}).get("data_digest")
        if want is not None and task.data_digest() != want:
            raise StudyReportError(
                f"task {name!r}: the items found ({task.data_digest()}) are not those the run "
                f"scored ({want}); pass --data-root with the copy the run used")
        out[name] = (task.category, {s.id: s.options[s.answer] for s in samples})
    return out


def study_table(records: Sequence[Record], golds: dict[str, tuple[str, dict]],
                order: Mapping[str, Iterable[str]] = MappingProxyType({})) -> list[dict]:
    """The study's two accuracies per task and condition of a generated run (each record's
    last response is what the study stores as its raw answer), in the run's table order
    (`order`: task -> its conditions, as metrics.json's results) where it gives one."""
    cells: dict[tuple[str, str], list[Outcome]] = {
        (task, condition): [] for task, conditions in order.items() for condition in conditions}
    for record in records:
        if record.task not in golds or record.generated is None:
            continue
        category, texts = golds[record.task]
        cells.setdefault((record.task, record.condition), []).append(Outcome(
            record.correct, record.generated.responses[-1], texts.get(record.sample_id, ""),
            category))
    return [{"task": task, "condition": condition, **study_accuracies(outcomes)}
            for (task, condition), outcomes in cells.items() if outcomes]


def format_study_table(rows: Sequence[dict]) -> str:
    lines = ["The study's two accuracies (src/batch_evaluate.py): over all samples, and over "
             "those its evaluator counts as answered",
             "", "| dataset | condition | all_report_accuracy % | ignore_accuracy % | correct | "
             "reported | ignored |", "|" + "---|" * 7]
    for row in rows:
        lines.append(f"| {row['task']} | {row['condition']} | "
                     f"{100 * row['all_report_accuracy']:.1f} | "
                     f"{100 * row['ignore_accuracy']:.1f} | {row['correct']} | "
                     f"{row['reported']} | {row['ignored']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mibench.study_report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a cai2025_official run directory (or its metrics.json)")
    parser.add_argument("--model", default=LLAVA,
                        help=f"the published model to compare with (default {LLAVA})")
    parser.add_argument("--json", help="also write the comparison as JSON here")
    parser.add_argument("--data-root", help="where the study's data is now, if not where the "
                        "run read it (its data_root); the items must be the same")
    args = parser.parse_args(argv)
    metrics = read_metrics(args.run)
    path, document = metrics.source, metrics.document
    rows = compare(metrics.results, args.model)
    if not rows:
        models = sorted({p.model for p in PUBLISHED})
        parser.error(f"no published figures for {args.model!r}; there are for {models}")
    print(format_comparison(rows, args.model))
    study_rows = []
    records_path = path.parent / RECORDS_FILE
    records = read_records(records_path)
    if any(r.generated is not None for r in records):
        try:
            study_rows = study_table(records, gold_texts(document, args.data_root),
                                     document.get("results", {}))
        except MibenchError as err:  # user-fixable (missing data): one line, comparison kept
            print(f"python -m mibench.study_report: {err}", file=sys.stderr)
            return 2
        print()
        print(format_study_table(study_rows))
    else:
        print(f"\nThe study's two accuracies need generated answers ({records_path} holds "
              "none: scored by likelihood); run with scorer=study.")
    if args.json:
        Path(args.json).write_text(json.dumps({"comparison": [{
            "task": r.published.task, "condition": r.published.condition, "ours": r.ours,
            "published": r.published.value, "tolerance": r.published.tolerance,
            "within": r.within, "source": r.published.source} for r in rows],
            "study_accuracies": study_rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
