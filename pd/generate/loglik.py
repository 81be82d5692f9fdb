"""Gold-answer log-likelihood: a judge-free, sampling-free measure of what a model knows.

For a test item asked with the cell's own evaluation prompt (closed-book, or with the
retrieved passages), the model reads the prompt and then the gold answer as the
assistant's reply (teacher forcing); the measure is

    log p(a | prompt) = sum_j log softmax(z_j)[a_j]        (natural log, nats)

over the answer's tokens a_1..a_n (the answer text alone, without an end-of-turn token:
the gold answers are short spans, not whole replies), with z_j the logits at the
position before a_j. It is reported in total and per token (divided by n), each the
best over the item's gold aliases. Unlike substring match over a handful of questions
it moves with every bit of probability an adapter puts on the right answer, so it
separates methods where exact answers rarely match (a small model's case).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class GoldLogLik:
    """The best log-likelihood over one item's gold aliases.

    ``total``: max over aliases of log p(alias | prompt), nats. ``per_token``: max over
    aliases of that divided by the alias's token count, nats per token. ``alias``: the
    alias with the best total; ``tokens``: its token count.
    """

    total: float
    per_token: float
    alias: str
    tokens: int

    def as_row(self) -> dict:
        """The fields an evaluation row carries."""
        return {"gold_logprob": self.total, "gold_logprob_per_token": self.per_token, "gold_alias": self.alias,
                "gold_tokens": self.tokens}


def answer_logprobs(model, prompts: Sequence[list[int]], answers: Sequence[list[int]], pad_id: int,
                    batch_size: int = 8) -> list[torch.Tensor]:
    """Teacher-forced log-probabilities of each answer's tokens after its prompt.

    Sequences are left-padded (with position ids that skip the padding, as in
    generation) so that every answer ends at the last column and only the last
    ``max answer length`` positions' logits are computed (``logits_to_keep``): the
    ``[B, L, V]`` logits of the whole sequence are never held.

    Args:
        model: a causal LM (a PeftModel too), in eval mode.
        prompts: token ids of each prompt (the chat template up to the assistant's turn).
        answers: token ids of each answer, aligned with ``prompts``; each non-empty.
        pad_id: the id written into padding positions (masked out).
        batch_size: sequences per forward pass.

    Returns:
        One float32 CPU tensor ``[len(answer)]`` of log-probabilities (nats) per pair.

    Raises:
        ValueError: lengths differ or an answer is empty (a bug in the caller).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if any(not a for a in answers):
        raise ValueError("an answer has no tokens")
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(answers[i])))
    out: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            seqs = [list(prompts[i]) + list(answers[i]) for i in batch]
            width = max(len(s) for s in seqs)
            keep = max(len(answers[i]) for i in batch) + 1
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[r, width - len(s):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           logits_to_keep=keep).logits.float()  # [B, keep, V]
            logp = torch.log_softmax(logits, dim=-1)
            for r, i in enumerate(batch):
                n = len(answers[i])
                # Column keep-1 predicts the token after the last; answer token j sits at width-n+j and
                # is predicted by the column before it: keep-1-n+j in the kept block.
                cols = torch.arange(keep - 1 - n, keep - 1, device=logp.device)
                tgt = torch.tensor(answers[i], device=logp.device)
                out[i] = logp[r, cols, tgt].cpu()
    return [out[i] for i in range(len(prompts))]


def alias_tokens(tokenizer, gold: Sequence[Sequence[str]]) -> list[list[tuple[str, list[int]]]]:
    """Each item's distinct non-empty gold aliases with their token ids (no special tokens).

    Args:
        tokenizer: the model's tokenizer.
        gold: each item's gold answers (aliases).

    Returns:
        Per item, ``(alias, token ids)`` in first-seen order; empty for an item whose aliases
        are all blank or tokenize to nothing.
    """
    out = []
    for aliases in gold:
        pairs = []
        for alias in dict.fromkeys(a.strip() for a in aliases if a and a.strip()):
            ids = tokenizer.encode(alias, add_special_tokens=False)
            if ids:
                pairs.append((alias, ids))
        out.append(pairs)
    return out


def best_alias(aliases: Sequence[tuple[str, list[int]]], logps: Sequence[torch.Tensor]) -> GoldLogLik | None:
    """The best of one item's aliases (:class:`GoldLogLik`) from their token log-probabilities.

    Args:
        aliases: the item's ``(alias, token ids)`` (:func:`alias_tokens`).
        logps: per alias, the ``[len(ids)]`` log-probabilities of its tokens (nats).

    Returns:
        Best total and best per-token log-likelihood over the aliases; None without aliases.
    """
    best: GoldLogLik | None = None
    for (alias, _), lp in zip(aliases, logps):
        total, n = float(lp.sum()), int(lp.numel())
        if best is None:
            best = GoldLogLik(total, total / n, alias, n)
        else:
            top = (total, alias, n) if total > best.total else (best.total, best.alias, best.tokens)
            best = GoldLogLik(top[0], max(best.per_token, total / n), top[1], top[2])
    return best


def gold_loglik(model, tokenizer, prompt_texts: Sequence[str], gold: Sequence[Sequence[str]],
                batch_size: int = 8) -> list[GoldLogLik | None]:
    """The best gold-alias log-likelihood of each item (:class:`GoldLogLik`), in its own forward passes.

    (:meth:`pd.generate.transformers_backend.TransformersGenerator.generate_scored` computes
    the same inside the generation's prefill.)

    Args:
        model: a causal LM (a PeftModel too), in eval mode.
        tokenizer: its tokenizer.
        prompt_texts: each item's rendered prompt (chat template up to the assistant's turn,
            as the generator renders it: ``TransformersGenerator.prompt``).
        gold: each item's gold answers (aliases).
        batch_size: sequences per forward pass.

    Returns:
        One result per item, None for an item without a non-empty alias.
    """
    items = alias_tokens(tokenizer, gold)
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompt_texts]
    prompts = [encoded[i] for i, pairs in enumerate(items) for _ in pairs]
    answers = [ids for pairs in items for _, ids in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    logps = iter(answer_logprobs(model, prompts, answers, pad, batch_size))
    return [best_alias(pairs, [next(logps) for _ in pairs]) for pairs in items]
