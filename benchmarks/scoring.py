"""Pure functions from per-sample records to estimates with intervals.

Every estimate is an `Estimate` (value, 95% interval, n, method). Proportions use the Wilson
interval of an exact binomial test; means of per-sample differences use a seeded BCa bootstrap
over samples, so the same records always give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from .records import Record

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
JS_BASE = 2  # Jensen–Shannon divergence in bits: 0 (same) .. 1 (disjoint)


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int
    method: str

    def to_json(self) -> dict:
        return asdict(self)


def proportion(successes: np.ndarray) -> Estimate:
    """A share of samples with its Wilson 95% interval."""
    successes = np.asarray(successes, dtype=bool)
    n, k = successes.size, int(successes.sum())
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, "wilson")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return Estimate(k / n, float(ci.low), float(ci.high), n, "wilson")


def mean(values: np.ndarray, seed: int = 0) -> Estimate:
    """A mean over samples with a seeded BCa bootstrap 95% interval."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    method = f"bootstrap-bca-{BOOTSTRAP_RESAMPLES}"
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, method)
    value = float(values.mean())
    if n == 1 or np.ptp(values) == 0:  # every resample has the same mean
        return Estimate(value, value, value, n, method)
    result = stats.bootstrap(
        (values,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
        method="BCa", rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return Estimate(value, float(ci.low), float(ci.high), n, method)


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen–Shannon divergence in bits (scipy returns the distance: its square root)."""
    return float(jensenshannon(p, q, base=JS_BASE) ** 2)


def pair_records(clean: Sequence[Record], perturbed: Sequence[Record]
                 ) -> list[tuple[Record, Record]]:
    """Clean and perturbed records of the same samples, in sample-id order."""
    by_id = {r.sample_id: r for r in clean}
    missing = [r.sample_id for r in perturbed if r.sample_id not in by_id]
    if missing:
        raise ValueError(f"no clean record for samples {missing[:5]} (+{len(missing) - 5} more)"
                         if len(missing) > 5 else f"no clean record for samples {missing}")
    return [(by_id[r.sample_id], r) for r in sorted(perturbed, key=lambda r: r.sample_id)]


def generated(records: Sequence[Record]) -> bool:
    """Whether these are generated answers (scorer=generate), which may be unparsed."""
    return any(r.generated is not None for r in records)


def parse_metrics(records: Sequence[Record]) -> dict[str, Estimate]:
    """For generated answers: accuracy over the answers a parser could read, and the share
    it could not (those count as wrong in `accuracy`)."""
    parsed = np.array([r.prediction is not None for r in records], dtype=bool)
    correct = np.array([r.correct for r in records], dtype=bool)
    return {"accuracy_parsed": proportion(correct[parsed]),
            "parse_failure_rate": proportion(~parsed)}


def clean_metrics(records: Sequence[Record]) -> dict[str, Estimate]:
    metrics = {"accuracy": proportion(np.array([r.correct for r in records]))}
    if generated(records):
        metrics.update(parse_metrics(records))
    return metrics


def condition_metrics(clean: Sequence[Record], perturbed: Sequence[Record],
                      seed: int = 0) -> dict[str, Estimate]:
    """How a condition changed the answers of the same samples relative to clean.

    drop: clean accuracy minus perturbed accuracy (positive = worse), paired bootstrap;
    flip_rate: share whose decided answer changed (the study's δ_cp);
    harm_rate: share of clean-correct samples that became wrong;
    js_divergence: mean JS divergence (bits) of the option distributions (the study's CE),
    only where every record holds them (a generating backend may give none);
    lure_rate: share answering the wrong option the perturbation pointed to, where it did.

    A generated answer no parser could read is wrong, and is an answer of its own ("none")
    for a flip: read -> unread and unread -> read are flips, unread both times is not.
    """
    pairs = pair_records(clean, perturbed)
    c_ok = np.array([c.correct for c, _ in pairs], dtype=bool)
    p_ok = np.array([p.correct for _, p in pairs], dtype=bool)
    flips = np.array([c.prediction != p.prediction for c, p in pairs], dtype=bool)
    lured = np.array([p.prediction == p.lure for _, p in pairs if p.lure is not None], dtype=bool)
    metrics = {
        "accuracy": proportion(p_ok),
        "drop": mean(c_ok.astype(float) - p_ok.astype(float), seed),
        "flip_rate": proportion(flips),
        "harm_rate": proportion(~p_ok[c_ok]),
    }
    if all(c.probs is not None and p.probs is not None for c, p in pairs):
        js = np.array([js_divergence(c.probs, p.probs) for c, p in pairs], dtype=float)
        metrics["js_divergence"] = mean(js, seed)
    if lured.size:
        metrics["lure_rate"] = proportion(lured)
    if generated(perturbed):
        metrics.update(parse_metrics([p for _, p in pairs]))
    return metrics


def records_without_probs(records: Sequence[Record]) -> int:
    """How many records hold no option probabilities (JS divergence is left out for them)."""
    return sum(r.probs is None for r in records)


def chance_accuracy(records: Sequence[Record], condition: str = "clean") -> dict[str, float]:
    """Per task, the accuracy of a uniform guess: the mean of 1/#options over its samples
    (tasks such as ScienceQA mix 2 to 5 options)."""
    options: dict[str, list[int]] = {}
    for r in records:
        if r.condition == condition:
            options.setdefault(r.task, []).append(r.option_count)
    return {task: float(np.mean([1 / k for k in ks])) for task, ks in options.items()}
