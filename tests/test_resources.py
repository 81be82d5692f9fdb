"""pd.pipeline.resources: job sizes per rule kind, model size, retry attempt and site.

Expected values are worked out by hand from the rules in pd/resources.py's docstring
(bf16 = 2 bytes/param, 16 bytes per LoRA parameter, 90 % of a GPU usable where an "80GB"
GPU is 80 GiB = 85.9 GB, so 77.31 GB usable; powers of two),
written out step by step in the comments.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pd.errors import ConfigError
from pd.pipeline.registry import kind_names
from pd.pipeline.resources import (
    Site,
    gpus_for,
    job_resources,
    load_site,
    lora_params_per_rank,
    rule_resources,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- LoRA size


def exact_lora_per_rank(layers: int, hidden: int, inter: int, kv: int) -> int:
    """LoRA parameters per rank for a Llama/Qwen block: r x (d_in + d_out) per linear layer."""
    q = o = hidden + hidden
    k = v = hidden + kv
    gate = up = down = hidden + inter
    return layers * (q + k + v + o + gate + up + down)


def test_exact_lora_count_matches_peft(tiny_llama):
    """The hand count above is what PEFT really adds (tiny-llama: 2 layers, d=64, ffn=128, kv=2x16)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama.model(), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 8 * exact_lora_per_rank(2, 64, 128, 32) == 16384


# (layers, hidden, intermediate, kv dim) from the models' published configs
SHAPES = {
    0.135: (30, 576, 1536, 192),  # SmolLM2-135M
    3.1: (36, 2048, 11008, 256),  # Qwen2.5-3B
    8.0: (32, 4096, 14336, 1024),  # Llama-3-8B
    14.7: (48, 5120, 13824, 1024),  # Qwen2.5-14B
    70.6: (80, 8192, 28672, 1024),  # Llama-3-70B
}


@pytest.mark.parametrize("params_b", sorted(SHAPES))
def test_lora_estimate_close_to_exact(params_b):
    exact = exact_lora_per_rank(*SHAPES[params_b])
    assert -0.12 < lora_params_per_rank(params_b) / exact - 1 < 0.22


# --------------------------------------------------------------------------- GPUs


def test_gpus_for_rounds_to_power_of_two():
    assert gpus_for(77.30, 80) == 1  # usable: 0.9 x 80 x 1.0737 = 77.309 GB
    assert gpus_for(77.32, 80) == 2
    assert gpus_for(160, 80) == 4  # 160 / 77.309 = 2.07 -> 3 -> 4
    assert gpus_for(320, 80) == 8  # 4.14 -> 5 -> 8
    assert gpus_for(0.001, 80) == 1


def test_70b_judge_gets_four_gpus():
    # need = 1.2 x (2 x 70.6) + 4 = 173.44 GB; / 77.31 = 2.24 -> 3 -> 4 GPUs
    # host = 1.25 x 141.2 + 8 = 184.5 GB; runtime = 60 x (70.6 / 8) / 4 = 132.4 -> 133
    assert job_resources("grade", 70.6, device="gpu") == {
        "mem_mb": 184500, "runtime": 133, "cpus_per_task": 32, "gpus": 4, "gpu": 4}


@pytest.mark.parametrize("kind", ["questions", "answers", "teacher", "adapter", "evaluate", "grade"])
def test_8b_fits_one_80gb_gpu(kind):
    # train (rank 1024) is the worst case: adapter 16 B x (0.93e6 x 8^0.59 = 3.172e6) x 1024
    # = 51.97 GB, + 16 GB weights + 1.6 + 4 = 73.57 GB < 77.31 GB usable.
    res = job_resources(kind, 8.0, device="gpu")
    assert res["gpus"] == 1 and res["gpu"] == 1
    assert res["cpus_per_task"] == 8
    assert res["mem_mb"] == 28000  # 1.25 x 16 GB + 8 GB


def test_train_retry_gets_more_memory_gpus_and_time():
    # attempt 2: memory x 1.5 (GPU need 73.57 x 1.5 = 110.4 GB -> 2 GPUs; host 28 -> 42 GB);
    # runtime 720 min (one GPU at attempt 1) x 2 = 1440.
    first = job_resources("adapter", 8.0, attempt=1, device="gpu")
    second = job_resources("adapter", 8.0, attempt=2, device="gpu")
    assert (first["gpus"], first["mem_mb"], first["runtime"]) == (1, 28000, 720)
    assert (second["gpus"], second["mem_mb"], second["runtime"], second["cpus_per_task"]) == (2, 42000, 1440, 16)


def test_cpu_jobs_hand_derived():
    # questions, 135M on CPU: 2 GB + 1.2 x (4 x 0.135) = 2.648 GB -> 2700 MB;
    # runtime 60 x max(0.25, 0.135 / 0.5) = 16.2 -> 17 min
    assert job_resources("questions", 0.135) == {"mem_mb": 2700, "runtime": 17, "cpus_per_task": 4, "gpus": 0}
    # attempt 3: x2 memory (5.296 GB -> 5300), x3 time (48.6 -> 49)
    assert job_resources("questions", 0.135, attempt=3)["mem_mb"] == 5300
    assert job_resources("questions", 0.135, attempt=3)["runtime"] == 49
    # train rank 8: 2 + 0.54 + 16 x (0.93e6 x 0.135^0.59 = 285,350) x 8 / 1e9 + 0.27 = 2.847 GB
    res = job_resources("adapter", 0.135, lora_rank=8)
    assert res["mem_mb"] == 2900 and res["runtime"] == 195  # 720 x 0.27 = 194.4
    # work scales the runtime only
    assert job_resources("adapter", 0.135, lora_rank=8, work=0.5)["runtime"] == 98
    assert job_resources("adapter", 0.135, lora_rank=8, work=0.5)["mem_mb"] == 2900


def test_report_and_retrieve_never_use_gpus():
    for kind in ("retrieval", "manifest", "report"):
        res = job_resources(kind, 70.6, device="gpu")
        assert res["gpus"] == 0 and "gpu" not in res and res["mem_mb"] == 2000
    assert job_resources("report", 70.6, device="gpu")["cpus_per_task"] == 1


# --------------------------------------------------------------------------- site


def write_site(tmp_path: Path, settings: dict) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"slurm_site": settings}))
    return path


def test_site_partitions_account_gpu_model(tmp_path):
    site = load_site(write_site(tmp_path, {
        "partition": "cpu", "gpu_partition": "gpu", "account": "proj1", "gpu_model": "a100",
        "constraint": "intel", "qos": "normal"}))
    assert site.device == "gpu"
    judge = job_resources("grade", 8.0, site=site)
    assert judge["slurm_partition"] == "gpu" and judge["gpu"] == 1 and judge["gpu_model"] == "a100"
    assert judge["slurm_account"] == "proj1" and judge["qos"] == "normal" and judge["constraint"] == "intel"
    report = job_resources("report", 8.0, site=site)
    assert report["slurm_partition"] == "cpu" and "gpu" not in report and "gpu_model" not in report
    # the site's device can be overridden per call
    assert job_resources("grade", 8.0, device="cpu", site=site)["slurm_partition"] == "cpu"


def test_site_gres_form():
    site = load_site({"gpu_request": "gres", "gpu_model": "h100"})
    res = job_resources("grade", 70.6, site=site)
    assert res["gres"] == "gpu:h100:4" and "gpu" not in res
    assert job_resources("grade", 8.0, site=load_site({"gpu_request": "gres"}))["gres"] == "gpu:1"


def test_site_caps_and_factor():
    site = load_site({"max_mem_mb": 100000, "max_runtime": 90, "max_cpus_per_task": 16, "runtime_factor": 2})
    res = job_resources("grade", 70.6, site=site)
    assert res == {"mem_mb": 100000, "runtime": 90, "cpus_per_task": 16, "gpus": 4, "gpu": 4}
    assert job_resources("evaluate", 8.0, site=site)["runtime"] == 60  # 30 x 1 x 2


def test_site_smaller_gpus_and_node_limit():
    # 40GB GPUs (38.65 GB usable): 8B judge 23.2 GB -> 1; train 73.57 / 38.65 = 1.90 -> 2
    site = load_site({"gpu_mem_gb": 40, "gpus_per_node": 4})
    assert job_resources("grade", 8.0, site=site)["gpus"] == 1
    assert job_resources("adapter", 8.0, site=site)["gpus"] == 2
    # 70B judge: 173.44 / 38.65 = 4.49 -> 5 -> 8 > 4 per node: a clear error
    with pytest.raises(ConfigError, match="gpus_per_node=4"):
        job_resources("grade", 70.6, site=site)
    # train attempt 3: 73.57 x 2 / 38.65 = 3.8 -> 4; attempt 4: x 2.5 -> 4.76 -> 8, capped at 4
    assert job_resources("adapter", 8.0, attempt=3, site=site)["gpus"] == 4
    fourth = job_resources("adapter", 8.0, attempt=4, site=site)
    assert fourth["gpus"] == 4 and fourth["cpus_per_task"] == 32


def test_site_size_tiers():
    site = load_site({"sizes": {"adapter": [
        {"max_params_b": 10, "runtime": 1440, "mem_mb": 100000, "gpus": 2},
        {"max_params_b": 4, "runtime": 600}]}})
    small = job_resources("adapter", 3.1, site=site)  # first tier (sorted) with 3.1 <= 4
    assert small["runtime"] == 600
    mid = job_resources("adapter", 8.0, site=site)
    assert (mid["runtime"], mid["mem_mb"], mid["gpus"], mid["cpus_per_task"]) == (1440, 100000, 2, 16)
    retry = job_resources("adapter", 8.0, attempt=2, site=site)
    assert (retry["runtime"], retry["mem_mb"], retry["gpus"]) == (2880, 150000, 2)
    big = job_resources("adapter", 14.7, site=site)  # no tier: the estimate (rank 512 -> 1 GPU)
    assert big["gpus"] == 1 and big["runtime"] == 1323  # 720 x 14.7 / 8 = 1323
    assert job_resources("answers", 8.0, site=site)["runtime"] == 120  # other kinds untouched


def test_shipped_site_file_loads():
    site = load_site(REPO / "profiles/slurm/site.yaml")
    assert isinstance(site, Site) and site.device == "gpu" and site.gpu_request == "gpus"
    assert job_resources("grade", 70.6, site=site)["gpu"] == 4
    assert not site.sizes  # the cost model sizes GPU jobs; `sizes:` is the user's override


def test_ci_site_file_loads():
    site = load_site(REPO / "tests/fixtures/smoke/site-ci.yaml")
    res = job_resources("adapter", 0.135, site=site, lora_rank=8)
    assert res == {"mem_mb": 2900, "runtime": 10, "cpus_per_task": 1, "gpus": 0, "slurm_partition": "debug",
                   "slurm_extra": "--signal=TERM@150"}  # a quarter of the 10-minute limit


def test_slurm_profile_settings():
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-status-command"] == "squeue"
    assert profile["configfile"] == "site.yaml"
    # squeue forgets a job MinJobAge (default 300 s) after it ends; the plugin wants 3 x the wait below it
    assert 3 * profile["slurm-init-seconds-before-status-checks"] <= 300
    assert "slurm_account" not in profile["default-resources"]
    local = yaml.safe_load((REPO / "profiles/local/config.yaml").read_text())
    assert "executor" not in local and local["rerun-incomplete"] is True and local["keep-going"] is False


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call, message", [
    (lambda: job_resources("training", 1.0), "allowed: \\['questions'"),
    (lambda: job_resources("adapter", -1.0), "params_b"),
    (lambda: job_resources("adapter", 1.0, attempt=0), "attempt"),
    (lambda: job_resources("adapter", 1.0, device="tpu"), "'cpu', 'gpu'"),
    (lambda: job_resources("adapter", 1.0, work=0), "work"),
    (lambda: load_site({"partion": "x"}), "unknown setting.*partion.*allowed"),
    (lambda: load_site({"device": "tpu"}), "device"),
    (lambda: load_site({"gpu_request": "both"}), "'gpus', 'gres'"),
    (lambda: load_site({"gpu_mem_gb": -80}), "positive"),
    (lambda: load_site({"sizes": {"training": []}}), "unknown kind"),
    (lambda: load_site({"sizes": {"adapter": [{"runtime": 5}]}}), "max_params_b"),
    (lambda: load_site({"sizes": {"adapter": [{"max_params_b": 5, "time": 5}]}}), "unknown key.*time"),
    (lambda: load_site("/nonexistent/site.yaml"), "does not exist"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_site_none_means_local():
    assert load_site(None) is None
    assert "slurm_partition" not in job_resources("report", 0.0)


# --------------------------------------------------------------------------- Snakemake callables


def test_rule_resources_follow_wildcards_and_attempt():
    sizes = {"small": 8.0, "large": 70.6}
    rr = rule_resources("grade", lambda wc: sizes[wc.model], device="gpu")
    small, large = SimpleNamespace(model="small"), SimpleNamespace(model="large")
    assert rr["gpu"](large, 1) == 4 and rr["gpu"](small, 1) == 1
    assert rr["mem_mb"](small, 2) == 42000  # 28000 x 1.5
    assert rr["gpu_model"](small, 1) is None  # Snakemake drops None-valued resources
    assert rr["slurm_partition"](small, 1) is None
    assert set(kind_names()) >= {"grade"}
    with pytest.raises(ConfigError):
        rule_resources("grading", 1.0)


# --------------------------------------------------------------------------- work and caches (each kind's sizing hooks)
# The demo's plan (config.yaml): 4 NYT passages with 37 test items (data/squadshifts-pd/README.md
# and config.yaml's comment); questions in `sentence` mode, one per call in at most 48 new tokens,
# 3 per item plus 1 held out, at most 4 rounds; answers of at most 64 tokens; 3 epochs; top-1024
# teacher cache; evaluation answers of at most 40 tokens. The paper-size reference: 1000 items,
# 30 questions each written five per call in 512 tokens, 2 rounds; answers 512 tokens; 10 epochs.

DEMO_ITEMS = 37
PAPER_QUESTION_TOKENS = 1000 * 30 / 5 * 512 * 2  # 6,144,000
PAPER_ANSWER_TOKENS = 1000 * 30 * 512  # 15,360,000


@pytest.fixture(scope="module")
def demo_plan():
    from pd.config import DEFAULT_CONFIG, load_config
    from pd.pipeline.plan import build_plan

    return build_plan(load_config(DEFAULT_CONFIG), ["demo"])


def _one(plan, kind, pred=lambda a: True):
    return next(a for a in plan.artifacts.values() if a.kind == kind and pred(a))


def test_demo_work_factors_by_hand(demo_plan):
    from pd.pipeline.registry import get_kind

    def job_work(art, plan):
        return get_kind(art.kind).work(art, plan)

    def teacher_cache_gb(art, plan):
        return get_kind(art.kind).cache_gb(art, plan)

    questions = DEMO_ITEMS * (3 + 1)  # 148
    # questions: 148 calls x 48 tokens x min(4 rounds, 2)
    assert job_work(_one(demo_plan, "questions"), demo_plan) == pytest.approx(148 * 48 * 2 / PAPER_QUESTION_TOKENS)
    # answers: 148 x 64 tokens
    assert job_work(_one(demo_plan, "answers"), demo_plan) == pytest.approx(questions * 64 / PAPER_ANSWER_TOKENS)
    # teacher: a forward pass over 148 answers of up to max_answer_tokens=512
    assert job_work(_one(demo_plan, "teacher"), demo_plan) == pytest.approx(questions * 512 / PAPER_ANSWER_TOKENS)
    # adapter: 3 epochs x 148 questions over 10 x 30,000
    pd_adapter = _one(demo_plan, "adapter", lambda a: a.spec.method == "pd")
    assert job_work(pd_adapter, demo_plan) == pytest.approx(3 * questions / (10 * 30000))
    # evaluation: 37 items x 40 tokens over 1000 x 500
    assert job_work(_one(demo_plan, "evaluate"), demo_plan) == pytest.approx(DEMO_ITEMS * 40 / (1000 * 500))
    # the PD adapter holds the top-1024 cache: 1024 x 6 bytes x 148 answers x 64 tokens = 58.2 MB
    assert teacher_cache_gb(pd_adapter, demo_plan) == pytest.approx(1024 * 6 * questions * 64 / 1e9)
    sft = _one(demo_plan, "adapter", lambda a: a.spec.method == "sft")
    assert teacher_cache_gb(sft, demo_plan) == 0.0


def test_paper_size_work_is_about_one():
    from pd.config import DEFAULT_CONFIG, load_config
    from pd.pipeline.plan import build_plan
    from pd.pipeline.registry import get_kind

    def job_work(art, plan):
        return get_kind(art.kind).work(art, plan)

    plan = build_plan(load_config(DEFAULT_CONFIG), ["main"])
    q = _one(plan, "questions", lambda a: a.spec.dataset == "nyt" and a.model == "llama3-8b-instruct")
    # 1000 items x 33 questions (30 + 3 held out) / 5 per call x 512 tokens x 2 rounds
    assert job_work(q, plan) == pytest.approx(1000 * 33 / 5 * 512 * 2 / PAPER_QUESTION_TOKENS)  # 1.1
    a = _one(plan, "adapter", lambda a: a.spec.dataset == "nyt" and a.model == "qwen2.5-3b-instruct"
             and a.spec.method == "sft")
    assert job_work(a, plan) == pytest.approx(5 * 33000 / (10 * 30000))  # Qwen: 5 epochs


def test_work_cache_and_inprocess_teacher_reach_the_request():
    # 8B answers on a GPU at half the paper's work: 120 min x 1 x 0.5 = 60
    assert job_resources("answers", 8.0, device="gpu", work=0.5)["runtime"] == 60
    # tiny work: the 15-minute floor of a job that loads a model (x2 on the second attempt)
    assert job_resources("answers", 8.0, device="gpu", work=0.001)["runtime"] == 15
    assert job_resources("answers", 8.0, device="gpu", work=0.001, attempt=2)["runtime"] == 30
    # a 5.9 GB teacher cache adds to host memory: 28.0 GB (1.25 x 16 + 8) + 5.9 GB
    assert job_resources("adapter", 8.0, device="gpu", cache_gb=5.9)["mem_mb"] == 33900
    # an 8B student with a 70.6B teacher in the same job (rank 1024):
    # 16 + 16 x 0.93e6 x 8^0.59 x 1024 / 1e9 + 1.6 + 4 + 141.2 GB over 77.31 usable per GPU -> 3 -> 4
    need = 16 + 16 * 0.93e6 * 8 ** 0.59 * 1024 / 1e9 + 1.6 + 4 + 2 * 70.6
    n = -(-need // (0.9 * 80 * 2**30 / 1e9))
    assert n == 3 and job_resources("adapter", 8.0, device="gpu", extra_params_b=70.6)["gpus"] == 4
    # a site tier's runtime is per paper-size job: scaled by the work
    site = load_site({"sizes": {"adapter": [{"max_params_b": 10, "runtime": 1440}]}})
    assert job_resources("adapter", 8.0, site=site, work=0.25)["runtime"] == 360
    # a substring grade (no model) never asks for a GPU
    assert job_resources("grade", 0.0, device="gpu")["gpus"] == 0


def test_site_env_exported_to_jobs(monkeypatch):
    from pd.site import apply_job_env

    monkeypatch.setenv("PD_TEST_SHARED", "/shared")
    site = load_site({"env": {"HF_HOME": "$PD_TEST_SHARED/hf", "PD_CACHE_DIR": None, "HF_HUB_OFFLINE": 1}})
    env: dict = {}
    assert apply_job_env(site, env) == {"HF_HOME": "/shared/hf", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                        "PD_CHECKPOINT_MINUTES": "30.0"}
    assert env["HF_HOME"] == "/shared/hf" and "PD_CACHE_DIR" not in env
    shipped = load_site(REPO / "profiles/slurm/site.yaml")
    assert shipped.job_env() == {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PD_CHECKPOINT_MINUTES": "30.0"}
    assert set(shipped.env) >= {"HF_HOME", "PD_CACHE_DIR"}
    assert apply_job_env(None, env) == {}
    with pytest.raises(ConfigError, match="env"):
        load_site({"env": {"1BAD": "x"}})


def test_vllm_jobs_use_every_gpu_slurm_granted(monkeypatch):
    import pd.generate
    from pd.pipeline.jobtools import make_job_generator
    from pd.pipeline.resources import job_gpus

    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    assert job_gpus() == 4
    seen = {}
    monkeypatch.setattr(pd.generate, "make_generator", lambda model, backend, **kw: seen.update(kw, backend=backend))
    make_job_generator("llama3-70b-instruct", backend="vllm")
    assert seen["backend"] == "vllm" and seen["gpus"] == 4
    monkeypatch.delenv("SLURM_GPUS_ON_NODE")
    import torch

    assert job_gpus() == max(1, torch.cuda.device_count())


def test_site_checkpoint_minutes_reach_the_adapter_jobs_and_they_get_sigterm_before_their_limit():
    from pd.site import CHECKPOINT_MINUTES_ENV, checkpoint_minutes_from_env

    shipped = load_site(REPO / "profiles/slurm/site.yaml")
    assert (shipped.checkpoint_minutes, shipped.term_before_limit_s) == (30.0, 300)
    off = load_site({"checkpoint_minutes": 0, "term_before_limit_s": 0})
    assert off.job_env()[CHECKPOINT_MINUTES_ENV] == "0.0"
    assert checkpoint_minutes_from_env({CHECKPOINT_MINUTES_ENV: "0.5"}) == 0.5
    assert checkpoint_minutes_from_env({}) is None and checkpoint_minutes_from_env({CHECKPOINT_MINUTES_ENV: ""}) is None
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(ConfigError, match="PD_CHECKPOINT_MINUTES.*checkpoint_minutes"):
            checkpoint_minutes_from_env({CHECKPOINT_MINUTES_ENV: bad})
    for key, bad in (("checkpoint_minutes", -1), ("checkpoint_minutes", "often"), ("term_before_limit_s", 1.5)):
        with pytest.raises(ConfigError, match=rf"{key}: expected .*>= 0"):
            load_site({key: bad})

    # Adapters (which checkpoint on SIGTERM) get it term_before_limit_s early, at most a quarter of their limit;
    # other kinds never; a site's own --signal wins.
    site = load_site({"device": "cpu", "slurm_extra": "--exclusive", "sizes": {
        "adapter": [{"max_params_b": 1, "runtime": 600}], "answers": [{"max_params_b": 1, "runtime": 600}]}})
    assert job_resources("adapter", 0.135, site=site)["slurm_extra"] == "--exclusive --signal=TERM@300"
    assert job_resources("answers", 0.135, site=site)["slurm_extra"] == "--exclusive"
    short = load_site({"device": "cpu", "sizes": {"adapter": [{"max_params_b": 1, "runtime": 8}]}})
    assert job_resources("adapter", 0.135, site=short, work=1.0)["runtime"] == 15  # the floor for model jobs
    assert job_resources("adapter", 0.135, site=short)["slurm_extra"] == "--signal=TERM@225"  # 15 min / 4
    tiny = load_site({"device": "cpu", "max_runtime": 3})
    assert "slurm_extra" not in job_resources("adapter", 0.135, site=tiny)  # 45 s: under SLURM's resolution
    own = load_site({"device": "cpu", "slurm_extra": "--signal=USR1@600"})
    assert job_resources("adapter", 0.135, site=own)["slurm_extra"] == "--signal=USR1@600"
    none = load_site({"device": "cpu", "term_before_limit_s": 0})
    assert "slurm_extra" not in job_resources("adapter", 0.135, site=none)
    assert "slurm_extra" not in job_resources("adapter", 0.135)  # no site: local runs
