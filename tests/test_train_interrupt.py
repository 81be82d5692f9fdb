"""Training that outlives its job: checkpoints by wall clock, and a checkpoint on SIGTERM before the run stops."""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pd.data import Dataset, Document
from pd.errors import PDError, TrainingInterrupted
from pd.train.checkpoint import checkpoints
from pd.train.interrupt import CheckpointClock, StopSignal
from pd.train.loop import train
from pd.train.settings import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_train import PASSAGES, ROWS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset():
    return Dataset("toy", {k: Document(k, v) for k, v in PASSAGES.items()}, [])


def _cfg(**kw):
    base = dict(method="pd", rank=8, lr=5e-3, epochs=3, warmup_epochs=0, batch_size=4, micro_batch_size=2,
                lora_dropout=0.1, warmup_steps=2, progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def _adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def _step_of(folder: Path) -> int:
    return int(folder.name.split("-")[1])


def _sigterm_after_first_log_line(log: Path) -> threading.Thread:
    """SIGTERM to this process as soon as ``log`` has a line: the run is then in its second step or later."""

    def watch():
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if log.is_file() and log.read_text().strip():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_sigterm_saves_a_checkpoint_and_the_rerun_ends_with_the_uninterrupted_adapter(tiny_llama, dataset, tmp_path):
    cfg = _cfg(epochs=6)  # 12 optimizer steps of 4 rows (2 micro-batches of 2)
    kw = dict(rows=ROWS, dataset=dataset, device="cpu")
    full = train(cfg, tiny_llama.spec, tmp_path / "full", **kw)
    assert full.steps == 12
    before = signal.getsignal(signal.SIGTERM)

    watcher = _sigterm_after_first_log_line(tmp_path / "cut.work" / "train_log.jsonl")
    with pytest.raises(TrainingInterrupted) as err:
        train(cfg, tiny_llama.spec, tmp_path / "cut", **kw)
    watcher.join(5)
    assert signal.getsignal(signal.SIGTERM) is before  # the loop's handler is gone again
    (ckpt,) = checkpoints(tmp_path / "cut.work")
    step = _step_of(ckpt)
    assert 1 <= step < 12
    msg = str(err.value)
    assert isinstance(err.value, PDError) and "SIGTERM" in msg and f"after step {step} of 12" in msg
    assert str(tmp_path / "cut.work" / "checkpoints") in msg and "\n" not in msg
    assert not (tmp_path / "cut").exists()
    logged = [json.loads(x)["step"] for x in (tmp_path / "cut.work" / "train_log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, step + 1))  # it stopped at the end of the step it was in

    resumed = train(cfg, tiny_llama.spec, tmp_path / "cut", **kw)
    assert resumed.meta["resumed_from_step"] == step and resumed.steps == 12
    a, b = _adapter(tmp_path / "full"), _adapter(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_minutes_saves_by_wall_clock_and_does_not_bind_the_resume(tiny_llama, dataset, tmp_path):
    kw = dict(rows=ROWS, dataset=dataset, device="cpu")
    # 0: no checkpoint at all (kept ones would show).
    train(_cfg(epochs=2, keep_checkpoints=True), tiny_llama.spec, tmp_path / "off", **kw)
    assert checkpoints(tmp_path / "off.work") == []
    # A period shorter than any step: a checkpoint after every step but the last (the adapter is written then).
    train(_cfg(epochs=2, keep_checkpoints=True, checkpoint_minutes=1e-9), tiny_llama.spec, tmp_path / "on", **kw)
    assert [_step_of(c) for c in checkpoints(tmp_path / "on.work")] == [1, 2, 3]
    # A period longer than the run: none.
    train(_cfg(epochs=2, keep_checkpoints=True, checkpoint_minutes=60), tiny_llama.spec, tmp_path / "long", **kw)
    assert checkpoints(tmp_path / "long.work") == []

    # The setting is bookkeeping: a run without it resumes from a checkpoint written with it, and the adapter is
    # the uninterrupted run's.
    cut = _cfg(epochs=2, checkpoint_minutes=1e-9)
    assert train(cut, tiny_llama.spec, tmp_path / "cut", stop_after=2, **kw).adapter_dir is None
    resumed = train(_cfg(epochs=2), tiny_llama.spec, tmp_path / "cut", **kw)
    assert resumed.meta["resumed_from_step"] == 2
    a, b = _adapter(tmp_path / "off"), _adapter(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_clock_and_stop_signal():
    clock = CheckpointClock(0)
    assert not clock.due()
    clock = CheckpointClock(0.5 / 60)  # half a second
    assert not clock.due()
    time.sleep(0.6)
    assert clock.due()
    clock.reset()
    assert not clock.due()

    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignal().install()
    try:
        assert stop.received is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.received == signal.SIGTERM
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_checkpoint_minutes_must_not_be_negative():
    with pytest.raises(PDError, match=r"training\.checkpoint_minutes must be >= 0"):
        _cfg(checkpoint_minutes=-1)


@pytest.mark.slow
def test_sigterm_to_a_launched_job_checkpoints_every_rank_at_one_step_and_the_retry_resumes(tmp_path, monkeypatch):
    """An adapter job with two training processes (torchrun, gloo): SIGTERM to the job's process reaches the ranks,
    which save one checkpoint at the same step and fail the job with TrainingInterrupted; the job run again
    resumes from it."""
    import subprocess

    from test_train_processes import adapter_spec, write_answers

    from pd.pipeline.run import run_job

    spec, path = adapter_spec(tmp_path, processes=2, batch_size=4, epochs=10)
    write_answers(spec)
    work = Path(path + ".work")
    job = ("import json, sys; from pd.pipeline.run import run_job; "
           "run_job('adapter', json.loads(sys.argv[1]), [sys.argv[2]], [sys.argv[3]], threads=2)")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-c", job, json.dumps(spec.as_dict()), path, str(tmp_path / "1.log")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 240
        while not ((work / "train_log.jsonl").is_file() and (work / "train_log.jsonl").read_text().strip()):
            assert proc.poll() is None and time.monotonic() < end, "the job ended before it trained a step"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # the launcher only: it must pass the signal on and wait
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "TrainingInterrupted" in out and "run the job again to resume" in out, out[-3000:]
    (ckpt,) = checkpoints(work)
    step = _step_of(ckpt)
    assert not Path(path).exists() and step >= 1

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # run_job sets it for the job: restored after the test
    run_job("adapter", spec.as_dict(), [path], [str(tmp_path / "2.log")], threads=2)
    meta = json.loads((Path(path) / "pd_meta.json").read_text())
    assert meta["world_size"] == 2 and meta["resumed_from_step"] == step
    assert meta["steps"] == meta["total_steps"] > step


def test_an_adapter_job_takes_the_sites_checkpoint_minutes_unless_its_config_sets_them(tmp_path, monkeypatch):
    from test_train_processes import adapter_spec, write_answers

    from pd.pipeline.run import run_job

    site_default, path = adapter_spec(tmp_path / "a")
    configured, path2 = adapter_spec(tmp_path / "b", checkpoint_minutes=0)
    assert "checkpoint_minutes" not in site_default.training  # no adapter's identity holds it unless configured
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PD_CHECKPOINT_MINUTES", "0.5")  # what a SLURM site's Snakemake exports to its jobs
    for spec, out in ((site_default, path), (configured, path2)):
        write_answers(spec)
        run_job("adapter", spec.as_dict(), [out], [str(Path(out).parent / "job.log")], threads=1)
    metas = [json.loads((Path(p) / "pd_meta.json").read_text()) for p in (path, path2)]
    minutes = [m["config"]["checkpoint_minutes"] for m in metas]
    assert minutes == [0.5, 0.0]
    monkeypatch.setenv("PD_CHECKPOINT_MINUTES", "later")
    with pytest.raises(SystemExit) as err:  # a user's mistake: one line in the job's log, exit status 2
        run_job("adapter", site_default.as_dict(), [path + "-x"], [str(tmp_path / "x.log")], threads=1)
    assert err.value.code == 2 and "PD_CHECKPOINT_MINUTES" in (tmp_path / "x.log").read_text()
