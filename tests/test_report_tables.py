"""Tables: numbers against hand computations, layout, escaping, golden Markdown and LaTeX."""

import difflib
import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import pytest

from pd.errors import ConfigError
from pd.report.aggregate import CellRecord, TableSpec, build_groups
from pd.report.sections import metric_sections
from pd.report.tables import build_table, latex_escape, render_latex, render_markdown

GOLDEN = Path(__file__).parent / "golden"
JUDGE = "judge:llama3-8b-instruct"
N = 40
PER_PASSAGE = 4  # questions per passage: 10 passages per dataset, the bootstrap's clusters


def _pattern(rng, p):
    return [bool(x) for x in rng.random(N) < p]


def small_experiment(root: Path):
    """pd / sft / base on two datasets, closed-book and BM25; sft has no NYT closed-book
    cell, base has one seed, pd has some unparseable judge grades. Returns (records, raw
    patterns) so tests can recompute every number by hand."""
    rng = np.random.default_rng(1234)
    ev_rng = np.random.default_rng(99)  # its own stream: the grades stay those of the accuracy golden files
    base_p = {"pd": 0.85, "sft": 0.6, "base": 0.2}
    records, raw = [], {}
    for retrieval, bonus in (("none", 0.0), ("bm25", 0.1)):
        for ds in ("squadshifts-amazon", "squadshifts-nyt"):
            for method in ("pd", "sft", "base"):
                if method == "sft" and ds == "squadshifts-nyt" and retrieval == "none":
                    continue
                for seed in ([0] if method == "base" else [0, 1, 2]):
                    pat = _pattern(rng, min(base_p[method] + bonus, 1.0))
                    invalid = {1, 7} if method == "pd" and seed == 0 else set()
                    rel = f"grades/{retrieval}/{ds}/{method}_s{seed}.jsonl"
                    path = root / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "w") as f:
                        for i, c in enumerate(pat):
                            bad = i in invalid
                            f.write(json.dumps({"item_id": f"{ds}-q{i}", "passage": f"{ds}-p{i // PER_PASSAGE}",
                                                "grader": JUDGE, "correct": None if bad else c, "valid": not bad,
                                                "reason": None, "answer": "x", "gold": ["y"]}) + "\n")
                    axes = {"model": "llama3-8b-instruct", "method": method, "dataset": ds, "retrieval": retrieval,
                            "seed": seed}
                    extra = _evidence_files(root, ev_rng, retrieval, ds, method, seed)
                    records.append(CellRecord("small", f"{method}-{ds}-{retrieval}-{seed}", axes, JUDGE, str(path),
                                              extra=extra))
                    raw[(retrieval, ds, method, seed)] = [False if i in invalid else c for i, c in enumerate(pat)]
    # a seed the workflow lists but has not graded yet
    axes = {"model": "llama3-8b-instruct", "method": "sft", "dataset": "squadshifts-nyt", "retrieval": "bm25",
            "seed": 3}
    records.append(CellRecord("small", "sft-nyt-bm25-3", axes, JUDGE, str(root / "grades/not-yet.jsonl")))
    return records, raw


def _evidence_files(root: Path, rng, retrieval: str, ds: str, method: str, seed: int) -> dict:
    """An evaluation file with gold log-likelihoods and (trained methods) an adapter's heldout.json."""
    skill = {"pd": -0.8, "sft": -1.1, "base": -1.6}[method] + (0.5 if retrieval == "bm25" else 0.0)
    ev = root / f"eval/{retrieval}/{ds}/{method}_s{seed}.jsonl"
    ev.parent.mkdir(parents=True, exist_ok=True)
    ev.write_text("".join(json.dumps({"item_id": f"{ds}-q{i}", "gold_logprob_per_token": round(skill + v, 4)}) + "\n"
                          for i, v in enumerate(rng.normal(0, 0.4, N))))
    extra = {"evaluate": str(ev)}
    if method != "base":
        adapter = root / f"adapters/{ds}/{method}_s{seed}"
        adapter.mkdir(parents=True, exist_ok=True)
        after = round(0.5 + (0.1 + 0.03 * seed ** 2 if method == "sft" else 0.0) + 0.05 * seed, 3)
        (adapter / "heldout.json").write_text(json.dumps({"n_heldout": 4, "before": 1.0, "after": after}))
        extra["adapter"] = str(adapter)
    return extra


SPEC = {"rows": ["method"], "columns": ["dataset"], "blocks": "retrieval", "paper_table": "2",
        "title": "Small synthetic experiment",
        "labels": {"method": {"sft": "SFT & co_50% #1 {x} ~ ^ $ \\"}}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    records, raw = small_experiment(root)
    table = build_table("small", TableSpec.from_dict(SPEC), build_groups(records), n_resamples=2000, seed=0,
                        display_root=str(root))
    table.sections = metric_sections(table, n_resamples=2000, seed=0)
    return table, raw


def _cell(table, retrieval, method, ds):
    block = next(b for b in table.blocks if b.key == retrieval)
    row = next(r for r in block.rows if r.key == (method,))
    j = next(i for i, (ck, _) in enumerate(table.columns) if ck == (ds,))
    return row.cells[j]


def test_cell_numbers_match_hand_computation(built):
    table, raw = built
    for (retrieval, ds, method) in {(r, d, m) for (r, d, m, _) in raw}:
        seeds = sorted(s for (r, d, m, s) in raw if (r, d, m) == (retrieval, ds, method))
        accs = [sum(raw[(retrieval, ds, method, s)]) / N for s in seeds]
        cell = _cell(table, retrieval, method, ds)
        assert cell.summary.mean == pytest.approx(statistics.mean(accs), abs=1e-12)
        if len(seeds) == 1:
            expected = math.sqrt(accs[0] * (1 - accs[0]) / N)
            assert cell.summary.kind == "binomial"
        else:
            expected = statistics.stdev(accs) / math.sqrt(len(accs))
            assert cell.summary.kind == "seeds"
        assert cell.summary.se == pytest.approx(expected, abs=1e-12)


def test_bold_is_the_best_per_column_and_block(built):
    table, _ = built
    for block in table.blocks:
        for j in range(len(table.columns)):
            means = [r.cells[j].summary.mean for r in block.rows if r.cells[j].summary is not None]
            for r in block.rows:
                c = r.cells[j]
                assert c.bold == (c.summary is not None and c.summary.mean == max(means))


def test_missing_cells_render_as_dash_and_are_listed(built):
    table, _ = built
    cell = _cell(table, "none", "sft", "squadshifts-nyt")
    assert cell.missing and cell.markdown().startswith("—") and cell.latex().startswith("--")
    assert any("Closed-book" in m and "NYT" in m and "no cell" in m for m in table.missing)
    assert any("seeds missing" in m and "grades/not-yet.jsonl" in m for m in table.missing)


def test_invalid_rate_is_carried_and_paper_value_shown(built):
    table, _ = built
    pd_amazon = _cell(table, "none", "pd", "squadshifts-amazon")
    assert pd_amazon.group.n_invalid == 2 and pd_amazon.group.invalid_rate == pytest.approx(2 / (3 * N))
    assert any("2/120" in line for line in table.invalid)
    assert pd_amazon.paper.value == 86.1
    assert pd_amazon.paper_diff == pytest.approx(100 * pd_amazon.summary.mean - 86.1)
    assert _cell(table, "bm25", "pd", "squadshifts-amazon").paper is None  # paper has no BM25 cell in table 2


def test_significance_marks_follow_the_holm_adjusted_tests_of_the_page(built):
    """Every bootstrap and t-test of the page (accuracy, log-likelihood, KL) is one Holm family."""
    from pd.report.stats import holm

    table, _ = built
    base = _cell(table, "none", "base", "squadshifts-amazon")
    assert base.comparison.significant_bootstrap and "*" in base.marks() and "†" in base.marks()
    assert base.comparison.t is None  # one seed: no t-test
    assert base.comparison.seeds == "1 vs 3" and not base.comparison.bootstrap.paired_seeds
    family = [*table.comparisons, *(c for s in table.sections for c in s.comparisons)]
    raw = [p for c in family for p in ((c.bootstrap.p if c.bootstrap else None), (c.t.p if c.t else None))]
    assert table.n_tests == sum(p is not None for p in raw) == 22  # 14 bootstraps, 8 t-tests
    assert [p for c in family for p in (c.holm_bootstrap, c.holm_t)] == holm(raw)
    for c in family:
        assert c.significant_bootstrap == (c.holm_bootstrap is not None and c.holm_bootstrap < 0.05)
        assert c.significant_t == (c.holm_t is not None and c.holm_t < 0.05)
    # SFT's -19 points on Amazon closed-book: p = 0.06 by the bootstrap over passages, no mark after Holm either
    sft = _cell(table, "none", "sft", "squadshifts-amazon").comparison
    assert sft.bootstrap.n_clusters == 10 and sft.bootstrap.n_questions == N and sft.seeds == "3 paired"
    assert not sft.significant_bootstrap and not sft.significant_t and sft.holm_t >= sft.t.p
    assert f"Holm's adjustment over the page's {table.n_tests} tests" in render_markdown(table)


def test_latex_escapes_every_special_character():
    assert latex_escape("a&b%c$d#e_f{g}h~i^j\\k") == (
        r"a\&b\%c\$d\#e\_f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k")


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PD_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), f"golden/{name}",
                                            "rendered"))
        pytest.fail(f"{name} differs from the golden file (PD_UPDATE_GOLDEN=1 rewrites it after review):\n{diff}")


def test_markdown_golden(built):
    table, _ = built
    _check_golden("report_small.md", render_markdown(table))


def test_latex_golden_and_escaping(built):
    table, _ = built
    tex = render_latex(table)
    assert r"SFT \& co\_50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \$ \textbackslash{}" in tex
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    _check_golden("report_small.tex", tex)


def test_spec_errors_name_the_problem(tmp_path):
    records, _ = small_experiment(tmp_path)
    groups = build_groups(records)
    with pytest.raises(ConfigError, match="allowed: rows"):
        TableSpec.from_dict({"rowz": ["method"]})
    with pytest.raises(ConfigError, match="two cell groups land in one table cell.*retrieval"):
        build_table("small", TableSpec.from_dict({"rows": ["method"], "columns": ["dataset"], "blocks": None}), groups)
    with pytest.raises(ConfigError, match="grader 'substring' has no cells"):
        build_table("small", TableSpec.from_dict({"grader": "substring"}), groups)
    no_blocks = build_table("small", TableSpec.from_dict({"blocks": "subset", "where": {"retrieval": "none"}}), groups,
                            n_resamples=100)
    assert len(no_blocks.blocks) == 1 and no_blocks.blocks[0].label == ""
    with pytest.raises(ConfigError, match="axis 'expert' is not an axis"):
        build_table("small", TableSpec.from_dict({"rows": ["expert"]}), groups)


def test_methods_compare_despite_their_own_settings(tmp_path):
    """PD and SFT cells differ in axes each method sets for itself (answer temperature, KL
    temperature); the paired test still pairs them by block, row and column."""
    import json

    from pd.report.aggregate import build_groups, load_manifest
    from pd.report.tables import build_table

    records = []
    correct = {"pd": [1, 1, 1, 1, 1, 1, 1, 1, 0, 0], "sft": [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]}
    for method, temps in (("pd", (1.5, 2.0)), ("sft", (0.25, None))):
        for seed in (0, 1):
            path = tmp_path / f"{method}{seed}.jsonl"
            path.write_text("".join(json.dumps({"item_id": f"q{i}", "grader": "substring", "correct": bool(c),
                                                "valid": True}) + "\n" for i, c in enumerate(correct[method])))
            axes = {"model": "m", "method": method, "dataset": "d", "retrieval": "none", "seed": seed,
                    "answer_temperature": temps[0], "kd_temperature": temps[1]}
            records.append({"experiment": "x", "cell_id": f"{method}/{seed}", "axes": axes, "grader": "substring",
                            "grades": str(path)})
    manifest = tmp_path / "x.json"
    manifest.write_text(json.dumps({"experiment": "x", "table": {"rows": ["model", "method"], "columns": ["dataset"],
                                                                  "blocks": "retrieval"}, "records": records}))
    m = load_manifest([manifest])
    table = build_table("x", m.experiments["x"], build_groups(m.cells), n_resamples=2000, seed=0)
    assert len(table.comparisons) == 1
    comp = table.comparisons[0]
    # 1 of 10 right against 8 of 10, the same in both seeds: -70 points.
    assert abs(comp.diff - (-0.7)) < 1e-9 and comp.significant_bootstrap
    # two seeds that agree: no t-test (one degree of freedom, p = 0), so no § mark; the bootstrap's one test
    # is the page's family (no Holm column)
    assert comp.t is None and comp.shared_seeds == 2 and not comp.significant_t and table.n_tests == 1
    sft = next(c for r in table.blocks[0].rows for c in r.cells if c.comparison is comp)
    assert sft.marks() == "*"
    md = render_markdown(table)
    assert "§" not in md.split("\n\n")[1] and "Holm p" not in md and "only from 3 shared seeds" in md


def _section(table, name):
    return next(s for s in table.sections if s.name == name)


def _metric_cell(section, block_label, method, column_index):
    block = next(b for b in section.blocks if b.label == block_label)
    row = next((r for r in block.rows if r.key == (method,)), None)
    return row.cells[column_index] if row else None


def test_gold_loglik_block_matches_the_rows_and_scipy(built):
    """Every number of the log-likelihood block, recomputed from the evaluation rows on disk."""
    from scipy import stats as sps

    from pd.report.stats import seed_item_bootstrap

    table, _ = built
    gold = _section(table, "gold_logprob")

    def per_seed(group):
        out = {}
        for rec in group.records:
            if rec.extra.get("evaluate"):
                rows = [json.loads(line) for line in Path(rec.extra["evaluate"]).read_text().splitlines()]
                out[rec.seed] = {r["item_id"]: r["gold_logprob_per_token"] for r in rows}
        return out

    checked = tested = 0
    for block in gold.blocks:
        for row in block.rows:
            for j, cell in enumerate(row.cells):
                if cell.summary is None:
                    continue
                seeds = per_seed(cell.group)
                means = [statistics.mean(v.values()) for v in seeds.values()]
                assert cell.summary.mean == pytest.approx(statistics.mean(means), abs=1e-12)
                if len(means) > 1:
                    se = statistics.stdev(means) / math.sqrt(len(means))
                else:
                    only = list(next(iter(seeds.values())).values())
                    se = statistics.stdev(only) / math.sqrt(len(only))
                assert cell.summary.se == pytest.approx(se, abs=1e-12)
                checked += 1
                if cell.comparison is None:
                    continue
                ref = per_seed(_metric_cell(gold, block.label, "pd", j).group)
                shared = sorted(set(seeds) & set(ref))
                a = [statistics.mean(seeds[s].values()) for s in shared]
                b = [statistics.mean(ref[s].values()) for s in shared]
                if len(shared) >= 3:
                    assert cell.comparison.t.p == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-9)
                else:
                    assert cell.comparison.t is None
                items = sorted(set.intersection(*(set(v) for v in seeds.values()), *(set(v) for v in ref.values())))
                xa = [statistics.mean(v[i] for v in seeds.values()) for i in items]
                xb = [statistics.mean(v[i] for v in ref.values()) for i in items]
                passages = {i: f"{i.rsplit('-q', 1)[0]}-p{int(i.rsplit('-q', 1)[1]) // PER_PASSAGE}" for i in items}
                boot = seed_item_bootstrap(seeds, ref, passages, n_resamples=2000, seed=0)
                assert cell.comparison.bootstrap == boot and boot.n_clusters == N // PER_PASSAGE
                assert cell.comparison.bootstrap.mean_diff == pytest.approx(statistics.mean(xa) - statistics.mean(xb))
                tested += 1
    assert checked == 11 and tested == 7


def test_heldout_kl_block_matches_heldout_json_and_scipy(built):
    """before -> after and the fraction closed, from each seed's heldout.json; the t-test against scipy's."""
    from scipy import stats as sps

    table, _ = built
    kl = _section(table, "heldout_kl")
    assert len(kl.blocks) == 1 and [r.key for r in kl.blocks[0].rows] == [("pd",), ("sft",)]  # no adapter, no row

    def per_seed(group):
        out = {}
        for rec in group.records:
            if rec.extra.get("adapter"):
                h = json.loads((Path(rec.extra["adapter"]) / "heldout.json").read_text())
                out[rec.seed] = (h["before"], h["after"], 1 - h["after"] / h["before"])
        return out

    for j in range(len(table.columns)):
        pd_cell, sft_cell = (_metric_cell(kl, "", m, j) for m in ("pd", "sft"))
        for cell in (pd_cell, sft_cell):
            seeds = per_seed(cell.group)
            closed = [c for _, _, c in seeds.values()]
            assert cell.before == pytest.approx(statistics.mean(b for b, _, _ in seeds.values()))
            assert cell.after == pytest.approx(statistics.mean(a for _, a, _ in seeds.values()))
            assert cell.summary.mean == pytest.approx(statistics.mean(closed))
            assert cell.summary.se == pytest.approx(statistics.stdev(closed) / math.sqrt(len(closed)))
        a, b = per_seed(sft_cell.group), per_seed(pd_cell.group)
        shared = sorted(set(a) & set(b))
        expected = sps.ttest_rel([a[s][2] for s in shared], [b[s][2] for s in shared]).pvalue
        assert sft_cell.comparison.t.p == pytest.approx(expected, rel=1e-9) and sft_cell.comparison.bootstrap is None
        assert sft_cell.comparison.diff == pytest.approx(sft_cell.summary.mean - pd_cell.summary.mean)
        assert pd_cell.bold and not sft_cell.bold


def test_old_and_unscored_rows_make_no_block(tmp_path):
    """Evaluation rows without the field (written before it existed) or with null (vLLM) contribute nothing."""
    rows = {"old": [{"item_id": "q1", "answer": "x"}], "vllm": [{"item_id": "q1", "gold_logprob_per_token": None}]}
    records = []
    for method, r in rows.items():
        ev, grades = tmp_path / f"{method}.eval.jsonl", tmp_path / f"{method}.jsonl"
        ev.write_text(json.dumps(r[0]) + "\n")
        grades.write_text(json.dumps({"item_id": "q1", "correct": True, "valid": True}) + "\n")
        records.append(CellRecord("x", method, {"method": method, "dataset": "d", "seed": 0}, "substring",
                                  str(grades), extra={"evaluate": str(ev)}))
    table = build_table("x", TableSpec.from_dict({"blocks": None, "reference": "old"}), build_groups(records))
    assert metric_sections(table) == []


def test_a_snapshot_cell_has_no_heldout_kl(tmp_path):
    """heldout.json measures the final adapter: a snapshot's cell does not borrow it."""
    from pd.report.evidence import Evidence

    (tmp_path / "heldout.json").write_text(json.dumps({"n_heldout": 2, "before": 2.0, "after": 0.5}))
    final = CellRecord("x", "f", {"method": "pd", "snapshot": None}, "substring", "g", extra={"adapter": str(tmp_path)})
    snap = CellRecord("x", "s", {"method": "pd", "snapshot": 60}, "substring", "g", extra={"adapter": str(tmp_path)})
    ev = Evidence()
    assert ev.heldout(final).closed == pytest.approx(0.75) and ev.heldout(snap) is None


def test_a_difference_equal_in_every_seed_is_flagged_in_the_notes(built):
    import dataclasses

    from pd.report.stats import NO_SPREAD_NOTE, paired_t

    table, _ = built
    assert all(c.t is None or not c.t.no_spread for c in table.comparisons)
    assert NO_SPREAD_NOTE not in [text for _, text in table.notes()]
    shift = paired_t([0.30, 0.50], [0.20, 0.40])  # two seeds, the same +0.10 in both
    assert shift.no_spread and shift.p == 0.0
    assert not paired_t([0.30, 0.55], [0.20, 0.40]).no_spread
    flagged = dataclasses.replace(table, comparisons=[dataclasses.replace(table.comparisons[0], t=shift),
                                                      *table.comparisons[1:]])
    assert NO_SPREAD_NOTE in [text for _, text in flagged.notes()]
    assert NO_SPREAD_NOTE in render_markdown(flagged)
