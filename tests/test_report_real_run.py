"""A small real run (the workflow's tiny grid: tiny-llama, substring grades) rendered into
the HTML report, checked link by link and opened in headless Chromium."""

import csv
import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from pd.io import read_jsonl
from pd.report import render_reports


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v and not v.startswith("#"):
                self.links.append(v)


@pytest.fixture(scope="module")
def real_run(tiny_workflow_run, tmp_path_factory):
    """The shared tiny run's manifests rendered into a report folder of this module's own."""
    result = render_reports(tiny_workflow_run.results / "manifests", tmp_path_factory.mktemp("report") / "reports",
                            n_resamples=500)
    return tiny_workflow_run.folder, result


@pytest.mark.slow
def test_real_run_report_numbers_and_links(real_run):
    work, result = real_run
    html = result.index.read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(html)
    for link in parser.links:  # every link works from a copy of the report folder alone
        assert not link.startswith(("http:", "https:", "..")), link
        assert (result.index.parent / link).is_file(), f"{link} is linked but missing"
    # the results folder's grade files are named, not linked; the numbers come from the folder's own rows
    assert html.count("/grades/base/tiny-llama/s0/") >= 3
    import gzip

    exported = [json.loads(line) for line in gzip.open(result.index.parent / "tiny" / "rows.jsonl.gz", "rt")]
    summary = json.loads(result.tables["tiny"]["json"].read_text())
    for row in summary["rows"]:
        (cell_id,) = row["cell_ids"]
        rows = [r for r in exported if r["cell_id"] == cell_id]
        assert rows and row["mean"] == sum(r["correct"] is True for r in rows) / len(rows)
        assert row["se_kind"] == "binomial"
    # The gold-answer log-likelihood block: each cell's mean over its evaluation rows (one seed: SE over questions).
    from pd.report.aggregate import load_manifest

    cells = load_manifest(work / "results" / "manifests", root=work).cells
    gold = summary["sections"]["gold_logprob"]
    assert len(gold) == 3 and "heldout_kl" not in summary["sections"]  # the base model has no adapter
    for row in gold:
        (cell,) = [c for c in cells if c.axes == dict(row["axes"], seed=c.axes["seed"])]
        values = [r["gold_logprob_per_token"] for r in read_jsonl(cell.extra["evaluate"])]
        assert all(v is not None and v < 0 for v in values)
        assert row["mean"] == pytest.approx(sum(values) / len(values)) and row["se_kind"] == "questions"


@pytest.mark.slow
def test_real_run_report_opens_in_chromium(real_run, tmp_path, headless_chromium):
    work, result = real_run
    flags = headless_chromium
    url = result.index.resolve().as_uri()
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and 'id="table-tiny"' in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "real.png"
    run = subprocess.run(flags + ["--window-size=1100,900", f"--screenshot={shot}", url], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert mpimg.imread(shot)[..., :3].std() > 0.05


@pytest.mark.slow
def test_real_run_report_states_its_cost_and_machine(real_run):
    work, result = real_run
    run = json.loads(result.tables["tiny"]["json"].read_text())["run"]
    # The tiny grid's jobs behind its cells: retrieval (bm25, oracle), 3 evaluations, 3 grades.
    bench = [p for p in (work / "results" / "benchmarks" / "tiny-nyt").rglob("*.tsv")]
    assert run["jobs"] == len(bench) == 8
    seconds = []
    for p in bench:
        with open(p, newline="") as f:
            seconds.append(float(next(csv.DictReader(f, delimiter="\t"))["s"]))
    assert run["job_s"] == pytest.approx(sum(seconds))
    assert max(seconds) <= run["wall_s"] <= sum(seconds) + max(p.stat().st_mtime for p in bench) - min(
        p.stat().st_mtime for p in bench)
    assert set(run["by_kind"]) == {"retrieval", "evaluate", "grade"}
    md = result.tables["tiny"]["md"].read_text()
    assert "- Command: `snakemake --profile profiles/local --config 'run=[tiny]'`\n" in md
    assert "- Machine: " in md and "logical cores" in md and "- Wall-clock: " in md


@pytest.mark.slow
def test_committed_rows_reproduce_every_table_number(real_run, tmp_path):
    """rows.jsonl.gz alone (no results folder) gives each accuracy and log-likelihood cell; re-rendering
    an unchanged run rewrites it byte for byte."""
    import gzip
    from collections import defaultdict

    work, result = real_run
    paths = result.tables["tiny"]
    rows = [json.loads(line) for line in gzip.open(paths["rows"], "rt", encoding="utf-8")]
    summary = json.loads(paths["json"].read_text())
    assert len(rows) == sum(len(read_jsonl(Path(p))) for p in _grade_files(work))
    by_cell = defaultdict(list)
    for r in rows:
        by_cell[r["cell_id"]].append(r)
    for row in summary["rows"]:
        (cell_id,) = row["cell_ids"]
        cell = by_cell[cell_id]
        assert row["mean"] == sum(r["correct"] is True for r in cell) / len(cell)
    for row in summary["sections"]["gold_logprob"]:
        cell = [r for r in rows if {k: v for k, v in r["axes"].items() if k != "seed"} == row["axes"]]
        values = [r["gold_logprob_per_token"] for r in cell]
        assert cell and row["mean"] == pytest.approx(sum(values) / len(values))
    before = paths["rows"].read_bytes()
    again = render_reports(work / "results" / "manifests", tmp_path / "again", n_resamples=500)
    assert again.tables["tiny"]["rows"].read_bytes() == before
    training = [json.loads(line) for line in gzip.open(paths["training"], "rt", encoding="utf-8")]
    assert training == []  # the tiny grid trains no adapter (its adapters' rows: tests/test_report_rows.py)


def _grade_files(work):
    """The grade files of the run's manifest (the report names them, it does not link out of its folder)."""
    from pd.report.aggregate import load_manifest

    return [c.grades for c in load_manifest(work / "results" / "manifests", root=work).cells]


@pytest.mark.slow
def test_real_run_base_answered_view_matches_the_grade_files(real_run):
    """The base-answered view of a real run (the base model closed-book, with BM25 and the oracle passage):
    the closed-book cell's correct questions are the answered ones; each cell's accuracy on the rest is
    its grade file's over the others; the run trains no adapter, so nothing is audited for leakage."""
    from pd.report.aggregate import load_manifest

    work, result = real_run
    summary = json.loads(result.tables["tiny"]["json"].read_text())
    cells = load_manifest(work / "results" / "manifests", root=work).cells
    grades = {c.axes["retrieval"]: read_jsonl(c.grades) for c in cells}
    answered = {r["item_id"] for r in grades["none"] if r["correct"] is True}
    view = summary["views"]["base_answered"]
    assert view["rule"] == "any" and view["pools"][0]["answered"] == sorted(answered)
    assert len(view["cells"]) == 3
    for cell in view["cells"]:
        rows = grades[cell["axes"]["retrieval"]]
        rest = [r["correct"] is True for r in rows if r["item_id"] not in answered]
        assert cell["questions"] == len(rows) and cell["questions"] - cell["kept"] == len(answered)
        assert cell["mean"] == (sum(rest) / len(rest) if rest else None)
    assert summary["views"]["leakage"]["not_audited"] == {
        "tiny-nyt": "no adapter of this experiment trained on generated questions of it"}
