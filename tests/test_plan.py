"""The experiment plan: job counts on the full paper grid, sharing, and partial reruns."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pd.config import DEFAULT_CONFIG, load_config
from pd.plan import build_plan, expand_grid

ROOT = Path(__file__).resolve().parent.parent
PAPER = ["main", "expert_teacher", "temperatures", "regularisation", "hotpotqa", "rag_variants", "n_questions",
         "question_generator", "wall_clock", "lora_rank", "reverse_kl", "quintiles"]

# Derived by hand from config.yaml (L = llama3-8b, Q3/Q14 = the Qwen students; 4 SQuADShifts
# subsets; 3 seeds; training data generated per seed):
#  questions: main 3 models x 4 sets x 3 seeds = 36; hotpotqa 3 x 3 = 9; n_questions 6 new
#    counts (30 is main's) x 3 = 18; question_generator: Bonito 3 counts x 3 = 9 (L's 30/100/200
#    exist) -> 72.
#  answers: main pd (T=1.5) and sft (T=0.25) on 36 = 72; expert_teacher L70 expert x {1.5, 0.25}
#    x 12 = 24; temperatures: pd@0.25 is sft's file and sft@1.5 is pd's -> 0; hotpotqa 2 x 9 = 18;
#    n_questions 2 x 18 = 36; Bonito pd 9 -> 159.
#  teacher statistics: quintiles need them for L on NYT, 3 seeds -> 3.
#  adapters: main 3 methods x 3 x 4 x 3 = 108; expert_teacher (4 pd + 2 sft combos - 2 in main)
#    x 12 = 48; temperatures (4 pd + 2 sft - 2) x 12 = 48; pd_reg 12; hotpotqa 2 x 3 x 3 = 18
#    (epochs 5 override); n_questions 6 x 2 x 3 = 36; Bonito 9; wall_clock 2 x 3 = 6 (snapshot
#    settings); lora_rank 6 x 2 x 3 = 36 (batch 32); reverse 12; quintiles 10 x 3 = 30 -> 363.
#  retrieval: openai on 4 sets, bm25 (k=10) on HotpotQA, bm25 + oracle on 4 sets -> 13.
#  evaluations: main 288; expert_teacher 72 - 24 = 48; temperatures 48; regularisation 24 (pd_reg
#    x 2 retrieval); hotpotqa 54; rag_variants 144 - 48 (openai in main) = 96; n_questions 42 - 6
#    = 36; Bonito 9; wall_clock 5 snapshots x 6 = 30; lora_rank 36; reverse 12; quintiles 30 -> 711.
#  grades: 2 graders x 711 = 1422; manifests: 12.
#  capability (MMLU-Pro, regularisation only): the base model once (its seeds and retrievals share
#    it) + 12 pd + 12 pd_reg adapters = 25.
PAPER_COUNTS = {"questions": 72, "answers": 159, "teacher": 3, "adapter": 363, "retrieval": 13, "evaluate": 711,
                "grade": 1422, "capability": 25, "manifest": 12, "report": 1}


@pytest.fixture(scope="module")
def cfg():
    return load_config(DEFAULT_CONFIG)


def test_paper_grid_counts(cfg):
    plan = build_plan(cfg, PAPER)
    assert plan.count() == PAPER_COUNTS
    assert len(plan.cells["main"]) == 3 * 4 * 4 * 2 * 3


def test_main_grid_alone(cfg):
    # base (no training data) + pd/sft (shared questions, own answers) + uft (no questions).
    plan = build_plan(cfg, ["main"])
    assert plan.count() == {"questions": 36, "answers": 72, "teacher": 0, "adapter": 108, "retrieval": 4,
                            "evaluate": 288, "grade": 576, "capability": 0, "manifest": 1, "report": 1}


def test_irrelevant_axes_collapse(cfg):
    cells = expand_grid(cfg, "expert_teacher")
    sft = [c for c in cells if c["method"] == "sft"]
    # The teacher axis means nothing to SFT: 2 experts x 4 sets x 3 seeds, not x 2 teachers.
    assert len(sft) == 24 and all(c["teacher"] is None for c in sft)


def _paths(plan, kind):
    return {a.path for a in plan.of_kind(kind)}


def test_a_changed_setting_moves_only_its_dependants(cfg):
    base = build_plan(cfg, ["demo"])
    lr = build_plan(load_config(DEFAULT_CONFIG, {"experiments": {"demo": {"training": {"lr": 5e-4}}}}), ["demo"])
    for kind in ("questions", "answers", "retrieval"):
        assert _paths(base, kind) == _paths(lr, kind)
    for kind in ("adapter",):
        assert not _paths(base, kind) & _paths(lr, kind)
    # Base-model evaluations do not depend on training settings.
    base_evals = {p for p in _paths(base, "evaluate") if "/eval/base/" in p}
    assert base_evals and base_evals <= _paths(lr, "evaluate")
    t = build_plan(load_config(DEFAULT_CONFIG, {"experiments": {"demo": {"generation": {"evaluation": {"temperature": 0.5}}}}}),
                   ["demo"])
    assert _paths(base, "adapter") == _paths(t, "adapter")
    assert not _paths(base, "evaluate") & _paths(t, "evaluate")


def test_paths_encode_their_dependencies(cfg):
    plan = build_plan(cfg, ["demo"])
    for art in plan.artifacts.values():
        for dep in art.inputs:
            assert dep in plan.artifacts, dep
        assert art.path.startswith(cfg["reports_dir" if art.kind == "report" else "results_dir"] + "/")
    q = plan.of_kind("questions")[0].path
    # The demo generates its questions one per call (one quoted sentence each) and shares them between seeds.
    assert re.search(r"/demo-nyt/questions/smollm2-135m-instruct_sentence_n3_s0_[0-9a-f]{8}\.jsonl$", q)


def test_snakemake_dry_run_counts_full_grid():
    """`snakemake -n` over every experiment: per-rule job counts (the DAG takes ~6 s on an idle machine)."""
    run = "[" + ",".join(PAPER) + "]"
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--config", f"run={run}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out.stdout + out.stderr, re.M)}
    expected = {"questions": 72, "answers": 159, "teacher": 3, "adapter": 363, "retrieval": 13, "evaluate": 711,
                "grade": 1422, "capability": 25, "manifest": 12, "report": 1, "all": 1}
    assert {k: counts.get(k) for k in expected} == expected


def test_snakemake_names_a_bad_config():
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--config", "run=[mian]"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "run[0]: unknown experiment 'mian' (did you mean 'main'?)" in out.stderr


def test_user_models_reach_their_jobs(tmp_path):
    """A model defined under `models:` must be resolvable inside every job that loads it, and a
    changed entry (here its dtype) must move those jobs' outputs to new paths."""
    import yaml

    from pd.io import read_jsonl
    from pd.stages import run_job

    raw = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    raw["results_dir"] = str(tmp_path / "results")
    raw["experiments"]["tiny"]["grid"].update(model=["my-tiny"], retrieval=["none"])
    raw["models"] = {"my-tiny": {"base": "tiny-llama", "dtype": "bfloat16"}}
    plan = build_plan(load_config(raw), ["tiny"])
    loading = [a for a in plan.artifacts.values() if a.model == "my-tiny"]
    assert {a.kind for a in loading} == {"evaluate"}
    for a in loading:
        assert a.spec.models_extra == {"my-tiny": {"base": "tiny-llama", "dtype": "bfloat16"}}
    assert all("models_extra" not in a.spec.as_dict() for a in plan.artifacts.values() if a.model is None)

    raw["models"]["my-tiny"]["dtype"] = "float32"
    other = build_plan(load_config(raw), ["tiny"])
    assert {a.path for a in other.of_kind("evaluate")}.isdisjoint(a.path for a in loading)

    # The job itself: "my-tiny" is not built in, so it resolves only through the spec.
    ev = loading[0]
    run_job("evaluate", ev.spec.as_dict(), [str(tmp_path / "eval.jsonl")], [])
    rows = read_jsonl(tmp_path / "eval.jsonl")
    assert [r["item_id"] for r in rows] == [it.id for it in ev.spec.load_dataset().items]
