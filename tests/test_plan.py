"""The experiment plan: job counts on the full paper grid, sharing, and partial reruns."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pd.config import DEFAULT_CONFIG, load_config
from pd.pipeline.plan import build_plan, expand_grid

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
#  teacher statistics: quintiles need them for L on NYT, 3 seeds -> 3; expert_teacher's 70B teacher
#    caches its top-k targets in a job of its own (never inside the 8B student's) for the answers of
#    both experts x 4 sets x 3 seeds -> 24; 27 in all.
#  adapters: main 3 methods x 3 x 4 x 3 = 108; expert_teacher (4 pd + 2 sft combos - 2 in main)
#    x 12 = 48; temperatures (4 pd + 2 sft - 2) x 12 = 48; pd_reg 12; hotpotqa 2 x 3 x 3 = 18
#    (epochs 5 override); n_questions 6 x 2 x 3 = 36; Bonito 9; wall_clock 2 x 3 = 6 (snapshot
#    settings); lora_rank 6 x 2 x 3 = 36 (batch 32); reverse 12; quintiles 10 x 3 = 30 -> 363.
#  retrieval: openai on 4 sets, bm25 (k=10) on HotpotQA, bm25 + oracle on 4 sets -> 13.
#  evaluations: main 288; expert_teacher 72 - 24 = 48; temperatures 48; regularisation 24 (pd_reg
#    x 2 retrieval); hotpotqa 54; rag_variants 144 - 48 (openai in main) = 96; n_questions 42 - 6
#    = 36; Bonito 9; wall_clock 5 snapshots x 6 = 30; lora_rank 36; reverse 12; quintiles 30 -> 711.
#  grades: 2 graders x 711 = 1422; manifests: 12.
#  judge calibrations: one per judge template (judge_squadshifts, judge_hotpotqa) -> 2.
#  capability (MMLU-Pro, regularisation only): the base model once (its seeds and retrievals share
#    it) + 12 pd + 12 pd_reg adapters = 25.
# embeddings: the openai retrieval of main, regularisation and rag_variants shares one local job per dataset.
PAPER_COUNTS = {"questions": 72, "answers": 159, "teacher": 27, "adapter": 363, "embeddings": 4, "retrieval": 13,
                "evaluate": 711,
                "grade": 1422, "calibrate_judge": 2, "capability": 25, "manifest": 12, "report": 1}


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
    assert plan.count() == {"questions": 36, "answers": 72, "teacher": 0, "adapter": 108, "embeddings": 4,
                            "retrieval": 4, "evaluate": 288, "grade": 576, "calibrate_judge": 1,
                            "capability": 0, "manifest": 1, "report": 1}


def test_irrelevant_axes_collapse(cfg):
    cells = expand_grid(cfg, "expert_teacher")
    sft = [c for c in cells if c.method == "sft"]
    # The teacher axis means nothing to SFT: 2 experts x 4 sets x 3 seeds, not x 2 teachers.
    assert len(sft) == 24 and all(c.teacher is None for c in sft)


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
    t = build_plan(load_config(DEFAULT_CONFIG,
                               {"experiments": {"demo": {"generation": {"evaluation": {"temperature": 0.5}}}}}),
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


def test_snakemake_dry_run_counts_full_grid(tmp_path):
    """`snakemake -n` over every experiment: per-rule job counts (the DAG takes ~6 s on an idle machine).
    It runs in an empty folder, so whatever earlier commands left in the checkout does not count."""
    run = "[" + ",".join(PAPER) + "]"
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--quiet", "rules",
                          "--config", f"run={run}", f"results_dir={tmp_path / 'results'}",
                          f"reports_dir={tmp_path / 'reports'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out.stdout + out.stderr, re.M)}
    expected = {**PAPER_COUNTS, "all": 1}
    assert {k: counts.get(k) for k in expected} == expected


def test_snakemake_names_a_bad_config(tmp_path):
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--config",
                          "run=[mian]"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "run[0]: unknown experiment 'mian' (did you mean 'main'?)" in out.stderr


def test_user_models_reach_their_jobs(tmp_path):
    """A model defined under `models:` must be resolvable inside every job that loads it, and a
    changed entry (here its dtype) must move those jobs' outputs to new paths."""
    import yaml

    from pd.io import read_jsonl
    from pd.pipeline.run import run_job

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


# --------------------------------------------------------------------------- registry and specs


def test_every_artifact_parses_back_to_its_kind_and_path(cfg):
    """Each planned path matches its own kind's pattern and formats back to itself."""
    from pd.pipeline import paths

    plan = build_plan(cfg, PAPER)
    for path, art in plan.artifacts.items():
        kind, fields = paths.parse(path) or (None, {})
        if art.kind == "report":
            assert path == paths.output("report", reports=cfg["reports_dir"])
            continue
        assert kind == art.kind, path
        assert paths.output(kind, **fields) == path


def test_benchmark_and_log_files_are_beside_the_results():
    from pd.pipeline.paths import benchmark_file, log_file

    assert benchmark_file("results/nyt/eval/sft/m/r4_ab_s0/none_cd.jsonl", "nyt") == \
        "results/benchmarks/nyt/eval/sft/m/r4_ab_s0/none_cd.tsv"
    assert benchmark_file("/x/r/nyt/adapters/pd/m/r4_ab_s0", "nyt") == "/x/r/benchmarks/nyt/adapters/pd/m/r4_ab_s0.tsv"
    assert log_file("r/nyt/grades/base/m/s0/none_cd.substring-word.jsonl") == \
        "r/logs/nyt/grades/base/m/s0/none_cd.substring-word.log"
    assert benchmark_file("nyt/eval/a.jsonl", "nyt") == "./benchmarks/nyt/eval/a.tsv"
    assert benchmark_file("results/other/eval/a.jsonl", "nyt") is None and benchmark_file(None, "nyt") is None


def test_rule_strings_come_from_the_registry():
    from pd.pipeline import paths

    assert paths.rule_output("answers", "R", "rep") == "R/{dataset,[^/]+}/answers/{qstem,[^/]+}/{stem,[^/]+}.jsonl"
    assert paths.rule_benchmark("teacher", "R") == "R/benchmarks/{dataset}/teacher/{qstem}/{astem}/{stem}.tsv"
    assert paths.rule_log("grade", "R") == "R/logs/{dataset}/grades/{rest}.{grader}.log"
    assert paths.rule_output("report", "R", "rep") == "rep/index.html"
    with pytest.raises(ValueError):
        paths.output("questions", R="R", dataset="a/b", stem="s")


def test_specs_round_trip_through_their_dictionary_form(cfg):
    """Snakemake passes a spec as its dict; reading it back gives the same typed spec and the same dict."""
    from pd.io import stable_hash
    from pd.pipeline.registry import spec_from_dict

    plan = build_plan(cfg, PAPER)
    for art in plan.artifacts.values():
        d = art.spec.as_dict()
        back = spec_from_dict(art.kind, d)
        assert back == art.spec and back.as_dict() == d and list(back.as_dict()) == list(d)
    grade = next(a for a in plan.of_kind("grade") if a.spec.grader == "substring")
    # The dictionary as it was written before the specs were typed: its hash is in the path.
    expected = {"eval": grade.inputs[0], "dataset": grade.spec.dataset,
                "dataset_cfg": cfg["datasets"][grade.spec.dataset], "grader": "substring",
                "mode": cfg["grading"]["substring_mode"]}
    assert grade.spec.as_dict() == expected
    adapter = plan.artifacts[plan.cells["main"][-1].adapter]
    assert stable_hash(adapter.spec.as_dict(), 8) in adapter.path
    with pytest.raises(ValueError, match="unknown field"):
        spec_from_dict("grade", {**expected, "colour": 1})


def test_sampling_keeps_the_configs_key_order():
    from pd.pipeline.spec import Sampling

    s = Sampling.from_dict({"temperature": 1.5, "max_new_tokens": 512, "top_k": 0})
    assert list(s.as_dict()) == ["temperature", "max_new_tokens", "top_k"]
    p = s.params(seed=3, temperature=0.25, max_new_tokens=500)
    assert (p.temperature, p.top_k, p.top_p, p.max_new_tokens, p.seed) == (1.5, 0, 1.0, 512, 3)
    assert Sampling.from_dict({}).params(seed=0, temperature=0.25, max_new_tokens=500).max_new_tokens == 500


def test_the_snakefile_writes_one_rule_per_registered_kind():
    """Rules come from the registry: the Snakefile's loop covers every kind whose rule is generic, and the
    written-out rules are exactly the others (plus `all`); every kind sizes its jobs."""
    from pd.pipeline.registry import all_kinds
    from pd.pipeline.resources import job_resources

    for kind in all_kinds():
        assert job_resources(kind.name, 0.135)["mem_mb"] > 0
        assert kind.spec.KIND == kind.name
    written = set()
    for smk in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]:
        written |= set(re.findall(r"^rule (\w+):", smk.read_text(), re.M))
    assert written == {"all"} | {k.name for k in all_kinds() if not k.generic_rule}


def test_heldout_fraction_means_extra_questions_per_training_question():
    """The config's heldout_fraction f: n training questions get round(n f) extra ones (at least 1),
    and split_heldout, given the same f, holds out that many of the n + extra."""
    from pd.config import heldout_extra
    from pd.train.rows import split_heldout

    for n in (3, 10, 30):
        extra = heldout_extra(n, 0.1)
        rows = [{"id": f"q{i}", "question_id": f"q{i}"} for i in range(n + extra)]
        train, held = split_heldout(rows, extra / n)  # the realised ratio, as pd inject passes it
        assert (len(train), len(held)) == (n, extra)
    assert split_heldout([{"id": "a"}], 0.0) == ([{"id": "a"}], [])


def test_a_folder_dataset_is_named_by_its_content(tmp_path):
    """pd inject's plan: questions per passage for a folder without test questions; edited documents
    change every job's identity."""
    from pd.pipeline.plan import build_adapter_plan

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The harbour of Velmora was built in 1822.\n")
    raw = {"results_dir": str(tmp_path / "r"), "datasets": {"mine": {"loader": "folder", "path": str(docs)}},
           "experiments": {"x": {"grid": {"model": ["tiny-llama"], "method": ["pd", "sft"], "dataset": ["mine"]}}},
           "run": ["x"]}
    plan, adapters = build_adapter_plan(load_config(raw), "x")
    assert len(adapters) == 2 and plan.count()["evaluate"] == 0
    q = plan.of_kind("questions")[0].spec
    assert q.per_passage is True and q.dataset_cfg["documents_hash"]
    (docs / "a.txt").write_text("The harbour of Velmora was built in 1823.\n")
    again, _ = build_adapter_plan(load_config(raw), "x")
    assert set(again.artifacts).isdisjoint(plan.artifacts)


def test_a_larger_teacher_runs_in_its_own_job_never_in_the_students():
    """Table 3's 70B teachers: the adapter reads top-k targets from a teacher job that loads the 70B model;
    the adapter job itself asks only for the student's resources."""
    from pd.pipeline.registry import get_kind
    from pd.train.settings import SEPARATE_TEACHER_TOPK

    plan = build_plan(load_config(DEFAULT_CONFIG, {"run": ["expert_teacher"]}))
    separate = [a for a in plan.of_kind("adapter") if a.spec.teacher_model not in (None, a.spec.model)]
    own = [a for a in plan.of_kind("adapter") if a.spec.teacher_model == a.spec.model]
    assert separate and own
    for a in separate:
        assert a.spec.training["teacher_topk"] == SEPARATE_TEACHER_TOPK and a.spec.teacher in a.inputs
        teacher_job = plan.get(a.spec.teacher)
        assert teacher_job.kind == "teacher" and teacher_job.model == "llama3-70b-instruct"
        assert get_kind("adapter").extra_params_b(a, plan) == 0.0
    assert all(a.spec.training["teacher_topk"] == 0 and a.spec.teacher is None for a in own)


def test_a_layout_that_cannot_show_the_grid_is_refused_before_any_job():
    """Two configurations that differ in an axis the table does not show (here n_questions, with rows
    [method] and columns [dataset]) would share one table cell: the plan refuses it by name."""
    from pd.errors import ConfigError

    over = {"run": ["x"], "experiments": {"x": {
        "grid": {"model": ["tiny-llama"], "method": ["sft"], "dataset": ["demo-nyt"], "n_questions": [1, 3]},
        "table": {"rows": ["method"], "columns": ["dataset"]}}}}
    with pytest.raises(ConfigError, match=r"experiment 'x': two cell groups land in one table cell.*n_questions"):
        build_plan(load_config(DEFAULT_CONFIG, over))
    over["experiments"]["x"]["table"] = {"rows": ["method"], "columns": ["n_questions"]}
    assert len(build_plan(load_config(DEFAULT_CONFIG, over)).cells["x"]) == 2  # a layout that shows the axis
