"""A training job that outlives its SLURM job: killed in training, resubmitted, it resumes from its checkpoint.

The real Snakefile through profiles/slurm on the local cluster (``.ci/slurm-up.sh``; without one the
test skips, or fails with ``PD_REQUIRE_SLURM=1``). The site sets ``checkpoint_minutes: 0.05``: the adapter
job checkpoints every 3 s. Once its first checkpoint is on disk the test sends the job what adapter jobs are
submitted to get ahead of their time limit (``sbatch --signal=TERM@s``, :func:`pd.pipeline.resources.term_signal`):
SIGTERM to every process of the job's steps (``scancel --signal=TERM``). The training process saves a
checkpoint at the end of its step and exits; Snakemake resubmits the job (``restart-times``), which resumes
from that checkpoint and ends with the adapter an uninterrupted run of the same job gives.

A real time limit is not waited for here (SLURM's shortest is a minute, and it signals about a minute
late): it sends the same SIGTERM to the steps (and the batch shell), and SIGKILL ``KillWait`` seconds later.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from test_slurm import CI_SITE, FAST_SLURM, REPO, slurm_profile, squeue_all  # noqa: E402
from test_train_processes import write_answers  # noqa: E402


@pytest.mark.slurm
@pytest.mark.slow
def test_a_training_job_killed_in_training_resumes_on_its_retry_and_ends_with_the_uninterrupted_adapter(
        tmp_path, slurm_cluster, one_thread):
    from pd.config import load_config
    from pd.pipeline.kinds.adapter import train_adapter
    from pd.pipeline.paths import log_file
    from pd.pipeline.plan import build_plan
    from pd.train.checkpoint import checkpoints

    site = yaml.safe_load(CI_SITE.read_text())
    site["slurm_site"].update(cpus_per_task=1, checkpoint_minutes=0.05)  # one thread, as this process trains
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    profile = slurm_profile(tmp_path / "profile", site_file)
    cfg = {"run": ["cut"], "results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports"),
           "datasets": {"tiny-nyt": {"loader": "squadshifts", "subset": "nyt", "passages": 2}},
           "experiments": {"cut": {
               "grid": {"model": ["tiny-llama"], "method": ["pd"], "dataset": ["tiny-nyt"], "retrieval": ["none"],
                        "seed": [0]},
               "graders": ["substring"],
               # 8 training rows, 2 steps an epoch: 120 steps, some seconds of training on one core
               "training": {"rank": 8, "lr": 1e-3, "epochs": 60, "warmup_epochs": 0, "warmup_steps": 0,
                            "batch_size": 4, "chunk_size": 8, "lora_dropout": 0.1}}}}
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    plan = build_plan(load_config(yaml.safe_load((REPO / "config.yaml").read_text()), {**cfg, **site}))
    (adapter,) = plan.of_kind("adapter")
    assert "checkpoint_minutes" not in adapter.spec.training  # the site's value reaches the job, not its identity
    (questions,) = plan.of_kind("questions")
    Path(questions.path).parent.mkdir(parents=True)
    Path(questions.path).write_text("")
    os.utime(questions.path, (time.time() - 60,) * 2)  # older than the answers: Snakemake leaves both be
    write_answers(adapter.spec)
    out, work, log = Path(adapter.path), Path(adapter.path + ".work"), Path(log_file(adapter.path))

    cmd = ["timeout", "-s", "KILL", "900", sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--profile", str(profile), "--configfile", str(cfg_file), str(site_file),
           *FAST_SLURM, str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("PD_CHECKPOINT_MINUTES", None)
    snakemake = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 300
        while not checkpoints(work):
            assert snakemake.poll() is None, f"snakemake ended before a checkpoint:\n{snakemake.stdout.read()[-4000:]}"
            assert time.monotonic() < end, "no checkpoint after 300 s"
            time.sleep(0.05)
        first = re.search(r"SLURM job (\d+) on ", log.read_text()).group(1)
        subprocess.run(["scancel", "--signal=TERM", first], check=True, timeout=30)
        output, _ = snakemake.communicate(timeout=900)
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
    assert snakemake.returncode == 0, output[-4000:]

    job_log = log.read_text()
    second = re.search(r"SLURM job (\d+) on ", job_log).group(1)  # the log is the last attempt's
    queue = squeue_all()
    assert second != first and queue[second]["state"] == "COMPLETED", queue.get(second)
    assert queue.get(first, {}).get("state") in ("FAILED", "CANCELLED"), queue.get(first)
    # The killed attempt saved a checkpoint at the end of the step SIGTERM came in and stopped (its SLURM log);
    # the retry resumed from that checkpoint.
    (first_log,) = tmp_path.glob(f".snakemake/slurm_logs/**/{first}.log")
    stopped = re.search(r"training stopped by SIGTERM after step (\d+) of 120",
                        first_log.read_text(errors="replace"))
    assert stopped, first_log.read_text(errors="replace")[-4000:]
    meta = json.loads((out / "pd_meta.json").read_text())
    assert meta["resumed_from_step"] == int(stopped.group(1)) and meta["steps"] == meta["total_steps"] == 120
    assert meta["config"]["checkpoint_minutes"] == 0.05  # the site's value, exported to the job
    assert "resumed from" in job_log and not work.exists()

    # The same job, uninterrupted, in this process.
    train_adapter(adapter.spec, str(tmp_path / "uninterrupted"))
    a, b = load_file(str(out / "adapter_model.safetensors")), load_file(str(tmp_path / "uninterrupted" /
                                                                           "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and max(float(v.abs().max()) for k, v in b.items() if "lora_B" in k) > 1e-3
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
