"""Sharded data parallelism (``training.parallel: fsdp``) with torch's FSDP2 ``fully_shard``.

Every decoder layer is its own FSDP unit, all-gathered for its forward and backward and
sharded again afterwards; the root unit holds what is left: the input embedding, the
final norm and the lm_head (one tensor when the model ties them, as SmolLM2 does, so
they cannot be split into different units). The LoRA weights live inside the layers, so
their gradients and AdamW state are sharded too.

Why the chunked loss still works: our losses apply the lm_head to answer hidden states
*outside* the model's forward (and again in the backward pass, where each chunk is
recomputed), while FSDP only guarantees full weights inside a unit's forward. The
root unit is created with ``reshard_after_forward=False``: after the root's forward its
full parameters stay registered on the module until FSDP's end-of-backward callback
reshards them (the root's inputs are token ids, which carry no gradient, so no earlier
hook does), and that callback runs after every autograd node of the step, the
recomputed loss chunks included. So ``output_head(model)(hidden)`` sees the plain,
gathered weight both in the forward and in the recomputation, with no extra all-gather
or copy; the teacher (the same network with the adapter off, a second forward under
``no_grad``) leaves the root gathered as well. The cost is that the root's weights stay
whole on every rank from the first forward of a step to the end of its backward
(Qwen2.5-14B in bf16, untied: embedding + lm_head = 2 x 1.6 GB, 11% of its weights); the
decoder layers, the rest, stay sharded except the one being computed. A separate
teacher model is sharded the same way. The other choices were worse: making the lm_head a unit of
its own is impossible with tied embeddings, and gathering the weight explicitly
(``full_tensor()``) around the loss would all-gather the same root weight a second time
and keep a second full copy alive until the recomputation in backward. A head whose
weight were still sharded would fail loudly (DTensor mixed with Tensor), never silently.
Checked on CPU (tests/test_train_fsdp.py): two gloo processes give bit-for-bit the adapter
of DDP and, to float rounding, that of one unsharded process, tied head included.

Collectives: all ranks must make the same calls in the same order, so the helpers
that gather full tensors (:func:`full_adapter_state`) run on every rank; only the main
process writes files.
"""

from __future__ import annotations

import torch
from torch import nn

from pd.errors import ConfigError
from pd.train.teacher import unwrap


def _dtensor():
    from torch.distributed.tensor import DTensor

    return DTensor


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (its ``_no_split_modules`` classes)."""
    inner = unwrap(model)
    hf = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    names = set(getattr(hf, "_no_split_modules", None) or [])
    # After fully_shard a layer's class is a subclass (FSDPLlamaDecoderLayer): look along the MRO.
    layers = [m for m in hf.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not layers:
        raise ConfigError(f"FSDP: cannot find the decoder layers of {type(hf).__name__} (its _no_split_modules "
                          f"{sorted(names) or 'is empty'}); use training.parallel: ddp")
    return layers


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Apply ``fully_shard`` to every decoder layer, then to the root (see the module docstring).

    Needs an initialised process group (accelerate sets it up when launched with several
    processes). Frozen base weights and trainable LoRA weights may differ in dtype (bf16
    base, float32 adapter): FSDP2 only asks the trainable ones to agree.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("training.parallel: fsdp needs several processes (launch with accelerate launch or torchrun)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh, reshard_after_forward=False)


def gradient_sync(model: nn.Module, sync: bool) -> None:
    """Gradient accumulation without communication on all but the last micro-batch (FSDP's no_sync)."""
    model.set_requires_gradient_sync(sync)


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a collective: every rank calls it); other tensors as they are."""
    return t.full_tensor() if isinstance(t, _dtensor()) else t


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm over sharded gradients; returns the norm before clipping."""
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(full(total))


def full_adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``model.state_dict()`` gathered to full size, on every rank (collective).

    Keys are the model's own (with the adapter name), the form peft's
    ``save_pretrained(state_dict=...)`` and ``get_peft_model_state_dict(state_dict=...)`` take.
    """
    state = unwrap(model).state_dict()
    return {k: full(v).detach().to("cpu", copy=True) for k, v in state.items() if "lora_" in k}


def load_full_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full adapter tensors (peft's saved names) into the sharded LoRA parameters.

    Every rank passes the same full tensors and keeps its own slice of each.
    """
    from torch.distributed.tensor import distribute_tensor

    inner = unwrap(model)
    params = dict(inner.named_parameters())
    for saved, name in _peft_names(inner, state).items():
        p = params[name]
        value = state[saved].to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            if isinstance(p, _dtensor()):
                p.to_local().copy_(distribute_tensor(value, p.device_mesh, p.placements).to_local())
            else:
                p.copy_(value)


def _peft_names(inner: nn.Module, saved: dict[str, torch.Tensor]) -> dict[str, str]:
    """Saved adapter key -> parameter name of ``inner`` (the adapter name inserted as peft does)."""
    adapter = getattr(inner, "active_adapter", "default")
    params = {n for n, _ in inner.named_parameters()}
    out = {}
    for key in saved:
        stem, leaf = key.rsplit(".", 1)
        name = f"{stem}.{adapter}.{leaf}"
        if name not in params:
            raise ConfigError(f"checkpoint adapter key {key} has no parameter {name} in this model")
        out[key] = name
    return out


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict with every sharded tensor gathered to full size (collective).

    The same form a one-process run saves, so a checkpoint folder looks the same either way.
    """
    sd = optimizer.state_dict()
    sd["state"] = {i: {k: full(v).detach().to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in s.items()}
                   for i, s in sd["state"].items()}
    return sd


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Inverse of :func:`full_optimizer_state`: every rank keeps its slice of each state tensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, s in sd["state"].items():
        p = params[int(i)]
        state[i] = {k: (distribute_tensor(v.to(device=p.device), p.device_mesh, p.placements)
                        if isinstance(p, DTensor) and torch.is_tensor(v) and tuple(v.shape) == tuple(p.shape) else v)
                    for k, v in s.items()}
    optimizer.load_state_dict({**sd, "state": state})


def agree(value: float, device: torch.device) -> float:
    """Rank 0's value on every rank (decisions such as a timed snapshot must match across ranks)."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def local_share(model: nn.Module) -> dict[str, int]:
    """Elements of the parameters this rank holds vs. the model's full size (sharding evidence)."""
    held = total = 0
    for p in unwrap(model).parameters():
        total += p.numel()
        held += p.to_local().numel() if isinstance(p, _dtensor()) else p.numel()
    return {"held": held, "total": total}
