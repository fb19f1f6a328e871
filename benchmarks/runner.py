"""Wires tasks, perturbations and a model into per-sample records and metrics.

The runner owns no model, dataset or metric logic and never branches on a name: it applies
each condition to each task whose answer does not depend on the touched modality, scores the
samples in a batch plan that depends only on (samples, batch size), and stores every record
as soon as it exists. A task (or one condition of it) that fails is reported as a `Failure`
while every other task is still scored and written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from mibench.models.base import ModelAdapter
from mibench.perturbations.base import Attack, Perturbation
from mibench.records import CLEAN, RELEVANT_MODALITIES, Record, Sample, SampleError
from mibench.tasks.base import Task

from . import distributed, scoring
from .audit import audits
from .distributed import Processes, my_share
from .errors import MibenchError
from .prefetch import prefetched
from .progress import Progress
from .scorers import AnswerScorer, LikelihoodScorer, Scorer
from .seeding import rng_for
from .store import RecordStore, check_fingerprint

log = logging.getLogger(__name__)

# Bumped whenever `batch_plan` or the grouping of conditions into plans changes: a directory
# begun under another plan is refused rather than resumed with different batches.
BATCH_PLAN_VERSION = 2


class PerturbationError(MibenchError, RuntimeError):
    """A perturbation failed on, or broke the contract for, a named sample."""


@dataclass(frozen=True)
class Failure:
    """A task whose data could not be read (`condition` None), or one condition of a task,
    that was not scored; the message says why and what to do."""

    task: str
    condition: str | None
    error: str

    def to_json(self) -> dict:
        return {"task": self.task, "condition": self.condition, "error": self.error}


@dataclass
class BenchmarkResult:
    """Metrics per task and condition, what failed, and where the records are.

    `fingerprint` is the one checked against the directory: the caller's, with each task's
    and condition's describe() taken once their data was loaded (data digests included).
    """

    metrics: dict[str, dict[str, dict[str, scoring.Estimate]]]
    conditions: dict[str, list[str]] = field(default_factory=dict)
    out_dir: Path | None = None
    processes: int = 1
    failures: list[Failure] = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)
    omitted: dict[str, str] = field(default_factory=dict)  # metric -> why it is not given


Condition = Perturbation | Attack


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
            scored = run.scorer.score(chunk, prepared)
            shown, prompts = audits([o.shown or s for s, o in zip(chunk, scored, strict=True)],
                                    model.render)
            store.append(
                (Record(task=task, condition=run.name, sample_id=s.id, probs=o.probs,
                        prediction=o.prediction, gold=s.answer, lure=o.lure,
                        generated=o.generated, audit=audit)
                 for s, o, audit in zip(chunk, scored, shown, strict=True)),
                prompts)
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
    scorer: AnswerScorer | None = None,
) -> BenchmarkResult | None:
    """Score clean and every applicable condition of every task; return metrics with CIs.

    Changes (drop, flip and harm rates, JS divergence) compare each condition with the task's
    reference (`Task.reference`): clean, unless the task names a condition of the run (the
    study's text-heavy questions: its random-pixel image); the reference gets accuracy only.

    `scorer` reads the answers (default: option likelihood). Every task's data is loaded
    first, then the directory's fingerprint is checked: the caller's `fingerprint` plus the
    scorer's and each task's and condition's describe() (with data digests).
    A task or condition that fails is in `failures`, the rest is scored and written; metrics
    count only the ids the task has now. Under `accelerate launch` every process scores its
    share; the main process gathers the records, writes records.jsonl and returns the
    result, the others return None.
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
    scorer = scorer or LikelihoodScorer()
    failures: list[Failure] = []
    loaded: dict[str, list[Sample]] = {}
    for task_name, task in tasks.items():  # a task whose data cannot be read is reported
        try:
            loaded[task_name] = task.samples()
            _check_unique_ids(loaded[task_name], task_name)
            model.check_samples(task_name, loaded[task_name])  # letters, vocabulary
        except Exception as err:  # reported as this task's failure
            failures.append(_failure(task_name, None, err))
            loaded.pop(task_name, None)
    unprepared: dict[str, str] = {}  # condition -> why what it needs could not be loaded
    for name, perturbation in perturbations.items():
        if isinstance(perturbation, Perturbation) and any(
                applies_to(perturbation, tasks[t]) for t in loaded):
            try:
                perturbation.load_data()
            except Exception as err:  # reported for each task it applies to
                unprepared[name] = _failure("(every task)", name, err).error
    # the fingerprint is taken now that the data is loaded, so it holds the data digests;
    # the plan decides each sample's batch, so a resumed run must use the plan that began it
    prints = {**(fingerprint or {}), "scorer": scorer.describe(),
              "tasks": {n: t.describe() for n, t in tasks.items()},
              "conditions": {n: p.describe() for n, p in perturbations.items()},
              "batch_plan": BATCH_PLAN_VERSION}
    if processes.is_main:  # checks a resumed directory, or records a new one's fingerprint
        check_fingerprint(out_dir, prints, write=True)
    distributed.barrier(processes)
    if not processes.is_main:
        check_fingerprint(out_dir, prints, write=False)
    store = RecordStore(out_dir, rank=processes.index)
    distributed.barrier(processes)  # every process has read the shards before any appends

    conditions: dict[str, list[str]] = {}
    for task_name, samples in loaded.items():
        task = tasks[task_name]
        skipped = [n for n, p in perturbations.items() if not applies_to(p, task)]
        if skipped and processes.is_main:
            log.info("%s (%s): not applied, they touch a modality its answer needs: %s",
                     task_name, task.category, ", ".join(skipped))
        applied = {n: p for n, p in perturbations.items() if n not in skipped}
        for name in applied.keys() & unprepared.keys():
            failures.append(Failure(task_name, name, unprepared[name]))
        runnable = {n: p for n, p in applied.items() if n not in unprepared}
        score = partial(score_conditions, model, task=task_name, store=store,
                        batch_size=batch_size, processes=processes, progress=progress)
        scored = _score_task(model, scorer, task_name, samples, runnable, score, seed,
                             failures)
        conditions[task_name] = [n for n in (CLEAN, *applied) if n in scored]

    failures = _unique(distributed.gather(failures, processes))
    gathered = distributed.gather(store.new, processes)
    prompts = distributed.gather(list(store.prompts.new.items()), processes)
    if not processes.is_main:
        return None
    store.merge(gathered, prompts)
    metrics: dict[str, dict[str, dict[str, scoring.Estimate]]] = {}
    for task_name, names in conditions.items():
        ids = {s.id for s in loaded[task_name]}  # records of ids the task no longer has
        stored = {n: [r for r in store.records(task_name, n) if r.sample_id in ids]
                  for n in names}                # (a changed limit, say) are not counted
        complete = [n for n in names if len(stored[n]) == len(ids)]
        failures += [Failure(task_name, n, f"only {len(stored[n])} of its {len(ids)} samples "
                                           "were scored") for n in names if n not in complete
                     and not any(f.task == task_name and f.condition in (n, None)
                                 for f in failures)]
        if CLEAN not in complete:
            continue
        reference = tasks[task_name].reference  # what drop, flips and JS compare with
        if reference not in complete and not any(
                f.task == task_name and f.condition in (reference, None) for f in failures):
            failures.append(Failure(task_name, reference, (
                f"the task's reference condition {reference!r} was not scored in this run "
                "(add it to the conditions, or set the task's `reference: clean`); only "
                "accuracies are reported")))
        metrics[task_name] = {CLEAN: scoring.clean_metrics(stored[CLEAN])}
        for name in complete[1:]:
            metrics[task_name][name] = (
                scoring.condition_metrics(stored[reference], stored[name], seed=seed)
                if reference in complete and name != reference
                else scoring.clean_metrics(stored[name]))
    for failure in failures:
        log.error("FAILED %s%s: %s", failure.task,
                  f" / {failure.condition}" if failure.condition else "", failure.error)
    return BenchmarkResult(metrics=metrics, conditions=conditions, out_dir=Path(out_dir),
                           processes=processes.count, failures=failures,
                           fingerprint={k: v for k, v in prints.items() if k != "batch_plan"},
                           omitted=scorer.omitted(model) if metrics else {})


def _score_task(model: ModelAdapter, scorer: AnswerScorer, task: str, samples: list[Sample],
                applied: Mapping[str, Condition], score: Callable[[list[ConditionRun]], None],
                seed: int, failures: list[Failure]) -> set[str]:
    """Score clean and each applied condition of one task; return the conditions scored.

    Clean and the conditions that change only its text share the clean images: they are
    scored together, first. A condition that fails to build or to score is appended to
    `failures` and the others go on; a failure while scoring clean (e.g. an unreadable image)
    ends the task, whose records so far are kept.
    """
    by_model = scorer.for_model(model)
    same_images = [ConditionRun(CLEAN, samples, by_model)]
    for name, perturbation in applied.items():
        if perturbation.touches == "text" and not isinstance(perturbation, Attack):
            try:
                same_images.append(ConditionRun(
                    name, perturb_all(samples, perturbation, seed, task), by_model))
            except Exception as err:  # reported as this condition's failure
                failures.append(_failure(task, name, err))
    try:
        score(same_images)
    except Exception as err:  # reported as this task's failure
        failures.append(_failure(task, None, err))
        return set()
    scored = {run.name for run in same_images}
    for name, perturbation in applied.items():
        if name in scored or name in {f.condition for f in failures if f.task == task}:
            continue
        try:
            if isinstance(perturbation, Attack):
                score([ConditionRun(name, samples,
                                    scorer.for_attack(perturbation, model, seed, task))])
            else:
                score([ConditionRun(name, perturb_all(samples, perturbation, seed, task),
                                    by_model)])
        except Exception as err:  # reported as this condition's failure
            failures.append(_failure(task, name, err))
            continue
        scored.add(name)
    return scored


def _failure(task: str, condition: str | None, err: Exception) -> Failure:
    """A failure in one line: a MibenchError's own message; anything else (a bug) also logs
    its traceback."""
    if isinstance(err, MibenchError):
        return Failure(task, condition, str(err))
    log.exception("%s%s failed with an unexpected error", task,
                  f" / {condition}" if condition else "")
    return Failure(task, condition, f"{type(err).__name__}: {err}")


def _unique(failures: Sequence[Failure]) -> list[Failure]:
    """Each (task, condition) once: every process may report the same failure."""
    seen: dict[tuple[str, str | None], Failure] = {}
    for failure in failures:
        seen.setdefault((failure.task, failure.condition), failure)
    return list(seen.values())


def _check_unique_ids(samples: Sequence[Sample], task: str) -> None:
    seen: set[str] = set()
    duplicates = {s.id for s in samples if s.id in seen or seen.add(s.id)}
    if duplicates:
        raise SampleError(f"task {task!r} yields duplicate sample ids: "
                          f"{sorted(duplicates)[:5]}; fix the id column of its data")
