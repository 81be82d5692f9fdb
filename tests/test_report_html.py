"""The rendered report: every referenced file exists, figures hold the right numbers,
and the page opens in headless Chromium."""

import json
import statistics
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from synthetic_run import write_synthetic_run

from pd.report import render_reports
from pd.report.aggregate import build_groups, load_manifest
from pd.report.figures import series_for
from pd.report.html import read_benchmarks, token_counts


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tables, self.imgs = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append(a[key])
        if tag == "table" and a.get("class") == "results":
            self.tables.append(a.get("id"))
        if tag == "img":
            self.imgs.append(a["src"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    manifest = write_synthetic_run(root, n_questions=40)
    result = render_reports(manifest, root / "reports", n_resamples=500)
    return root, manifest, result


def test_every_table_image_and_link_exists(report):
    root, manifest, result = report
    html = result.index.read_text(encoding="utf-8")
    refs = _Refs()
    refs.feed(html)
    # only main's cells have evaluation rows and adapters; and a base model (the base-answered view) and
    # test questions with generated training questions (the leakage audit)
    sections = ("main-gold_logprob", "main-heldout_kl", "main-base_answered", "main-leakage")
    assert sorted(refs.tables) == sorted(f"table-{e}" for e in ("main", "n_questions", "rank", "snapshot") + sections)
    assert len(refs.imgs) == 4 + 1  # figure6 + one per figure experiment + one grid of the training curves
    for ref in refs.refs:
        assert not ref.startswith(("http:", "https:", "//")), f"external resource {ref}"
        if ref.startswith("#"):
            assert f'id="{ref[1:]}"' in html
            continue
        assert (result.index.parent / ref).is_file(), f"{ref} is referenced but missing"
    for img in refs.imgs:
        assert (result.index.parent / img).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no link leaves the report's folder (dead in a clone of a committed report): grade files outside it are
    # named as text, the missing ones said missing
    assert not any(r.startswith("..") for r in refs.refs)
    assert not any(r.endswith(".jsonl") for r in refs.refs)
    assert html.count("grades/main/") >= 10 and "grades missing" in html
    # the cells not graded yet are listed with their paths, relative to the report folder
    assert "seeds missing (../grades/main/dataset-nyt_retrieval-bm25_method-sft_seed-2.jsonl)" in html
    for name, paths in result.tables.items():
        for p in paths.values():
            assert p.is_file()
    for file, caption in result.captions.items():
        assert Path(file).is_file() and Path(caption).read_text().strip()


def test_figure_points_are_the_table_numbers(report):
    root, manifest, result = report
    m = load_manifest(manifest)
    groups = build_groups([c for c in m.cells if c.experiment == "n_questions"])
    series = series_for(groups, "n_questions")
    assert [s.group for s in series] == ["pd", "sft"]
    from pd.io import read_jsonl
    for s in series:
        for x, y, half in s.points:
            cells = [c for c in m.cells if c.experiment == "n_questions" and c.axes["method"] == s.group
                     and c.axes["n_questions"] == x]
            accs = [sum(r["correct"] is True for r in read_jsonl(c.grades)) / 40 for c in cells]
            assert y == pytest.approx(100 * statistics.mean(accs))
            assert half == pytest.approx(200 * statistics.stdev(accs) / len(accs) ** 0.5)
    for files in result.figures.values():
        png, pdf = files
        assert png.suffix == ".png" and pdf.read_bytes()[:5] == b"%PDF-"


def test_training_curves_and_heldout_kl_on_the_page(report):
    """One facet grid of the trained configurations (closed-book and BM25 cells share adapters: drawn once),
    captioned with each seed's held-out KL before -> after as heldout.json holds it and the axes every panel
    shares; summary.json carries the blocks."""
    root, manifest, result = report
    html = result.index.read_text(encoding="utf-8")
    m = load_manifest(manifest)
    trained = {(c.axes["dataset"], c.axes["method"]) for c in m.cells
               if c.experiment == "main" and c.axes["method"] != "base"}
    pngs = sorted((result.index.parent / "main").glob("training*.png"))
    assert [p.name for p in pngs] == ["training.png"] and len(trained) == 4
    from PIL import Image

    width, height = Image.open(pngs[0]).size
    assert width < 2000 and height < 2000  # 2 methods x 2 datasets: a compact grid, not a strip of wide figures
    caption = html.split('src="main/training.png"', 1)[1].split("</figcaption>", 1)[0]
    assert "a row per method" in caption and "In every panel: Model: " in caption, caption
    for ds, method in trained:
        for seed in (0, 1, 2):
            h = json.loads((root / "adapters" / f"{ds}_{method}_s{seed}" / "heldout.json").read_text())
            text = (f"seed {seed}: {h['before']:.3f} → {h['after']:.3f} "
                    f"({100 * (1 - h['after'] / h['before']):.1f}% closed)")
            assert text in html
    summary = json.loads(result.tables["main"]["json"].read_text())
    gold = [r for r in summary["sections"]["gold_logprob"] if r["mean"] is not None]
    for r in gold:
        cells = [c for c in m.cells if c.experiment == "main" and c.extra.get("evaluate")
                 and all(c.axes.get(k) == v for k, v in r["axes"].items())]
        from pd.io import read_jsonl
        means = [statistics.mean(x["gold_logprob_per_token"] for x in read_jsonl(c.extra["evaluate"])) for c in cells]
        assert r["mean"] == pytest.approx(statistics.mean(means)) and r["n_seeds"] == len(means)
    assert {r["block"] for r in summary["sections"]["heldout_kl"]} == {""}


def test_the_fair_test_views_on_the_page(report):
    """The base-answered view and the leakage audit under main's table: NYT's planted restatements flagged,
    each cell's accuracy on the rest as its grade files give it."""
    from synthetic_run import LEAKED

    from pd.io import read_jsonl

    root, manifest, result = report
    html = result.index.read_text(encoding="utf-8")
    summary = json.loads(result.tables["main"]["json"].read_text())
    leak = {d["dataset"]: d for d in summary["views"]["leakage"]["datasets"]}
    assert leak["nyt"]["flagged"] == [f"nyt-q{i:04d}" for i in LEAKED] and leak["amazon"]["flagged"] == []
    assert "In 1800, who was it that built the harbour of nyt?" in html and "2/40 (5.0%)" in html
    m = load_manifest(manifest)
    base = {c.axes["dataset"]: {r["item_id"] for r in read_jsonl(c.grades) if r["correct"] is True}
            for c in m.cells if c.experiment == "main" and c.axes["method"] == "base" and c.axes["retrieval"] == "none"}
    for cell in summary["views"]["base_answered"]["cells"]:
        if cell["mean"] is None:
            continue
        recs = [c for c in m.cells if c.experiment == "main" and (root / c.grades).is_file()
                and all(c.axes.get(k) == v for k, v in cell["axes"].items())]
        accs = [statistics.mean(r["correct"] is True for r in read_jsonl(root / c.grades)
                                if r["item_id"] not in base[c.axes["dataset"]]) for c in recs]
        assert cell["mean"] == pytest.approx(statistics.mean(accs)) and cell["n_seeds"] == len(accs)
        assert cell["questions"] - cell["kept"] == len(base[cell["axes"]["dataset"]])
    assert 'id="table-n_questions-base_answered"' not in html  # no base model there: said in a note instead
    assert "No base cell in this experiment for model tiny-llama" in html


def test_cost_and_tokens_from_benchmarks_and_meta(tmp_path):
    p = tmp_path / "b.tsv"
    p.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                 "10.5\t0:00:10\t300.0\t1\t1\t1\t0\t0\t90\t20.0\n12.5\t0:00:12\t500.0\t1\t1\t1\t0\t0\t90\tNA\n")
    q = tmp_path / "c.tsv"
    q.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                 "4\t0:00:04\t100\t1\t1\t1\t0\t0\t90\t3\n")
    cost = read_benchmarks([str(p), str(q), str(tmp_path / "absent.tsv")])
    assert cost.files == 2
    assert cost.wall_s == pytest.approx((10.5 + 12.5) / 2 + 4)  # repeats averaged, files summed
    assert cost.cpu_s == pytest.approx((20.0 + 0.0) / 2 + 3)  # NA counts as unmeasured (0)
    assert cost.max_rss_mb == 500.0
    assert read_benchmarks([]) is None
    assert token_counts({"adapter": {"train_tokens": 5, "steps": 3, "teacher": {"n_tokens": 7}}, "lr": 1}) == {
        "adapter.train_tokens": 5, "adapter.teacher.n_tokens": 7}


def test_rerender_is_byte_identical(report):
    root, manifest, result = report
    before = {p: p.read_bytes() for paths in result.tables.values() for p in paths.values()}
    before[result.index] = result.index.read_bytes()
    again = render_reports(manifest, root / "reports", n_resamples=500)
    assert again.index == result.index
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} changed on a re-render"


def test_report_opens_in_headless_chromium(report, tmp_path, headless_chromium):
    root, manifest, result = report
    flags = headless_chromium
    url = result.index.resolve().as_uri()
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for exp in ("main", "n_questions", "rank", "snapshot", "main-gold_logprob", "main-heldout_kl"):
        assert f'id="table-{exp}"' in dom.stdout
    shot = tmp_path / "report.png"
    run = subprocess.run(flags + ["--window-size=1200,1800", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = mpimg.imread(shot)
    assert pixels.shape[0] == 1800 and pixels.shape[1] == 1200
    assert pixels[..., :3].std() > 0.05  # not a blank page: text, tables and plots were drawn


def test_workflow_manifest_form(tmp_path, monkeypatch):
    """The workflow's per-experiment manifest: records with eval/adapter paths and the benchmark files the
    plan names, relative to the run folder; the adapter's pd_meta.json as meta."""
    monkeypatch.chdir(tmp_path)
    grades = "results/nyt/grades/pd/m/s0/none_ab.substring-word.jsonl"
    ev = "results/nyt/eval/pd/m/s0/none_ab.jsonl"
    adapter = "results/nyt/adapters/pd/m/r8_s0"
    Path(grades).parent.mkdir(parents=True)
    rows = [{"item_id": f"q{i}", "grader": "substring", "correct": i < 3, "valid": True, "reason": None, "answer": "a",
             "gold": ["g"]} for i in range(4)]
    Path(grades).write_text("".join(json.dumps(r) + "\n" for r in rows))
    Path(adapter).mkdir(parents=True)
    (Path(adapter) / "pd_meta.json").write_text(json.dumps({"tokens": 1234, "elapsed": 5.0}))
    bench = Path("results/benchmarks/nyt/grades/pd/m/s0/none_ab.substring-word.tsv")
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n2.5\t0\t10\t1\t1\t1\t0\t0\t1\t2\n")
    manifest = Path("results/manifests/exp.json")
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({
        "experiment": "exp", "description": "An experiment", "paper_table": None,
        "table": {"rows": ["model", "method"], "columns": ["dataset"], "blocks": "retrieval", "figure_x": None},
        "records": [{"experiment": "exp", "cell_id": "c0", "grader": "substring", "grades": grades, "evaluate": ev,
                     "adapter": adapter, "axes": {"model": "m", "method": "pd", "dataset": "nyt", "retrieval": "none",
                                                  "seed": 0, "rank": 8, "snapshot": None},
                     "benchmarks": ["results/benchmarks/nyt/adapters/pd/m/r8_s0.tsv",
                                    "results/benchmarks/nyt/eval/pd/m/s0/none_ab.tsv", str(bench)],
                     "meta": {"training": {"lr": 1e-5}}}]}))
    m = load_manifest("results/manifests")
    (cell,) = m.cells
    assert cell.extra["evaluate"].endswith(ev) and cell.meta["adapter"]["tokens"] == 1234
    assert [Path(b).relative_to(tmp_path).as_posix() for b in cell.benchmarks] == [
        "results/benchmarks/nyt/adapters/pd/m/r8_s0.tsv", "results/benchmarks/nyt/eval/pd/m/s0/none_ab.tsv",
        "results/benchmarks/nyt/grades/pd/m/s0/none_ab.substring-word.tsv"]
    assert m.experiments["exp"].title == "An experiment" and m.experiments["exp"].figures == []
    result = render_reports("results/manifests", "reports", n_resamples=200)
    html = result.index.read_text()
    assert "adapter.tokens: 1,234" in html and "<td>2.5</td>" in html  # tokens and wall seconds
    summary = json.loads(result.tables["exp"]["json"].read_text())
    assert summary["rows"][0]["mean"] == 0.75


def test_figure_labels_name_only_the_axes_that_split_a_method(report):
    """PD's distillation temperature (SFT has none) labels no line; two PD temperatures do."""
    import dataclasses

    root, manifest, result = report
    m = load_manifest(manifest)
    groups = build_groups([c for c in m.cells if c.experiment == "n_questions"])
    follows = [dataclasses.replace(g, axes={**g.axes, "kd_temperature": 2.0 if g.axes["method"] == "pd" else None})
               for g in groups]
    assert [s.label for s in series_for(follows, "n_questions")] == ["Prompt Distillation",
                                                                      "Supervised Fine-Tuning"]
    pd_groups = [g for g in follows if g.axes["method"] == "pd"]
    split = follows + [dataclasses.replace(g, axes={**g.axes, "kd_temperature": 1.0}) for g in pd_groups]
    labels = [s.label for s in series_for(split, "n_questions")]
    assert len(labels) == 3 and labels[0] != labels[1] and labels[2] == "Supervised Fine-Tuning · default"
