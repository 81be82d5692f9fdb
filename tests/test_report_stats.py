"""Statistics and aggregation against independent numpy/scipy/stdlib computations."""

import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats as sst

from pd.errors import DataError
from pd.report.aggregate import CellRecord, build_groups, load_grades
from pd.report.stats import (
    MIN_T_SEEDS,
    binomial_se,
    cluster_bootstrap,
    holm,
    mean_se,
    paired_bootstrap,
    paired_t,
    seed_item_bootstrap,
    seed_t_test,
)


def write_grades(path, pattern, *, invalid=(), prefix="q"):
    """A grade file from a 0/1 pattern; indices in ``invalid`` become unparseable judge grades."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, c in enumerate(pattern):
            bad = i in invalid
            f.write(json.dumps({"item_id": f"{prefix}{i}", "grader": "judge:x", "correct": None if bad else bool(c),
                                "valid": not bad, "reason": "unparseable" if bad else None,
                                "answer": f"a{i}", "gold": [f"g{i}"]}) + "\n")
    return str(path)


def test_mean_se_over_seeds_matches_stdlib():
    acc = [0.61, 0.655, 0.58]
    s = mean_se(acc, [200, 200, 200])
    assert s.kind == "seeds" and s.n_seeds == 3
    assert s.mean == pytest.approx(sum(acc) / 3, abs=1e-15)
    assert s.se == pytest.approx(statistics.stdev(acc) / math.sqrt(3), rel=1e-12)
    assert s.half_width == pytest.approx(2 * statistics.stdev(acc) / math.sqrt(3), rel=1e-12)


def test_one_seed_uses_binomial_se_over_questions():
    s = mean_se([0.3], [50])
    assert s.kind == "binomial" and s.n_seeds == 1
    assert s.se == pytest.approx(math.sqrt(0.3 * 0.7 / 50), rel=1e-12)
    assert binomial_se(0.5, 4) == pytest.approx(0.25)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_all_correct_and_all_wrong_give_zero_se_not_nan(value):
    for accs, ns in (([value], [40]), ([value] * 3, [40] * 3)):
        s = mean_se(accs, ns)
        assert s.mean == value and s.se == 0.0 and not math.isnan(s.half_width)


def test_paired_t_matches_hand_computed_t_statistic():
    a, b = [0.62, 0.70, 0.66, 0.64], [0.55, 0.61, 0.63, 0.52]
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    p = 2 * sst.t.sf(abs(t), df=len(d) - 1)
    res = paired_t(a, b)
    assert res.statistic == pytest.approx(t, rel=1e-10)
    assert res.p == pytest.approx(p, rel=1e-8)
    assert res.mean_diff == pytest.approx(d.mean())


def test_paired_t_degenerate_cases_have_no_nan():
    assert paired_t([0.5], [0.4]) is None
    assert paired_t([0.5, 0.6], [0.4, 0.45], min_pairs=3) is None
    same = paired_t([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same.p == 1.0 and same.mean_diff == 0.0
    shift = paired_t([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert shift.p == 0.0 and shift.mean_diff == pytest.approx(0.1)


@pytest.mark.parametrize("extra_right", [0, 12, 50, 90])
def test_paired_bootstrap_agrees_with_scipy_and_normal_approximation(extra_right):
    rng = np.random.default_rng(7)
    n = 400
    b = (rng.random(n) < 0.6).astype(float)
    a = np.where(rng.random(n) < 0.25, 1.0 - b, b)  # a flips a quarter of b's grades
    a[:extra_right] = 1.0  # and is right on some more
    res = paired_bootstrap(a, b, n_resamples=10_000, seed=3)
    d = a - b
    assert res.mean_diff == pytest.approx(d.mean(), abs=1e-15)
    ref = sst.bootstrap((a, b), lambda x, y: np.mean(x) - np.mean(y), paired=True, vectorized=False,
                        n_resamples=4000, method="percentile", random_state=np.random.default_rng(11))
    assert res.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert res.ci_high == pytest.approx(ref.confidence_interval.high, abs=0.01)
    z = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    assert res.p == pytest.approx(2 * sst.norm.sf(abs(z)), abs=0.025)  # Monte Carlo SD of p ~0.007
    # same seed, same answer
    assert paired_bootstrap(a, b, n_resamples=10_000, seed=3) == res


def test_paired_bootstrap_identical_and_disjoint_methods():
    x = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    same = paired_bootstrap(x, x, n_resamples=500)
    assert same.p == 1.0 and same.ci_low == 0.0 and same.ci_high == 0.0
    apart = paired_bootstrap(np.ones(50), np.zeros(50), n_resamples=500)
    assert apart.p == 0.0 and apart.ci_low == 1.0


def test_grades_accuracy_counts_invalid_as_wrong(tmp_path):
    pattern = [1, 1, 0, 1, 0, 1, 1, 1, 0, 0]
    path = write_grades(tmp_path / "g.jsonl", pattern, invalid={0, 2})
    g = load_grades(path)
    # hand count: correct and valid at indices 1, 3, 5, 6, 7 -> 5 of 10
    assert g.accuracy == 0.5 and g.n == 10 and g.n_invalid == 2 and g.invalid_rate == 0.2


def test_bad_grade_rows_are_clear_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"item_id": "q0", "grader": "j", "correct": None, "valid": True}) + "\n")
    with pytest.raises(DataError, match="valid grade needs 'correct'"):
        load_grades(p)
    p.write_text(json.dumps({"item_id": "q0", "grader": "j", "correct": True, "valid": False}) + "\n")
    with pytest.raises(DataError, match="must have 'correct': null"):
        load_grades(p)
    p.write_text((json.dumps({"item_id": "q0", "grader": "j", "correct": True, "valid": True}) + "\n") * 2)
    with pytest.raises(DataError, match="graded twice"):
        load_grades(p)
    p.write_text(json.dumps({"item_id": "q0", "correct": True}) + "\n")
    with pytest.raises(DataError, match="lacks 'valid'"):
        load_grades(p)


def test_groups_aggregate_over_seeds_and_keep_missing_files(tmp_path):
    patterns = {0: [1, 1, 0, 0, 1], 1: [1, 0, 0, 0, 1], 2: [1, 1, 1, 0, 1]}
    recs = []
    for s, pat in patterns.items():
        path = write_grades(tmp_path / f"s{s}.jsonl", pat)
        recs.append(CellRecord("e", f"c{s}", {"method": "pd", "dataset": "nyt", "seed": s}, "judge:x", path))
    missing = str(tmp_path / "nope.jsonl")
    recs.append(CellRecord("e", "c3", {"method": "pd", "dataset": "nyt", "seed": 3}, "judge:x", missing))
    (group,) = build_groups(recs)
    accs = [sum(p) / 5 for p in patterns.values()]
    s = group.summary()
    assert s.mean == pytest.approx(statistics.mean(accs))
    assert s.se == pytest.approx(statistics.stdev(accs) / math.sqrt(3))
    assert [r.cell_id for r in group.missing] == ["c3"]
    per_seed = group.per_seed_items()
    assert sorted(per_seed) == [0, 1, 2] and per_seed[1] == {"q0": 1.0, "q1": 0.0, "q2": 0.0, "q3": 0.0, "q4": 1.0}
    assert group.passages() == {}  # rows without a passage (graded before rows carried it)
    dup = CellRecord("e", "c9", {"method": "pd", "dataset": "nyt", "seed": 0}, "judge:x", recs[0].grades)
    with pytest.raises(DataError, match="same axes, seed and grader"):
        build_groups(recs + [dup])


def test_seeds_mean_se_over_seeds_or_questions():
    """Log-likelihood and KL closure: SE over seeds (ddof=1), one seed over its questions, else none."""
    from pd.report.evidence import seeds_mean_se

    s = seeds_mean_se([-1.0, -1.5, -0.7])
    assert s.kind == "seeds" and s.se == pytest.approx(statistics.stdev([-1.0, -1.5, -0.7]) / math.sqrt(3))
    q = seeds_mean_se([-1.2], [-1.0, -2.0, -0.6])
    assert q.kind == "questions" and q.mean == -1.2
    assert q.se == pytest.approx(statistics.stdev([-1.0, -2.0, -0.6]) / math.sqrt(3))
    assert seeds_mean_se([0.4]).kind == "none" and math.isnan(seeds_mean_se([0.4]).se)
    with pytest.raises(ValueError):
        seeds_mean_se([])


def test_nan_scores_are_missing_pairs_not_evidence():
    a = [0.1, -0.2, float("nan"), 0.4, 0.0, -0.1]
    b = [0.0, -0.1, 0.3, float("nan"), 0.1, -0.3]
    boot = paired_bootstrap(a, b, n_resamples=2_000, seed=1)
    ref = paired_bootstrap([0.1, -0.2, 0.0, -0.1], [0.0, -0.1, 0.1, -0.3], n_resamples=2_000, seed=1)
    assert boot.n_missing == 2 and boot.n_questions == 4
    assert (boot.mean_diff, boot.ci_low, boot.ci_high, boot.p) == (ref.mean_diff, ref.ci_low, ref.ci_high, ref.p)
    assert boot.p > 0.05  # a NaN never makes every resample "differ"
    t = paired_t([0.5, float("nan"), 0.6, 0.7], [0.4, 0.5, float("inf"), 0.5])
    assert t is not None and t.n == 2 and t.n_missing == 2 and math.isfinite(t.p)
    assert paired_t([float("nan"), 0.5], [0.1, 0.2]) is None
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([float("nan")], [0.0])


def test_nan_log_likelihoods_are_read_as_missing(tmp_path):
    from pd.report.evidence import load_gold_scores

    f = tmp_path / "eval.jsonl"
    f.write_text("\n".join(json.dumps({"item_id": i, "gold_logprob_per_token": v})
                           for i, v in [("a", -1.0), ("b", float("nan")), ("c", -2.0), ("d", float("-inf"))]) + "\n")
    scores = load_gold_scores(str(f))
    assert scores.item_ids == ["a", "c"] and scores.mean == -1.5


def test_a_nan_p_value_is_shown_missing_not_nan():
    from pd.report.tables import MISSING, format_p

    assert format_p(float("nan")) == MISSING == format_p(None) and format_p(0.0) == "<0.001"


# --------------------------------------------------------------------------- t from three seeds, Holm


def test_paired_t_agrees_with_scipy_ttest_rel():
    rng = np.random.default_rng(5)
    for n in (3, 4, 7):
        a, b = rng.random(n), rng.random(n)
        res, ref = paired_t(a, b), sst.ttest_rel(a, b)
        assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
        assert res.p == pytest.approx(ref.pvalue, rel=1e-12) and res.n == n


def test_two_seeds_give_no_t_test_three_do():
    """Two seeds that agree: a t with one degree of freedom and p = 0 (the "5.9 ± 0.0§" of the issue): no test."""
    assert MIN_T_SEEDS == 3
    t, shared = seed_t_test({0: 0.159, 1: 0.159}, {0: 0.1, 1: 0.1, 2: 0.3})
    assert t is None and shared == 2
    a, b = {0: 0.62, 1: 0.70, 2: 0.66}, {0: 0.55, 1: 0.61, 2: 0.63, 9: 0.1}
    t, shared = seed_t_test(a, b)
    assert shared == 3 and t.p == pytest.approx(sst.ttest_rel([0.62, 0.70, 0.66], [0.55, 0.61, 0.63]).pvalue)
    # a NaN seed leaves two finite pairs: no test either
    assert seed_t_test({0: 0.5, 1: float("nan"), 2: 0.6}, {0: 0.4, 1: 0.5, 2: 0.45})[0] is None


def test_holm_against_a_hand_computed_example():
    # sorted: 0.005 0.01 0.03 0.04 -> x4 x3 x2 x1 = 0.02 0.03 0.06 0.04 -> running max: 0.02 0.03 0.06 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    # no test (None, NaN) is left alone and not counted: m = 2
    out = holm([None, 0.02, float("nan"), 0.04])
    assert out[0] is None and math.isnan(out[2]) and out[1] == pytest.approx(0.04) and out[3] == pytest.approx(0.04)
    assert holm([0.6, 0.9]) == [1.0, 1.0] and holm([]) == [] and holm([0.03]) == [0.03]


def test_holm_agrees_with_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(2).random(40) ** 3
    assert holm(list(p)) == pytest.approx(list(multitest.multipletests(p, method="holm")[1]), abs=1e-12)


# --------------------------------------------------------------------------- the bootstrap over seeds and passages


def _two_stage_variance(y: np.ndarray, m: int, within: bool) -> float:
    """The exact bootstrap variance of the mean for equal clusters of m: (1/C) [between + within/m]."""
    c = y.reshape(-1, m)
    between = np.mean((c.mean(axis=1) - y.mean()) ** 2)
    inside = np.mean(c.var(axis=1)) / m if within else 0.0
    return (between + inside) / c.shape[0]


@pytest.mark.parametrize("within", [True, False])
def test_cluster_bootstrap_variance_matches_the_two_stage_formula(within):
    rng = np.random.default_rng(4)
    C, m = 12, 5
    y = np.repeat(rng.normal(0, 1, C), m) + rng.normal(0, 0.7, C * m)
    labels = [f"p{i // m}" for i in range(C * m)]
    order = rng.permutation(C * m)  # the clusters need not be contiguous
    res = cluster_bootstrap(y[order], None, [labels[i] for i in order], within=within, n_resamples=40_000, seed=1)
    assert res.mean_diff == pytest.approx(y.mean()) and res.n_clusters == C and res.n_questions == C * m
    sd = (res.ci_high - res.ci_low) / (2 * sst.norm.ppf(0.975))  # a mean of 12 clusters: near normal
    assert sd ** 2 == pytest.approx(_two_stage_variance(y, m, within), rel=0.08)


def test_seeds_are_resampled_and_paired_seeds_cancel_shared_seed_effects():
    """One passage kept whole: only the seeds vary, so the variance is the seeds' (1/S^2) sum of squares."""
    rng = np.random.default_rng(8)
    S, n = 6, 30
    seed_effect = rng.normal(0, 0.2, (S, 1))
    a = 0.6 + seed_effect + rng.normal(0, 0.02, (S, n))
    b = 0.5 + seed_effect + rng.normal(0, 0.02, (S, n))
    one = ["p"] * n
    z = 2 * sst.norm.ppf(0.975)
    paired = cluster_bootstrap(a, b, one, paired_seeds=True, within=False, n_resamples=40_000, seed=2)
    unpaired = cluster_bootstrap(a, b, one, paired_seeds=False, within=False, n_resamples=40_000, seed=2)
    d = (a - b).mean(axis=1)
    assert ((paired.ci_high - paired.ci_low) / z) ** 2 == pytest.approx(np.mean((d - d.mean()) ** 2) / S, rel=0.1)
    va, vb = (np.mean((x.mean(axis=1) - x.mean()) ** 2) / S for x in (a, b))
    assert ((unpaired.ci_high - unpaired.ci_low) / z) ** 2 == pytest.approx(va + vb, rel=0.1)
    assert paired.paired_seeds and not unpaired.paired_seeds and paired.n_seeds == (S, S)
    assert paired.p < 0.001 and unpaired.ci_high - unpaired.ci_low > 5 * (paired.ci_high - paired.ci_low)
    with pytest.raises(ValueError, match="paired seeds"):
        cluster_bootstrap(a, b[:3], one, paired_seeds=True)
    with pytest.raises(ValueError, match="one cluster label per question"):
        cluster_bootstrap(a, b, one[:-1])


def test_coverage_under_intra_passage_correlation():
    """200 datasets of 40 passages (2-8 questions each) whose questions share a passage effect (logit sd 1):
    the bootstrap over passages covers the true accuracy in ~95% of them, the question-level one less."""
    from scipy.special import expit

    mu, sd = 0.3, 1.0
    x, w = np.polynomial.hermite_e.hermegauss(80)
    truth = float((w * expit(mu + sd * x)).sum() / w.sum())  # E over passages of P(correct)
    rng = np.random.default_rng(123)
    hits = {"two-stage": 0, "passages whole": 0, "questions": 0}
    n_data = 200
    for k in range(n_data):
        sizes = rng.integers(2, 9, 40)
        labels = np.repeat(np.arange(40), sizes)
        y = (rng.random(labels.size) < expit(mu + np.repeat(rng.normal(0, sd, 40), sizes))).astype(float)
        for name, lab, within in (("two-stage", labels, True), ("passages whole", labels, False),
                                  ("questions", None, True)):
            b = cluster_bootstrap(y, None, lab, within=within, n_resamples=1000, seed=k)
            hits[name] += b.ci_low <= truth <= b.ci_high
    cover = {k: v / n_data for k, v in hits.items()}
    assert 0.90 <= cover["two-stage"] <= 0.99, cover
    assert 0.88 <= cover["passages whole"] <= 0.98, cover
    assert cover["questions"] < 0.92 and cover["questions"] < cover["passages whole"] - 0.03, cover


def test_seed_item_bootstrap_builds_the_matrices_from_the_rows():
    a = {0: {"q1": 1.0, "q2": 0.0, "q3": 1.0, "q4": 1.0}, 1: {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}}
    b = {0: {"q1": 0.0, "q2": 0.0, "q3": 1.0}, 1: {"q1": 0.0, "q2": 1.0, "q3": 0.0, "q4": 0.0}}
    passages = {"q1": "p1", "q2": "p1"}  # q3 names no passage: its own cluster
    res = seed_item_bootstrap(a, b, passages, n_resamples=2000, seed=0)
    assert res.n_questions == 3 and res.n_missing == 1  # q4 is not graded in b's seed 0
    assert res.n_clusters == 2 and res.n_no_passage == 1 and res.paired_seeds and res.n_seeds == (2, 2)
    assert res.mean_diff == pytest.approx((1 + 0 + 1 + 1 + 1 + 0) / 6 - (0 + 0 + 1 + 0 + 1 + 0) / 6)
    x = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    y = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    ref = cluster_bootstrap(x, y, [("passage", "p1"), ("passage", "p1"), ("question", "q3")], paired_seeds=True,
                            n_resamples=2000, seed=0)
    assert (res.ci_low, res.ci_high, res.p) == (ref.ci_low, ref.ci_high, ref.p)
    one_seed = seed_item_bootstrap({0: a[0]}, b, passages, n_resamples=500)
    assert not one_seed.paired_seeds and one_seed.n_seeds == (1, 2)
    assert seed_item_bootstrap({}, b) is None and seed_item_bootstrap({0: {"x": 1.0}}, b) is None


def test_a_page_of_bootstraps_is_fast():
    """1000 resamples of 3 seeds x 1000 questions in 200 passages, paired: well under a second."""
    import time

    rng = np.random.default_rng(0)
    a, b = (rng.random((3, 1000)) < 0.6).astype(float), (rng.random((3, 1000)) < 0.5).astype(float)
    labels = np.repeat(np.arange(200), 5)
    start = time.perf_counter()
    cluster_bootstrap(a, b, labels, paired_seeds=True, n_resamples=1000, seed=0)
    assert time.perf_counter() - start < 0.5
