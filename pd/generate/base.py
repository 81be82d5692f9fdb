"""The one generation interface every backend implements.

Requests are chat conversations (lists of ``{"role", "content"}``), not rendered text,
so the same request can go to a local model (rendered with its chat template) or to an
OpenAI-compatible server (which renders it itself).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

Conversation = list[dict]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.25
    top_k: int = 0  # 0: no top-k truncation
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    n: int = 1  # samples per conversation
    logprobs: int = 0  # >0: also return the top-k log-probabilities of each generated token

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_new_tokens)
    n_tokens: int
    token_ids: list[int] = field(default_factory=list)
    # Per generated token: {token_id: logprob} for the top-k, when SamplingParams.logprobs > 0.
    top_logprobs: list[dict[int, float]] | None = None


class Generator(Protocol):
    """``generate`` returns, per conversation, ``params.n`` completions."""

    name: str  # identifies model + adapter for cache keys

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[list[Completion]]: ...
