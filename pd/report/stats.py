"""Statistics for the tables: mean +- 2 SE, binomial SE, paired tests.

Kept free of cell records and files so each function can be checked against an
independent numpy/scipy computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` over ``n`` independent questions."""
    if n <= 0:
        raise ValueError("binomial_se needs at least one question")
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


@dataclass(frozen=True)
class MeanSE:
    """A mean with its standard error and where the SE came from."""

    mean: float
    se: float
    kind: str  # "seeds": sample std (ddof=1) / sqrt(n_seeds); "binomial": one seed, over questions
    n_seeds: int

    @property
    def half_width(self) -> float:
        """The +- the tables show: two standard errors."""
        return 2.0 * self.se


def mean_se(accuracies: Sequence[float], n_questions: Sequence[int]) -> MeanSE:
    """Mean over seeds with SE over seeds; with one seed, the binomial SE over questions.

    All-equal accuracies (all correct, all wrong) give SE 0, never NaN.
    """
    acc = np.asarray(accuracies, dtype=np.float64)
    if acc.size == 0:
        raise ValueError("mean_se needs at least one accuracy")
    if acc.size == 1:
        return MeanSE(float(acc[0]), binomial_se(float(acc[0]), int(n_questions[0])), "binomial", 1)
    se = float(np.std(acc, ddof=1) / math.sqrt(acc.size))
    return MeanSE(float(acc.mean()), se, "seeds", int(acc.size))


@dataclass(frozen=True)
class PairedT:
    """Paired t-test over seeds (method a minus method b)."""

    mean_diff: float
    statistic: float
    p: float
    n: int
    n_missing: int = 0  # pairs left out because a value was NaN or infinite

    @property
    def no_spread(self) -> bool:
        """The difference was equal in every seed and not zero: p = 0 with an infinite t, which
        says only that the seeds agree, not how large the evidence is (with two seeds, little)."""
        return math.isinf(self.statistic)


NO_SPREAD_NOTE = ("A difference equal in every seed has no spread: its t-test gives p = 0 (shown < 0.001), "
                  "which with few seeds is weak evidence; read the bootstrap beside it.")


def no_spread_notes(tests: Iterable[PairedT | None]) -> list[tuple[str, str]]:
    """The footnote for a table whose t-tests include one with no spread (:attr:`PairedT.no_spread`).

    Args:
        tests: the table's or section's paired t-tests (None where a cell had no test).

    Returns:
        ``[("", NO_SPREAD_NOTE)]`` when any test had no spread, else ``[]``.
    """
    return [("", NO_SPREAD_NOTE)] if any(t is not None and t.no_spread for t in tests) else []


def _finite_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The pairs where both values are finite, and how many were left out (NaN: a value that is missing)."""
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep], int(keep.size - keep.sum())


def paired_t(a: Sequence[float], b: Sequence[float]) -> PairedT | None:
    """``scipy.stats.ttest_rel`` on per-seed accuracies paired by seed; None below 2 pairs.

    Differences with zero spread have no finite t: identical runs give p = 1, a constant
    non-zero shift gives p = 0 (it is as certain as two seeds can make it). A pair with a
    NaN or infinite value is missing: left out and counted in ``n_missing``.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired_t needs equally many values, got {x.size} and {y.size}")
    x, y, missing = _finite_pairs(x, y)
    if x.size < 2:
        return None
    d = x - y
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        if abs(float(d.mean())) <= 1e-12:
            return PairedT(0.0, 0.0, 1.0, int(x.size), missing)
        return PairedT(float(d.mean()), math.copysign(math.inf, float(d.mean())), 0.0, int(x.size), missing)
    from scipy import stats  # here, not at the top: ~1.5 s to import, and the plan loads this package

    res = stats.ttest_rel(x, y)
    return PairedT(float(d.mean()), float(res.statistic), float(res.pvalue), int(x.size), missing)


@dataclass(frozen=True)
class Bootstrap:
    """Paired bootstrap over questions (method a minus method b)."""

    mean_diff: float
    ci_low: float
    ci_high: float
    p: float
    n_questions: int
    n_resamples: int
    seed: int
    n_missing: int = 0  # questions left out because a score was NaN or infinite


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 1_000,
) -> Bootstrap:
    """Resample questions with replacement, the same resample for both methods.

    ``a`` and ``b`` are per-question scores aligned by question (correctness averaged over
    seeds). The CI is the percentile interval of the resampled mean difference; the
    two-sided p is twice the smaller share of resampled differences on one side of 0
    (exact zeros, common with 0/1 grades, count half to each side), capped at 1:
    identical methods give p = 1. A question with a NaN or infinite score is missing: left
    out and counted in ``n_missing``.

    Raises:
        ValueError: unequal lengths, or no question with two finite scores.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_bootstrap needs two equal-length 1-D arrays, got {x.shape} and {y.shape}")
    x, y, missing = _finite_pairs(x, y)
    n = x.size
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one question with two finite scores")
    d = x - y
    rng = np.random.default_rng(seed)
    boots = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        boots[start:stop] = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    ties = float(np.mean(boots == 0))
    below, above = float(np.mean(boots < 0)) + ties / 2, float(np.mean(boots > 0)) + ties / 2
    p = min(1.0, 2.0 * min(below, above))
    return Bootstrap(float(d.mean()), float(lo), float(hi), p, int(n), int(n_resamples), int(seed), missing)
