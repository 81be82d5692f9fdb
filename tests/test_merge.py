"""Adapters merged into the base weights: same logits as the unmerged adapter, cached once."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pd.errors import DataError
from pd.merge import CHECK_TEXT, MERGED_META, check_merged, merged_model, vllm_can_serve
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


# --------------------------------------------------------------------------- pd merge: safe, float32, checked

REPO = Path(__file__).resolve().parent.parent


def _pd(cwd: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "pd.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, **kw)


def test_pd_merge_outside_a_project_and_never_over_a_users_folder(cache):
    work = cache / "elsewhere"  # no config.yaml here: pd merge needs none
    work.mkdir()
    _adapter(get_spec("tiny-llama"), cache / "a", rank=4)
    out = work / "merged"
    res = _pd(work, "merge", str(cache / "a"), "--model", "tiny-llama", "--out", str(out), "--dtype", "float32")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "config.json").is_file() and (out / MERGED_META).is_file()
    assert not [p for p in work.iterdir() if p.name != "merged"]  # no temporary folder left beside it
    # Again into its own earlier output (and without --model: the adapter's config names the base): replaced.
    res = _pd(work, "merge", str(cache / "a"), "--out", str(out), "--dtype", "bfloat16")
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((out / MERGED_META).read_text())
    assert meta["dtype"] == "bfloat16" and 0 < meta["erased_by_cast"] < meta["changed_entries"]
    assert "erased" in res.stdout and "--dtype float32 keeps them all" in res.stdout
    # A folder of the user's: refused, nothing in it touched.
    mine = work / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    res = _pd(work, "merge", str(cache / "a"), "--model", "tiny-llama", "--out", str(mine))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    last = [line for line in res.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("pd: ") and "did not write" in last, last
    assert sorted(p.name for p in mine.iterdir()) == ["config.json"]
    assert (mine / "config.json").read_text() == '{"mine": true}'


def test_a_killed_merge_leaves_no_config_without_weights(cache):
    _adapter(get_spec("tiny-llama"), cache / "a", rank=4)
    out = cache / "m"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "pd.cli", "merge", str(cache / "a"), "--model", "tiny-llama",
                             "--out", str(out), "--dtype", "float32"], cwd=cache, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:  # kill it as soon as it starts writing
        if out.exists() or any(p.name.startswith(".m.") for p in cache.iterdir()):
            proc.kill()
            break
        time.sleep(0.001)
    proc.wait(timeout=60)
    assert proc.returncode != 0, "the merge ended before it could be killed"
    if out.exists():  # only a finished folder may be there
        assert (out / MERGED_META).is_file() and list(out.glob("*.safetensors")), sorted(os.listdir(out))
    assert not out.exists()


def _merged_weights_are_one_rounding_of_float32(model, adapter, spec, base_dtype=torch.float32) -> None:
    """Every merged bfloat16 weight equals cast(W + float32 (alpha/r) B A), W the base weights as loaded
    (in ``base_dtype``) computed in float32: a single rounding."""
    from safetensors.torch import load_file

    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    lora = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    base = dict(load_model(dataclasses.replace(spec, dtype="float32"), device="cpu").named_parameters())
    merged = dict(model.named_parameters())
    checked = 0
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        b = lora[key.replace(".lora_A.", ".lora_B.")]
        name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        w = base[name].detach().to(base_dtype).float()
        want = (w + scale * (b.float() @ a.float())).to(torch.bfloat16)
        assert merged[name].dtype == torch.bfloat16
        assert torch.equal(merged[name], want), (name, (merged[name] != want).float().mean())
        checked += 1
    assert checked > 0


def test_merges_are_computed_in_float32_whatever_the_output_precision(cache):
    from pd.generate.transformers_backend import TransformersGenerator

    spec = get_spec("tiny-llama")
    # A delta small beside the weights, as trained adapters are: a bfloat16 addition erases much of it.
    model = attach_lora(load_model(spec, device="cpu", dtype=torch.float32), rank=4, alpha=8.0)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 2e-3)
    model.save_pretrained(cache / "a")
    merged = merged_model(spec, cache / "a", dtype="bfloat16")  # pd merge's path
    _merged_weights_are_one_rounding_of_float32(load_model(merged, device="cpu"), cache / "a", spec)
    # Evaluation's path: a bfloat16 model with the adapter merged in memory.
    bf16 = dataclasses.replace(spec, dtype="bfloat16")
    in_memory = TransformersGenerator(bf16, adapter=cache / "a", progress=False)
    _merged_weights_are_one_rounding_of_float32(in_memory.model, cache / "a", spec, base_dtype=torch.bfloat16)


def test_a_merged_model_that_answers_otherwise_is_not_kept(cache):
    spec = get_spec("tiny-llama")
    tok = load_tokenizer(spec)
    unmerged = _adapter(spec, cache / "a", rank=8)
    ids = torch.tensor([tok.encode(CHECK_TEXT, add_special_tokens=False)[:16]])
    with torch.no_grad():
        want = unmerged(input_ids=ids).logits.float()
    check_merged(unmerged, want, ids, "float32", cache / "a")  # the same function passes
    with pytest.raises(DataError, match="changed the model's logits"):
        check_merged(load_model(spec, device="cpu"), want, ids, "bfloat16", cache / "a")  # the base model does not
