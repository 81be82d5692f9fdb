"""Real Snakemake runs of a tiny grid: end to end, idempotent, and safe to kill mid-job."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pd.config import load_config
from pd.evaluation.grade import substring_match
from pd.io import read_jsonl
from pd.pipeline.paths import log_file
from pd.pipeline.plan import build_plan

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def snakemake_cmd(workdir: Path, *extra: str, config: Path = TINY) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
            "--profile", str(ROOT / "profiles" / "local"), "--configfile", str(config),
            "--config", f"results_dir={workdir / 'results'}", f"reports_dir={workdir / 'reports'}",
            "--cores", "2", *extra]


def plan_for(workdir: Path, config: Path = TINY, extra: dict | None = None):
    import yaml

    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    over = yaml.safe_load(config.read_text()) | (extra or {})
    over["results_dir"] = str(workdir / "results")
    over["reports_dir"] = str(workdir / "reports")
    return build_plan(load_config(raw, over))


@pytest.mark.slow
def test_local_profile_end_to_end_then_nothing_to_do(tmp_path):
    out = subprocess.run(snakemake_cmd(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    plan = plan_for(tmp_path)
    for path in plan.artifacts:
        assert Path(path).exists(), path
    manifest = json.loads(Path(plan.manifest_path("tiny")).read_text())
    assert len(manifest["records"]) == 3  # base x {none, bm25, oracle} x substring
    assert Path(plan.report_path()).is_file() and "tiny-llama" in Path(plan.report_path()).read_text()
    from pd.data import load_dataset

    cfg = plan.cfg
    ds = load_dataset("tiny-nyt", cfg["datasets"]["tiny-nyt"])
    items = {it.id: it for it in ds.items}
    for rec in manifest["records"]:
        rows = read_jsonl(rec["grades"])
        assert [r["item_id"] for r in rows] == [it.id for it in ds.items]
        for r in rows:  # each grade is recomputed independently from the answer and the gold list
            assert r["correct"] == substring_match(r["answer"], items[r["item_id"]].answers, "word")
        ev = read_jsonl(rec["evaluate"])
        if rec["axes"]["retrieval"] == "oracle":
            assert all(e["retrieved"] == list(items[e["item_id"]].doc_ids) for e in ev)
        if rec["axes"]["retrieval"] == "none":
            assert all(e["retrieved"] == [] for e in ev)
    again = subprocess.run(snakemake_cmd(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
    # `snakemake --report` bundles the HTML report and the tables with their captions.
    import zipfile

    rep = subprocess.run(snakemake_cmd(tmp_path, "--report", str(tmp_path / "report.zip")), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-2000:]
    names = zipfile.ZipFile(tmp_path / "report.zip").namelist()
    raw = [n for n in names if "/data/raw/" in n]
    assert any(n.endswith("/index.html") for n in raw) and any(n.endswith("/table.md") for n in raw)


@pytest.mark.slow
def test_killed_run_leaves_nothing_that_looks_finished(tmp_path):
    proc = subprocess.Popen(snakemake_cmd(tmp_path, "--cores", "1"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    plan = plan_for(tmp_path)
    evals = [a.path for a in plan.of_kind("evaluate")]
    deadline = time.time() + 300
    # Kill the whole run (Snakemake and its job) while an evaluation job is running.
    logs = [Path(log_file(p)) for p in evals]
    while time.time() < deadline and not any(log.exists() for log in logs):
        time.sleep(0.2)
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for path in plan.artifacts:
        p = Path(path)
        if p.is_file() and p.suffix == ".jsonl":
            rows = read_jsonl(p)  # parses completely: never a half-written file
            assert rows
    unfinished = [p for p in evals if not Path(p).exists()]
    assert unfinished, "the kill came too late to test anything"
    # `pd cells` names exactly the cells whose grades the interrupted run did not write
    from pd.pipeline.status import cell_status

    cells = plan.cells["tiny"]
    missing = {c.cell_id for c in cells if not all(Path(g).exists() for g in c.grades.values())}
    assert missing and {c.cell_id for c in cells if cell_status(plan, c).state == "missing"} == missing
    # A killed Snakemake leaves its directory lock behind; `--unlock` is the documented way out.
    subprocess.run(snakemake_cmd(tmp_path, "--unlock"), cwd=tmp_path, capture_output=True, timeout=120, check=True)
    out = subprocess.run(snakemake_cmd(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert all(Path(p).exists() for p in plan.artifacts)
    assert all(cell_status(plan, c).state == "done" for c in cells)


@pytest.mark.slow
@pytest.mark.slurm
def test_real_workflow_through_slurm(tmp_path, slurm_cluster):
    """The real Snakefile on the tiny grid via profiles/slurm: every job went through sbatch."""
    from test_slurm import CI_SITE, FAST_SLURM, run_workflow, slurm_profile, slurmctld_log, submitted_ids

    before = submitted_ids(slurmctld_log())
    profile = slurm_profile(tmp_path / "profile", CI_SITE)
    work = tmp_path / "work"
    work.mkdir()
    # A --configfile on the command line replaces the profile's, so the site file is named again.
    proc = run_workflow(work, profile, snakefile=ROOT / "Snakefile",
                        config={"results_dir": str(work / "results"), "reports_dir": str(work / "reports")},
                        extra=(*FAST_SLURM, "--configfile", str(TINY), str(profile / "site.yaml")), timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    plan = plan_for(work)
    new_ids = submitted_ids(slurmctld_log()) - before
    job_ids = set()
    for art in plan.of_kind("evaluate") + plan.of_kind("retrieval"):
        stats = json.loads(Path(art.path[: -len(".jsonl")] + ".stats.json").read_text())
        assert stats["slurm_job_id"], art.path
        job_ids.add(stats["slurm_job_id"])
    # Each of those jobs was its own sbatch submission, seen by slurmctld.
    assert len(job_ids) == len(plan.of_kind("evaluate")) + len(plan.of_kind("retrieval"))
    assert job_ids <= new_ids
    assert all(Path(p).exists() for p in plan.artifacts)


TINY_TRAIN = ROOT / "tests" / "configs" / "tiny-train.yaml"


@pytest.mark.slow
def test_training_cells_end_to_end(tmp_path):
    """PD, SFT and UFT cells: data generation, adapters, held-out KL, evaluation, grades, report."""
    import torch
    import yaml
    from peft import PeftModel

    from pd.models import get_spec, load_model

    # The forgetting check reads a small MMLU-Pro file; config paths are relative to the run folder.
    mmlu = ROOT / "tests" / "data" / "mmlu_pro_easy.jsonl"
    config = tmp_path / "tiny-train.yaml"
    config.write_text(yaml.safe_dump(yaml.safe_load(TINY_TRAIN.read_text())
                                     | {"capability": {"path": str(mmlu), "limit": 4}}))
    out = subprocess.run(snakemake_cmd(tmp_path, config=config), cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    plan = plan_for(tmp_path, config)
    assert all(Path(p).exists() for p in plan.artifacts)
    adapters = {plan.artifacts[p].spec.method: Path(p) for p in (a.path for a in plan.of_kind("adapter"))}
    assert set(adapters) == {"pd", "sft", "uft"}
    # PD and SFT share the questions; each has its own answers (T = 1.5 and 0.25).
    assert len(plan.of_kind("questions")) == 1 and len(plan.of_kind("answers")) == 2
    for method, folder in adapters.items():
        meta = json.loads((folder / "pd_meta.json").read_text())
        assert meta["method"] == method and meta["steps"] >= 1
        held = json.loads((folder / "heldout.json").read_text())
        if method == "uft":
            assert held["n_heldout"] == 0
        else:
            assert held["n_heldout"] >= 1 and held["before"] > 0 and held["after"] is not None
            assert held["after"] != held["before"]  # the adapter changed the student
    # The forgetting check ran on every adapter: MMLU-Pro rows, one per question.
    caps = plan.of_kind("capability")
    assert sorted(a.spec.adapter for a in caps) == sorted(str(p) for p in adapters.values())
    for art in caps:
        rows = read_jsonl(art.path)
        assert len(rows) == 4 and all(r["pred"] in "ABCD" and r["correct"] == (r["pred"] == r["answer"]) for r in rows)
    # The adapter folder is a real PEFT adapter whose trained weights change the logits.
    spec = get_spec("tiny-llama")
    base = load_model(spec, device="cpu")
    x = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        ref = base(x).logits
        tuned = PeftModel.from_pretrained(load_model(spec, device="cpu"), str(adapters["pd"]))(x).logits
    assert not torch.allclose(ref, tuned)


def test_a_new_selection_after_another_has_jobs(tmp_path):
    """Issue 14 item 14: once one selection wrote the report (as `make demo` does), a new selection still
    has its own targets (each experiment's manifest), so `snakemake -n` lists its jobs."""
    plan = plan_for(tmp_path)
    report = Path(plan.report_path())
    report.parent.mkdir(parents=True)
    report.write_text("<html>an earlier selection's report</html>")
    out = subprocess.run(snakemake_cmd(tmp_path, "-n", "--quiet", "rules"), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "Nothing to be done" not in text
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}
    # tiny: base x {none, bm25, oracle}: 3 evaluations, 2 retrievals (bm25, oracle), 3 substring grades.
    assert {k: counts.get(k) for k in ("evaluate", "retrieval", "grade", "manifest")} == {
        "evaluate": 3, "retrieval": 2, "grade": 3, "manifest": 1}


@pytest.mark.slow
def test_the_training_chain_goes_first(tmp_path):
    """Each rule carries its kind's priority (JobKind.priority): on 2 cores the questions start at once
    beside the base model's evaluations, and adapters before the evaluations of finished ones."""
    from pd.pipeline.registry import all_kinds

    PRIORITY = {k.name: k.priority for k in all_kinds() if k.priority}

    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
           "--profile", str(ROOT / "profiles" / "local"), "--config", "run=[demo]",
           f"results_dir={tmp_path / 'results'}", f"reports_dir={tmp_path / 'reports'}",
           "--cores", "2", "-n"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen: dict[str, set[int]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out.stdout + out.stderr):
        rule = re.match(r"(?:local)?rule (\w+):", block.strip())
        prio = re.search(r"^\s+priority: (\d+)$", block, re.M)
        if rule and rule.group(1) in PRIORITY:
            seen.setdefault(rule.group(1), set()).add(int(prio.group(1)) if prio else 0)
    assert set(seen) >= {"questions", "answers", "teacher", "adapter", "evaluate", "grade", "retrieval"}
    assert seen == {kind: {PRIORITY[kind]} for kind in seen}
    assert PRIORITY["questions"] >= PRIORITY["teacher"] > PRIORITY["adapter"] > PRIORITY["evaluate"]


def _openai_config(tmp_path: Path) -> Path:
    """The tiny grid with `openai` retrieval (embeddings from a service, model `minilm`) beside closed-book."""
    import yaml

    raw = yaml.safe_load(TINY.read_text())
    raw["experiments"]["tiny"]["grid"]["retrieval"] = ["none", "openai"]
    raw["retrieval"] = {"openai_embedding_model": "minilm"}
    path = tmp_path / "tiny-openai.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_api_embeddings_are_a_job_before_retrieval_in_the_slurm_dry_run(tmp_path):
    """Issue 21 part 5: with `retrieval: openai` the DAG has one `embeddings` job (a local rule: it calls the
    service where the network is), and the retrieval job reads its output; the profile is the SLURM one."""
    config = _openai_config(tmp_path)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--profile", str(ROOT / "profiles/slurm"),
           "--configfile", str(ROOT / "profiles/slurm/site.yaml"), str(config),
           "--config", f"results_dir={tmp_path / 'results'}", f"reports_dir={tmp_path / 'reports'}", "-n"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}
    assert counts["embeddings"] == 1 and counts["retrieval"] == 1
    plan = plan_for(tmp_path, config)
    [emb], [ret] = plan.of_kind("embeddings"), plan.of_kind("retrieval")
    blocks = {m.group(1): m.group(0) for m in re.finditer(r"^rule (\w+):\n(?:\s+.*\n)+", text, re.M)
              if m.group(1) in ("embeddings", "retrieval")}
    assert f"output: {emb.path}" in blocks["embeddings"]
    assert f"input: {emb.path}" in blocks["retrieval"] and f"output: {ret.path}" in blocks["retrieval"]
    assert text.index("rule embeddings:") < text.index("rule retrieval:")


@pytest.mark.slow
@pytest.mark.slurm
def test_api_embeddings_run_on_the_submit_host_and_retrieval_on_a_node(tmp_path, slurm_cluster, monkeypatch):
    """Through sbatch: the embeddings job is a local rule (no SLURM job id; it reaches the test's embedding
    server), the retrieval job a SLURM job that ranks from the cache after the server is gone."""
    from test_slurm import CI_SITE, FAST_SLURM, run_workflow, slurm_profile

    from pd.evaluation.retrieve import retrieve_for_items, sentence_transformer
    from pd.serve import create_app, serve_in_thread

    config = _openai_config(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    plan = plan_for(work, config)
    [emb], [ret] = plan.of_kind("embeddings"), plan.of_kind("retrieval")
    profile = slurm_profile(tmp_path / "profile", CI_SITE)
    monkeypatch.setenv("PD_CACHE_DIR", str(tmp_path / "cache"))  # shared by the host and the node (one machine)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    files = (*FAST_SLURM, "--configfile", str(config), str(profile / "site.yaml"))  # before --config: targets first
    run = dict(config={"results_dir": str(work / "results"), "reports_dir": str(work / "reports")},
               snakefile=ROOT / "Snakefile")
    app = create_app(embedder=sentence_transformer("all-minilm-l6-v2"), embedding_model_name="minilm")
    with serve_in_thread(app) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        proc = run_workflow(work, profile, extra=(emb.path, *files), timeout=600, **run)
        assert proc.returncode == 0, proc.stdout[-4000:]
        want = retrieve_for_items(plan.artifacts[ret.path].spec.load_dataset(), "openai", ret.spec.k, model="minilm",
                                  cache_dir=tmp_path / "online")
    record = json.loads(Path(emb.path).read_text())
    assert record["slurm_job_id"] is None and record["sent"] > 0  # ran on this host, not through sbatch
    proc = run_workflow(work, profile, extra=(ret.path, *files), timeout=600, **run)
    assert proc.returncode == 0, proc.stdout[-4000:]
    stats = json.loads(Path(ret.path[: -len(".jsonl")] + ".stats.json").read_text())
    assert stats["slurm_job_id"]
    assert {r["item_id"]: r["retrieved"] for r in read_jsonl(ret.path)} == want
