"""A bfloat16 model's float32 LoRA runs under bfloat16 autocast: the same hidden states and gradients
within bfloat16 rounding, float32 gradients, and the teacher (adapter off) still equals the student at
initialisation."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from pd.models import load_model
from pd.train.lora import attach_lora
from pd.train.teacher import adapter_disabled, answer_hidden, mixed_precision

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 12), generator=g)
    att = torch.ones_like(ids)
    att[2, 9:] = 0  # one right-padded row
    return ids, att, torch.arange(4, 8).expand(3, -1)


def _lora(spec, dtype: str):
    """LoRA on ``spec`` in ``dtype``, with the same non-zero A and B (float32) for every dtype."""
    model = attach_lora(load_model(dataclasses.replace(spec, dtype=dtype), device="cpu"), rank=8, alpha=16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def _grads(model, ctx=None):
    """Final hidden states at some positions and the LoRA gradient of a linear function of them (float64)."""
    import pd.train.teacher as teacher

    ids, att, pos = _batch(500)
    if ctx is not None:
        real, teacher.mixed_precision = teacher.mixed_precision, lambda m: ctx
    try:
        hidden = answer_hidden(model, ids, att, pos)
    finally:
        if ctx is not None:
            teacher.mixed_precision = real
    (hidden.float() * torch.linspace(-1, 1, hidden.shape[-1])).sum().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad.dtype == torch.float32 for p in trainable)
    grads = torch.cat([p.grad.flatten().double() for p in trainable])
    model.zero_grad()
    return hidden.detach().double(), grads


def test_float32_models_run_without_autocast(tiny_llama):
    assert isinstance(mixed_precision(_lora(tiny_llama.spec, "float32")), contextlib.nullcontext)
    assert isinstance(mixed_precision(load_model(dataclasses.replace(tiny_llama.spec, dtype="bfloat16"))),
                      contextlib.nullcontext)  # no float32 adapter: nothing to mix


@pytest.mark.parametrize("name", ["tiny_llama", "smollm2"])
def test_bfloat16_lora_under_autocast_is_as_close_to_float32_as_float32_lora(request, name):
    """Against the float32 model with the same adapter: the autocast step's hidden states and gradients
    are within bfloat16 rounding, and no farther than those of float32 LoRA on the bfloat16 model."""
    spec = request.getfixturevalue(name).spec
    h_ref, g_ref = _grads(_lora(spec, "float32"))
    model = _lora(spec, "bfloat16")
    assert isinstance(mixed_precision(model), torch.autocast)
    h_mixed, g_mixed = _grads(model)
    h_plain, g_plain = _grads(model, contextlib.nullcontext())
    err = {k: float((g - g_ref).norm() / g_ref.norm()) for k, g in (("autocast", g_mixed), ("float32 LoRA", g_plain))}
    assert err["autocast"] < 0.05 and err["autocast"] < 1.5 * err["float32 LoRA"] + 1e-3, err
    scale = float(h_ref.abs().max())
    assert float((h_mixed - h_ref).abs().max()) < 0.05 * scale


def test_teacher_equals_the_initial_student_under_autocast(tiny_llama):
    model = attach_lora(load_model(dataclasses.replace(tiny_llama.spec, dtype="bfloat16"), device="cpu"),
                        rank=8, alpha=16)  # B = 0 at initialisation
    ids, att, pos = _batch(tiny_llama.tokenizer.vocab_size)
    with torch.no_grad():
        student = answer_hidden(model, ids, att, pos)
        with adapter_disabled(model) as base:
            teacher = answer_hidden(base, ids, att, pos)
    assert torch.equal(student, teacher)
