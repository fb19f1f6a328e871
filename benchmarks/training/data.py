"""What a fine-tune reads: a seeded stream of train-split samples and their perturbed twins.

The stream is a pure function of (seed, global sample index): epoch e visits the pooled
samples of every training task in the order `rng_for(seed, "train-order", e)`, so a resumed
run, a 1-process run and an N-process run read the same samples at the same step. Perturbed
twins come from the suite's own perturbation plug-ins (the benchmark's code) with seeds salted
"train", label unchanged, and only where the perturbation touches a modality the sample's
answer does not need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mibench.errors import MibenchError
from mibench.perturbations.base import Perturbation
from mibench.records import RELEVANT_MODALITIES, Sample
from mibench.runner import check_untouched
from mibench.seeding import rng_for
from mibench.tasks.base import Task

SALT = "train"


class SplitLeakError(MibenchError, ValueError):
    """Training samples that the evaluation also scores; the message names them."""


@dataclass(frozen=True)
class Pair:
    """A clean training sample and, where a perturbation applies, its perturbed twin."""

    task: str
    clean: Sample
    perturbed: Sample | None = None
    condition: str | None = None


class TrainingStream:
    """Clean samples of the training tasks, pooled and shuffled per epoch, with twins."""

    def __init__(self, tasks: Mapping[str, Task], perturbations: Mapping[str, Perturbation],
                 seed: int, pair_share: float = 1.0,
                 condition_weights: Mapping[str, float] | None = None) -> None:
        if not tasks:
            raise ValueError("no training task: give data.tasks (or task=NAME)")
        if not 0.0 <= pair_share <= 1.0:
            raise ValueError(f"data.pair_share={pair_share} must lie in [0, 1]")
        for name, p in perturbations.items():
            if not isinstance(p, Perturbation):
                raise TypeError(f"training perturbation {name!r} is a {type(p).__name__}, not a "
                                "heuristic Perturbation (attacks belong in train.adversarial)")
        self.seed, self.pair_share = int(seed), float(pair_share)
        self.perturbations = dict(perturbations)
        weights = dict(condition_weights or {})
        unknown = sorted(set(weights) - set(self.perturbations))
        if unknown:
            raise ValueError(f"data.condition_weights names {unknown}, which are not training "
                             f"perturbations ({sorted(self.perturbations)})")
        self.weights = {n: float(weights.get(n, 1.0)) for n in self.perturbations}
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"data.condition_weights must be >= 0, got {self.weights}")
        self.pool: list[tuple[str, Sample]] = []
        self.ids: dict[str, list[str]] = {}
        for name, task in tasks.items():
            samples = task.samples()
            if not samples:
                raise ValueError(f"training task {name!r} yields no sample")
            self.ids[name] = [s.id for s in samples]
            self.pool.extend((name, s) for s in samples)
        seen: set[tuple[str, str]] = set()
        duplicates = [f"{t}:{s.id}" for t, s in self.pool
                      if (t, s.id) in seen or seen.add((t, s.id))]
        if duplicates:
            raise ValueError(f"training tasks yield duplicate sample ids: {duplicates[:5]}")
        self._orders: dict[int, list[int]] = {}
        self.applicable = {
            category: [n for n, p in self.perturbations.items()
                       if p.touches not in relevant and self.weights[n] > 0]
            for category, relevant in RELEVANT_MODALITIES.items()}

    def __len__(self) -> int:
        return len(self.pool)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {epoch: [int(i) for i in rng_for(
                self.seed, "train-order", epoch).permutation(len(self.pool))]}
        return self._orders[epoch]

    def pair(self, index: int) -> Pair:
        """Global sample `index` of the stream, with its perturbed twin where one applies."""
        epoch, offset = divmod(int(index), len(self.pool))
        task, sample = self.pool[self._order(epoch)[offset]]
        names = self.applicable[sample.category]
        rng = rng_for(self.seed, SALT, "pair", epoch, task, sample.id)
        if not names or rng.random() >= self.pair_share:
            return Pair(task, sample)
        chances = np.array([self.weights[n] for n in names])
        condition = names[int(rng.choice(len(names), p=chances / chances.sum()))]
        perturbation = self.perturbations[condition]
        try:
            perturbed = perturbation.apply(
                sample, rng_for(self.seed, SALT, epoch, task, condition, sample.id))
        except Exception as err:
            raise RuntimeError(f"training perturbation {condition!r} failed on sample "
                               f"{sample.id!r} of task {task!r}: {err}") from err
        check_untouched(sample, perturbed, perturbation)
        return Pair(task, sample, perturbed, condition)

    def pairs(self, indices: Sequence[int]) -> list[Pair]:
        return [self.pair(i) for i in indices]


def check_disjoint(train_ids: Mapping[str, Sequence[str]],
                   eval_ids: Mapping[str, Sequence[str]]) -> None:
    """Refuse to train on any sample id an evaluation task also scores.

    `train_ids` and `eval_ids` map a task (or its evaluation twin) name to sample ids; the
    error names the training task, the evaluation task and a few of the shared ids.
    """
    problems = []
    for train_task, ids in train_ids.items():
        mine = set(ids)
        for eval_task, other in eval_ids.items():
            shared = sorted(mine.intersection(other))
            if shared:
                problems.append(f"training task {train_task!r} shares {len(shared)} sample ids "
                                f"with evaluation {eval_task!r}, e.g. {shared[:5]}")
    if problems:
        raise SplitLeakError(
            "refusing to train on samples the evaluation scores:\n  " + "\n  ".join(problems)
            + "\ntrain on the task's train split (data.tasks.<name>.split=train) or remove "
              "the overlapping samples")
