"""A disk cache in front of any generator: a rerun with the same inputs makes no model call.

The key of one conversation's completions is a content hash of (the generator's
``name``, which holds the model identity and the adapter weights' hash, or for an
OpenAI-compatible server a fingerprint of what it serves; the conversation; the
sampling parameters). A retrained adapter has new weights, hence a new hash, hence
misses. Entries record the generator's name with any credentials redacted. Each entry
is one JSON file written atomically (temporary file + rename), so two processes sharing
the cache directory at worst both compute an entry and the last rename wins with an
equally valid file; a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pd.generate.base import Completion, Conversation, SamplingParams
from pd.io import stable_hash, write_json
from pd.redact import redact_text

CACHE_VERSION = 1


def completion_to_dict(c: Completion) -> dict:
    d = {"text": c.text, "finish_reason": c.finish_reason, "n_tokens": c.n_tokens, "token_ids": list(c.token_ids)}
    if c.top_logprobs is not None:
        d["top_logprobs"] = [{str(k): v for k, v in step.items()} for step in c.top_logprobs]
    return d


def completion_from_dict(d: dict) -> Completion:
    top = d.get("top_logprobs")
    return Completion(text=d["text"], finish_reason=d["finish_reason"], n_tokens=d["n_tokens"],
                      token_ids=list(d.get("token_ids", [])),
                      top_logprobs=[{int(k): v for k, v in step.items()} for step in top] if top is not None else None)


CHUNK = 256  # conversations generated between cache writes


class CachedGenerator:
    """Wraps ``inner``; ``hits`` and ``misses`` count conversations served and computed.

    Missing conversations are generated ``chunk`` at a time and each chunk's entries are
    written before the next starts, so a job killed at its time limit keeps what it
    finished and its retry generates only the rest.
    """

    def __init__(self, inner, cache_dir: str | os.PathLike, chunk: int = CHUNK):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.inner = inner
        self.chunk = chunk
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0

    def __getattr__(self, attr):  # tokenizer, spec, backend, ... of the wrapped generator
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    @property
    def name(self) -> str:
        """The wrapped generator's name (read when first needed: an OpenAI-compatible one probes its server)."""
        return self.inner.name

    def key(self, conversation: Conversation, params: SamplingParams) -> str:
        return stable_hash({"v": CACHE_VERSION, "generator": self.name, "conversation": conversation,
                            "params": params.as_dict()}, 32)

    def path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _load(self, key: str) -> list[Completion] | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            entry = json.loads(p.read_text(encoding="utf-8"))
            return [completion_from_dict(d) for d in entry["completions"]]
        except (ValueError, KeyError, TypeError):
            return None  # unreadable entry (e.g. written by an incompatible version): recompute and overwrite

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[list[Completion]]:
        return self.generate_scored(conversations, params)[0]

    def generate_scored(self, conversations: list[Conversation], params: SamplingParams,
                        continuations: list[list[list[int]]] | None = None):
        """As the wrapped generator's ``generate_scored`` (continuations scored in the generation's
        prefill); conversations served from the cache have their continuations scored by the wrapped
        generator's ``score`` instead. Scores are not cached: they cost a fraction of a generation.

        Args:
            conversations: the requests.
            params: the sampling parameters.
            continuations: None, or per conversation token-id sequences to score (the wrapped
                generator must then have ``generate_scored`` and ``score``).

        Returns:
            ``(completions, scores)`` as :meth:`pd.generate.transformers_backend.TransformersGenerator.generate_scored`.
        """
        keys = [self.key(c, params) for c in conversations]
        conts = continuations if continuations is not None else [[] for _ in conversations]
        results: dict[str, list[Completion]] = {}
        scores: dict[str, list] = {}
        todo: dict[str, tuple[Conversation, list]] = {}
        for k, c, cs in zip(keys, conversations, conts):
            if k in results or k in todo:
                continue
            got = self._load(k)
            if got is None:
                todo[k] = (c, cs)
            else:
                results[k] = got
        self.hits += len(conversations) - len(todo)
        self.misses += len(todo)
        hit = {k: (c, cs) for k, c, cs in zip(keys, conversations, conts) if k in results and cs}
        if hit:
            scores.update(zip(hit, self.inner.score([c for c, _ in hit.values()], [cs for _, cs in hit.values()])))
        pending = list(todo.items())
        for start in range(0, len(pending), self.chunk):
            part = pending[start:start + self.chunk]
            if continuations is None:
                outs, got = self.inner.generate([c for _, (c, _) in part], params), [[] for _ in part]
            else:
                outs, got = self.inner.generate_scored([c for _, (c, _) in part], params, [cs for _, (_, cs) in part])
            for (k, (c, _)), comps, lps in zip(part, outs, got):
                write_json(self.path(k), {"generator": redact_text(self.name), "conversation": c,
                                          "params": params.as_dict(),
                                          "completions": [completion_to_dict(x) for x in comps]})
                results[k] = comps
                scores[k] = lps
        return [results[k] for k in keys], [scores.get(k, []) for k in keys]
