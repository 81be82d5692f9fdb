"""The teacher as a network: the student's own model with the LoRA adapter off, or a separate model.

This module is the model plumbing every teacher use shares: reaching the module inside
accelerate / DDP / FSDP wrappers (:func:`unwrap`), switching the adapter off
(:func:`adapter_disabled`), final hidden states at the answer positions
(:func:`answer_hidden`), the output head, the vocabulary check for a separate teacher,
the teacher's logits during training (:func:`teacher_answer_logits`) and a fingerprint of
the base weights (:func:`model_identity`).

The top-k cache built from one teacher pass lives in :mod:`pd.train.teacher_cache`
(its file format) and :mod:`pd.train.cache_builder` (the pass itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from pd.errors import ConfigError, VocabularyMismatchError
from pd.models import check_same_vocabulary
from pd.train.batch import TEACHER_KEYS, gather_answers


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside accelerate / DDP / FSDP / torch.compile wrappers (a PeftModel stays one).

    Args:
        model: a model, possibly wrapped several times.

    Returns:
        The innermost module that is not a wrapper (the PeftModel when there is an adapter).
    """
    try:
        from accelerate.utils import extract_model_from_parallel

        model = extract_model_from_parallel(model, keep_torch_compile=False)
    except ImportError:  # pragma: no cover - accelerate is a dependency
        pass
    while True:
        inner = (getattr(model, "_orig_mod", None)
                 or (model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else None))
        if inner is None:
            return model
        model = inner


@contextlib.contextmanager
def adapter_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model`` (wrapped or not) as its base network: the PEFT adapter switched off.

    Forward calls should still go through the wrapper (DDP/FSDP need their own forward);
    the switch acts on the LoRA layers inside it. A model without an adapter is its own base.

    Args:
        model: the student, a PeftModel or a wrapper around one (or a plain model).

    Returns:
        A context manager yielding ``model`` itself, whose forward is the base network's
        while the context is open.
    """
    inner = unwrap(model)
    if hasattr(inner, "disable_adapter") and hasattr(inner, "peft_config"):
        with inner.disable_adapter():
            yield model
    else:
        yield model


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The lm_head (output embedding) of a possibly wrapped causal LM.

    Args:
        model: a causal language model, possibly wrapped.

    Returns:
        The module mapping final hidden states [..., H] to logits [..., V].

    Raises:
        ConfigError: the model has no output embedding (not a causal LM).
    """
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(unwrap(model)).__name__} has no output embedding (lm_head): not a causal LM")
    return head


def head_vocab(model: torch.nn.Module) -> int:
    """The size of the model's output vocabulary.

    Args:
        model: a causal LM, possibly wrapped.

    Returns:
        V, the lm_head's output rows (may exceed the tokenizer's vocabulary).
    """
    return int(output_head(model).weight.shape[0])


def mixed_precision(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for a bfloat16 model that holds float32 parameters (its LoRA adapter), else nothing.

    PEFT keeps adapter weights in float32 and casts each LoRA input up to them, so without
    autocast a bfloat16 model's LoRA matrix products run in float32: on a CPU with
    AVX512-BF16 about half the speed, on a GPU off the bfloat16 tensor cores (at the
    paper's rank 1024 the LoRA products are half of the base's FLOPs). Under autocast they
    run in bfloat16 while the parameters, their gradients and the optimiser stay float32:
    mixed-precision training as in ``transformers.Trainer(bf16=True)``. float16 models are
    left alone (their gradients would need loss scaling), as are float32 ones.

    Args:
        model: the network about to run forward (wrapped or not).

    Returns:
        A context manager.
    """
    dtypes = {p.dtype for p in model.parameters()}
    if torch.bfloat16 not in dtypes or torch.float32 not in dtypes:
        return contextlib.nullcontext()
    return torch.autocast(device_type=next(model.parameters()).device.type, dtype=torch.bfloat16)


def answer_hidden(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
    """The final (post-norm) hidden states at the answer positions.

    Calls the model's own forward (so wrappers do their work) and asks for a single
    position's logits, so no [B, L, V] logits are made. A bfloat16 model with a float32
    adapter runs under bfloat16 autocast (:func:`mixed_precision`).

    Args:
        model: the network to run (wrapped or not; the adapter as it is switched).
        input_ids: [B, L] long token ids, right padded.
        attention_mask: [B, L] long, 1 on real tokens.
        positions: [B, A] long, the positions whose outputs predict the answer tokens.

    Returns:
        [B, A, H] hidden states in the model's dtype.
    """
    with mixed_precision(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                    logits_to_keep=1, use_cache=False)
    return gather_answers(out.hidden_states[-1], positions)


def check_teacher(model: torch.nn.Module, teacher: torch.nn.Module, *, student_tokenizer=None, teacher_tokenizer=None,
                  student_name: str = "student", teacher_name: str = "teacher") -> None:
    """Refuse a separate teacher whose token ids mean other things than the student's.

    With both tokenizers the vocabularies are compared entry by entry; a larger teacher
    head is then allowed (padded rows past the tokenizer are cut). Without tokenizers the
    head sizes must be equal.

    Args:
        model: the student.
        teacher: the separate teacher network.
        student_tokenizer, teacher_tokenizer: their tokenizers (both or neither).
        student_name, teacher_name: names for the error message.

    Raises:
        VocabularyMismatchError: the two do not share a vocabulary.
    """
    sv, tv = head_vocab(model), head_vocab(teacher)
    if student_tokenizer is not None and teacher_tokenizer is not None:
        check_same_vocabulary(student_tokenizer, teacher_tokenizer, student_name, teacher_name)
        if tv < sv or len(student_tokenizer) > sv:
            raise VocabularyMismatchError(f"teacher {teacher_name} has {tv} output rows, student {student_name} {sv}, "
                                          f"tokenizer {len(student_tokenizer)}: "
                                          "the teacher cannot cover the student's ids")
    elif sv != tv:
        raise VocabularyMismatchError(
            f"teacher {teacher_name} outputs {tv} tokens, student {student_name} {sv}: distillation compares "
            "distributions token by token; use a teacher of the same family (pass both tokenizers to compare them)")


def teacher_hidden(model: torch.nn.Module, teacher: torch.nn.Module | None,
                   batch: dict) -> tuple[Tensor, torch.nn.Module]:
    """The teacher's final hidden states on the batch's teacher view, and the head that reads them.

    Args:
        model: the student (its adapter is switched off when ``teacher`` is None).
        teacher: a separate teacher network, or None for the adapter-off student.
        batch: a batch with the ``teacher_*`` keys (:mod:`pd.train.batch`).

    Returns:
        ([B, A, H] hidden states at the teacher's answer positions, the teacher's lm_head).
    """
    ids, att, pos = (batch[k] for k in TEACHER_KEYS)
    if teacher is None:
        with adapter_disabled(model) as base:
            return answer_hidden(base, ids, att, pos), output_head(model)
    return answer_hidden(teacher, ids, att, pos), output_head(teacher)


def teacher_answer_logits(model: torch.nn.Module, batch: dict, *, teacher: torch.nn.Module | None = None) -> Tensor:
    """Teacher logits at the answer positions, without gradient.

    Args:
        model: the student; with ``teacher=None`` the teacher is ``model`` with its adapter off.
        batch: a batch with the ``teacher_*`` keys.
        teacher: a separate teacher (check it first with :func:`check_teacher`); its extra
            padded vocabulary rows are cut to the student's size.

    Returns:
        [B, A, V] logits in the model's dtype, V the student's head size.
    """
    with torch.no_grad():
        hidden, head = teacher_hidden(model, teacher, batch)
        logits = head(hidden)
    return logits[..., : head_vocab(model)] if teacher is not None else logits


def model_identity(model: torch.nn.Module) -> str:
    """A fingerprint of the base network (LoRA weights excluded: the teacher runs without them).

    Config plus, per base parameter, its name, shape and a hash of a strided sample of
    values: cheap for large models, and different weights give a different fingerprint.

    Args:
        model: a model, possibly wrapped or carrying an adapter.

    Returns:
        ``"<model folder name>:<16 hex digits>"``.
    """
    inner = unwrap(model)
    h = hashlib.sha256()
    cfg = getattr(inner, "config", None)
    if cfg is not None:
        d = cfg.to_dict()
        d.pop("_name_or_path", None)
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    for name, p in inner.named_parameters():
        if "lora_" in name:
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].float().cpu()
        h.update(f"{name.replace('base_model.model.', '').replace('.base_layer', '')}:{tuple(p.shape)}".encode())
        h.update(sample.numpy().tobytes())
    name = getattr(cfg, "_name_or_path", "") if cfg is not None else ""
    return f"{Path(str(name)).name or type(inner).__name__}:{h.hexdigest()[:16]}"
