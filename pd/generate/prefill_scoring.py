"""Teacher-forced scores of short continuations on a prompt's prefilled KV cache.

The evaluation job both generates an answer and scores the gold answer under the same
prompt (:mod:`pd.generate.loglik`). Scoring in a pass of its own re-reads the whole prompt, which
with retrieved passages is most of the cost; here the continuations are scored on the
cache the generation's prefill has just built, so the prompt is read once:

    log p(a_j | prompt, a_<j) = z_j[a_j] - logsumexp(z_j)          (nats)

where z_1 is the prefill's last-position logits and z_2..z_n come from one forward pass
of a_1..a_{n-1} appended to the cache. The appended positions are cropped off again, so
decoding continues from the cache exactly as the prefill left it.
"""

from __future__ import annotations

import copy


def score_on_prefill(model, past, mask, last_logits, conts: list[list[list[int]]], pad_id: int,
                     cache_kw: str = "past_key_values") -> tuple[list[list], int]:
    """Log-probabilities of each batch row's continuations on its prefilled cache.

    Rows hold left-padded prompts (``mask``); one forward pass per continuation slot
    (row r's s-th continuation, right-padded to the slot's longest) appends its tokens
    after every row's prompt, and they are cropped off again (a cache that cannot be
    cropped is copied instead).

    Args:
        model: the causal LM that built ``past`` (a PeftModel too).
        past: its KV cache after the prefill of ``W`` prompt positions; left as it was.
        mask: ``[B, W]`` the prefill's attention mask (0 on left padding).
        last_logits: ``[B, V]`` float32 logits at the prompt's last position.
        conts: per row, token-id sequences to score (each non-empty; a row may have none).
        pad_id: the id written into padding positions (masked out).
        cache_kw: the forward argument that takes the cache (``past_key_values`` or ``cache``).

    Returns:
        Per row one float32 CPU tensor ``[len(continuation)]`` of log-probabilities (nats) per
        continuation, and the number of forward passes made.

    Raises:
        RuntimeError: the cache did not return to ``W`` positions after cropping.
    """
    import torch

    width = mask.shape[1]
    first = last_logits.log_softmax(dim=-1)
    out: list[list] = [[] for _ in conts]
    calls = 0
    for s in range(max((len(c) for c in conts), default=0)):
        seqs = [c[s] if s < len(c) else [] for c in conts]
        span = max(len(q) for q in seqs) - 1  # a continuation's last token is only predicted
        got = [[first[r, q[0]]] if q else [] for r, q in enumerate(seqs)]
        if span > 0:
            ids = torch.full((len(seqs), span), pad_id, dtype=torch.long)
            cmask = torch.zeros_like(ids)
            for r, q in enumerate(seqs):
                if len(q) > 1:
                    ids[r, :len(q) - 1] = torch.tensor(q[:-1], dtype=torch.long)
                    cmask[r, :len(q) - 1] = 1
            full = torch.cat([mask, cmask.to(mask.device)], dim=1)
            cache = past if past.is_croppable else copy.deepcopy(past)
            pos = (full.cumsum(-1) - 1).clamp(min=0)[:, width:]
            logits = model(input_ids=ids.to(mask.device), attention_mask=full, position_ids=pos, use_cache=True,
                           **{cache_kw: cache}).logits.float()  # [B, span, V]
            calls += 1
            if cache is past:
                crop_to(past, width, span)
            norm = logits.logsumexp(dim=-1)  # [B, span]
            for r, q in enumerate(seqs):
                if len(q) > 1:
                    tgt = torch.tensor(q[1:], device=logits.device)
                    cols = torch.arange(len(q) - 1, device=logits.device)
                    got[r].extend(logits[r, cols, tgt] - norm[r, cols])
        for r, q in enumerate(seqs):
            if q:
                out[r].append(torch.stack(got[r]).cpu())
    return out, calls


def crop_to(cache, width: int, added: int) -> None:
    """Drop the ``added`` positions last appended to a KV cache, back to ``width``.

    A negative ``crop`` removes that many positions in transformers 4 and 5 alike (5
    refuses a positive one); the result is checked.

    Raises:
        RuntimeError: the cache holds another number of positions afterwards.
    """
    cache.crop(-added)
    if cache.get_seq_length() != width:
        raise RuntimeError(f"KV cache crop left {cache.get_seq_length()} positions, expected {width}")
