"""LoRA adapters merged into their base model's weights: a plain model folder.

vLLM serves LoRA adapters only up to rank 512 (``max_lora_rank`` is one of 1, 8, 16, 32,
64, 128, 256, 320, 512) and only on the modules it knows; the paper's Llama runs use rank
1024. Such an adapter is merged with PEFT (``merge_and_unload``: W <- W + (alpha / r) B A on
every adapted layer) into a model folder that any backend loads as an ordinary model.
Decoding a merged model also costs no more than the base model, where an unmerged rank-1024
adapter on every linear layer roughly doubles it.

Merged folders are cached under ``$PD_CACHE_DIR/merged/``, keyed by the base model's
identity, the adapter's content hash and the precision, and built once (lock + atomic
rename), so every job that evaluates one adapter shares one merged copy.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pd.env import cache_dir
from pd.errors import ModelUnavailableError
from pd.io import file_hash, stable_hash, write_json
from pd.models import ModelSpec, load_model, load_tokenizer, materialise

# vLLM's largest servable LoRA rank, and the module names its LoRA layers cover.
VLLM_MAX_LORA_RANK = 512
VLLM_LORA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj",
                               "down_proj", "gate_up_proj"})
MERGED_META = "pd_merged.json"


def adapter_config(adapter: str | Path) -> dict:
    """The adapter's ``adapter_config.json``.

    Raises:
        ModelUnavailableError: the folder has no readable adapter_config.json.
    """
    path = Path(adapter) / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(f"LoRA adapter {adapter}: cannot read {path.name} ({err})") from None


def vllm_can_serve(adapter: str | Path, max_rank: int = VLLM_MAX_LORA_RANK) -> bool:
    """Whether vLLM can serve ``adapter`` as a LoRA: rank at most ``max_rank`` and only known modules.

    Args:
        adapter: a PEFT adapter folder.
        max_rank: the largest rank the server takes.

    Returns:
        False where the adapter must be merged first (:func:`merged_model`).
    """
    cfg = adapter_config(adapter)
    modules = cfg.get("target_modules") or []
    modules = [modules] if isinstance(modules, str) else list(modules)
    return int(cfg.get("r", 0)) <= max_rank and bool(modules) and set(modules) <= VLLM_LORA_MODULES


def merge_into(spec: ModelSpec, adapter: str | Path, out: str | Path, dtype: str = "bfloat16",
               adapter_hash: str | None = None) -> None:
    """Merge ``adapter`` into ``spec``'s weights and save the result as a plain model folder at ``out``.

    The merge is computed in float32 (on the CPU) and the merged weights are then cast
    to ``dtype``, so the only rounding is that of the final cast.

    Args:
        spec: the base model the adapter was trained on.
        adapter: a PEFT adapter folder.
        out: the folder to write (``config.json``, safetensors weights, tokenizer, ``pd_merged.json``).
        dtype: the merged weights' precision (``bfloat16``, ``float16`` or ``float32``).
        adapter_hash: the adapter's content hash, where the caller has it (else read here:
            an adapter of rank 1024 on an 8B model is ~10 GB, so it is read once).

    Raises:
        ModelUnavailableError: the adapter folder is missing or unreadable.
    """
    import torch
    from peft import PeftModel

    cfg = adapter_config(adapter)
    base = load_model(dataclasses.replace(spec, dtype="float32"), device="cpu")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    out = Path(out)
    merged.save_pretrained(out)
    load_tokenizer(spec).save_pretrained(out)
    write_json(out / MERGED_META, {"base": spec.name, "adapter": str(adapter),
                                   "adapter_hash": adapter_hash or file_hash(adapter), "rank": cfg.get("r"),
                                   "dtype": dtype})


def merged_model(spec: ModelSpec, adapter: str | Path, dtype: str = "bfloat16") -> ModelSpec:
    """A model spec for ``spec`` with ``adapter`` merged in, built once into the cache.

    Args:
        spec: the base model.
        adapter: a PEFT adapter folder; its content hash names the merged folder.
        dtype: the merged weights' precision.

    Returns:
        A ``source: local`` spec whose ``path`` is the merged folder, named
        ``<base>+merged-<hash>`` so that generation caches tell it apart.
    """
    ahash = file_hash(adapter)
    key = stable_hash({"base": dataclasses.asdict(spec) | {"dtype": ""}, "adapter": ahash, "dtype": dtype}, 16)
    folder = cache_dir() / "merged" / f"{spec.name}-{key}"
    materialise(folder, lambda tmp: merge_into(spec, adapter, tmp, dtype, adapter_hash=ahash))
    return dataclasses.replace(spec, name=f"{spec.name}+merged-{ahash[:12]}", source="local", path=str(folder),
                               repo=None, revision=None, dtype=dtype)
