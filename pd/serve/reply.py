"""What pd.serve does with a checked generation request: context check, generation, stop strings, logprobs.

:class:`Completer` turns a :class:`pd.serve.request.GenerationRequest` into samples
(text, finish reason, tokens generated and, when asked, log-probabilities);
:func:`chat_response` and :func:`completion_response` shape them as OpenAI's API does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from pd.generate.base import Completion, SamplingParams
from pd.serve.request import GenerationRequest, RequestError

DEFAULT_MAX_TOKENS = 512  # when a request gives no max_tokens (less where the context has less room)


def context_length(generator) -> int | None:
    """The generator's context in tokens: its ``context_length``, else its model's ``max_position_embeddings``.

    Returns:
        The number of positions the model takes, or None when the generator does not tell.
    """
    n = getattr(generator, "context_length", None)
    if n is None:
        n = getattr(getattr(getattr(generator, "model", None), "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def _earliest_stop(text: str, stop: list[str]) -> tuple[int, str] | None:
    """(index, stop string) of the earliest stop string in ``text``, or None."""
    found = [(text.find(s), s) for s in stop if s in text]
    return min(found) if found else None


def _first_prefix(tok, ids: list[int], reaches: Callable[[int], bool]) -> int:
    """The fewest leading tokens of ``ids`` whose decoded length ``reaches(n)``; len(ids)+1 when none does."""
    lo, hi = 0, len(ids) + 1
    while lo < hi:  # the decoded length grows with the number of tokens
        mid = (lo + hi) // 2
        if mid <= len(ids) and reaches(len(tok.decode(ids[:mid], skip_special_tokens=True))):
            hi = mid
        else:
            lo = mid + 1
    return lo


def token_logprobs(generator, prompt_ids: list[int], ids: list[int],
                   top: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """Log-probabilities of generated tokens and their top alternatives, from one forward pass.

    Args:
        generator: a generator with ``model`` (a causal LM) and ``device``.
        prompt_ids: the prompt's token ids.
        ids: the generated token ids that follow it.
        top: how many alternatives per position (0: none).

    Returns:
        Per generated token: (its log-probability, [(token id, log-probability)] of the
        ``top`` most likely tokens at that position), under the untempered distribution.
    """
    import torch

    if not ids:
        return []
    x = torch.tensor([prompt_ids + ids], device=generator.device)
    with torch.inference_mode():
        logits = generator.model(input_ids=x, logits_to_keep=len(ids) + 1).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1)
    chosen = lp.gather(-1, torch.tensor(ids, device=lp.device)[:, None])[:, 0].tolist()
    if not top:
        return [(c, []) for c in chosen]
    vals, idx = lp.topk(top, dim=-1)
    return [(c, list(zip(i, v))) for c, i, v in zip(chosen, idx.tolist(), vals.tolist())]


def cut_at_stop(tok, comp: Completion, stop: list[str]) -> tuple[str, str, int, list[int]]:
    """A completion cut before the earliest of the ``stop`` strings, as OpenAI's ``stop`` does.

    Args:
        tok: the model's tokenizer, or None (then token counts are the completion's own).
        comp: the completion as generated (up to max_tokens or the end of turn).
        stop: the stop strings (may be empty).

    Returns:
        (text, finish reason, tokens generated up to and including the stop string,
        token ids of the kept text). Without a stop string in the text, the completion's
        own text and reason, ``n_tokens`` plus the end-of-turn token when it ended its turn.
    """
    ids = list(comp.token_ids)
    counted = comp.n_tokens + (comp.finish_reason == "stop")  # the end-of-turn token counts, as servers count it
    hit = _earliest_stop(comp.text, stop)
    if hit is None:
        return comp.text, comp.finish_reason, counted, ids
    at, s = hit
    if tok is None or not ids:
        return comp.text[:at], "stop", comp.n_tokens, []
    used = min(_first_prefix(tok, ids, lambda n: n >= at + len(s)), len(ids))
    kept = _first_prefix(tok, ids, lambda n: n > at) - 1
    return comp.text[:at], "stop", used, ids[:kept]


def chat_logprobs(tok, scored: list[tuple[int, tuple[float, list[tuple[int, float]]]]]) -> dict:
    """OpenAI's chat ``logprobs`` object from (token id, (log-probability, alternatives)) per token."""

    def entry(i, lp):
        t = tok.decode([i])
        return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}

    return {"content": [dict(entry(i, lp), top_logprobs=[entry(j, v) for j, v in alts]) for i, (lp, alts) in scored],
            "refusal": None}


def completion_logprobs(tok, scored: list[tuple[int, tuple[float, list[tuple[int, float]]]]]) -> dict:
    """OpenAI's legacy completions ``logprobs`` object (tokens, token_logprobs, top_logprobs, text_offset)."""
    tokens = [tok.decode([i]) for i, _ in scored]
    offsets = [sum(len(t) for t in tokens[:k]) for k in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": [lp for _, (lp, _) in scored],
            "top_logprobs": [{tok.decode([j]): v for j, v in alts} for _, (_, alts) in scored], "text_offset": offsets}


class Completer:
    """What the endpoints do with a checked request: check the context, generate, cut, score."""

    def __init__(self, generator):
        """Serve ``generator`` (a pd.generate Generator; ``tokenizer`` and ``model`` enable counts and logprobs)."""
        self.generator = generator
        self.tok = getattr(generator, "tokenizer", None)
        self.context = context_length(generator)

    def max_new_tokens(self, req: GenerationRequest, prompt_ids: list[int]) -> int:
        """The request's ``max_tokens``, or as many as fit up to :data:`DEFAULT_MAX_TOKENS`.

        Raises:
            RequestError: 400 when the prompt plus ``max_tokens`` exceeds the model's context
                (the message gives both numbers and the context).
        """
        p = len(prompt_ids)
        if self.context is None:
            return req.max_tokens or DEFAULT_MAX_TOKENS
        if req.max_tokens is None:
            if p >= self.context:
                raise RequestError(400, f"the prompt has {p} tokens; the model's context is {self.context} tokens",
                                   "context_length_exceeded", "messages")
            return min(DEFAULT_MAX_TOKENS, self.context - p)
        if p + req.max_tokens > self.context:
            raise RequestError(400, f"prompt ({p} tokens) + max_tokens ({req.max_tokens}) = {p + req.max_tokens} "
                                    f"exceeds the model's context of {self.context} tokens",
                               "context_length_exceeded", "max_tokens")
        return req.max_tokens

    def prepare(self, req: GenerationRequest) -> tuple[list[int], SamplingParams]:
        """The prompt's token ids and the sampling parameters of a request, checked against the context.

        Raises:
            RequestError: 400 for a context overflow or logprobs on a backend without a local model.
            PDError: the conversation cannot be rendered (e.g. no chat template).
        """
        if req.logprobs is not None and (self.tok is None or getattr(self.generator, "model", None) is None):
            raise RequestError(400, "'logprobs' is not available for this model's backend", param="logprobs")
        prompt = self.generator.prompt(req.conversation)
        prompt_ids = self.tok.encode(prompt, add_special_tokens=False) if self.tok is not None else []
        params = SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=req.seed,
                                n=req.n, max_new_tokens=self.max_new_tokens(req, prompt_ids))
        return prompt_ids, params

    def generate(self, req: GenerationRequest, prompt_ids: list[int], params: SamplingParams) -> list[dict]:
        """Per sample: text, finish_reason, tokens (generated) and scored (ids with log-probabilities, or None)."""
        out = []
        for comp in self.generator.generate([req.conversation], params)[0]:
            text, reason, used, ids = cut_at_stop(self.tok, comp, req.stop)
            scored = None
            if req.logprobs is not None:
                scored = list(zip(ids, token_logprobs(self.generator, prompt_ids, ids, req.logprobs)))
            out.append({"text": text, "finish_reason": reason, "tokens": used, "scored": scored})
        return out


def usage(prompt_ids: list[int], samples: list[dict]) -> dict:
    done = sum(s["tokens"] for s in samples)
    return {"prompt_tokens": len(prompt_ids), "completion_tokens": done, "total_tokens": len(prompt_ids) + done}


def chat_response(model_name: str, tok, prompt_ids: list[int], samples: list[dict]) -> dict:
    """A ``chat.completion`` object from :meth:`Completer.generate`'s samples."""
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": j, "message": {"role": "assistant", "content": s["text"]},
                         "finish_reason": s["finish_reason"],
                         "logprobs": None if s["scored"] is None else chat_logprobs(tok, s["scored"])}
                        for j, s in enumerate(samples)],
            "usage": usage(prompt_ids, samples)}


def completion_response(model_name: str, tok, prompt_ids: list[int], samples: list[dict]) -> dict:
    """A ``text_completion`` object from :meth:`Completer.generate`'s samples."""
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": j, "text": s["text"], "finish_reason": s["finish_reason"],
                         "logprobs": None if s["scored"] is None else completion_logprobs(tok, s["scored"])}
                        for j, s in enumerate(samples)],
            "usage": usage(prompt_ids, samples)}
