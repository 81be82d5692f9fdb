"""The Snakemake profiles end to end: profiles/local, and profiles/slurm on a real cluster.

The SLURM tests need a running cluster (as root: ``.ci/slurm-up.sh``). Without one they
skip, or fail when ``PD_REQUIRE_SLURM=1`` (CI sets it): the ``slurm_cluster`` fixture in conftest.py. They run the smoke workflow in
tests/fixtures/smoke; ``run_workflow`` and ``slurm_profile`` take the workflow, targets,
config and site as parameters so the real Snakefile can be run the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pd.io import read_json
from pd.resources import job_resources, load_site

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
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
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
    # resources reached the job from pd.resources: questions, 135M, CPU, attempt 1:
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
