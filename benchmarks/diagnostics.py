"""Why a model is distracted, from its own activations: pure functions on arrays.

- Modality gap (Liang et al., 2022; Schrodi et al., 2024): the distance between the centroid
  of the image-token vectors and that of the text-token vectors. Reported three ways: L2
  between the raw centroids (`gap_l2`), L2 between the centroids of unit-normalised vectors
  (`gap_l2_unit`, Liang et al.'s definition), and the cosine distance 1 - cos between the raw
  centroids (`gap_cosine`). Interval: percentile bootstrap over samples.
- Linear separability: a held-out logistic probe's balanced accuracy at telling image from
  text tokens (0.5: no better than chance; 1: a hyperplane separates them). Split by sample,
  never by token; class-balanced, L2-regularised, fitted by L-BFGS (scipy), so it is
  deterministic; interval: percentile bootstrap over the test samples.
- Entropy of the clean option distribution, in bits (0: certain; log2 K: uniform).
- Spearman rank correlation between a diagnostic and an interference score across runs,
  with a percentile bootstrap interval over runs and a permutation p-value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

from .scoring import BOOTSTRAP_RESAMPLES, CONFIDENCE, Estimate

PROBE_L2 = 1e-2  # ridge on the probe's weights: keeps separable data's fit finite
PROBE_TEST_SHARE = 0.3
PERMUTATIONS = 9999  # >= 7!: the permutation test is exact up to 7 runs


def _percentile(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


# -- the modality gap ---------------------------------------------------------------------
def centroid_gaps(image: np.ndarray, text: np.ndarray, image_unit: np.ndarray,
                  text_unit: np.ndarray) -> dict[str, np.ndarray]:
    """Gaps between centroids given as rows (R, H): L2, L2 of unit-vector centroids, cosine
    distance; one value per row."""
    cos = np.sum(image * text, axis=-1) / (
        np.linalg.norm(image, axis=-1) * np.linalg.norm(text, axis=-1))
    return {"gap_l2": np.linalg.norm(image - text, axis=-1),
            "gap_l2_unit": np.linalg.norm(image_unit - text_unit, axis=-1),
            "gap_cosine": 1.0 - cos}


@dataclass
class TokenSums:
    """Per sample, the sum and count of its image- and text-token vectors (raw and unit
    length): enough for the centroids of any resample of samples."""

    image: list[np.ndarray]
    text: list[np.ndarray]
    image_unit: list[np.ndarray]
    text_unit: list[np.ndarray]
    image_count: list[int]
    text_count: list[int]

    @classmethod
    def empty(cls) -> TokenSums:
        return cls([], [], [], [], [], [])

    def add(self, image: np.ndarray, text: np.ndarray) -> None:
        """One sample's image-token (N_i, H) and text-token (N_t, H) vectors."""
        image, text = np.asarray(image, np.float64), np.asarray(text, np.float64)
        for vectors, total, unit, count in ((image, self.image, self.image_unit,
                                             self.image_count),
                                            (text, self.text, self.text_unit, self.text_count)):
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            total.append(vectors.sum(axis=0))
            unit.append((vectors / np.where(norms > 0, norms, 1.0)).sum(axis=0))
            count.append(vectors.shape[0])

    def gaps(self, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Gaps of the centroids, one per row of `weights` (R, samples; default: each
        sample once), pooling tokens as the weights count samples."""
        n = len(self.image)
        w = np.ones((1, n)) if weights is None else np.asarray(weights, np.float64)
        centroids = []
        for total, count in ((self.image, self.image_count), (self.text, self.text_count),
                             (self.image_unit, self.image_count),
                             (self.text_unit, self.text_count)):
            centroids.append((w @ np.stack(total)) / (w @ np.asarray(count, np.float64))[:, None])
        return centroid_gaps(*centroids)


def modality_gap(sums: TokenSums, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
                 ) -> dict[str, Estimate]:
    """Each gap over all samples, with a percentile bootstrap interval over samples."""
    n = len(sums.image)
    if n == 0:
        raise ValueError("no sample with both image and text tokens: no modality gap")
    if min(sum(sums.image_count), sum(sums.text_count)) == 0:
        raise ValueError("one modality has no tokens: no modality gap")
    point = sums.gaps()
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample may miss a modality
        boot = sums.gaps(weights)
    method = f"percentile-bootstrap-{resamples}-samples"
    return {k: Estimate(float(point[k][0]), *_percentile(boot[k]), n, method) for k in point}


# -- linear separability ---------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeResult:
    """A held-out probe's balanced accuracy, its interval, and what it was fitted on."""

    accuracy: Estimate  # n = test samples
    train_samples: int
    test_samples: int
    train_tokens: int
    test_tokens: int

    def to_json(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy.to_json()}


def split_by_sample(groups: np.ndarray, test_share: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test) over tokens: whole samples go to one side, drawn by seed."""
    ids = np.unique(groups)
    if ids.size < 2:
        raise ValueError(f"a held-out probe needs at least 2 samples, got {ids.size}")
    order = np.random.default_rng(seed).permutation(ids)
    n_test = min(ids.size - 1, max(1, round(test_share * ids.size)))
    test = np.isin(groups, order[:n_test])
    return ~test, test


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = PROBE_L2) -> np.ndarray:
    """Weights (H + 1, bias last) of a class-balanced logistic regression on (x, y), by
    L-BFGS from zero: deterministic. Minimises mean weighted log-loss + l2/2 * |w|^2."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    positives = y.sum()
    if positives in (0, y.size):
        raise ValueError("the probe's training tokens hold one class only")
    weight = np.where(y == 1, 0.5 / positives, 0.5 / (y.size - positives))  # sums to 1
    design = np.hstack([x, np.ones((x.shape[0], 1))])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = design @ w
        # log(1 + e^z) - y z, stably
        value = float(weight @ (np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * float(w[:-1] @ w[:-1])
        residual = weight * (1.0 / (1.0 + np.exp(-z)) - y)
        grad = design.T @ residual
        grad[:-1] += l2 * w[:-1]
        return value, grad

    result = optimize.minimize(loss, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B",
                               options={"maxiter": 1000})
    return result.x


def balanced_accuracy(predicted: np.ndarray, y: np.ndarray) -> float:
    """Mean of the two classes' recalls (0.5 for any constant prediction)."""
    recalls = [float((predicted[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return float(np.mean(recalls))


def probe_separability(x: np.ndarray, is_image: np.ndarray, groups: np.ndarray, seed: int = 0,
                       test_share: float = PROBE_TEST_SHARE, l2: float = PROBE_L2,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> ProbeResult:
    """How well a linear probe tells image tokens from text tokens on held-out samples.

    `x` (N, H) token vectors, `is_image` (N,) labels, `groups` (N,) each token's sample.
    Features are standardised with the training tokens' mean and deviation. The interval
    resamples test samples (tokens of one sample are not independent).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(is_image, bool).astype(np.int64)
    groups = np.asarray(groups)
    train, test = split_by_sample(groups, test_share, seed)
    if len(np.unique(y[test])) < 2:
        raise ValueError("the probe's test samples hold one class only; give more samples")
    mean, scale = x[train].mean(axis=0), x[train].std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - mean) / scale
    w = fit_logistic(z[train], y[train], l2)
    predicted = (np.hstack([z[test], np.ones((int(test.sum()), 1))]) @ w >= 0).astype(np.int64)
    y_test, g_test = y[test], groups[test]
    value = balanced_accuracy(predicted, y_test)
    # per test sample: tokens and hits of each class; a resample weighs samples by counts
    ids, where = np.unique(g_test, return_inverse=True)
    hit = predicted == y_test
    counts = [np.bincount(where, weights=(y_test == c), minlength=ids.size) for c in (0, 1)]
    hits = [np.bincount(where, weights=hit & (y_test == c), minlength=ids.size) for c in (0, 1)]
    w = np.random.default_rng(seed).multinomial(ids.size, np.full(ids.size, 1.0 / ids.size),
                                                size=resamples).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample may miss a class
        boot = 0.5 * sum((w @ hits[c]) / (w @ counts[c]) for c in (0, 1))
    estimate = Estimate(value, *_percentile(boot), int(ids.size),
                        f"held-out-logistic-balanced-accuracy, percentile-bootstrap-{resamples}"
                        "-test-samples")
    return ProbeResult(estimate, int(np.unique(groups[train]).size), int(ids.size),
                       int(train.sum()), int(test.sum()))


# -- the clean option distribution ----------------------------------------------------------
def entropy_bits(probs: Sequence[float]) -> float:
    """Shannon entropy of one option distribution, in bits (0 log 0 = 0)."""
    return float(stats.entropy(np.asarray(probs, np.float64), base=2))


# -- across runs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Correlation:
    """Spearman's rho across runs with a bootstrap interval over runs and a permutation p."""

    rho: float
    low: float
    high: float
    pvalue: float
    n: int
    method: str
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")  # no ranking to correlate
    return float(stats.spearmanr(x, y).statistic)


def spearman(x: Sequence[float], y: Sequence[float], seed: int = 0,
             resamples: int = BOOTSTRAP_RESAMPLES) -> Correlation:
    """Spearman's rho of (x, y) across runs; 95% percentile bootstrap over runs (resamples
    where either side is constant are left out); two-sided permutation p (exact, over every
    pairing, up to 7 runs; else PERMUTATIONS random pairings).
    Under 3 runs a rank correlation means nothing (two points always give +-1): no interval."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values differ in shape: {x.shape} vs {y.shape}")
    n = x.size
    rho = _rho(x, y) if n >= 2 else float("nan")
    if n < 3:
        return Correlation(rho, float("nan"), float("nan"), float("nan"), n, "spearman",
                           f"{n} runs: a rank correlation needs at least 3 (2 points always "
                           "give +-1); not meaningful")
    if np.isnan(rho):
        return Correlation(rho, float("nan"), float("nan"), float("nan"), n, "spearman",
                           "one side is constant across runs: no ranking to correlate")
    rng = np.random.default_rng(seed)
    boot = np.array([_rho(x[i], y[i]) for i in rng.integers(n, size=(resamples, n))])
    left = int(np.isnan(boot).sum())
    # one sample permuted against the other fixed: n! pairings (two samples would count n!^2)
    test = stats.permutation_test((x,), lambda a: _rho(a, y), permutation_type="pairings",
                                  n_resamples=PERMUTATIONS, alternative="two-sided",
                                  rng=np.random.default_rng(seed))
    note = f"{left} of {resamples} resamples had a constant side and were left out" if left else ""
    return Correlation(rho, *_percentile(boot), float(test.pvalue), n,
                       f"spearman; percentile-bootstrap-{resamples}-runs; permutation p", note)
