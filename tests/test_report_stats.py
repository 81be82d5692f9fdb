"""Statistics and aggregation against independent numpy/scipy/stdlib computations."""

import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats as sst

from pd.errors import DataError
from pd.report.aggregate import CellRecord, build_groups, load_grades
from pd.report.stats import binomial_se, mean_se, paired_bootstrap, paired_t


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
    res = paired_bootstrap(a, b, n_resamples=4000, seed=3)
    d = a - b
    assert res.mean_diff == pytest.approx(d.mean(), abs=1e-15)
    ref = sst.bootstrap((a, b), lambda x, y: np.mean(x) - np.mean(y), paired=True, vectorized=False,
                        n_resamples=4000, method="percentile", random_state=np.random.default_rng(11))
    assert res.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert res.ci_high == pytest.approx(ref.confidence_interval.high, abs=0.01)
    z = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    assert res.p == pytest.approx(2 * sst.norm.sf(abs(z)), abs=0.02)
    # same seed, same answer
    assert paired_bootstrap(a, b, n_resamples=4000, seed=3) == res


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
