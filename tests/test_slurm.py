"""The Snakemake profiles end to end: profiles/local, and profiles/slurm on a real cluster.

The SLURM tests need a running cluster (as root: ``.ci/slurm-up.sh``). Without one they
skip, or fail when ``PD_REQUIRE_SLURM=1`` (CI sets it): the ``slurm_cluster`` fixture in
conftest.py. They run the smoke workflow in tests/fixtures/smoke; ``run_workflow`` and
``slurm_profile`` take the workflow, targets, config and site as parameters so the real
Snakefile can be run the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pd.io import read_json
from pd.pipeline.resources import job_resources, load_site

sys.path.insert(0, str(Path(__file__).parent))
from test_train_processes import write_answers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "tests/fixtures/smoke/Snakefile"
CI_SITE = REPO / "tests/fixtures/smoke/site-ci.yaml"
# Fast status checks for tests; users keep the profile's value. MinJobAge (600 s in
# .ci/slurm-up.sh) stays far above 3 x this, so squeue still sees finished jobs.
FAST_SLURM = ("--slurm-init-seconds-before-status-checks", "2")


# --------------------------------------------------------------------------- helpers


def run_workflow(
    workdir: Path,
    profile: Path,
    *,
    snakefile: Path = SMOKE,
    targets: tuple[str, ...] = (),
    config: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """Run ``snakemake --profile`` on a workflow in ``workdir``, killed after ``timeout`` s.

    ``timeout -s KILL``: a Snakemake that waits on a job it never sees finish ignores
    SIGTERM. Output (stdout and stderr together) is in ``.stdout``.
    """
    cmd = ["timeout", "-s", "KILL", str(timeout), sys.executable, "-m", "snakemake",
           "--snakefile", str(snakefile), "--directory", str(workdir), "--profile", str(profile),
           *extra]
    if config:
        cmd += ["--config", *(f"{k}={v}" for k, v in config.items())]
    cmd += list(targets)
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode in (-9, 124, 137):
        pytest.fail(f"snakemake was killed after {timeout} s (hung?):\n{proc.stdout[-4000:]}")
    return proc


def slurm_profile(dest: Path, site_file: Path = CI_SITE) -> Path:
    """profiles/slurm copied to ``dest`` with its site.yaml replaced: what a user does."""
    shutil.copytree(REPO / "profiles/slurm", dest)
    shutil.copyfile(site_file, dest / "site.yaml")
    return dest


def slurmctld_log() -> Path:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20, check=True).stdout
    match = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)", out, re.M)
    assert match, "scontrol show config names no SlurmctldLogFile"
    return Path(match.group(1))


def submitted_ids(log: Path) -> set[str]:
    """Job ids slurmctld logged as submitted through sbatch."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return set(re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", text))


def squeue_all() -> dict[str, dict[str, str]]:
    """Every job squeue still knows (finished ones for MinJobAge seconds), by id."""
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T|%m|%l|%P|%C"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    jobs = {}
    for line in out.splitlines():
        jid, state, mem, limit, partition, cpus = line.split("|")
        jobs[jid] = {"state": state, "mem": mem, "limit": limit, "partition": partition, "cpus": cpus}
    return jobs


def megabytes(mem: str) -> int:
    """squeue's memory (e.g. 2700M, 2G) in MB as sbatch --mem counts them (1G = 1024M)."""
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}
    return round(float(mem[:-1]) * scale[mem[-1]]) if mem[-1] in scale else int(mem)


def minutes(limit: str) -> int:
    """squeue's time limit ([D-]HH:MM:SS or MM:SS) in minutes."""
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


# --------------------------------------------------------------------------- local


@pytest.mark.slow
def test_local_profile_runs_smoke_and_second_run_is_noop(tmp_path):
    first = run_workflow(tmp_path, REPO / "profiles/local")
    assert first.returncode == 0, first.stdout[-4000:]
    parts = [read_json(tmp_path / f"smoke/part_{i}.json") for i in (1, 2, 3)]
    assert [p["part"] for p in parts] == [1, 2, 3]
    assert all(p["slurm_job_id"] is None for p in parts)  # ran as local processes
    # resources reached the job from pd.pipeline.resources: questions, 135M, CPU, attempt 1:
    # 2 GB + 1.2 x 0.54 GB = 2.648 GB -> 2700 MB; 60 min x 0.27 = 16.2 -> 17 min
    assert {(p["mem_mb"], p["runtime"], p["cpus_per_task"]) for p in parts} == {(2700, 17, 4)}
    assert read_json(tmp_path / "smoke/summary.json")["parts"] == [1, 2, 3]

    second = run_workflow(tmp_path, REPO / "profiles/local")
    assert second.returncode == 0, second.stdout[-4000:]
    assert "Nothing to be done" in second.stdout


# --------------------------------------------------------------------------- SLURM


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_profile_runs_smoke_through_sbatch(tmp_path, slurm_cluster):
    profile = slurm_profile(tmp_path / "profile")
    workdir = tmp_path / "run"
    workdir.mkdir()
    log = slurmctld_log()
    before = submitted_ids(log)

    first = run_workflow(workdir, profile, extra=FAST_SLURM)
    assert first.returncode == 0, first.stdout[-4000:]

    parts = [read_json(workdir / f"smoke/part_{i}.json") for i in (1, 2, 3)]
    summary = read_json(workdir / "smoke/summary.json")
    part_ids = [p["slurm_job_id"] for p in parts]
    ids = part_ids + [summary["slurm_job_id"]]
    assert all(i and i.isdigit() for i in ids), f"outputs without a SLURM job id: {ids}"
    assert len(set(ids)) == 4, f"each job should run as its own SLURM job: {ids}"
    assert summary["part_job_ids"] == part_ids

    # slurmctld saw exactly these submissions from this run
    assert submitted_ids(log) - before == set(ids)
    queue = squeue_all()
    for jid in ids:
        assert queue.get(jid, {}).get("state") == "COMPLETED", f"job {jid}: {queue.get(jid)}"

    # The site file in the profile reached sbatch: partition, runtime cap, memory per kind.
    site = load_site(CI_SITE)
    want_part = job_resources("questions", 0.135, site=site)
    want_summary = job_resources("report", 0.0, site=site)
    assert want_part["slurm_partition"] == "debug" and want_part["runtime"] == 10  # capped 17 -> 10
    for jid, want in [(i, want_part) for i in part_ids] + [(summary["slurm_job_id"], want_summary)]:
        job = queue[jid]
        assert job["partition"] == want["slurm_partition"]
        assert megabytes(job["mem"]) == want["mem_mb"]
        assert minutes(job["limit"]) == want["runtime"]
        assert int(job["cpus"]) == want["cpus_per_task"]

    second = run_workflow(workdir, profile, extra=FAST_SLURM)
    assert second.returncode == 0, second.stdout[-4000:]
    assert "Nothing to be done" in second.stdout
    assert submitted_ids(log) - before == set(ids), "the second run submitted jobs"


# --------------------------------------------------------------------------- training processes


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_training_cell_with_two_processes_runs_in_one_job(tmp_path, slurm_cluster):
    """The real Snakefile through profiles/slurm: a PD cell with ``processes: 2`` trains in two processes
    inside one SLURM job, and its adapter equals the one-process adapter with the same global batch."""
    import torch
    import yaml
    from safetensors.torch import load_file

    from pd.config import load_config
    from pd.pipeline.paths import log_file
    from pd.pipeline.plan import build_plan
    from pd.train.launch import rank_log

    # The CI site, with one CPU per process: the two-process job asks SLURM for two.
    site = yaml.safe_load(CI_SITE.read_text())
    site["slurm_site"].update(cpus_per_task=1, max_cpus_per_task=2)
    site_file = tmp_path / "site-ci.yaml"
    site_file.write_text(yaml.safe_dump(site))
    profile = slurm_profile(tmp_path / "profile", site_file)
    training = {"rank": 8, "lr": 5e-3, "epochs": 2, "warmup_epochs": 0, "warmup_steps": 0, "chunk_size": 8,
                "min_steps": 0}  # a run of a few steps, whatever the tiny model writes
    cell = {"grid": {"model": ["tiny-llama"], "method": ["pd"], "dataset": ["tiny-nyt"], "retrieval": ["none"],
                     "seed": [0]}, "graders": ["substring"]}
    cfg = {"run": ["two", "one"], "results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports"),
           "datasets": {"tiny-nyt": {"loader": "squadshifts", "subset": "nyt", "passages": 2}},
           "experiments": {"two": {**cell, "training": {**training, "processes": 2, "batch_size": 4}},
                           "one": {**cell, "training": {**training, "batch_size": 4}}}}
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    plan = build_plan(load_config(yaml.safe_load((REPO / "config.yaml").read_text()), {**cfg, **site}))
    adapters = {a.spec.training.get("processes", 1): a for a in plan.of_kind("adapter")}
    assert sorted(adapters) == [1, 2] and adapters[1].spec.answers == adapters[2].spec.answers
    two, one = Path(adapters[2].path), Path(adapters[1].path)
    # The training data is given (questions, then answers: up to date for Snakemake), not generated: a random
    # tiny model's questions are mostly rejected, and the comparison needs a row count that fills every step.
    (questions,) = plan.of_kind("questions")
    Path(questions.path).parent.mkdir(parents=True)
    Path(questions.path).write_text("")
    os.utime(questions.path, (time.time() - 60,) * 2)  # older than the answers
    write_answers(adapters[1].spec)

    done = run_workflow(tmp_path, profile, snakefile=REPO / "Snakefile", targets=(str(two), str(one)),
                        extra=("--configfile", str(cfg_file), str(profile / "site.yaml"), *FAST_SLURM), timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:]

    log = Path(log_file(str(two)))
    lines = [re.search(r"SLURM job (\S+): rank (\d) of world size (\d+)", rank_log(log, r).read_text()) for r in (0, 1)]
    assert all(lines), f"rank lines missing in {log}(.rank1)"
    (job0, rank0, world0), (job1, rank1, world1) = (m.groups() for m in lines)
    assert job0 == job1 and job0.isdigit(), f"ranks ran in SLURM jobs {job0} and {job1}"
    assert (rank0, rank1, world0, world1) == ("0", "1", "2", "2")
    assert f"SLURM job {job0} on " in log.read_text()  # the job's own line: the launcher ran in that job too
    job = squeue_all().get(job0, {})
    assert job.get("state") == "COMPLETED", f"job {job0}: {job}"
    assert int(job["cpus"]) == 2 == job_resources("adapter", 0.0, site=load_site(site_file), processes=2)[
        "cpus_per_task"]
    job_one = re.search(r"SLURM job (\d+) on ", Path(log_file(str(one))).read_text()).group(1)
    assert job_one != job0 and int(squeue_all()[job_one]["cpus"]) == 1  # one CPU per process

    meta2, meta1 = (json.loads((p / "pd_meta.json").read_text()) for p in (two, one))
    assert (meta2["world_size"], meta1["world_size"]) == (2, 1)
    assert meta2["steps"] == meta1["steps"] == 4  # 8 rows / 4 per optimizer step x 2 epochs
    a, b = load_file(str(two / "adapter_model.safetensors")), load_file(str(one / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    assert max(float(v.abs().max()) for k, v in b.items() if "lora_B" in k) > 1e-3
    for k in a:  # tests/test_train_fsdp.py's tolerance
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
