"""Data-parallel training on CPU: two gloo processes sharing the global batch 4, each accumulating two micro-batches
of one row, equal one process with the whole batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pd.data import Dataset, Document
from pd.train.launch import free_port
from pd.train.loop import train
from pd.train.settings import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_train import PASSAGES, ROWS  # noqa: E402

WORKER = Path(__file__).parent / "ddp_worker.py"


_free_port = free_port  # tests/test_train_fsdp.py imports it from here


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_global_batch(tiny_llama, tmp_path):
    common = dict(method="pd", rank=8, lr=5e-3, epochs=2, warmup_epochs=0, progress=False, seed=0)
    spec = {"passages": PASSAGES, "rows": ROWS, "config": dict(common, batch_size=4, micro_batch_size=1)}
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), str(WORKER), str(tmp_path / "ddp"), json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_meta = json.loads((tmp_path / "ddp" / "pd_meta.json").read_text())
    assert ddp_meta["world_size"] == 2 and ddp_meta["steps"] == 4  # 8 rows / 4 per step x 2 epochs
    assert (ddp_meta["layout"]["micro_batch"], ddp_meta["layout"]["grad_accum"]) == (1, 2)  # gradients synced once

    ds = Dataset("toy", {k: Document(k, v) for k, v in PASSAGES.items()}, [])
    single = train(TrainConfig(**common, batch_size=4), tiny_llama.spec, tmp_path / "one", rows=ROWS, dataset=ds,
                   device="cpu")
    assert single.meta["world_size"] == 1 and single.steps == 4
    a = load_file(str(tmp_path / "ddp" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    moved = max(float(v.abs().max()) for k, v in b.items() if "lora_B" in k)
    assert moved > 1e-3  # training moved B away from its zero init
    # Accumulating, then averaging the two processes' gradients is the same as one batch of all four rows (up to
    # float order).
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-4)
    la = [json.loads(x)["loss"] for x in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-3)  # KL values ~1e-4: float32 noise is ~1e-8 absolute
