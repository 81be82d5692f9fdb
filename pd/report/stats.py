"""Statistics for the tables: mean +- 2 SE, binomial SE, paired tests, multiplicity.

* :func:`cluster_bootstrap`: a bootstrap over seeds and passages, with the questions
  resampled within their passage (the questions about one passage rise and fall
  together, so resampling them as if independent gives intervals that are too narrow);
  :func:`seed_item_bootstrap` runs it on per-seed, per-question scores of two methods.
* :func:`paired_t`: the paired t-test over seeds, which the report uses only from
  :data:`MIN_T_SEEDS` shared seeds on (:func:`seed_t_test`).
* :func:`holm`: Holm-Bonferroni adjusted p-values over a page's family of tests.

Kept free of cell records and files so each function can be checked against an
independent numpy/scipy computation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Sequence

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


MIN_T_SEEDS = 3  # the report's paired t-test needs this many shared seeds (two give one degree of freedom)


def paired_t(a: Sequence[float], b: Sequence[float], *, min_pairs: int = 2) -> PairedT | None:
    """``scipy.stats.ttest_rel`` on per-seed accuracies paired by seed.

    Differences with zero spread have no finite t: identical runs give p = 1, a constant
    non-zero shift gives p = 0 (see :attr:`PairedT.no_spread`). A pair with a NaN or
    infinite value is missing: left out and counted in ``n_missing``.

    Args:
        a: method a's values, one per seed.
        b: method b's values, aligned with ``a`` by seed.
        min_pairs: fewer finite pairs than this (at least 2) give no test.

    Returns:
        The test of a minus b, or None below ``min_pairs`` finite pairs.

    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired_t needs equally many values, got {x.size} and {y.size}")
    x, y, missing = _finite_pairs(x, y)
    if x.size < max(2, min_pairs):
        return None
    d = x - y
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        if abs(float(d.mean())) <= 1e-12:
            return PairedT(0.0, 0.0, 1.0, int(x.size), missing)
        return PairedT(float(d.mean()), math.copysign(math.inf, float(d.mean())), 0.0, int(x.size), missing)
    from scipy import stats  # here, not at the top: ~1.5 s to import, and the plan loads this package

    res = stats.ttest_rel(x, y)
    return PairedT(float(d.mean()), float(res.statistic), float(res.pvalue), int(x.size), missing)




def seed_t_test(a: Mapping[Any, float], b: Mapping[Any, float]) -> tuple[PairedT | None, int]:
    """The report's paired t-test over the seeds two methods share, from :data:`MIN_T_SEEDS` on.

    With two seeds the t-test has one degree of freedom, and two seeds that agree make any
    difference "significant" (p = 0); below three shared seeds no test is made and the
    bootstrap interval alone is shown.

    Args:
        a: seed -> method a's value (accuracy, log-likelihood, fraction closed).
        b: seed -> method b's value.

    Returns:
        (the test, or None with fewer than :data:`MIN_T_SEEDS` shared finite pairs; the number of shared seeds).
    """
    shared = sorted(set(a) & set(b), key=str)
    return paired_t([a[s] for s in shared], [b[s] for s in shared], min_pairs=MIN_T_SEEDS), len(shared)


@dataclass(frozen=True)
class Bootstrap:
    """A bootstrap of a mean difference (method a minus method b; with no b, the mean of a)."""

    mean_diff: float
    ci_low: float
    ci_high: float
    p: float
    n_questions: int
    n_resamples: int
    seed: int
    n_missing: int = 0  # questions left out because a score was NaN or infinite (or missing in a seed)
    n_clusters: int = 0  # passages resampled; equal to n_questions when every question is its own cluster
    n_seeds: tuple[int, int] = (1, 1)  # seeds of a and of b (b: 0 for a one-sample bootstrap)
    paired_seeds: bool = False  # the seeds of a and b were resampled together (the same seeds on both sides)
    n_no_passage: int = 0  # questions without a known passage, each its own cluster (seed_item_bootstrap)


def _clusters_by_size(labels: Sequence[Hashable] | None, n: int) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
    """The number of clusters and, per cluster size m, (cluster indices [k], their items' positions [k, m])."""
    if labels is None:
        codes = np.arange(n)
    else:
        index: dict[Hashable, int] = {}
        codes = np.fromiter((index.setdefault(x, len(index)) for x in labels), dtype=np.int64, count=n)
    n_clusters = int(codes.max()) + 1 if n else 0
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    groups = []
    for m in np.unique(sizes):
        cids = np.flatnonzero(sizes == m)
        pos = order[starts[cids][:, None] + np.arange(m)[None, :]]
        groups.append((cids, pos))
    return n_clusters, groups


def cluster_bootstrap(
    a: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[float] | Sequence[Sequence[float]] | np.ndarray | None = None,
    clusters: Sequence[Hashable] | None = None,
    *,
    paired_seeds: bool = False,
    within: bool = True,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 1_000,
) -> Bootstrap:
    """A bootstrap over seeds, passages and the questions within each passage.

    Each resample draws the seeds with replacement (a's and b's together when
    ``paired_seeds``, else each side's own), the passages (clusters) with replacement,
    and, for every passage drawn, as many of its questions with replacement as it has.
    Its statistic is the mean over the drawn (seed, question) scores of a minus that of
    b, the questions paired (the same questions for both methods). The CI is the
    percentile interval; the two-sided p is twice the smaller share of resampled
    differences on one side of 0 (exact zeros count half to each side), capped at 1.

    Drawing a passage k times and its m questions m times each is one draw of k*m of
    them, so each resample is a weight per question (multinomial counts), computed for
    all resamples of a chunk at once; clusters of equal size share one draw.

    Resampling at every level counts the question-level noise more than once (once in the
    spread of the passages' and seeds' means, again in the draws within them), so the
    interval errs wide: in tests/test_report_stats.py's simulation (40 passages, a passage
    effect of logit sd 1) it covers the true mean in 95-97% of datasets (99% with no passage
    effect), the passages kept whole (``within=False``, the usual cluster bootstrap) in about
    93%, and questions resampled as if independent in 82-86%.

    Args:
        a: method a's scores, ``[seeds, questions]`` (or one seed as a 1-D array).
        b: method b's scores on the same questions, ``[seeds, questions]``; None for the mean of ``a``
            alone (its p then tests a mean of 0).
        clusters: the passage of each question (any hashable labels); None: every question its own
            cluster (the question-level bootstrap).
        paired_seeds: a's and b's rows are the same seeds in the same order: resample them together.
        within: resample the questions within each drawn passage (True), or keep each passage's questions
            as they are (False: the cluster bootstrap of clustered standard errors).
        n_resamples: bootstrap resamples.
        seed: the numpy Generator's seed (the same seed, the same answer).
        confidence: the interval's coverage.
        chunk: resamples drawn at once (memory: chunk x questions floats).

    Returns:
        The difference, its interval and p, with the numbers of questions, passages and seeds.

    Raises:
        ValueError: arrays of the wrong shape, ``paired_seeds`` with unequal seed counts, labels not one
            per question, or no question with finite scores in every seed.
    """
    x = np.asarray(a, dtype=np.float64)
    x = x[None, :] if x.ndim == 1 else x
    y = None if b is None else np.asarray(b, dtype=np.float64)
    if y is not None:
        y = y[None, :] if y.ndim == 1 else y
    bad_b = y is not None and (y.ndim != 2 or y.shape[0] == 0 or y.shape[1] != x.shape[1])
    if x.ndim != 2 or x.shape[0] == 0 or bad_b:
        raise ValueError(f"cluster_bootstrap needs [seeds, questions] arrays with the same questions, got "
                         f"{x.shape} and {None if y is None else y.shape}")
    if paired_seeds and (y is None or y.shape[0] != x.shape[0]):
        raise ValueError("cluster_bootstrap: paired seeds need as many seeds for a as for b")
    if clusters is not None and len(clusters) != x.shape[1]:
        raise ValueError(f"cluster_bootstrap needs one cluster label per question, got {len(clusters)} "
                         f"for {x.shape[1]}")
    keep = np.isfinite(x).all(axis=0) & (np.isfinite(y).all(axis=0) if y is not None else True)
    missing = int(keep.size - keep.sum())
    x = x[:, keep]
    y = y[:, keep] if y is not None else None
    labels = None if clusters is None else [c for c, k in zip(clusters, keep) if k]
    n = x.shape[1]
    if n == 0:
        raise ValueError("cluster_bootstrap needs at least one question with finite scores in every seed")
    n_clusters, groups = _clusters_by_size(labels, n)
    sa, sb = x.shape[0], (y.shape[0] if y is not None else 0)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        wa = rng.multinomial(sa, np.full(sa, 1.0 / sa), size=r) / sa if sa > 1 else np.ones((r, 1))
        if y is None:
            d = wa @ x
        elif paired_seeds:
            d = wa @ (x - y)
        else:
            wb = rng.multinomial(sb, np.full(sb, 1.0 / sb), size=r) / sb if sb > 1 else np.ones((r, 1))
            d = wa @ x - wb @ y
        k = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=r)
        w = np.empty((r, n), dtype=np.float64)
        for cids, pos in groups:
            m = pos.shape[1]
            if m == 1 or not within:
                w[:, pos] = k[:, cids][:, :, None]
            else:
                w[:, pos] = rng.multinomial(k[:, cids] * m, np.full(m, 1.0 / m))
        boots[start:start + r] = (w * d).sum(axis=1) / w.sum(axis=1)
    diff = float(x.mean() - (y.mean() if y is not None else 0.0))
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    ties = float(np.mean(boots == 0))
    below, above = float(np.mean(boots < 0)) + ties / 2, float(np.mean(boots > 0)) + ties / 2
    p = min(1.0, 2.0 * min(below, above))
    return Bootstrap(diff, float(lo), float(hi), p, int(n), int(n_resamples), int(seed), missing, n_clusters,
                     (sa, sb), bool(paired_seeds))


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 1_000,
) -> Bootstrap:
    """The question-level paired bootstrap: every question its own cluster, one row of scores per method.

    ``a`` and ``b`` are per-question scores aligned by question. This treats the questions as
    independent; where questions share a passage, :func:`cluster_bootstrap` is the right one (this
    is kept to compare with it). A question with a NaN or infinite score is missing: left out and
    counted in ``n_missing``.

    Args:
        a: method a's score per question.
        b: method b's score per question, aligned with ``a``.
        n_resamples: bootstrap resamples.
        seed: the bootstrap's seed.
        confidence: the interval's coverage.
        chunk: resamples drawn at once.

    Returns:
        The bootstrap (``n_clusters`` equal to ``n_questions``).

    Raises:
        ValueError: unequal lengths, or no question with two finite scores.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_bootstrap needs two equal-length 1-D arrays, got {x.shape} and {y.shape}")
    if not (np.isfinite(x) & np.isfinite(y)).any():
        raise ValueError("paired_bootstrap needs at least one question with two finite scores")
    return cluster_bootstrap(x, y, None, paired_seeds=True, n_resamples=n_resamples, seed=seed,
                             confidence=confidence, chunk=chunk)


def seed_item_bootstrap(
    a: Mapping[Any, Mapping[str, float]],
    b: Mapping[Any, Mapping[str, float]],
    clusters: Mapping[str, Hashable] | None = None,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Bootstrap | None:
    """:func:`cluster_bootstrap` of method a minus method b from per-seed, per-question scores.

    The questions are those scored in every seed of both methods (the others count as
    missing). When both methods have the same seeds, the seeds are paired (resampled
    together: a seed's shared data order or questions cancel); otherwise each method's
    seeds are resampled on their own (a base model's one seed against a trained method's
    three).

    Args:
        a: seed -> question id -> score of method a.
        b: seed -> question id -> score of method b.
        clusters: question id -> its passage; a question not in it (or no mapping) is its own cluster.
        n_resamples: bootstrap resamples.
        seed: the bootstrap's seed.
        confidence: the interval's coverage.

    Returns:
        The bootstrap, or None when a method has no seed or no question is scored in every seed.
    """
    if not a or not b:
        return None
    paired = set(a) == set(b)
    seeds_a = sorted(a, key=str)
    seeds_b = seeds_a if paired else sorted(b, key=str)
    rows = [a[s] for s in seeds_a] + [b[s] for s in seeds_b]
    every = set().union(*(set(r) for r in rows))
    items = sorted(set.intersection(*(set(r) for r in rows)))
    if not items:
        return None
    x = np.array([[r[i] for i in items] for r in rows[:len(seeds_a)]], dtype=np.float64)
    y = np.array([[r[i] for i in items] for r in rows[len(seeds_a):]], dtype=np.float64)
    if not (np.isfinite(x).all(axis=0) & np.isfinite(y).all(axis=0)).any():
        return None
    clusters = clusters or {}
    labels = [("passage", clusters[i]) if i in clusters else ("question", i) for i in items]
    res = cluster_bootstrap(x, y, labels, paired_seeds=paired, n_resamples=n_resamples, seed=seed,
                            confidence=confidence)
    return dataclasses.replace(res, n_missing=res.n_missing + len(every) - len(items),
                               n_no_passage=sum(i not in clusters for i in items))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down), in the order given.

    The i-th smallest of m p-values is multiplied by m - i + 1, capped at 1, and made no
    smaller than the adjusted values before it. Rejecting where the adjusted p is below
    alpha controls the family-wise error rate at alpha under any dependence.

    Args:
        pvalues: the family's p-values; None or NaN (no test) are left as they are and not counted in m.

    Returns:
        The adjusted p-values, None (or NaN) where the input was.
    """
    p = np.array([np.nan if v is None else v for v in pvalues], dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    out: list[float | None] = list(pvalues)
    if ok.size == 0:
        return out
    q = p[ok]
    order = np.argsort(q, kind="stable")
    m = q.size
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    for pos, value in zip(ok[order], adj):
        out[pos] = float(value)
    return out
