"""Distillation (KL) and cross-entropy losses on aligned answer positions.

The PD loss is the paper's Eq. 1: the forward KL(teacher || student) per answer token,
summed over the vocabulary with both softmaxes at temperature T (logits divided by T),
averaged over each sample's answer tokens, then over the samples of the batch. The
teacher sees the passage, the student does not. The regularised variant (pd_reg, the
paper's Eq. 2) adds instruction-response rows whose teacher is the base model (the
adapter off) on the very same sequence; for this module those rows are ordinary rows
with another teacher (see :func:`pd.train.methods.batch_loss`).

The per-token terms live in :mod:`pd.train.token_losses`; this module chunks, masks and
reduces them. Inputs are already gathered at the answer positions (see
:mod:`pd.train.batch`): student and teacher tensors of shape [B, A, ...] and a bool
``mask`` [B, A]. A sample without answer tokens is left out of the mean, never NaN. The
T^2 factor of classic distillation is an option, off by default as in the authors' code.
KL values and cross-entropies are in nats.

Memory: only answer positions are computed (padding is skipped), in chunks of
``chunk_size`` answer tokens. With ``*_from_hidden`` the student's logits are made from its
final hidden states chunk by chunk and recomputed in the backward pass
(``torch.utils.checkpoint``), so [B x A x V] float32 logits never exist at once, forward
or backward; a chunk's logits are upcast to float32 only inside that chunk.

Wrong shapes or arguments here are bugs of the caller (user settings are validated
before they reach the losses) and raise ``ValueError``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from pd.train.settings import DIRECTIONS
from pd.train.targets import TopKTargets
from pd.train.token_losses import token_cross_entropy, token_kl, token_kl_topk

REDUCTIONS = ("mean", "sample", "token")


# --------------------------------------------------------------------------- reduction


def answer_weights(mask: Tensor) -> Tensor:
    """The per-token weights of the loss's reduction (mean over tokens, then over samples).

    Args:
        mask: [B, A] answer mask.

    Returns:
        [B, A] float32: 1 / (n_b * number of samples with answer tokens) on sample b's
        n_b answer tokens, 0 elsewhere; the weights sum to 1 (0 for an empty batch).
    """
    m = mask.bool()
    n = m.sum(1, keepdim=True)
    samples = (n > 0).sum()
    return m.float() / n.clamp(min=1).float() / samples.clamp(min=1).float()


def _reduce(values: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Per-token values [B, A] (0 on padding) -> the requested reduction."""
    if reduction == "token":
        return values
    n = mask.sum(1)
    per_sample = values.sum(1) / n.clamp(min=1)
    if reduction == "sample":
        return torch.where(n > 0, per_sample, float("nan"))
    return (values * answer_weights(mask)).sum()


def _check_common(mask: Tensor, lead: tuple, temperature: float, direction: str, reduction: str,
                  chunk_size: int | None) -> None:
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a [B, A] bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    if tuple(lead) != tuple(mask.shape):
        raise ValueError(f"inputs have leading shape {tuple(lead)} but the mask is {tuple(mask.shape)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"KL direction {direction!r}; allowed: {list(DIRECTIONS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r}; allowed: {list(REDUCTIONS)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of answer tokens or None, got {chunk_size}")


def _check_teacher(teacher: Tensor | TopKTargets, mask: Tensor, vocab: int) -> None:
    if isinstance(teacher, TopKTargets):
        if tuple(teacher.ids.shape[:-1]) != tuple(mask.shape):
            raise ValueError(f"teacher top-k targets are {tuple(teacher.ids.shape)}, "
                             f"expected {tuple(mask.shape)} + (k,)")
        if teacher.vocab_size != vocab:
            raise ValueError(f"teacher targets come from a vocabulary of {teacher.vocab_size}, the student has {vocab}")
        return
    if tuple(teacher.shape) != tuple(mask.shape) + (vocab,):
        raise ValueError(f"teacher logits are {tuple(teacher.shape)}, expected {tuple(mask.shape) + (vocab,)} "
                        "(same batch, answer length and vocabulary as the student)")


def _rows(teacher: Tensor | TopKTargets, idx: Tensor):
    """Rows ``idx`` of a [B, A, ...] teacher, flattened to [n, ...], detached."""
    if isinstance(teacher, TopKTargets):
        return teacher.map(lambda t: t.reshape(-1, *t.shape[2:]).index_select(0, idx.to(t.device)).detach())
    return teacher.reshape(-1, teacher.shape[-1]).index_select(0, idx.to(teacher.device)).detach()


def _chunked(student_rows: Tensor, mask: Tensor, chunk_size: int | None, per_token: Callable[[Tensor, Tensor], Tensor],
             reduction: str, recompute: bool, grad_params: bool = False) -> Tensor:
    """Run ``per_token(rows, flat_index)`` over answer tokens in chunks and reduce.

    ``student_rows`` is [B*A, D] (logits or hidden states). With ``recompute`` each
    chunk runs under non-reentrant checkpointing, so its float32 intermediates are
    freed after the forward and rebuilt in the backward.
    """
    flat = mask.reshape(-1).nonzero().squeeze(1).to(student_rows.device)
    values = torch.zeros(mask.numel(), dtype=torch.float32, device=student_rows.device)
    if flat.numel() == 0:
        keep = student_rows.reshape(-1)[:0].float().sum()  # 0, but part of the graph for backward()
        return _reduce(values.view(mask.shape) + keep, mask.to(values.device), reduction)
    step = flat.numel() if chunk_size is None else chunk_size
    need_grad = torch.is_grad_enabled() and (student_rows.requires_grad or grad_params)
    parts = []
    for start in range(0, flat.numel(), step):
        idx = flat[start:start + step]
        rows = student_rows.index_select(0, idx)
        if recompute and need_grad:
            parts.append(checkpoint(per_token, rows, idx, use_reentrant=False))
        else:
            parts.append(per_token(rows, idx))
    values = values.index_put((flat,), torch.cat(parts))
    return _reduce(values.view(mask.shape), mask.to(values.device), reduction)


# --------------------------------------------------------------------------- public losses


def kl_divergence(student_logits: Tensor, teacher_logits: Tensor | TopKTargets, mask: Tensor, *,
                  temperature: float = 2.0, direction: str = "forward", t2_scale: bool = False,
                  chunk_size: int | None = None, reduction: str = "mean") -> Tensor:
    """The PD loss from student logits: the paper's Eq. 1 with ``direction="forward"``.

    Per answer token KL(teacher || student) over the vocabulary, both softmaxes at
    temperature T; averaged over each sample's answer tokens, then over the samples.

    Args:
        student_logits: [B, A, V] student logits at the answer positions.
        teacher_logits: [B, A, V] teacher logits (any dtype, treated as constant), or
            cached :class:`~pd.train.targets.TopKTargets` with tensors [B, A, k].
        mask: [B, A] bool, True on answer tokens.
        temperature: T > 0.
        direction: "forward" (KL(teacher || student), the paper's) or "reverse"
            (KL(student || teacher)).
        t2_scale: multiply by T^2 (classic distillation; off in the paper's code).
        chunk_size: answer tokens upcast to float32 at a time (recomputed in backward);
            None: all at once.
        reduction: "mean" (scalar, the paper's), "sample" ([B], NaN for samples without
            answer tokens) or "token" ([B, A], 0 on padding).

    Returns:
        The loss in nats, float32, shaped by ``reduction``.

    Raises:
        ValueError: shapes that do not match the mask, or an unknown argument value.
        ConfigError: top-k targets cached for another temperature.
    """
    _check_common(mask, student_logits.shape[:-1], temperature, direction, reduction, chunk_size)
    vocab = student_logits.shape[-1]
    _check_teacher(teacher_logits, mask, vocab)
    scale = temperature * temperature if t2_scale else 1.0
    kl_fn = token_kl_topk if isinstance(teacher_logits, TopKTargets) else token_kl

    def per_token(rows: Tensor, idx: Tensor) -> Tensor:
        return kl_fn(rows, _rows(teacher_logits, idx), temperature, direction) * scale

    return _chunked(student_logits.reshape(-1, vocab), mask, chunk_size, per_token, reduction,
                    recompute=chunk_size is not None)


def cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor, *, chunk_size: int | None = None,
                  reduction: str = "mean") -> Tensor:
    """Cross-entropy of the answer tokens (the SFT-style methods' loss), reduced like the KL.

    Args:
        logits: [B, A, V] logits at the answer positions.
        labels: [B, A] answer token ids.
        mask: [B, A] bool, True on answer tokens.
        chunk_size: answer tokens upcast to float32 at a time; None: all at once.
        reduction: "mean", "sample" or "token" as in :func:`kl_divergence`.

    Returns:
        The loss in nats, float32, shaped by ``reduction``.

    Raises:
        ValueError: shapes that do not match the mask, or an unknown argument value.
    """
    _check_common(mask, logits.shape[:-1], 1.0, "forward", reduction, chunk_size)
    if tuple(labels.shape) != tuple(mask.shape):
        raise ValueError(f"labels are {tuple(labels.shape)}, expected {tuple(mask.shape)}")
    flat_labels = labels.reshape(-1).to(logits.device)

    def per_token(rows: Tensor, idx: Tensor) -> Tensor:
        return token_cross_entropy(rows, flat_labels.index_select(0, idx))

    return _chunked(logits.reshape(-1, logits.shape[-1]), mask, chunk_size, per_token, reduction,
                    recompute=chunk_size is not None)


def _head_params(lm_head: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in lm_head.parameters())


def _check_hidden(hidden: Tensor, lm_head: torch.nn.Module) -> int:
    weight = getattr(lm_head, "weight", None)
    if weight is None:
        raise ValueError(f"lm_head {type(lm_head).__name__} has no .weight; pass the model's output embedding "
                        "(model.get_output_embeddings())")
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden states have size {hidden.shape[-1]}, lm_head expects {weight.shape[-1]}")
    return int(weight.shape[0])


def kl_from_hidden(student_hidden: Tensor, lm_head: torch.nn.Module, teacher: Tensor | TopKTargets, mask: Tensor, *,
                   temperature: float = 2.0, direction: str = "forward", t2_scale: bool = False,
                   chunk_size: int | None = 128, reduction: str = "mean") -> Tensor:
    """The PD loss (Eq. 1 when forward) from the student's final hidden states: what training uses.

    ``lm_head`` is applied to ``chunk_size`` answer tokens at a time and recomputed in the
    backward pass, so [B, A, V] student logits never exist; gradients reach
    ``student_hidden`` and any trainable lm_head parameters. Same value as
    :func:`kl_divergence` on ``lm_head(student_hidden)``.

    Args:
        student_hidden: [B, A, H] final (post-norm) hidden states at the answer positions.
        lm_head: the student's output embedding (a module with ``.weight`` [V, H]).
        teacher: [B, A, V] teacher logits or :class:`~pd.train.targets.TopKTargets`.
        mask: [B, A] bool, True on answer tokens.
        temperature, direction, t2_scale, reduction: as in :func:`kl_divergence`.
        chunk_size: answer tokens per head projection (default 128); None: all at once
            (plain autograd).

    Returns:
        The loss in nats, float32, shaped by ``reduction``.

    Raises:
        ValueError: shapes that do not match, a head without ``.weight``, or an unknown
            argument value.
        ConfigError: top-k targets cached for another temperature.
    """
    _check_common(mask, student_hidden.shape[:-1], temperature, direction, reduction, chunk_size)
    vocab = _check_hidden(student_hidden, lm_head)
    _check_teacher(teacher, mask, vocab)
    scale = temperature * temperature if t2_scale else 1.0
    kl_fn = token_kl_topk if isinstance(teacher, TopKTargets) else token_kl

    def per_token(rows: Tensor, idx: Tensor) -> Tensor:
        return kl_fn(lm_head(rows), _rows(teacher, idx), temperature, direction) * scale

    return _chunked(student_hidden.reshape(-1, student_hidden.shape[-1]), mask, chunk_size, per_token, reduction,
                    recompute=chunk_size is not None, grad_params=_head_params(lm_head))


def cross_entropy_from_hidden(hidden: Tensor, lm_head: torch.nn.Module, labels: Tensor, mask: Tensor, *,
                              chunk_size: int | None = 128, reduction: str = "mean") -> Tensor:
    """:func:`cross_entropy` from final hidden states, the lm_head applied in chunks (recomputed in backward).

    Args:
        hidden: [B, A, H] final hidden states at the answer positions.
        lm_head: the output embedding (``.weight`` [V, H]).
        labels: [B, A] answer token ids.
        mask: [B, A] bool, True on answer tokens.
        chunk_size: answer tokens per head projection (default 128); None: all at once.
        reduction: "mean", "sample" or "token".

    Returns:
        The loss in nats, float32, shaped by ``reduction``.

    Raises:
        ValueError: shapes that do not match, a head without ``.weight``, or an unknown
            argument value.
    """
    _check_common(mask, hidden.shape[:-1], 1.0, "forward", reduction, chunk_size)
    _check_hidden(hidden, lm_head)
    if tuple(labels.shape) != tuple(mask.shape):
        raise ValueError(f"labels are {tuple(labels.shape)}, expected {tuple(mask.shape)}")
    flat_labels = labels.reshape(-1).to(hidden.device)

    def per_token(rows: Tensor, idx: Tensor) -> Tensor:
        return token_cross_entropy(lm_head(rows), flat_labels.index_select(0, idx))

    return _chunked(hidden.reshape(-1, hidden.shape[-1]), mask, chunk_size, per_token, reduction,
                    recompute=chunk_size is not None, grad_params=_head_params(lm_head))
