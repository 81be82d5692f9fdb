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


def gold_loglik(model, tokenizer, prompt_texts: Sequence[str], gold: Sequence[Sequence[str]],
                batch_size: int = 8) -> list[GoldLogLik | None]:
    """The best gold-alias log-likelihood of each item (:class:`GoldLogLik`).

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
    pairs: list[tuple[int, str]] = []
    prompts, answers = [], []
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompt_texts]
    for i, aliases in enumerate(gold):
        for alias in dict.fromkeys(a.strip() for a in aliases if a and a.strip()):
            ids = tokenizer.encode(alias, add_special_tokens=False)
            if ids:
                pairs.append((i, alias))
                prompts.append(encoded[i])
                answers.append(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    logps = answer_logprobs(model, prompts, answers, pad, batch_size)
    best: list[GoldLogLik | None] = [None] * len(prompt_texts)
    for (i, alias), lp in zip(pairs, logps):
        total, n = float(lp.sum()), int(lp.numel())
        cur = best[i]
        if cur is None:
            best[i] = GoldLogLik(total, total / n, alias, n)
        else:
            top = (total, alias, n) if total > cur.total else (cur.total, cur.alias, cur.tokens)
            best[i] = GoldLogLik(top[0], max(cur.per_token, total / n), top[1], top[2])
    return best
