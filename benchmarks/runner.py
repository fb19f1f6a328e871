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
from tqdm.auto import tqdm

from mibench.models.base import ModelAdapter
from mibench.perturbations.base import Attack, Perturbation
from mibench.records import RELEVANT_MODALITIES, Record, Sample
from mibench.tasks.base import Task

from . import distributed, scoring
from .distributed import Processes, my_share
from .seeding import rng_for, stable_seed
from .store import RecordStore, check_fingerprint

log = logging.getLogger(__name__)

CLEAN = "clean"


class PerturbationError(RuntimeError):
    """A perturbation failed on, or broke the contract for, a named sample."""


@dataclass
class BenchmarkResult:
    """Metrics per task and condition, plus where the records are."""

    metrics: dict[str, dict[str, dict[str, scoring.Estimate]]]
    conditions: dict[str, list[str]] = field(default_factory=dict)
    out_dir: Path | None = None
    processes: int = 1


Condition = Perturbation | Attack
Scorer = Callable[[Sequence[Sample]], tuple[list[np.ndarray], list[int | None]]]


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


def score_condition(model: ModelAdapter, samples: Sequence[Sample], task: str, condition: str,
                    store: RecordStore, batch_size: int, processes: Processes,
                    progress: bool = True, scorer: Scorer | None = None) -> None:
    """Score this process's share of the batch plan, storing each batch as it finishes.

    The plan covers all samples, done or not, so a batch always holds the same samples: a
    resumed run recomputes an unfinished batch whole and stores only its missing records.
    `scorer` gives each sample's option probabilities and lure (the wrong option the
    condition points to, or None); by default the model's and the sample's own.
    """
    scorer = scorer or (lambda chunk: (model.option_probs(chunk),
                                       [s.meta.get("lure") for s in chunk]))
    lengths = [model.prompt_length(s) for s in samples]
    batches = my_share(batch_plan(samples, lengths, batch_size), processes)
    todo = [b for b in batches if any((task, condition, samples[i].id) not in store for i in b)]
    if not todo:
        return
    bar = tqdm(total=sum(map(len, todo)), desc=f"{task}/{condition}", unit="sample",
               disable=not (progress and processes.is_main), leave=False)
    for batch in todo:
        chunk = [samples[i] for i in batch]
        probs, lures = scorer(chunk)
        store.append(
            Record(task=task, condition=condition, sample_id=s.id,
                   probs=tuple(float(x) for x in p), prediction=int(p.argmax()),
                   gold=s.answer, lure=None if lure is None else int(lure))
            for s, p, lure in zip(chunk, probs, lures, strict=True)
        )
        bar.update(len(chunk))
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
    if processes.is_main:  # checks a resumed directory, or records a new one's fingerprint
        check_fingerprint(out_dir, fingerprint or {}, write=True)
    distributed.barrier(processes)
    if not processes.is_main:
        check_fingerprint(out_dir, fingerprint or {}, write=False)
    store = RecordStore(out_dir, rank=processes.index)
    distributed.barrier(processes)  # every process has read the shards before any appends

    conditions: dict[str, list[str]] = {}
    for task_name, task in tasks.items():
        samples = task.samples()
        _check_unique_ids(samples, task_name)
        score = partial(score_condition, model, task=task_name, store=store,
                        batch_size=batch_size, processes=processes, progress=progress)
        score(samples, condition=CLEAN)
        conditions[task_name] = [CLEAN]
        skipped = [n for n, p in perturbations.items() if not applies_to(p, task)]
        if skipped and processes.is_main:
            log.info("%s (%s): not applied, they touch a modality its answer needs: %s",
                     task_name, task.category, ", ".join(skipped))
        for name, perturbation in perturbations.items():
            if name in skipped:
                continue
            if isinstance(perturbation, Attack):
                score(samples, condition=name,
                      scorer=_attack_scorer(perturbation, model, seed, task_name))
            else:
                score(perturb_all(samples, perturbation, seed, task_name), condition=name)
            conditions[task_name].append(name)

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
    def score(chunk: Sequence[Sample]) -> tuple[list[np.ndarray], list[int | None]]:
        seeds = [stable_seed(seed, task, attack.name, s.id) for s in chunk]
        return attack.attack(model, chunk, seeds), attack.lures(chunk, seeds)
    return score


def _check_unique_ids(samples: Sequence[Sample], task: str) -> None:
    seen: set[str] = set()
    duplicates = {s.id for s in samples if s.id in seen or seen.add(s.id)}
    if duplicates:
        raise ValueError(f"task {task!r} yields duplicate sample ids: {sorted(duplicates)[:5]}")
