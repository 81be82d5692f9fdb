"""Distillation (KL) and cross-entropy losses on aligned answer positions.

Inputs are already gathered at the answer positions (see :mod:`pd.train.batch`): student
and teacher tensors of shape [B, A, ...] and a bool ``mask`` [B, A]. The reduction is the
paper's: per answer token, KL summed over the vocabulary with both softmaxes at
temperature T; averaged over each sample's answer tokens; then averaged over the samples
that have at least one answer token (an all-masked sample is left out, never NaN). The
T^2 factor of classic distillation is an option, off by default as in the authors' code.

Memory: only answer positions are computed (padding is skipped), in chunks of
``chunk_size`` answer tokens. With ``*_from_hidden`` the student's logits are made from its
final hidden states chunk by chunk and recomputed in the backward pass
(``torch.utils.checkpoint``), so [B x A x V] float32 logits never exist at once, forward
or backward; a chunk's logits are upcast to float32 only inside that chunk.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from pd.errors import ConfigError, DataError
from pd.train.settings import DIRECTIONS
from pd.train.targets import TopKTargets

REDUCTIONS = ("mean", "sample", "token")


# --------------------------------------------------------------------------- per-token terms


def _kl_terms(logq: Tensor, logp: Tensor, direction: str) -> Tensor:
    """KL per row from float32 log-probabilities [n, K]; 0 * log 0 counts as 0."""
    if direction == "forward":  # KL(teacher || student)
        p = logp.exp()
        return torch.where(p > 0, p * (logp - logq), 0.0).sum(-1)
    q = logq.exp()  # reverse: KL(student || teacher)
    return torch.where(q > 0, q * (logq - logp), 0.0).sum(-1)


def token_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float, direction: str) -> Tensor:
    """KL per row of [n, V] logits at temperature T (float32)."""
    logq = F.log_softmax(student_logits.float() / temperature, -1)
    logp = F.log_softmax(teacher_logits.float() / temperature, -1)
    return _kl_terms(logq, logp, direction)


def token_kl_topk(student_logits: Tensor, targets: TopKTargets, temperature: float, direction: str) -> Tensor:
    """KL per row over the buckets {teacher's top-k ids} + {rest} (flat targets [n, k])."""
    logp, logp_rest = targets.log_probs_at(temperature)
    has_rest = targets.k < student_logits.shape[-1]
    if has_rest:
        logp = torch.cat([logp, logp_rest.unsqueeze(-1)], -1)
    # The stored log-probabilities are rounded (float16); renormalise the k (+ 1) buckets.
    logp = logp - torch.logsumexp(logp, -1, keepdim=True)
    return _TopKKL.apply(student_logits, targets.ids.long(), logp, float(temperature), direction == "forward",
                         has_rest)


class _TopKKL(torch.autograd.Function):
    """The bucketed KL of :func:`token_kl_topk` with its gradient written out.

    Autograd through the plain formula makes two log-sum-exps over the vocabulary, a
    scattered copy and their backward passes; the student's softmax q is all the gradient
    needs. With buckets b (top-k ids, rest), per row and z = logits / T:

    * forward KL(p || q): dKL/dz_j = q_j - p_j for a top-k id, q_j (1 - p_rest / q_rest) for the rest;
    * reverse KL(q || p): dKL/dz_j = q_j (c_b(j) - KL) with c_b = log q_b - log p_b;

    each divided by T. The rest mass q_rest is summed from q (not 1 - sum of the top-k),
    so it stays exact when small; below the float32 floor (1e-38) it is held there.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, logp: Tensor, temperature: float, forward_kl: bool,
                has_rest: bool) -> Tensor:
        z = logits.float()
        if temperature != 1.0:
            z = z.div_(temperature) if z is not logits else z / temperature  # in place only on our own copy
        logq_all = torch.log_softmax(z, -1)
        logq = logq_all.gather(-1, ids)
        q = logq_all.exp_()  # logq_all is not needed any more
        if has_rest:
            # Zero the top-k entries in place: q then holds the rest, and the backward pass
            # takes the top-k probabilities from logq.
            q_rest = q.scatter_(-1, ids, 0.0).sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
            logq = torch.cat([logq, q_rest.log()], -1)
        kl = _kl_terms(logq, logp, "forward" if forward_kl else "reverse")
        ctx.save_for_backward(q, ids, logq, logp, kl)
        ctx.temperature, ctx.forward_kl, ctx.has_rest, ctx.dtype = temperature, forward_kl, has_rest, logits.dtype
        return kl

    @staticmethod
    def backward(ctx, grad_kl: Tensor):
        q, ids, logq, logp, kl = ctx.saved_tensors  # q: zero at the top-k ids when there is a rest bucket
        k = ids.shape[-1]
        g = grad_kl[:, None] / ctx.temperature
        q_top = logq[:, :k].exp()
        if ctx.forward_kl:
            p = logp.exp()
            rest_scale = (1.0 - p[:, k:] / logq[:, k:].exp()) if ctx.has_rest else torch.zeros_like(g)
            top = q_top - p[:, :k]
        else:
            c = torch.where(logq.exp() > 0, logq - logp, 0.0) - kl[:, None]
            rest_scale = c[:, k:] if ctx.has_rest else torch.zeros_like(g)
            top = q_top * c[:, :k]
        grad = torch.mul(q, rest_scale * g).scatter_(-1, ids, top * g)
        return grad.to(ctx.dtype), None, None, None, None, None


def token_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """-log softmax(logits)[label] per row, in float32."""
    return -F.log_softmax(logits.float(), -1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy (nats) per row of [n, V] logits at temperature T."""
    logp = F.log_softmax(logits.float() / temperature, -1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, 0.0).sum(-1)


# --------------------------------------------------------------------------- reduction


def answer_weights(mask: Tensor) -> Tensor:
    """[B, A] float32: 1 / (n_b * number of non-empty samples) on answer tokens, else 0."""
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
        raise DataError(f"mask must be a [B, A] bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    if tuple(lead) != tuple(mask.shape):
        raise DataError(f"inputs have leading shape {tuple(lead)} but the mask is {tuple(mask.shape)}")
    if direction not in DIRECTIONS:
        raise ConfigError(f"KL direction {direction!r}; allowed: {list(DIRECTIONS)}")
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction {reduction!r}; allowed: {list(REDUCTIONS)}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive number of answer tokens or None, got {chunk_size}")


def _check_teacher(teacher: Tensor | TopKTargets, mask: Tensor, vocab: int) -> None:
    if isinstance(teacher, TopKTargets):
        if tuple(teacher.ids.shape[:-1]) != tuple(mask.shape):
            raise DataError(f"teacher top-k targets are {tuple(teacher.ids.shape)}, expected {tuple(mask.shape)} + (k,)")
        if teacher.vocab_size != vocab:
            raise DataError(f"teacher targets come from a vocabulary of {teacher.vocab_size}, the student has {vocab}")
        return
    if tuple(teacher.shape) != tuple(mask.shape) + (vocab,):
        raise DataError(f"teacher logits are {tuple(teacher.shape)}, expected {tuple(mask.shape) + (vocab,)} "
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
    """KL between teacher and student at answer positions; scalar (``reduction="mean"``).

    ``direction="forward"`` is KL(teacher || student), the paper's loss; ``"reverse"`` is
    KL(student || teacher). ``teacher_logits`` [B, A, V] (any dtype, treated as constant)
    or cached :class:`TopKTargets`. ``chunk_size`` answer tokens are upcast to float32 at a
    time (and recomputed in backward). ``reduction``: "mean" (the paper's), "sample"
    ([B], NaN for samples without answer tokens) or "token" ([B, A], 0 on padding).
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
    """Cross-entropy of ``labels`` [B, A] under ``logits`` [B, A, V], reduced like the KL."""
    _check_common(mask, logits.shape[:-1], 1.0, "forward", reduction, chunk_size)
    if tuple(labels.shape) != tuple(mask.shape):
        raise DataError(f"labels are {tuple(labels.shape)}, expected {tuple(mask.shape)}")
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
        raise DataError(f"lm_head {type(lm_head).__name__} has no .weight; pass the model's output embedding "
                        "(model.get_output_embeddings())")
    if hidden.shape[-1] != weight.shape[-1]:
        raise DataError(f"hidden states have size {hidden.shape[-1]}, lm_head expects {weight.shape[-1]}")
    return int(weight.shape[0])


def kl_from_hidden(student_hidden: Tensor, lm_head: torch.nn.Module, teacher: Tensor | TopKTargets, mask: Tensor, *,
                   temperature: float = 2.0, direction: str = "forward", t2_scale: bool = False,
                   chunk_size: int | None = 128, reduction: str = "mean") -> Tensor:
    """:func:`kl_divergence` from the student's final hidden states [B, A, H] at answer positions.

    ``lm_head`` is applied to ``chunk_size`` answer tokens at a time and recomputed in the
    backward pass; gradients reach ``student_hidden`` and any trainable lm_head
    parameters. ``chunk_size=None`` computes everything at once (plain autograd).
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
    """:func:`cross_entropy` from final hidden states [B, A, H], lm_head applied in chunks."""
    _check_common(mask, hidden.shape[:-1], 1.0, "forward", reduction, chunk_size)
    _check_hidden(hidden, lm_head)
    if tuple(labels.shape) != tuple(mask.shape):
        raise DataError(f"labels are {tuple(labels.shape)}, expected {tuple(mask.shape)}")
    flat_labels = labels.reshape(-1).to(hidden.device)

    def per_token(rows: Tensor, idx: Tensor) -> Tensor:
        return token_cross_entropy(lm_head(rows), flat_labels.index_select(0, idx))

    return _chunked(hidden.reshape(-1, hidden.shape[-1]), mask, chunk_size, per_token, reduction,
                    recompute=chunk_size is not None, grad_params=_head_params(lm_head))
