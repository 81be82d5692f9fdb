"""LoRA adapters: attach, read/write their weights, and the final adapter folder.

The student is the base network plus a LoRA adapter whose B matrices start at zero, so
student and teacher (adapter off) are the same function at step 0. The folder written
at the end is what peft's ``PeftModel.from_pretrained`` and vLLM's LoRA loader read:
``adapter_config.json`` + ``adapter_model.safetensors``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from pd.errors import ConfigError
from pd.io import atomic_path, write_json
from pd.train.teacher import unwrap

META_FILE = "pd_meta.json"


def attach_lora(model, *, rank: int, alpha: float, dropout: float = 0.0, target_modules="all-linear", seed: int = 0,
                base_model: str | None = None):
    """Wrap ``model`` in a PeftModel with a fresh adapter; A is initialised from ``seed``.

    ``base_model``: the name the saved adapter_config.json records as ``base_model_name_or_path``
    (:func:`pd.adapters.portable_base_name`: a hub id or registry name); default: PEFT's, the folder
    the weights were loaded from (a local cache path that does not exist on another machine).
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    if target_modules == "all-linear":
        target_modules = linear_module_names(model)
    cfg = LoraConfig(r=int(rank), lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, cfg)
    if base_model is not None:
        peft_model.peft_config["default"].base_model_name_or_path = base_model
    return peft_model


def linear_module_names(model) -> list[str]:
    """Leaf names of every linear layer except the output head: what "all-linear" means.

    Written out (``q_proj``, ``up_proj``...) rather than left as the keyword, so that the
    saved adapter_config.json lists short module names that vLLM's loader understands.
    """
    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear) and mod is not head}
    if not names:
        raise ConfigError(f"{type(model).__name__} has no linear layers to put LoRA on")
    return sorted(names)


def adapter_state(model, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapter's weights (names as peft saves them), detached copies on CPU.

    ``state_dict``: the model's LoRA tensors already gathered (sharded training, see
    :func:`pd.train.fsdp.full_adapter_state`); default: read from the model.
    """
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(unwrap(model), state_dict=state_dict, save_embedding_layers=False)
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def load_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    """Copy saved adapter tensors (peft's names, full size) into ``model``'s LoRA weights.

    Raises:
        ConfigError: the saved tensors do not fit this model's adapter.
    """
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(unwrap(model), state)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ConfigError(f"checkpoint adapter does not match this model: unexpected keys {unexpected[:5]}")


def training_precision(model) -> torch.dtype:
    """The precision the frozen base weights train in (the LoRA weights themselves stay float32).

    Returns:
        The dtype of the first parameter that is not a LoRA weight.
    """
    return next(p.dtype for n, p in unwrap(model).named_parameters() if "lora_" not in n)


def save_adapter(model, folder: Path, state_dict: dict[str, torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors into an existing or new folder.

    Args:
        model: the PeftModel (wrapped or not).
        folder: where the files go.
        state_dict: as in :func:`adapter_state` (gathered LoRA tensors of a sharded model).
        dtype: the precision the tensors are stored in (default: as trained, float32).
    """
    if dtype is not None:
        state = state_dict if state_dict is not None else adapter_state(model)
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    extra = {} if state_dict is None else {"state_dict": state_dict}
    # No embedding layer is ever adapted (linear_module_names): saying so spares PEFT's "auto" check,
    # which looks the base model's name up on the hub.
    unwrap(model).save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False, **extra)


def write_adapter_folder(model, target: str | Path, meta: dict, extra_files: dict[str, Path] | None = None,
                         extra_dirs: dict[str, Path] | None = None,
                         state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """The final artifact, written atomically: adapter files, ``pd_meta.json`` and extras.

    The adapter is stored in the training precision (bfloat16 for a bfloat16 model: half the
    size of the float32 weights the optimiser kept; float32 for a float32 model).
    """
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        save_adapter(model, tmp, state_dict, dtype=training_precision(model))
        write_json(tmp / META_FILE, meta)
        for name, src in (extra_files or {}).items():
            if Path(src).is_file():
                shutil.copyfile(src, tmp / name)
        for name, src in (extra_dirs or {}).items():
            if Path(src).is_dir() and any(Path(src).iterdir()):
                shutil.copytree(src, tmp / name)
    return target
