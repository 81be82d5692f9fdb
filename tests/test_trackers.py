"""training.log_with: the step log handed to TensorBoard through accelerate, read back from the event files."""

from __future__ import annotations

import json
import sys

import pytest

from pd.data import Dataset, Document
from pd.errors import ConfigError
from pd.train.loop import LOG_FILE, train
from pd.train.settings import TrainConfig, spec_defaults
from pd.train.trackers import check_trackers

pytestmark = pytest.mark.usefixtures("one_thread")

DOC = "A small bakery in Queens sells about three hundred loaves of rye bread every Saturday morning."
QA = [("Where is the bakery?", "The bakery is in Queens."), ("What does the bakery sell?", "Rye bread."),
      ("When does it sell the most?", "On Saturday mornings."), ("How many loaves?", "About three hundred.")]


def _rows():
    return [{"id": f"q{i}", "doc_id": "d", "question": q, "answer": a, "finish_reason": "stop"}
            for i, (q, a) in enumerate(QA)]


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_the_step_log(tiny_llama, tmp_path):
    """Every train_log.jsonl line's loss and KL reach TensorBoard at its step; the trackers' folder outlives the
    work folder's checkpoints."""
    pytest.importorskip("tensorboard")
    ds = Dataset("toy", {"d": Document("d", DOC)}, [])
    cfg = TrainConfig(method="pd", rank=4, lr=1e-3, epochs=3, warmup_epochs=0, batch_size=2, progress=False,
                      log_with=["tensorboard"])
    out = tmp_path / "adapter"
    train(cfg, tiny_llama.spec, out, rows=_rows(), dataset=ds, device="cpu")
    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    work = tmp_path / "adapter.work"
    assert sorted(p.name for p in work.iterdir()) == ["trackers"]  # checkpoints and the rest removed
    scalars = _scalars(work / "trackers" / "adapter")
    for key in ("loss", "kl", "lr", "grad_norm"):
        assert sorted(scalars[key]) == [r["step"] for r in log]
        for r in log:
            assert scalars[key][r["step"]] == pytest.approx(r[key], rel=1e-6, abs=1e-9), (key, r["step"])


def test_no_trackers_by_default_and_unknown_ones_refused(tiny_llama, tmp_path):
    assert TrainConfig().log_with is None and "log_with" not in spec_defaults()  # adapters keep their hashes
    with pytest.raises(ConfigError, match="log_with"):
        TrainConfig(log_with=["neptune"])
    ds = Dataset("toy", {"d": Document("d", DOC)}, [])
    cfg = TrainConfig(method="sft", rank=4, epochs=1, warmup_epochs=0, batch_size=4, progress=False)
    train(cfg, tiny_llama.spec, tmp_path / "a", rows=_rows(), dataset=ds, device="cpu")
    assert not (tmp_path / "a.work").exists()


def test_missing_tracker_package_is_named(monkeypatch):
    for name in ("wandb", "mlflow"):  # the dev extra installs both: each made unimportable, as where it is missing
        with monkeypatch.context() as mp:
            mp.setitem(sys.modules, name, None)
            with pytest.raises(ConfigError, match=f"{name} not installed.*pip install {name}"):
                check_trackers([name])
    check_trackers(None)
