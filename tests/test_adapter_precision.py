"""Adapters are stored in the training precision: bfloat16 for a bfloat16 model (half the size), float32 else."""

from __future__ import annotations

import dataclasses

import pytest
from safetensors import safe_open

from pd.data import Dataset, Document
from pd.train.loop import train
from pd.train.settings import TrainConfig

ROWS = [{"id": f"q{i}", "doc_id": "d", "question": q, "answer": a, "finish_reason": "stop"}
        for i, (q, a) in enumerate([("Where is the bakery?", "In Queens."), ("What does it sell?", "Rye bread.")])]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_adapter_is_stored_in_the_training_precision(tiny_llama, tmp_path, dtype, one_thread):
    ds = Dataset("toy", {"d": Document("d", "A small bakery in Queens sells rye bread.")}, [])
    cfg = TrainConfig(method="sft", rank=4, lr=1e-3, epochs=1, warmup_epochs=0, batch_size=2, progress=False)
    res = train(cfg, dataclasses.replace(tiny_llama.spec, dtype=dtype), tmp_path / "a", rows=ROWS, dataset=ds,
                device="cpu")
    path = res.adapter_dir / "adapter_model.safetensors"
    with safe_open(str(path), "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}
        n = sum(f.get_tensor(k).numel() for k in f.keys())
    assert dtypes == {f"torch.{dtype}"}
    bytes_per = 2 if dtype == "bfloat16" else 4
    assert n * bytes_per < path.stat().st_size < n * bytes_per + 20_000  # the tensors plus the header
