"""Every file a job reads belongs to its identity by content (issue 14 item 5): an edited document, gold answer,
questions file, reg_data file or local model config moves exactly the jobs that read it to new paths."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pd.config import load_config
from pd.pipeline.identity import local_model_fingerprint
from pd.pipeline.plan import build_plan

ROOT = Path(__file__).resolve().parent.parent
DATA_KINDS = ("questions", "answers", "adapter", "evaluate", "grade")  # every job that reads the dataset


def _workspace(tmp: Path) -> dict:
    docs = tmp / "docs"
    docs.mkdir()
    (docs / "harbour.txt").write_text("The harbour of Velmora was built in 1822.\n", encoding="utf-8")
    (docs / "salt.txt").write_text("Salt is harvested at Dunmere every spring.\n", encoding="utf-8")
    q = tmp / "questions.jsonl"
    q.write_text(json.dumps({"question": "When was the harbour built?", "answers": ["1822"],
                             "doc_ids": ["harbour.txt"]}) + "\n", encoding="utf-8")
    reg = tmp / "instructions.jsonl"
    reg.write_text(json.dumps({"instruction": "Say hi.", "response": "Hi."}) + "\n", encoding="utf-8")
    model = tmp / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}), encoding="utf-8")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
    return {"docs": docs, "questions": q, "reg": reg, "model": model}


def _config(tmp: Path, ws: dict) -> dict:
    return {
        "run": ["x"], "results_dir": str(tmp / "results"), "reports_dir": str(tmp / "reports"),
        "datasets": {"mine": {"loader": "folder", "path": str(ws["docs"]), "questions": str(ws["questions"])}},
        "models": {"my-model": {"base": "tiny-llama", "source": "local", "path": str(ws["model"]), "dtype": "float32"}},
        "training": {"reg_data": str(ws["reg"])},
        "grading": {"graders": ["substring"]},
        "experiments": {"x": {"grid": {"model": ["tiny-llama"], "method": ["pd", "pd_reg"], "dataset": ["mine"]}},
                        "y": {"grid": {"model": ["my-model"], "method": ["base"], "dataset": ["mine"]}}},
    }


def _paths(cfg: dict, experiments=("x", "y")) -> dict[str, set[str]]:
    plan = build_plan(load_config(cfg), list(experiments))
    return {k: {a.path for a in plan.of_kind(k)} for k in (*DATA_KINDS, "teacher", "retrieval")}


@pytest.fixture
def setup(tmp_path):
    ws = _workspace(tmp_path)
    cfg = _config(tmp_path, ws)
    return ws, cfg, _paths(cfg)


def test_same_content_same_paths(setup):
    ws, cfg, before = setup
    for f in (ws["docs"] / "harbour.txt", ws["questions"], ws["reg"], ws["model"] / "config.json"):
        f.write_bytes(f.read_bytes())  # rewritten, same content: nothing to redo
    assert _paths(cfg) == before


def test_an_edited_document_moves_every_job_that_reads_the_dataset(setup):
    ws, cfg, before = setup
    (ws["docs"] / "harbour.txt").write_text("The harbour of Velmora was built in 1823.\n", encoding="utf-8")
    after = _paths(cfg)
    for kind in DATA_KINDS:
        assert before[kind] and after[kind].isdisjoint(before[kind]), kind


def test_an_edited_gold_answer_moves_every_job_that_reads_the_dataset(setup):
    ws, cfg, before = setup
    ws["questions"].write_text(json.dumps({"question": "When was the harbour built?", "answers": ["1823"],
                                           "doc_ids": ["harbour.txt"]}) + "\n", encoding="utf-8")
    after = _paths(cfg)
    for kind in DATA_KINDS:
        assert after[kind].isdisjoint(before[kind]), kind


def test_an_edited_reg_data_file_moves_the_pd_reg_adapter_only(setup):
    ws, cfg, before = setup
    ws["reg"].write_text(json.dumps({"instruction": "Say bye.", "response": "Bye."}) + "\n", encoding="utf-8")
    after = _paths(cfg)
    moved = before["adapter"] - after["adapter"]
    assert len(moved) == 1 and "/pd_reg/" in next(iter(moved))  # pd's adapter does not read reg_data
    assert len(before["evaluate"] - after["evaluate"]) == 1  # the pd_reg adapter's evaluation
    assert after["questions"] == before["questions"] and after["answers"] == before["answers"]


def test_an_edited_local_model_config_moves_the_jobs_that_load_it(setup):
    ws, cfg, before = setup
    (ws["model"] / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 128}))
    after = _paths(cfg)
    plan = build_plan(load_config(cfg), ["y"])
    mine = {a.path for a in plan.artifacts.values() if a.model == "my-model"}
    assert mine and mine.isdisjoint(before["evaluate"])  # my-model's evaluations moved
    from pd.models import get_spec

    extra = plan.artifacts[next(iter(mine))].spec.models_extra
    assert extra["my-model"]["fingerprint"] == local_model_fingerprint(ws["model"])
    assert get_spec("my-model", extra).path == str(ws["model"])  # the job resolves the entry, fingerprint and all
    assert after["adapter"] == before["adapter"]  # tiny-llama's jobs did not


def test_local_model_fingerprint_reads_config_and_weight_headers(tmp_path):
    ws = _workspace(tmp_path)
    first = local_model_fingerprint(ws["model"])
    weights = ws["model"] / "model.safetensors"
    raw = weights.read_bytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}).encode()
    weights.write_bytes(struct.pack("<Q", len(header)) + header + raw[-4:])  # another shape, same size of data
    second = local_model_fingerprint(ws["model"])
    (ws["model"] / "tokenizer.json").write_text("{}")
    third = local_model_fingerprint(ws["model"])
    assert len({first, second, third}) == 3


def test_snakemake_dry_run_sees_an_edited_document(tmp_path):
    """After a build, `snakemake -n` on the same config has nothing to do; after editing a document, it does."""
    ws = _workspace(tmp_path)
    cfg = _config(tmp_path, ws)
    cfg["experiments"] = {"x": {"grid": {"model": ["tiny-llama"], "method": ["base"], "dataset": ["mine"],
                                         "retrieval": ["bm25"]}}}
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    plan = build_plan(load_config(cfg))
    retrieval = [a.path for a in plan.of_kind("retrieval")]

    def dry(*targets):
        out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", *targets,
                              "--configfile", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout + out.stderr

    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1", *retrieval,
                    "--configfile", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True)
    assert "Nothing to be done" in dry(*retrieval)
    (ws["docs"] / "salt.txt").write_text("Salt is harvested at Dunmere every autumn.\n", encoding="utf-8")
    new = [a.path for a in build_plan(load_config(cfg)).of_kind("retrieval")]
    assert new != retrieval and "retrieval" in dry(*new)
