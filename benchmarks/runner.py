"""Wires tasks, perturbations and a model into per-sample records and metrics.

The runner owns no model, dataset or metric logic and never branches on a name: it applies
each condition to each task whose answer does not depend on the touched modality, scores the
samples in a batch plan that depends only on (samples, batch size), and stores every record
as soon as it exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from mibench.models.base import ModelAdapter
from mibench.perturbations.base import Attack, Perturbation
from mibench.records import RELEVANT_MODALITIES, Record, Sample
from mibench.tasks.base import Task

from . import distributed, scoring
from .distributed import Processes, my_share
from .errors import MibenchError
from .prefetch import prefetched
from .progress import Progress
from .seeding import rng_for, stable_seed
from .store import RecordStore, check_fingerprint

log = logging.getLogger(__name__)

CLEAN = "clean"
# Bumped whenever `batch_plan` or the grouping of conditions into plans changes: a directory
# begun under another plan is refused rather than resumed with different batches.
BATCH_PLAN_VERSION = 2


class PerturbationError(MibenchError, RuntimeError):
    """A perturbation failed on, or broke the contract for, a named sample."""


@dataclass
class BenchmarkResult:
    """Metrics per task and condition, plus where the records are."""

    metrics: dict[str, dict[str, dict[str, scoring.Estimate]]]
    conditions: dict[str, list[str]] = field(default_factory=dict)
    out_dir: Path | None = None
    processes: int = 1


Condition = Perturbation | Attack
Scores = tuple[list[np.ndarray], list[int | None]]


@dataclass(frozen=True)
class Scorer:
    """How a condition scores a batch: each sample's option probabilities and lure.

    `prepare` is the host-side part, run for the next batch in a background thread while
    `score` runs on this one; its result is passed to `score`.
    """

    score: Callable[[Sequence[Sample], object], Scores]
    prepare: Callable[[Sequence[Sample]], object] = lambda chunk: None


def model_scorer(model: ModelAdapter) -> Scorer:
    """The model's own option probabilities; the lure is the one the sample names, if any."""
    return Scorer(prepare=model.prepare,
                  score=lambda chunk, prepared: (model.option_probs(chunk, prepared),
                                                 [s.meta.get("lure") for s in chunk]))


def applies_to(perturbation: Condition, task: Task) -> bool:
    """A perturbation applies where the modality it touches is irrelevant to the answer."""
    return perturbation.touches not in RELEVANT_MODALITIES[task.category]


def check_untouched(original: Sample, perturbed: Sample, perturbation: Perturbation) -> None:
    """Refuse a perturbed sample whose relevant modality or label changed."""
    problems = []
    if (perturbed.id, perturbed.options, perturbed.answer, perturbed.category) != (
            original.id, original.options, original.answer, original.category):
        problems.append("its id, options, answer or category")
    if perturbation.touches != "image" and perturbed.image is not original.image:
        problems.append("its image")
    if perturbation.touches != "text" and (perturbed.question, perturbed.distractor) != (
            original.question, original.distractor):
        problems.append("its text")
    if problems:
        raise PerturbationError(
            f"perturbation {perturbation.name!r} (touches {perturbation.touches}) changed "
            f"{' and '.join(problems)} of sample {original.id!r}")


def batch_plan(samples: Sequence[Sample], lengths: Sequence[int], batch_size: int
               ) -> list[list[int]]:
    """Index batches sorted by prompt length, ties by id: the same for every run of a config."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(samples)), key=lambda i: (lengths[i], samples[i].id))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def perturb_all(samples: Sequence[Sample], perturbation: Perturbation, seed: int, task: str
                ) -> list[Sample]:
    out = []
    for sample in samples:
        try:
            perturbed = perturbation.apply(sample, rng_for(seed, task, perturbation.name,
                                                           sample.id))
        except Exception as err:
            raise PerturbationError(f"perturbation {perturbation.name!r} failed on sample "
                                    f"{sample.id!r} of task {task!r}: {err}") from err
        check_untouched(sample, perturbed, perturbation)
        out.append(perturbed)
    return out


@dataclass(frozen=True)
class ConditionRun:
    """One condition of a task, ready to score: its samples and how to score them."""

    name: str
    samples: Sequence[Sample]
    scorer: Scorer


def score_conditions(model: ModelAdapter, runs: Sequence[ConditionRun], task: str,
                     store: RecordStore, batch_size: int, processes: Processes,
                     progress: bool = True) -> None:
    """Score conditions that share one batch plan, storing each batch as it finishes.

    The conditions hold the same samples in the same order (they differ only in text), so
    one plan serves them all and batch i of each is scored in turn: consecutive forward
    passes see the same images, and an adapter can reuse their encoding. The plan is sorted
    by the first condition's prompt lengths alone, so clean batches (and those of attacks,
    which start from clean) never depend on which other conditions are configured. It
    covers all samples, done or not, so a batch always holds the same samples: a resumed run
    recomputes an unfinished batch whole and stores only its missing records. The next batch
    is prepared while this one is scored.
    """
    ids = [s.id for s in runs[0].samples]
    for run in runs[1:]:
        if [s.id for s in run.samples] != ids:
            raise ValueError(f"task {task!r}: condition {run.name!r} does not hold the samples "
                             f"of {runs[0].name!r} in the same order; it needs its own plan")
    lengths = model.prompt_lengths(runs[0].samples)
    batches = my_share(batch_plan(runs[0].samples, lengths, batch_size), processes)
    todo = [(run, [run.samples[i] for i in batch]) for batch in batches for run in runs
            if any((task, run.name, run.samples[i].id) not in store for i in batch)]
    if not todo:
        return
    # one bar (or plain lines off a terminal) for the plan: its conditions advance together
    bar = Progress(f"{task}: {', '.join(run.name for run in runs)}",
                   total=sum(len(chunk) for _, chunk in todo),
                   enabled=progress and processes.is_main)
    try:
        for (run, chunk), prepared in prefetched(
                lambda item: item[0].scorer.prepare(item[1]), todo):
            probs, lures = run.scorer.score(chunk, prepared)
            store.append(
                Record(task=task, condition=run.name, sample_id=s.id,
                       probs=tuple(float(x) for x in p), prediction=int(p.argmax()),
                       gold=s.answer, lure=None if lure is None else int(lure))
                for s, p, lure in zip(chunk, probs, lures, strict=True)
            )
            bar.update(len(chunk))
    finally:
        model.drop_reused_inputs()
        bar.close()


def run_benchmark(
    model: ModelAdapter,
    tasks: Mapping[str, Task],
    perturbations: Mapping[str, Condition],
    out_dir: str | Path,
    *,
    batch_size: int = 16,
    seed: int = 0,
    fingerprint: dict | None = None,
    progress: bool = True,
) -> BenchmarkResult | None:
    """Score clean and every applicable condition of every task; return metrics with CIs.

    Under `accelerate launch` every process scores its share; the main process gathers the
    records, writes records.jsonl and returns the result, the others return None.
    """
    for name, perturbation in perturbations.items():
        if perturbation.name != name:
            raise ValueError(f"condition {name!r} holds perturbation named "
                             f"{perturbation.name!r}; a condition is named after its perturbation")
        if name == CLEAN:
            raise ValueError("'clean' is always scored; it cannot name a perturbation")
        if not any(applies_to(perturbation, task) for task in tasks.values()):
            raise ValueError(
                f"perturbation {name!r} touches the {perturbation.touches} modality, which "
                f"every task here ({', '.join(tasks)}) needs to answer; nothing to measure")
    processes = distributed.current()
    # the plan decides each sample's batch, so a resumed run must use the plan that began it
    prints = {**(fingerprint or {}), "batch_plan": BATCH_PLAN_VERSION}
    if processes.is_main:  # checks a resumed directory, or records a new one's fingerprint
        check_fingerprint(out_dir, prints, write=True)
    distributed.barrier(processes)
    if not processes.is_main:
        check_fingerprint(out_dir, prints, write=False)
    store = RecordStore(out_dir, rank=processes.index)
    distributed.barrier(processes)  # every process has read the shards before any appends

    conditions: dict[str, list[str]] = {}
    for task_name, task in tasks.items():
        samples = task.samples()
        _check_unique_ids(samples, task_name)
        skipped = [n for n, p in perturbations.items() if not applies_to(p, task)]
        if skipped and processes.is_main:
            log.info("%s (%s): not applied, they touch a modality its answer needs: %s",
                     task_name, task.category, ", ".join(skipped))
        applied = {n: p for n, p in perturbations.items() if n not in skipped}
        conditions[task_name] = [CLEAN, *applied]
        score = partial(score_conditions, model, task=task_name, store=store,
                        batch_size=batch_size, processes=processes, progress=progress)
        # clean and the conditions that change only its text share the clean images: they
        # are scored together, first; a text perturbation that fails to build is raised once
        # everything else of the task is stored
        same_images = [ConditionRun(CLEAN, samples, model_scorer(model))]
        failure: PerturbationError | None = None
        for name, perturbation in applied.items():
            if perturbation.touches == "text" and not isinstance(perturbation, Attack):
                try:
                    same_images.append(ConditionRun(
                        name, perturb_all(samples, perturbation, seed, task_name),
                        model_scorer(model)))
                except PerturbationError as err:
                    failure = failure or err
        score(same_images)
        for name, perturbation in applied.items():
            if isinstance(perturbation, Attack):
                score([ConditionRun(name, samples,
                                    _attack_scorer(perturbation, model, seed, task_name))])
            elif perturbation.touches != "text":
                score([ConditionRun(name, perturb_all(samples, perturbation, seed, task_name),
                                    model_scorer(model))])
        if failure is not None:
            raise failure

    gathered = distributed.gather(store.new, processes)
    if not processes.is_main:
        return None
    store.merge(gathered)
    metrics: dict[str, dict[str, dict[str, scoring.Estimate]]] = {}
    for task_name, names in conditions.items():
        clean = store.records(task_name, CLEAN)
        metrics[task_name] = {CLEAN: scoring.clean_metrics(clean)}
        for name in names[1:]:
            metrics[task_name][name] = scoring.condition_metrics(
                clean, store.records(task_name, name), seed=seed)
    return BenchmarkResult(metrics=metrics, conditions=conditions, out_dir=Path(out_dir),
                           processes=processes.count)


def _attack_scorer(attack: Attack, model: ModelAdapter, seed: int, task: str) -> Scorer:
    """Scores a batch under attack, each sample seeded by its own id."""
    def score(chunk: Sequence[Sample], prepared: object) -> Scores:
        seeds = [stable_seed(seed, task, attack.name, s.id) for s in chunk]
        return attack.attack(model, chunk, seeds), attack.lures(chunk, seeds)
    return Scorer(score=score)


def _check_unique_ids(samples: Sequence[Sample], task: str) -> None:
    seen: set[str] = set()
    duplicates = {s.id for s in samples if s.id in seen or seen.add(s.id)}
    if duplicates:
        raise ValueError(f"task {task!r} yields duplicate sample ids: {sorted(duplicates)[:5]}")
