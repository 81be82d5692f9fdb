"""Adapters are refused by name when they do not fit the model, and name a portable base model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pd.adapters import adapter_config, load_adapter, portable_base_name, resolve_base
from pd.data import Dataset, Document
from pd.errors import DataError, PDError
from pd.generate import make_generator
from pd.models import get_spec, load_model, model_folder
from pd.train.lora import attach_lora

REPO = Path(__file__).resolve().parent.parent


def _adapter(name: str, folder: Path, base_model: str | None = None, rank: int = 4) -> Path:
    """A real PEFT adapter of registry model ``name`` with non-zero B (so it changes the answers)."""
    model = attach_lora(load_model(get_spec(name), device="cpu", dtype=torch.float32), rank=rank, alpha=2.0 * rank,
                        base_model=base_model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(str(folder))
    return folder


def _set_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _pd(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "pd.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _refused(res: subprocess.CompletedProcess, needle: str) -> None:
    """Exit 2, no traceback, the message one whole line ending stderr (progress bars may precede it)."""
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    last = [line for line in res.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("pd: ") and needle in last, res.stderr[-2000:]


def test_weights_that_match_no_module_are_refused(tmp_path):
    folder = _adapter("tiny-llama", tmp_path / "a")
    state = load_file(str(folder / "adapter_model.safetensors"))
    renamed = {k.replace(".layers.", ".blocks."): v for k, v in state.items()}
    save_file(renamed, str(folder / "adapter_model.safetensors"))
    with pytest.raises(DataError, match=r"does not fit tiny-llama.*match no module of the model"):
        load_adapter(load_model(get_spec("tiny-llama"), device="cpu"), folder, get_spec("tiny-llama"))
    with pytest.raises(PDError, match="match no module"):  # the generation path pd ask and evaluation take
        make_generator("tiny-llama", adapter=folder, progress=False)


def test_pd_ask_with_an_adapter_that_matches_nothing_exits_2_with_one_line(tmp_path):
    folder = _adapter("tiny-llama", tmp_path / "a")
    (folder / "pd_meta.json").write_text(json.dumps({"model": "tiny-llama"}))
    state = load_file(str(folder / "adapter_model.safetensors"))
    save_file({k.replace("q_proj", "qq_proj"): v for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
    res = _pd(tmp_path, "ask", str(folder), "When did the harbour open?", "--max-tokens", "4")
    _refused(res, "match no module")


@pytest.mark.parametrize("recorded", ["portable", "local path"])
def test_an_adapter_of_another_model_is_refused_naming_both(tmp_path, recorded):
    folder = _adapter("tiny-qwen2", tmp_path / "a",
                      base_model="tiny-qwen2" if recorded == "portable" else None)
    if recorded == "local path":  # as older versions wrote it: the pd cache folder of the other model
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == \
            model_folder(get_spec("tiny-qwen2"))
    spec = get_spec("tiny-llama")
    with pytest.raises(DataError, match=r"trained on tiny-qwen2 .*not on tiny-llama"):
        load_adapter(load_model(spec, device="cpu"), folder, spec)
    with pytest.raises(PDError, match=r"trained on tiny-qwen2"):
        make_generator("tiny-llama", adapter=folder, progress=False)


def test_an_adapter_of_other_shapes_is_refused_naming_both(tmp_path):
    folder = _adapter("tiny-llama-large", tmp_path / "a")
    _set_config(folder, base_model_name_or_path="/somewhere/else/on/a/colleagues/machine")  # name says nothing
    spec = get_spec("tiny-llama")
    with pytest.raises(DataError, match=r"LoRA adapter .* does not fit tiny-llama \(random"):
        load_adapter(load_model(spec, device="cpu"), folder, spec)


def test_an_unknown_peft_type_is_one_line(tmp_path):
    folder = _adapter("tiny-llama", tmp_path / "a")
    _set_config(folder, peft_type="NOT_A_TYPE")
    with pytest.raises(DataError, match=r"peft_type 'NOT_A_TYPE' is not a PEFT adapter type"):
        adapter_config(folder)
    res = _pd(tmp_path, "merge", str(folder), "--model", "tiny-llama", "--out", str(tmp_path / "m"))
    _refused(res, "NOT_A_TYPE")
    assert not (tmp_path / "m").exists()


def test_an_older_adapter_naming_a_local_path_still_loads(tmp_path):
    spec = get_spec("tiny-llama")
    folder = _adapter("tiny-llama", tmp_path / "a")  # PEFT's default: this machine's cache folder
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == model_folder(spec)
    base = load_model(spec, device="cpu")
    ids = torch.tensor([[1, 5, 9, 14]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        got = load_adapter(base, folder, spec)(input_ids=ids).logits
    assert (got - plain).abs().max() > 1e-3  # the adapter acts
    _set_config(folder, base_model_name_or_path="/home/colleague/.cache/pd/models/tiny-llama-0123456789ab")
    load_adapter(load_model(spec, device="cpu"), folder, spec)  # another machine's cache folder of the same model


def test_portable_names_resolve_through_the_registry():
    assert portable_base_name(get_spec("qwen2.5-3b-instruct")) == "Qwen/Qwen2.5-3B-Instruct"
    assert portable_base_name(get_spec("tiny-llama")) == "tiny-llama"
    assert resolve_base("Qwen/Qwen2.5-3B-Instruct").name == "qwen2.5-3b-instruct"
    assert resolve_base("tiny-qwen2").name == "tiny-qwen2"
    hub_cache = "/x/hub/models--Qwen--Qwen2.5-7B-Instruct/snapshots/abc"
    assert resolve_base(hub_cache).name == "qwen2.5-7b-instruct"
    assert resolve_base("/data/my-own-model") is None


def test_a_trained_adapter_names_a_portable_base_and_loads_elsewhere(tiny_llama, tmp_path, monkeypatch):
    from pd.train.loop import train
    from pd.train.settings import TrainConfig

    docs = {"d0": "The new bridge over the river opened in March after four years of construction."}
    rows = [{"id": "q0", "doc_id": "d0", "question": "When did the bridge open?", "answer": "In March.",
             "finish_reason": "stop"}]
    cfg = TrainConfig(method="sft", rank=2, lr=1e-2, epochs=1, warmup_epochs=0, batch_size=1, progress=False, seed=0)
    res = train(cfg, tiny_llama.spec, tmp_path / "a", rows=rows, dataset=Dataset("t", {k: Document(k, v)
                                                                                     for k, v in docs.items()}, []),
                device="cpu")
    cfg_json = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    assert cfg_json["base_model_name_or_path"] == "tiny-llama"  # not this machine's cache path
    # A colleague's machine: another cache folder; the name resolves through the registry there.
    monkeypatch.setenv("PD_CACHE_DIR", str(tmp_path / "colleague-cache"))
    spec = get_spec("tiny-llama")
    assert model_folder(spec).startswith(str(tmp_path / "colleague-cache"))
    load_adapter(load_model(spec, device="cpu"), res.adapter_dir, spec)


def test_pd_serve_with_an_adapter_of_another_model_exits_2_with_one_line(tmp_path):
    folder = _adapter("tiny-qwen2", tmp_path / "a")
    res = _pd(tmp_path, "serve", "--model", "tiny-llama", "--adapter", str(folder), "--port", "1")
    _refused(res, "tiny-qwen2")
