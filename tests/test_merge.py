"""Adapters merged into the base weights: same logits as the unmerged adapter, cached once."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pd.merge import merged_model, vllm_can_serve
from pd.models import get_spec, load_model, load_tokenizer
from pd.train.lora import attach_lora


def _adapter(spec, folder, rank: int, seed: int = 0):
    """A LoRA adapter with random (non-zero) B matrices, saved by PEFT."""
    model = attach_lora(load_model(spec, device="cpu", dtype=torch.float32), rank=rank, alpha=2.0 * rank, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02 / rank ** 0.5)
    model.save_pretrained(folder)
    return model.eval()


def _logits(model, tok, text: str) -> torch.Tensor:
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_merged_equals_unmerged_on_a_tiny_model(cache):
    spec = get_spec("tiny-llama")
    tok = load_tokenizer(spec)
    unmerged = _adapter(spec, cache / "a", rank=16)
    want = _logits(unmerged, tok, "The Hudson river flows south.")
    base = _logits(load_model(spec, device="cpu"), tok, "The Hudson river flows south.")
    assert (want - base).abs().max() > 1e-3  # the adapter does change the function

    m32 = merged_model(spec, cache / "a", dtype="float32")
    got = _logits(load_model(m32, device="cpu"), tok, "The Hudson river flows south.")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert "+merged-" in m32.name and m32.source == "local"

    m16 = merged_model(spec, cache / "a", dtype="bfloat16")
    got16 = _logits(load_model(m16, device="cpu"), tok, "The Hudson river flows south.")
    assert load_model(m16, device="cpu").dtype == torch.bfloat16
    torch.testing.assert_close(got16, want, rtol=2e-2, atol=2e-2)


def test_merged_folder_is_built_once_per_adapter_content(cache):
    spec = get_spec("tiny-llama")
    _adapter(spec, cache / "a", rank=4, seed=0)
    first = merged_model(spec, cache / "a", dtype="float32")
    stamp = (first.path and (cache / "cache" / "merged").stat().st_mtime_ns)
    weights = next(p for p in __import__("pathlib").Path(first.path).glob("*.safetensors"))
    mtime = weights.stat().st_mtime_ns
    again = merged_model(spec, cache / "a", dtype="float32")
    assert again.path == first.path and weights.stat().st_mtime_ns == mtime and stamp
    _adapter(spec, cache / "a", rank=4, seed=5)  # new weights in the same folder
    other = merged_model(spec, cache / "a", dtype="float32")
    assert other.path != first.path and other.name != first.name


def test_vllm_can_serve_only_small_ranks_on_known_modules(cache):
    spec = get_spec("tiny-llama")
    _adapter(spec, cache / "r16", rank=16)
    _adapter(spec, cache / "r1024", rank=1024)
    assert vllm_can_serve(cache / "r16")
    assert not vllm_can_serve(cache / "r1024")
    assert vllm_can_serve(cache / "r1024", max_rank=1024)


@pytest.mark.slow
def test_merged_equals_unmerged_on_smollm2(cache):
    spec = dataclasses.replace(get_spec("smollm2-135m-instruct"), dtype="float32")
    tok = load_tokenizer(spec)
    unmerged = _adapter(spec, cache / "a", rank=64)
    text = "Who founded the University of Toronto's neuroscience lab?"
    want = _logits(unmerged, tok, text)
    got = _logits(load_model(merged_model(spec, cache / "a", dtype="float32"), device="cpu"), tok, text)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    got16 = _logits(load_model(merged_model(spec, cache / "a", dtype="bfloat16"), device="cpu"), tok, text)
    # The yardstick is bfloat16 itself: the base model's own logits in bfloat16 against float32.
    base32 = _logits(load_model(spec, device="cpu"), tok, text)
    base16 = _logits(load_model(dataclasses.replace(spec, dtype="bfloat16"), device="cpu"), tok, text)
    rounding = (base16 - base32).abs().max()
    assert (got16 - want).abs().max() <= 1.5 * rounding, ((got16 - want).abs().max(), rounding)
    agree_base = (base16.argmax(-1) == base32.argmax(-1)).float().mean()
    assert (got16.argmax(-1) == want.argmax(-1)).float().mean() >= agree_base - 0.1
