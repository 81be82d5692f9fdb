"""The vLLM backend's engine arguments, checked without vLLM: tensor parallelism over the job's
GPUs, LoRA served up to rank 512, larger adapters merged into the weights first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pd.errors import ConfigError
from pd.generate.vllm_backend import engine_plan
from pd.merge import MERGED_META
from pd.models import get_spec, load_model, model_folder
from pd.train.lora import attach_lora


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _adapter(folder: Path, rank: int) -> Path:
    spec = get_spec("tiny-llama")
    model = attach_lora(load_model(spec, device="cpu", dtype=torch.float32), rank=rank, alpha=2.0 * rank)
    model.save_pretrained(folder)
    return folder


def test_rank_1024_on_four_gpus_is_merged_and_tensor_parallel(cache):
    spec = get_spec("tiny-llama")
    plan = engine_plan(spec, _adapter(cache / "r1024", 1024), gpus=4, max_model_len=4096,
                       gpu_memory_utilization=0.9)
    assert plan.engine["tensor_parallel_size"] == 4
    assert plan.lora_path is None and "enable_lora" not in plan.engine and "max_lora_rank" not in plan.engine
    merged = Path(plan.engine["model"])
    assert merged != Path(model_folder(spec)) and merged.is_relative_to(cache / "cache" / "merged")
    meta = json.loads((merged / MERGED_META).read_text())
    assert meta["rank"] == 1024 and meta["base"] == "tiny-llama"
    assert plan.engine["max_model_len"] == 4096 and plan.engine["gpu_memory_utilization"] == 0.9
    assert plan.engine["dtype"] == "float32"  # tiny-llama's fixed precision


@pytest.mark.parametrize("rank, served", [(16, 16), (20, 32), (512, 512)])
def test_small_ranks_are_served_as_lora(cache, rank, served):
    spec = get_spec("tiny-llama")
    folder = _adapter(cache / f"r{rank}", rank)
    plan = engine_plan(spec, folder, gpus=1)
    assert plan.lora_path == str(folder)
    assert plan.engine["enable_lora"] is True and plan.engine["max_lora_rank"] == served
    assert plan.engine["model"] == model_folder(spec) and plan.engine["tensor_parallel_size"] == 1


def test_no_adapter_and_bad_gpu_count(cache):
    spec = get_spec("tiny-llama")
    plan = engine_plan(spec, None, gpus=2)
    assert plan.lora_path is None and plan.engine["tensor_parallel_size"] == 2
    with pytest.raises(ConfigError, match="at least one GPU"):
        engine_plan(spec, None, gpus=0)
