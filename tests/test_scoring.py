import math

import numpy as np
import pytest

from mibench.records import Record
from mibench.scoring import condition_metrics, js_divergence, mean, proportion


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_proportion_is_wilson_interval():
    est = proportion(np.array([1, 1, 1, 0], dtype=bool))
    low, high = wilson(3, 4)
    assert est.value == 0.75 and est.n == 4 and est.method == "wilson"
    assert est.low == pytest.approx(low, abs=1e-9) and est.high == pytest.approx(high, abs=1e-9)


def test_js_divergence_in_bits():
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)
    # by hand: M = (0.5, 0.5); KL(P||M) = 0.9 log2 1.8 + 0.1 log2 0.2
    p, q = [0.9, 0.1], [0.1, 0.9]
    kl = 0.9 * math.log2(1.8) + 0.1 * math.log2(0.2)
    assert js_divergence(p, q) == pytest.approx(kl, abs=1e-12)


def test_mean_of_constant_has_degenerate_interval_and_is_seeded():
    assert mean(np.ones(5)).low == 1.0
    values = np.array([0, 1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=float)
    a, b = mean(values, seed=3), mean(values, seed=3)
    assert a == b and a.low < a.value < a.high


def rec(cond, sid, probs, gold, lure=None):
    return Record("t", cond, sid, tuple(probs), int(np.argmax(probs)), gold, lure)


def test_condition_metrics_against_hand_values():
    clean = [rec("clean", "a", [0.9, 0.1], 0), rec("clean", "b", [0.2, 0.8], 1),
             rec("clean", "c", [0.6, 0.4], 1), rec("clean", "d", [0.5, 0.5], 0)]
    pert = [rec("p", "a", [0.1, 0.9], 0, lure=1), rec("p", "b", [0.2, 0.8], 1, lure=0),
            rec("p", "c", [0.3, 0.7], 1, lure=0), rec("p", "d", [0.7, 0.3], 0, lure=1)]
    m = condition_metrics(clean, list(reversed(pert)))
    # clean correct: a, b, d (c wrong) -> 0.75; perturbed correct: b, c, d -> 0.75
    assert m["accuracy"].value == 0.75
    assert m["drop"].value == pytest.approx(0.0)
    # decided answers changed: a (0->1), c (0->1) -> 2/4
    assert m["flip_rate"].value == 0.5
    # of clean-correct a, b, d only a became wrong -> 1/3
    assert m["harm_rate"].value == pytest.approx(1 / 3) and m["harm_rate"].n == 3
    expected_js = np.mean([js_divergence([0.9, 0.1], [0.1, 0.9]), 0.0,
                           js_divergence([0.6, 0.4], [0.3, 0.7]),
                           js_divergence([0.5, 0.5], [0.7, 0.3])])
    assert m["js_divergence"].value == pytest.approx(expected_js)
    # predictions equal to the lure: a (1 == 1) only -> 1/4
    assert m["lure_rate"].value == 0.25


def test_condition_metrics_refuse_unpaired_samples():
    with pytest.raises(ValueError, match="no clean record for samples \\['zz'\\]"):
        condition_metrics([rec("clean", "a", [1, 0], 0)], [rec("p", "zz", [1, 0], 0)])


def test_condition_without_records_gives_empty_estimates():
    m = condition_metrics([], [])
    assert m["accuracy"].n == 0 and m["harm_rate"].n == 0 and "lure_rate" not in m
