"""Fair tests, shown: the base-answered view and the leakage audit, against hand computations."""

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from test_report_tables import SPEC, N, small_experiment

from pd.errors import ConfigError
from pd.io import read_jsonl, write_json, write_jsonl
from pd.report import render_reports
from pd.report.aggregate import TableSpec, build_groups, load_grades
from pd.report.base_answered import answered_items, base_answered_view
from pd.report.leakage import (
    TrainingIndex,
    audit_questions,
    content_words,
    similarity,
)
from pd.report.tables import build_table, render_latex, render_markdown
from pd.train.rows import split_heldout

# --------------------------------------------------------------------------- base-answered view


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-fair")
    records, raw = small_experiment(root)
    groups = build_groups(records)
    table = build_table("small", TableSpec.from_dict(SPEC), groups, n_resamples=200, seed=0)
    return records, raw, groups, table


def _view_cell(table, view, retrieval, method, ds):
    bi = next(i for i, b in enumerate(table.blocks) if b.key == retrieval)
    row = next(r for r in view.blocks[bi].rows if r.key == (method,))
    j = next(i for i, (ck, _) in enumerate(table.columns) if ck == (ds,))
    return row.cells[j]


def test_base_answered_counts_and_rest_accuracy_match_hand_computation(small):
    records, raw, groups, table = small
    view = base_answered_view(table, groups)
    before = render_markdown(table)
    checked = 0
    for (retrieval, ds, method) in {(r, d, m) for (r, d, m, _) in raw}:
        base = raw[("none", ds, "base", 0)]  # the base model's one closed-book seed
        answered = {i for i in range(N) if base[i]}
        rest = [i for i in range(N) if i not in answered]
        seeds = sorted(s for (r, d, m, s) in raw if (r, d, m) == (retrieval, ds, method))
        accs = [sum(raw[(retrieval, ds, method, s)][i] for i in rest) / len(rest) for s in seeds]
        cell = _view_cell(table, view, retrieval, method, ds)
        assert cell.value.removed == len(answered) and cell.value.total == N
        assert cell.value.summary.mean == pytest.approx(statistics.mean(accs), abs=1e-12)
        if len(seeds) == 1:
            se = math.sqrt(accs[0] * (1 - accs[0]) / len(rest))
        else:
            se = statistics.stdev(accs) / math.sqrt(len(seeds))
        assert cell.value.summary.se == pytest.approx(se, abs=1e-12)
        assert f"({len(answered)}/{N} answered)" in view.text(cell)
        if method == "base" and retrieval == "none":
            assert cell.value.summary.mean == 0.0  # by construction: the rest is what it got wrong
        checked += 1
    assert checked == 11
    # the missing cell (sft, NYT, closed-book) stays missing; the table's own numbers do not move
    assert _view_cell(table, view, "none", "sft", "squadshifts-nyt").value is None
    table.views = [view]
    md = render_markdown(table)
    assert md.startswith(before) and "(the paper's filter, as a view)" in md and "rule 'any'" in md
    assert r"\textbf{Questions the base model" in render_latex(table)


def test_base_answered_majority_rule_and_invalid_grades(tmp_path):
    files = []
    patterns = {0: [True, True, False, None], 1: [True, False, False, False], 2: [False, True, False, True]}
    for seed, pat in patterns.items():
        path = tmp_path / f"base_s{seed}.jsonl"
        write_jsonl(path, [{"item_id": f"q{i}", "grader": "substring", "correct": c, "valid": c is not None}
                           for i, c in enumerate(pat)])
        files.append(load_grades(path))
    # q3: invalid (not correct) in seed 0, wrong in 1, right in 2
    assert answered_items(files, "any") == {"q0", "q1", "q3"}
    assert answered_items(files, "majority") == {"q0", "q1"}
    assert answered_items(files[:1] + files[2:], "majority") == {"q1"}  # 1 of 2 is not a majority
    with pytest.raises(ConfigError, match="allowed: any, majority"):
        answered_items(files, "all")


def test_a_cell_without_base_is_said_so(small):
    records, raw, groups, table = small
    no_nyt_base = [r for r in records if not (r.axes["method"] == "base" and r.axes["dataset"] == "squadshifts-nyt"
                                              and r.axes["retrieval"] == "none")]
    groups2 = build_groups(no_nyt_base)
    table2 = build_table("small", TableSpec.from_dict(SPEC), groups2, n_resamples=200, seed=0)
    view = base_answered_view(table2, groups2)
    assert _view_cell(table2, view, "none", "pd", "squadshifts-nyt").value is None
    assert _view_cell(table2, view, "bm25", "pd", "squadshifts-nyt").value is None  # closed-book base only
    assert _view_cell(table2, view, "none", "pd", "squadshifts-amazon").value is not None
    notes = " ".join(n for _, n in view.notes)
    assert "No base cell in this experiment for model llama3-8b-instruct, dataset NYT" in notes
    assert "Amazon" not in notes.split("No base cell")[1]
    # with no base cell at all: no grid, only the notes
    none = [r for r in records if r.axes["method"] != "base"]
    g3 = build_groups(none)
    view3 = base_answered_view(build_table("small", TableSpec.from_dict(SPEC), g3, n_resamples=200), g3)
    assert view3.blocks == [] and sum("No base cell" in n for _, n in view3.notes) == 2


# --------------------------------------------------------------------------- leakage audit

TEST_QUESTIONS = {
    "t1": "Which river is the second-longest in Europe?",
    "t2": "Who wrote the novel Dracula in 1897?",
    "t3": "How many capital cities lie on the banks of the Danube?",
}


def test_leakage_finds_a_planted_near_duplicate_and_not_an_unrelated_question():
    train = [
        "What is Europe's second-longest river?",  # restates t1
        "Through how many countries does the Danube flow?",  # about the same passage, not a restatement
        "Which company did the author found after the war?",
    ]
    audit = audit_questions(TEST_QUESTIONS, train, threshold=0.5)
    by_id = {m.item_id: m for m in audit.matches}
    assert by_id["t1"].train_question == train[0] and by_id["t1"].similarity == pytest.approx(4 / 5)
    assert audit.flagged == {"t1"} and audit.share == pytest.approx(1 / 3)
    assert by_id["t2"].similarity == 0.0 and by_id["t2"].train_question is None
    assert by_id["t3"].train_question == train[1] and by_id["t3"].similarity < 0.5  # shares "many", "danube"
    assert [m.item_id for m in audit.closest(2)] == ["t1", "t3"]
    # containment: the share of the test question's words; the restatement still wins
    cont = audit_questions(TEST_QUESTIONS, train, threshold=0.9, measure="containment")
    assert cont.flagged == {"t1"}
    with pytest.raises(ConfigError, match="allowed: a number in"):
        audit_questions(TEST_QUESTIONS, train, threshold=1.5)
    with pytest.raises(ConfigError, match="allowed: jaccard, containment"):
        audit_questions(TEST_QUESTIONS, train, measure="cosine")


def test_the_index_finds_what_a_search_of_every_pair_finds():
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(30)] + ["the", "of", "what"]
    train = [" ".join(rng.choice(vocab, rng.integers(1, 9))) for _ in range(300)]
    tests = [" ".join(rng.choice(vocab, rng.integers(1, 7))) for _ in range(60)]
    index = TrainingIndex(train)
    for measure in ("jaccard", "containment"):
        for q in tests:
            scores = [similarity(content_words(q), content_words(t), measure) for t in index.questions]
            j, s = index.nearest(q, measure)
            best = max(scores)
            assert s == pytest.approx(best, abs=1e-12)
            if best > 0:
                assert scores[j] == pytest.approx(best, abs=1e-12)
            else:
                assert j is None


ANIMALS = ("cat", "dog", "horse", "goat", "sheep", "eagle", "falcon", "otter", "badger", "heron", "swan", "fox")
PLACES = ("gate", "tower", "harbour", "mill", "chapel", "garden", "orchard", "vineyard", "quarry", "granary",
          "lighthouse", "market")


def _workflow_folder(root: Path) -> tuple[Path, dict]:
    """A results folder laid out as the workflow writes it: per dataset, evaluation rows (with the questions),
    grades, an answers file and adapters whose pd_meta.json names it (relative to the folder Snakemake ran in).

    The manifest names absolute paths, the adapter's metadata the answers file relative to ``root`` (as the
    workflow does). NYT's training questions restate test question 0 (kept for training) and 1 (held out of training);
    Amazon's are unrelated. Returns the manifest and the per-cell correct patterns."""
    n = 12
    cells, patterns = [], {}
    rng = np.random.default_rng(7)
    for ds in ("amazon", "nyt"):
        test = [f"Which {a} guarded the {p} in {ds}?" for a, p in zip(ANIMALS, PLACES)]
        rows = [{"id": f"{ds}-g{k:02d}", "doc_id": "p0", "question": f"Who built the {ds} bridge in {1900 + k}?",
                 "answer": "x"} for k in range(8)]
        if ds == "nyt":
            train, held = split_heldout(rows, 0.25)
            train[0]["question"] = f"In {ds}, the {PLACES[0]} was guarded by what {ANIMALS[0]}?"
            held[0]["question"] = f"In {ds}, the {PLACES[1]} was guarded by what {ANIMALS[1]}?"
        answers = Path("results") / ds / "answers" / "answers_s0.jsonl"
        write_jsonl(root / answers, rows)
        for method in ("pd", "base"):
            for seed in ((0, 1) if method == "pd" else (0,)):
                name = f"{ds}_{method}_s{seed}"
                pat = [bool(x) for x in rng.random(n) < 0.6]
                patterns[(ds, method, seed)] = pat
                grades = Path("results") / ds / "grades" / f"{name}.jsonl"
                write_jsonl(root / grades, [{"item_id": f"{ds}-q{i}", "grader": "substring", "correct": c,
                                             "valid": True, "passage": "p0"} for i, c in enumerate(pat)])
                ev = Path("results") / ds / "eval" / f"{name}.jsonl"
                write_jsonl(root / ev, [{"item_id": f"{ds}-q{i}", "question": q, "answer": "x"}
                                        for i, q in enumerate(test)])
                rec = {"experiment": "fair", "cell_id": name, "grader": "substring", "grades": str(root / grades),
                       "evaluate": str(root / ev), "axes": {"model": "tiny-llama", "method": method, "dataset": ds,
                                                     "retrieval": "none", "seed": seed}}
                if method == "pd":
                    adapter = Path("results") / ds / "adapters" / "pd" / "tiny-llama" / f"r8_abc_s{seed}"
                    write_json(root / adapter / "pd_meta.json", {"method": "pd", "workflow_spec": {
                        "method": "pd", "answers": str(answers), "training": {"heldout_fraction": 0.25}}})
                    rec["adapter"] = str(root / adapter)
                cells.append(rec)
    manifest = root / "results" / "manifests" / "fair.json"
    write_json(manifest, {"experiment": "fair", "table": {"rows": ["method"], "columns": ["dataset"]},
                          "records": cells})
    return manifest, patterns


def test_leakage_view_reads_the_workflow_files_and_removes_the_leaked_questions(tmp_path, monkeypatch):
    root = tmp_path / "work"
    manifest, patterns = _workflow_folder(root)
    monkeypatch.chdir(tmp_path)  # not the folder Snakemake ran in: the answers file is found above the adapter
    result = render_reports(manifest, tmp_path / "reports", n_resamples=200)
    summary = json.loads(result.tables["fair"]["json"].read_text())
    leak = summary["views"]["leakage"]
    assert leak["measure"] == "jaccard" and leak["threshold"] == 0.5
    by_ds = {d["dataset"]: d for d in leak["datasets"]}
    assert by_ds["nyt"]["flagged"] == ["nyt-q0"]  # q1's restatement was held out of training: not flagged
    assert by_ds["nyt"]["training_questions"] == 6 and by_ds["nyt"]["test_questions"] == 12
    assert by_ds["nyt"]["closest"][0]["test_question"] == "Which cat guarded the gate in nyt?"
    assert by_ds["nyt"]["closest"][0]["similarity"] == 1.0 and by_ds["nyt"]["closest"][1]["similarity"] < 0.5
    assert by_ds["nyt"]["sources"] == ["../work/results/nyt/answers/answers_s0.jsonl"]
    assert by_ds["amazon"]["flagged"] == [] and by_ds["amazon"]["share"] == 0.0
    for cell in leak["cells"]:
        ds, method = cell["axes"]["dataset"], cell["axes"]["method"]
        seeds = (0, 1) if method == "pd" else (0,)
        drop = {0} if ds == "nyt" else set()
        accs = [statistics.mean(c for i, c in enumerate(patterns[(ds, method, s)]) if i not in drop) for s in seeds]
        assert cell["mean"] == pytest.approx(statistics.mean(accs), abs=1e-12)
        assert cell["kept"] == 12 - len(drop)
    # the table's own numbers are the grades' over every question
    for row in summary["rows"]:
        ds, method = row["axes"]["dataset"], row["axes"]["method"]
        seeds = (0, 1) if method == "pd" else (0,)
        assert row["mean"] == pytest.approx(statistics.mean(statistics.mean(patterns[(ds, method, s)])
                                                            for s in seeds), abs=1e-12)
    md = result.tables["fair"]["md"].read_text()
    assert "Leakage audit" in md and "1/12 (8.3%)" in md and "In nyt, the gate was guarded by what cat?" in md
    html = result.index.read_text()
    assert 'id="table-fair-leakage"' in html and 'id="table-fair-base_answered"' in html
    base = summary["views"]["base_answered"]
    for cell in base["cells"]:
        ds = cell["axes"]["dataset"]
        answered = {i for i, c in enumerate(patterns[(ds, "base", 0)]) if c}
        assert cell["questions"] - cell["kept"] == len(answered)


def test_leakage_names_what_it_could_not_audit(tmp_path):
    root = tmp_path / "work"
    manifest, _ = _workflow_folder(root)
    for p in (root / "results" / "amazon" / "eval").glob("*.jsonl"):  # rows written before they carried questions
        write_jsonl(p, [{k: v for k, v in r.items() if k != "question"} for r in read_jsonl(p)])
    for p in (root / "results" / "nyt" / "adapters").rglob("pd_meta.json"):  # no specification recorded
        write_json(p, {"method": "pd"})
    result = render_reports(manifest, tmp_path / "reports", n_resamples=200, leakage_threshold=0.9)
    leak = json.loads(result.tables["fair"]["json"].read_text())["views"]["leakage"]
    assert leak["datasets"] == [] and leak["threshold"] == 0.9
    assert leak["not_audited"] == {"amazon": "its evaluation rows carry no question text",
                                   "nyt": "no adapter of this experiment trained on generated questions of it"}
    md = result.tables["fair"]["md"].read_text()
    assert "NYT: not audited" in md
    with pytest.raises(ConfigError, match="leakage threshold"):
        render_reports(manifest, tmp_path / "reports2", leakage_threshold=0)
    with pytest.raises(ConfigError, match="base-answered rule"):
        render_reports(manifest, tmp_path / "reports2", base_rule="most")


def test_pd_report_refuses_bad_view_settings_and_its_help_states_the_defaults(capsys):
    from pd.cli import build_parser, main
    from pd.report.base_answered import DEFAULT_RULE
    from pd.report.leakage import DEFAULT_THRESHOLD

    assert main(["report", "--leakage-threshold", "2"]) == 2
    assert "leakage threshold 2.0 is not allowed; allowed: a number in (0, 1]" in capsys.readouterr().err
    assert main(["report", "--base-rule", "most"]) == 2
    assert "base-answered rule 'most' is not known; allowed: any, majority" in capsys.readouterr().err
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub.choices["report"]._actions}
    assert f"default {DEFAULT_THRESHOLD:g}" in helps["leakage_threshold"]
    assert f"{DEFAULT_RULE} (" in helps["base_rule"] and "the default" in helps["base_rule"]
