"""training.processes: the adapter stage launches its training processes itself (torchrun, gloo on a CPU).

The adapter job of a real plan (tests/configs/tiny-train.yaml's PD cell on tiny-llama), run
through :func:`pd.pipeline.run.run_job` as the workflow runs it: with ``processes: 2`` it trains in
two processes that share the global batch (``batch_size``) and whose averaged gradients equal
one process's gradient on it, so its adapter equals the one-process adapter (to float
rounding); each rank logs its SLURM job, rank and world size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pd.config import load_config
from pd.errors import ConfigError
from pd.io import write_jsonl
from pd.pipeline.plan import build_plan
from pd.pipeline.run import run_job
from pd.train.launch import rank_log, resolve_processes
from pd.train.settings import TrainConfig, spec_defaults

ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = ROOT / "tests" / "configs" / "tiny-train.yaml"
# As tests/test_train_fsdp.py: chunk_size 8 gives several loss chunks per batch.
TRAINING = {"rank": 8, "lr": 5e-3, "epochs": 2, "warmup_epochs": 0, "warmup_steps": 0, "chunk_size": 8}


def adapter_spec(folder: Path, **training):
    """The PD adapter job of the tiny training grid with ``training`` on top, from a real plan."""
    raw = yaml.safe_load(TINY_TRAIN.read_text())
    exp = raw["experiments"]["tiny_train"]
    exp["grid"]["method"] = ["pd"]
    exp["capability"] = False
    exp["training"].update(TRAINING, **training)
    raw.update(results_dir=str(folder / "results"), reports_dir=str(folder / "reports"))
    plan = build_plan(load_config(yaml.safe_load((ROOT / "config.yaml").read_text()), raw))
    (art,) = plan.of_kind("adapter")
    return art.spec, art.path


def write_answers(spec, n: int = 9) -> None:
    """``n`` answer rows about the dataset's passages at the spec's answers path (one question each).

    One of the nine questions is held out (heldout_fraction 0.1), so eight rows train: two optimizer
    steps per epoch with a global batch of four.
    """
    docs = list(spec.load_dataset().documents.values())
    rows = []
    for i in range(n):
        words = docs[i % len(docs)].text.split()
        rows.append({"id": f"a{i}", "question_id": f"q{i}", "doc_id": docs[i % len(docs)].id,
                     "question": f"What does the passage say after '{words[i]}'?",
                     "answer": " ".join(words[i + 1:i + 7]), "finish_reason": "stop"})
    write_jsonl(spec.answers, rows)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The adapter stage with the global batch 4 on 2 processes (DDP and FSDP) and on 1, on the same answers."""
    folder = tmp_path_factory.mktemp("processes")
    threads = os.environ.get("OMP_NUM_THREADS")
    out = {}
    for name, training in (("two", {"processes": 2, "batch_size": 4}), ("one", {"batch_size": 4}),
                           ("fsdp", {"processes": 2, "batch_size": 4, "parallel": "fsdp"})):
        spec, path = adapter_spec(folder, **training)
        write_answers(spec)
        log = folder / f"{name}.log"
        run_job("adapter", spec.as_dict(), [path], [str(log)], threads=1)
        out[name] = (spec, Path(path), log)
    if threads is None:  # run_job set it for the job; the test process keeps its own
        os.environ.pop("OMP_NUM_THREADS", None)
    return out


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_global_batch(two_runs, one_thread):
    (spec2, two, _), (spec1, one, _) = two_runs["two"], two_runs["one"]
    assert spec2.answers == spec1.answers  # the same training data
    m2, m1 = (json.loads((p / "pd_meta.json").read_text()) for p in (two, one))
    assert (m2["world_size"], m1["world_size"]) == (2, 1)
    assert m2["steps"] == m1["steps"] == 4  # 8 rows / 4 per optimizer step x 2 epochs
    a, b = (load_file(str(p / "adapter_model.safetensors")) for p in (two, one))
    assert sorted(a) == sorted(b)
    assert max(float(v.abs().max()) for k, v in b.items() if "lora_B" in k) > 1e-3  # B moved off its zero init
    for k in a:  # tests/test_train_fsdp.py's tolerance: float summation order only
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    # Rank 0 wrote the held-out KL; the base model's "before" does not depend on the processes.
    h2, h1 = (json.loads((p / "heldout.json").read_text()) for p in (two, one))
    assert h2["n_heldout"] == h1["n_heldout"] == 1
    assert h2["before"] == pytest.approx(h1["before"], rel=1e-5)
    assert h2["after"] == pytest.approx(h1["after"], rel=1e-3)
    assert m2["heldout_kl"] == h2 and m2["workflow_spec"]["training"]["processes"] == 2


@pytest.mark.slow
def test_two_sharded_processes_equal_one_process(two_runs):
    (_, fsdp, _), (_, one, _) = two_runs["fsdp"], two_runs["one"]
    meta = json.loads((fsdp / "pd_meta.json").read_text())
    assert meta["world_size"] == 2 and meta["sharded"] and meta["steps"] == 4
    a, b = (load_file(str(p / "adapter_model.safetensors")) for p in (fsdp, one))
    for k in b:  # the gathered, full-size adapter
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    # The held-out "after" pass ran on the sharded model, on both ranks together.
    held, held1 = (json.loads((p / "heldout.json").read_text()) for p in (fsdp, one))
    assert held["after"] == pytest.approx(held1["after"], rel=1e-3)


@pytest.mark.slow
def test_each_rank_logs_its_job_rank_and_world_size(two_runs):
    _, _, log = two_runs["two"]
    rank0, rank1 = rank_log(log, 0).read_text(), rank_log(log, 1).read_text()
    assert rank_log(log, 1) == Path(f"{log}.rank1")
    assert "rank 0 of world size 2" in rank0 and "rank 1 of world size 2" in rank1
    assert "rank 1 of" not in rank0  # each rank to its own file
    assert "training with 2 processes" in rank0 and "adapter" in rank0.splitlines()[-1]  # the job's own lines too
    _, _, log1 = two_runs["one"]
    assert "world size" not in log1.read_text() and not Path(f"{log1}.rank1").exists()


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_with_its_error(tmp_path):
    spec, path = adapter_spec(tmp_path, processes=2, batch_size=4)
    write_answers(spec, n=0)  # an empty answers file: a user mistake every rank finds
    with pytest.raises(SystemExit) as err:  # a user's mistake: one line in the log, exit status 2
        run_job("adapter", spec.as_dict(), [path], [str(tmp_path / "job.log")], threads=1)
    assert err.value.code == 2
    assert not Path(path).exists()
    job_log = (tmp_path / "job.log").read_text()
    assert "rank 0 failed" in job_log
    (line,) = [x for x in job_log.splitlines() if "ERROR" in x and "no training rows left" in x]
    assert f"(log: {tmp_path / 'job.log'}" in line  # names the failing rank's log


def test_processes_setting():
    assert TrainConfig().processes == 1 and "processes" not in spec_defaults()  # no adapter's hash changes
    assert TrainConfig(processes="auto").processes == "auto"
    assert resolve_processes(3) == 3
    assert resolve_processes("auto") == max(1, torch.cuda.device_count())
    for bad in (0, -1, "two", 1.5):
        with pytest.raises(ConfigError, match="training.processes"):
            TrainConfig(processes=bad)


def test_resources_of_an_adapter_job_with_processes():
    from pd.pipeline.resources import job_resources
    from pd.site import Site

    site = Site(device="gpu", gpu_mem_gb=80, gpus_per_node=8, cpus_per_gpu=8)
    one = job_resources("adapter", 8.0, site=site)
    assert one["gpus"] == 1  # an 8B adapter fits one 80GB GPU
    four = job_resources("adapter", 8.0, site=site, processes=4)
    assert (four["gpus"], four["gpu"], four["cpus_per_task"]) == (4, 4, 32)  # one GPU and its CPUs per process
    assert four["mem_mb"] == 4 * one["mem_mb"]  # each process loads the weights on the host first
    big = job_resources("adapter", 70.0, site=site)["gpus"]
    assert big > 2 and job_resources("adapter", 70.0, site=site, processes=2)["gpus"] == big  # what the model needs
    assert job_resources("adapter", 8.0, site=site, processes="auto")["gpus"] == 1  # auto: the GPUs the job gets
    assert job_resources("evaluate", 8.0, site=site, processes=4) == job_resources("evaluate", 8.0, site=site)
    with pytest.raises(ConfigError, match="training.processes: 16 .* gpus_per_node=8"):
        job_resources("adapter", 8.0, site=site, processes=16)

    cpu = job_resources("adapter", 0.135, device="cpu")
    cpu2 = job_resources("adapter", 0.135, device="cpu", processes=2)
    assert cpu2["gpus"] == 0 and cpu2["cpus_per_task"] == 2 * cpu["cpus_per_task"]
    assert cpu2["mem_mb"] == pytest.approx(2 * cpu["mem_mb"], abs=100)  # rounded up to 100 MB
    assert job_resources("adapter", 0.135, device="cpu", processes="auto") == cpu  # one process on a CPU
    with pytest.raises(ConfigError, match="processes"):
        job_resources("adapter", 0.135, device="cpu", processes=0)
