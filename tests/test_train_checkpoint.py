"""Checkpoints hold tensors and plain values only: a crafted file cannot run code on resume."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pd.data import Dataset, Document
from pd.errors import CheckpointError, PDError
from pd.train.checkpoint import checkpoints, rng_state, set_rng_state
from pd.train.loop import train
from pd.train.settings import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_train import PASSAGES, ROWS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class _Payload:
    """Unpickling this object runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _draws() -> tuple:
    return random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn()), float(torch.rand(1))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached second gaussian in python's generator
    np.random.randn()  # and in numpy's
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = _draws()
    _draws()  # move every generator on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


@pytest.mark.parametrize("name", ["state.pt", "optimizer.pt"])
def test_crafted_checkpoint_file_is_refused_and_runs_nothing(name, tiny_llama, tmp_path):
    # Without the restriction the payload runs: the check below can fail.
    probe = tmp_path / "probe.pt"
    torch.save({"x": _Payload(tmp_path / "probe-ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-ran").read_text() == "ran"

    ds = Dataset("toy", {k: Document(k, v) for k, v in PASSAGES.items()}, [])
    cfg = TrainConfig(method="pd", rank=4, lr=5e-3, epochs=2, warmup_epochs=0, batch_size=4, progress=False, seed=0)
    kw = dict(rows=ROWS, dataset=ds, device="cpu")
    assert train(cfg, tiny_llama.spec, tmp_path / "a", stop_after=1, **kw).adapter_dir is None
    (folder,) = checkpoints(tmp_path / "a.work")
    marker = tmp_path / "payload-ran"
    torch.save({"step": 1, "x": _Payload(marker)}, folder / name)
    with pytest.raises(CheckpointError) as err:
        train(cfg, tiny_llama.spec, tmp_path / "a", **kw)
    assert not marker.exists()
    msg = str(err.value)
    assert isinstance(err.value, PDError) and "\n" not in msg
    assert str(folder / name) in msg and "delete" in msg
    assert not (tmp_path / "a").exists()  # nothing was trained from it
