"""Paired tests for comparing two checkpoints on the same samples.

McNemar's exact test is a binomial test on the discordant pairs; Holm's step-down controls the
family-wise error across the cells of a comparison; intervals for paired differences reuse the
suite's seeded bootstrap (`scoring.mean` over per-sample differences).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from mibench.scoring import Estimate, mean


@dataclass(frozen=True, slots=True)
class McNemar:
    """Exact McNemar test: b = pairs where only A succeeds, c = pairs where only B succeeds."""

    b: int
    c: int
    pvalue: float


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Two-sided exact McNemar test of paired binary outcomes `a` and `b` (same samples)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.size} vs {b.size}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return mcnemar_from_counts(only_a, only_b)


def mcnemar_from_counts(b: int, c: int) -> McNemar:
    """Exact McNemar p-value from the discordant counts: binomtest(b, b + c, 0.5)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:  # no discordant pair: no evidence of a difference
        return McNemar(b, c, 1.0)
    return McNemar(b, c, float(stats.binomtest(b, b + c, 0.5).pvalue))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error), in the input's order.

    The i-th smallest p is multiplied by (m - i) (i from 0), then made non-decreasing in that
    order and capped at 1; reject where the adjusted p is below alpha.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if np.isnan(p).any() or ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> Estimate:
    """Mean of b - a over the same samples, with the suite's seeded BCa bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {a.size} vs {b.size}")
    return mean(b - a, seed)
