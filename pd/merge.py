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
import os
import shutil
from pathlib import Path

from pd.adapters import adapter_config, load_adapter, merge_in_float32
from pd.env import cache_dir
from pd.errors import ConfigError, DataError
from pd.io import file_hash, stable_hash, write_json
from pd.models import ModelSpec, load_model, load_tokenizer, materialise

# vLLM's largest servable LoRA rank, and the module names its LoRA layers cover.
VLLM_MAX_LORA_RANK = 512
VLLM_LORA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj",
                               "down_proj", "gate_up_proj"})
MERGED_META = "pd_merged.json"


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


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that pd merge did not write: merging never replaces someone else's files.

    Raises:
        ConfigError: ``out`` is a file, or a non-empty folder without ``pd_merged.json``.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} exists and is not a folder; give a new folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MERGED_META).is_file():
        raise ConfigError(f"--out {out} already holds files that pd merge did not write (no {MERGED_META}); "
                          "give a new or empty folder")


CHECK_TEXT = "The merged model must answer as the adapter does: 1, 2, 3."
# Largest logit difference allowed between merged and unmerged, relative to 1 + the largest |logit|.
CHECK_TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 6e-2}


def check_merged(merged, unmerged_logits, ids, dtype: str, adapter) -> None:
    """Refuse a merged model whose logits on ``ids`` differ from the unmerged adapter's.

    Raises:
        DataError: the largest difference exceeds :data:`CHECK_TOLERANCE` for ``dtype``.
    """
    import torch

    with torch.inference_mode():
        got = merged(input_ids=ids).logits.float()
    err = float((got - unmerged_logits).abs().max())
    bound = CHECK_TOLERANCE[dtype] * (1.0 + float(unmerged_logits.abs().max()))
    if not err <= bound:
        raise DataError(f"merging {adapter} changed the model's logits by up to {err:.3g} (allowed {bound:.3g} "
                        f"in {dtype}): the merged model was not kept")


def merge_into(spec: ModelSpec, adapter: str | Path, out: str | Path, dtype: str = "bfloat16",
               adapter_hash: str | None = None, models_extra: dict | None = None) -> None:
    """Merge ``adapter`` into ``spec``'s weights and save the result as a plain model folder at ``out``.

    The adapter is checked against the model (:func:`pd.adapters.load_adapter`); the merge is
    computed in float32 on the CPU and the merged weights cast once to ``dtype``; the merged
    model's logits on a few tokens are compared with the unmerged adapter's before it is kept.
    The folder is written into a temporary sibling and renamed at the end (a killed merge
    leaves no ``out``); an existing ``out`` is replaced only when an earlier merge wrote it.

    Args:
        spec: the base model the adapter was trained on.
        adapter: a PEFT adapter folder.
        out: the folder to write (``config.json``, safetensors weights, tokenizer, ``pd_merged.json``).
        dtype: the merged weights' precision (``bfloat16``, ``float16`` or ``float32``).
        adapter_hash: the adapter's content hash, where the caller has it (else read here:
            an adapter of rank 1024 on an 8B model is ~10 GB, so it is read once).
        models_extra: models defined in the project config (to resolve the adapter's base model).

    Raises:
        ModelUnavailableError: the adapter folder is missing or unreadable.
        ConfigError: ``out`` holds files pd merge did not write, or an unknown ``dtype``.
        DataError: the adapter does not fit the model, or the merged model's logits differ from the adapter's.
    """
    import torch

    if dtype not in CHECK_TOLERANCE:
        raise ConfigError(f"dtype {dtype!r}; allowed: {', '.join(CHECK_TOLERANCE)}")
    out = Path(out)
    _check_out(out)
    cfg = adapter_config(adapter)
    tok = load_tokenizer(spec)
    base = load_model(dataclasses.replace(spec, dtype="float32"), device="cpu")
    unmerged = load_adapter(base, adapter, spec, models_extra)
    ids = torch.tensor([tok.encode(CHECK_TEXT, add_special_tokens=False)[:16]])
    with torch.inference_mode():
        want = unmerged(input_ids=ids).logits.float()
    stats: dict = {}
    merged = merge_in_float32(unmerged, stats, out_dtype=getattr(torch, dtype)).to(getattr(torch, dtype)).eval()
    check_merged(merged, want, ids, dtype, adapter)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.merging-{os.getpid()}")
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / MERGED_META, {"base": spec.name, "adapter": str(adapter),
                                       "adapter_hash": adapter_hash or file_hash(adapter), "rank": cfg.get("r"),
                                       "dtype": dtype, "changed_entries": stats.get("changed", 0),
                                       "erased_by_cast": stats.get("erased", 0)})
        if out.exists():
            _check_out(out)  # still ours (or empty) at the moment of replacing it
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


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
