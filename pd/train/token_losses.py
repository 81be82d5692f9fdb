"""Per-token loss terms: KL, cross-entropy and entropy of one row of logits each.

Each function maps [n, V] logits (n answer tokens, V the vocabulary) to [n] float32
values in nats; :mod:`pd.train.losses` chunks, masks and reduces them. The KL against
cached top-k targets (:func:`token_kl_topk`) has its gradient written out
(:class:`_TopKKL`), checked against float64 autograd in tests/test_train_topk_grad.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pd.train.targets import TopKTargets


def kl_terms(logq: Tensor, logp: Tensor, direction: str) -> Tensor:
    """KL per row from log-probabilities over the same K outcomes; 0 * log 0 counts as 0.

    Args:
        logq: [n, K] float32 student log-probabilities.
        logp: [n, K] float32 teacher log-probabilities.
        direction: "forward" for KL(teacher || student) = sum p (log p - log q), "reverse"
            for KL(student || teacher).

    Returns:
        [n] float32 KL in nats.
    """
    if direction == "forward":  # KL(teacher || student)
        p = logp.exp()
        return torch.where(p > 0, p * (logp - logq), 0.0).sum(-1)
    q = logq.exp()  # reverse: KL(student || teacher)
    return torch.where(q > 0, q * (logq - logp), 0.0).sum(-1)


def token_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float, direction: str) -> Tensor:
    """KL per answer token from full logits at temperature T (Eq. 1's per-token term when forward).

    Args:
        student_logits: [n, V] logits (any float dtype; upcast to float32).
        teacher_logits: [n, V] logits.
        temperature: T > 0; both logits are divided by T before the softmax.
        direction: "forward" (KL(teacher || student)) or "reverse".

    Returns:
        [n] float32 KL in nats.
    """
    logq = F.log_softmax(student_logits.float() / temperature, -1)
    logp = F.log_softmax(teacher_logits.float() / temperature, -1)
    return kl_terms(logq, logp, direction)


def token_kl_topk(student_logits: Tensor, targets: TopKTargets, temperature: float, direction: str) -> Tensor:
    """KL per answer token against cached top-k targets, over the buckets {top-k ids} + {rest}.

    The student's distribution is summed into the same k (+ 1) buckets as the teacher's;
    with k = V this is :func:`token_kl`. The gradient is written out (see :class:`_TopKKL`).

    Args:
        student_logits: [n, V] logits.
        targets: flat :class:`~pd.train.targets.TopKTargets` ([n, k] ids and log-probabilities).
        temperature: T > 0, one of the temperatures the targets were cached for.
        direction: "forward" (KL(teacher || student)) or "reverse".

    Returns:
        [n] float32 KL in nats.

    Raises:
        ConfigError: the targets were cached for another temperature.
    """
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
        kl = kl_terms(logq, logp, "forward" if forward_kl else "reverse")
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
    """Cross-entropy per answer token: -log softmax(logits)[label].

    Args:
        logits: [n, V] logits.
        labels: [n] token ids.

    Returns:
        [n] float32 cross-entropy in nats.
    """
    return -F.log_softmax(logits.float(), -1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy per row of logits at temperature T.

    Args:
        logits: [n, V] logits.
        temperature: T > 0 (logits divided by T before the softmax).

    Returns:
        [n] float32 entropy in nats.
    """
    logp = F.log_softmax(logits.float() / temperature, -1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, 0.0).sum(-1)
