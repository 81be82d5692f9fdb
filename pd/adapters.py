"""PEFT adapter folders: read, checked against the model they are put on, and loaded.

An adapter folder holds ``adapter_config.json`` (PEFT's) and ``adapter_model.safetensors``.
Before an adapter is used it must fit the model it is put on, or it is refused by name:

- its ``peft_type`` is one PEFT knows and pd loads (LoRA);
- its ``base_model_name_or_path`` names the same base model (a registry name or hub id;
  adapters written by older versions name a local folder, which still loads when it is this
  model's folder, a pd cache folder or hub snapshot of it, or a folder not on this machine);
- every saved tensor lands on a module of the model with the same shape, and every LoRA
  weight the model expects is in the file (else the model would answer as the base model).

Adapters written by ``pd`` name a portable base model (:func:`portable_base_name`: the hub id
of a hub model, else the registry name), so they load on a colleague's machine.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from pd.errors import DataError, ModelUnavailableError
from pd.io import read_json
from pd.models import ModelSpec, model_folder, registry

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LOADED_TYPES = ("LORA",)  # the PEFT adapter types pd trains, loads and merges


def adapter_config(adapter: str | Path) -> dict:
    """The adapter's ``adapter_config.json``, checked to be a LoRA config PEFT can read.

    Args:
        adapter: a PEFT adapter folder.

    Returns:
        The config as a dict.

    Raises:
        ModelUnavailableError: the folder or its adapter_config.json is missing.
        DataError: the file is not a JSON object, or its ``peft_type`` is missing, unknown or not LoRA.
    """
    path = Path(adapter) / CONFIG_FILE
    if not path.is_file():
        raise ModelUnavailableError(f"LoRA adapter folder {adapter} not found or has no {CONFIG_FILE} "
                                    "(as written by peft's save_pretrained)")
    try:
        cfg = read_json(path)
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    kind = cfg.get("peft_type")
    if kind not in LOADED_TYPES:
        from peft import PeftType

        known = {t.value for t in PeftType}
        why = "is not a PEFT adapter type" if kind not in known else "is not an adapter type pd loads"
        raise DataError(f"{path}: peft_type {str(kind)[:60]!r} {why} (expected one of {list(LOADED_TYPES)})")
    return cfg


def portable_base_name(spec: ModelSpec) -> str:
    """The base model's name an adapter records: the hub id of a hub model, else the registry name.

    Either resolves on another machine through :func:`resolve_base` (a local cache path would not).
    """
    return spec.repo if spec.source == "hub" and spec.repo else spec.name


def _same_weights(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether two registry entries load the same network (a renamed or re-prompted entry does)."""
    if a.name == b.name:
        return True
    where = ("repo", "path", "package", "gguf_file", "architecture", "random_config", "tokenizer_vocab")
    return a.source == b.source and all(getattr(a, f) == getattr(b, f) for f in where)


def resolve_base(name: str, models_extra: dict | None = None) -> ModelSpec | None:
    """The registry model an adapter's ``base_model_name_or_path`` names, or None when it names none known.

    A registry name or hub id resolves directly; a local path (older adapters) resolves when it
    is a pd model cache folder (``<name>-<12 hex>``) or a hub cache snapshot (``models--org--name``).

    Args:
        name: the recorded base model.
        models_extra: models defined in the project config, beside the registry.

    Returns:
        The spec, or None.
    """
    reg = registry(models_extra)
    if name in reg:
        return reg[name]
    by_repo = [s for s in reg.values() if s.repo and s.repo == name]
    if by_repo:
        return by_repo[0]
    for part in reversed(Path(name).parts):
        hub = re.fullmatch(r"models--(.+?)--(.+)", part)
        if hub:
            repo = f"{hub.group(1)}/{hub.group(2)}"
            return next((s for s in reg.values() if s.repo == repo), None)
        cached = re.fullmatch(r"(.+)-[0-9a-f]{12}(\.tmp\d+)?", part)
        if cached and cached.group(1) in reg:
            return reg[cached.group(1)]
    return None


def check_base(adapter: str | Path, spec: ModelSpec, models_extra: dict | None = None) -> dict:
    """Refuse an adapter whose config names another base model than ``spec``.

    Args:
        adapter: a PEFT adapter folder.
        spec: the model it is to be put on.
        models_extra: models defined in the project config.

    Returns:
        The adapter's config (:func:`adapter_config`).

    Raises:
        DataError: the recorded base model is another model (the message names both).
    """
    cfg = adapter_config(adapter)
    named = cfg.get("base_model_name_or_path")
    if not isinstance(named, str) or not named:
        return cfg
    if named in (spec.name, spec.repo, spec.path):
        return cfg
    try:
        if named == model_folder(spec):
            return cfg
    except ModelUnavailableError:
        pass
    base = resolve_base(named, models_extra)
    looks_like_path = named.startswith((".", "/", "~")) or named.count("/") != 1 or Path(named).exists()
    if base is None and (looks_like_path or spec.source != "hub"):
        return cfg  # an older adapter's folder, or a model known here by another name: the weights check decides
    if base is None or not _same_weights(base, spec):
        other = base.describe() if base is not None else repr(named)
        raise DataError(f"LoRA adapter {adapter} was trained on {other}, not on {spec.describe()}: "
                        f"use it with its own base model")
    return cfg


def load_adapter(model, adapter: str | Path, spec: ModelSpec, models_extra: dict | None = None):
    """``model`` with the PEFT adapter at ``adapter`` put on it, after checking that it fits.

    Args:
        model: the base causal LM (``spec``'s weights).
        adapter: a PEFT adapter folder.
        spec: the base model's registry entry.
        models_extra: models defined in the project config.

    Returns:
        A ``PeftModel`` in eval mode.

    Raises:
        ModelUnavailableError: the folder is missing.
        DataError: unknown ``peft_type``, another base model, target modules absent from the model,
            tensors whose shapes do not match, or saved weights that land on no module of the model.
    """
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    check_base(adapter, spec, models_extra)
    weights = Path(adapter) / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as f:
            saved = set(f.keys())
    except Exception as err:  # safetensors raises its own error types, and OSError for a missing file
        raise DataError(f"{weights}: not a readable safetensors file ({type(err).__name__})") from None
    try:
        with warnings.catch_warnings():  # PEFT warns of missing keys; they are checked (and refused) below
            warnings.filterwarnings("ignore", message=".*adapter keys.*")
            peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DataError(f"LoRA adapter {adapter} does not fit {spec.describe()}: {first}") from None
    lora = set(get_peft_model_state_dict(peft_model, save_embedding_layers=False))
    allowed = lora | set(get_peft_model_state_dict(peft_model, save_embedding_layers=True))  # + saved embeddings
    stray, absent = sorted(saved - allowed), sorted(lora - saved)
    if stray or absent:
        what = (f"{len(stray)} of its {len(saved)} tensors match no module of the model (e.g. {stray[0]})" if stray
                else f"it lacks {len(absent)} of the model's LoRA weights (e.g. {absent[0]})")
        raise DataError(f"LoRA adapter {adapter} does not fit {spec.describe()}: {what}")
    return peft_model.eval()


def merge_in_float32(peft_model, stats: dict | None = None, out_dtype=None):
    """The plain model with its LoRA merged in: W <- cast(float32(W) + (alpha / r) B A), one rounding.

    PEFT's ``merge_and_unload`` adds a delta already rounded to the weight's precision to that
    weight (two roundings): in bfloat16 that erases many small delta entries. Here each merged
    weight is computed in float32 and cast once to the weight's own precision. Layers other than
    plain linear LoRA (DoRA, embeddings, convolutions) are merged by PEFT itself.

    Args:
        peft_model: a ``PeftModel`` with one active LoRA adapter.
        stats: filled (when given) with ``changed``: the weight entries the adapter changes, and
            ``erased``: those whose change the cast to ``out_dtype`` rounds away (a merged model
            in bfloat16 loses every change below half a unit in the last place of its weight).
        out_dtype: the precision the merged model will be stored in (default: the weights' own).

    Returns:
        The base model with merged weights (the same modules, LoRA layers removed).
    """
    import torch
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    plain = all(isinstance(m.get_base_layer(), torch.nn.Linear) and not any(m.use_dora.values()) for m in layers)
    if not plain:
        return peft_model.merge_and_unload()
    with torch.no_grad():
        for m in layers:
            base = m.get_base_layer()
            for name in m.active_adapters:
                if name not in m.lora_A:
                    continue
                a, b = m.lora_A[name].weight.float(), m.lora_B[name].weight.float()
                delta = (b @ a) * float(m.scaling[name])
                if getattr(m, "fan_in_fan_out", False):
                    delta = delta.T
                w = base.weight
                merged = w.float() + delta.to(w.device)
                if stats is not None:
                    cast = out_dtype or w.dtype
                    changed = merged != w.float()
                    stats["changed"] = stats.get("changed", 0) + int(changed.sum())
                    stats["erased"] = stats.get("erased", 0) + int((changed & (merged.to(cast) == w.to(cast))).sum())
                w.copy_(merged.to(w.dtype))
    return peft_model.unload()
