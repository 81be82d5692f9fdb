"""Reports a reader cannot misread: subset names with n as headers, one-valued axes in the caption, a KL that
grew as "×r", and exported rows that carry the question, the retrieved passages and the prompt's hash."""

import gzip
import json
import re
from pathlib import Path

import pytest

from pd.data.loaders import display_name
from pd.report.aggregate import TableSpec, build_groups
from pd.report.rows_export import ROWS_FILE, export_rows
from pd.report.sections import KL, metric_sections
from pd.report.tables import build_table, render_latex, render_markdown
from tests.test_report_tables import small_experiment


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    recs, _ = small_experiment(tmp_path_factory.mktemp("reading"))
    return recs


def test_loaders_name_their_datasets_as_the_paper_does():
    assert display_name("demo-nyt", {"loader": "squadshifts", "subset": "nyt", "passages": 4}) == "NYT, 4 passages"
    assert display_name("study-new_wiki", {"loader": "squadshifts", "subset": "new_wiki"}) == "New Wiki"
    assert display_name("hotpotqa", {"loader": "hotpotqa"}) == "HotpotQA"
    assert display_name("mydocs", {"loader": "folder", "path": "x/"}) == "mydocs"


def test_headers_are_the_loaders_names_with_n_and_a_one_valued_axis_goes_to_the_caption(records):
    for r in records:
        if r.axes["dataset"] == "squadshifts-amazon":
            r.extra["dataset_label"] = "Amazon, 10 passages"
    spec = TableSpec.from_dict({"rows": ["model", "method"], "columns": ["dataset"], "blocks": "retrieval"})
    table = build_table("small", spec, build_groups(records), n_resamples=200, seed=0)
    assert table.row_headers == ["Method"] and table.fixed == [("Model", "llama3-8b-instruct")]
    assert all(len(row.labels) == 1 for block in table.blocks for row in block.rows)
    md = render_markdown(table)
    header = md.splitlines()[2]
    assert header == "| Method | Amazon, 10 passages (n=40) | NYT (n=40) |", header
    assert "Model: llama3-8b-instruct (every row)." in md
    assert "Amazon, 10 passages (n=40)" in render_latex(table)
    # the paired tests name the column without n (their own column says passages / questions)
    assert all("(n=" not in c.column for c in table.comparisons)


def test_a_model_axis_with_two_values_stays_a_column(records):
    changed = [r for r in records if r.axes["method"] == "base"]
    for r in changed:
        r.axes["model"] = "qwen2.5-3b-instruct"
    try:
        spec = TableSpec.from_dict({"rows": ["model", "method"], "columns": ["dataset"], "blocks": "retrieval"})
        table = build_table("small", spec, build_groups(records), n_resamples=200, seed=0)
        assert table.row_headers == ["Model", "Method"] and not table.fixed
    finally:
        for r in changed:
            r.axes["model"] = "llama3-8b-instruct"


def test_a_held_out_kl_that_grew_reads_as_a_ratio(records):
    for r in records:
        if r.axes["method"] == "sft" and r.extra.get("adapter"):
            (Path(r.extra["adapter"]) / "heldout.json").write_text(
                json.dumps({"n_heldout": 4, "before": 1.0, "after": 4.0}))
    table = build_table("small", TableSpec(), build_groups(records), n_resamples=200, seed=0)
    table.sections = metric_sections(table, n_resamples=200, seed=0)
    kl = next(s for s in table.sections if s.name == KL)
    texts = [kl.text(cell) for block in kl.blocks for row in block.rows for cell in row.cells if cell.summary]
    assert any(t.startswith("1.000 → 4.000 (×4.0, grew)") for t in texts), texts
    assert not any(re.search(r"\(-\d", t) for t in texts)  # never a negative "fraction closed"
    assert any(re.match(r"\**1\.000 → 0\.550 \(45\.0 ± [\d.]+%\)", t) for t in texts)  # PD closed it: percent


def test_exported_rows_carry_question_retrieved_ids_and_prompt_hash(tmp_path, records):
    rec = records[0]
    ev = tmp_path / "eval.jsonl"
    ev.write_text("".join(json.dumps({"item_id": f"squadshifts-amazon-q{i}", "question": f"Q{i}?",
                                      "retrieved": [f"p{i}", "p9"], "prompt_hash": f"h{i}",
                                      "gold_logprob_per_token": -1.0}) + "\n" for i in range(40)))
    rec.extra["evaluate"] = str(ev)
    export_rows([rec], tmp_path)
    rows = [json.loads(line) for line in gzip.open(tmp_path / ROWS_FILE, "rt")]
    first = next(r for r in rows if r["item_id"] == "squadshifts-amazon-q3")
    assert (first["question"], first["retrieved"], first["prompt_hash"]) == ("Q3?", ["p3", "p9"], "h3")


def test_the_paper_variant_is_the_tabular_with_a_short_caption_and_true_minus_signs(records):
    table = build_table("small", TableSpec(), build_groups(records), n_resamples=200, seed=0)
    table.sections = metric_sections(table, n_resamples=200, seed=0)
    full, paper = render_latex(table), render_latex(table, paper=True)
    assert "Command" in full or "Missing cells" in full  # the full table keeps its notes and run
    assert "Missing cells" not in paper and "Holm's adjustment over the page" not in paper
    assert paper.count(r"\begin{tabular}") == 1 and paper.count(r"\caption{") == 1
    caption = paper.split(r"\caption{", 1)[1].split("}\n", 1)[0]
    assert len(caption) < 400 and "seeds" in caption
    body = paper.split(r"\begin{tabular}", 1)[1].split(r"\end{tabular}", 1)[0]
    assert "$-$" in body  # the log-likelihoods are negative
    assert not re.search(r"(?<![\w$])-\d", body)  # no hyphen standing for a minus
