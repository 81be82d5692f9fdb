"""Checking pd.serve's request bodies field by field, as OpenAI's API documents them.

Every field a request may carry is in one of three groups, per endpoint:

- honoured: it works as OpenAI documents (``temperature``, ``stop``, ``logprobs``...);
- accepted only at its no-op value (``null``, or e.g. ``frequency_penalty: 0``,
  ``stream: false``, ``response_format: {"type": "text"}``); any other value is refused,
  because pd.serve does not implement it;
- anything else is an unknown field and is refused.

A refusal is a :class:`RequestError` (HTTP 400) whose message names the field, so a
client never gets a silently ignored parameter or a 500. Beyond OpenAI's documented
ranges, ``temperature`` may exceed 2 (as vLLM allows); ``n`` is capped at 16.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from pd.generate.base import Conversation

MAX_DEPTH = 32  # JSON nesting a request may have (OpenAI's bodies need 5); deeper is refused before any check
MIN_TEMPERATURE = 1e-4  # below this (and above 0) logits / temperature overflow float32: use 0 for greedy
MIN_TOP_P = 1e-6  # below this top_p rounds to 0 in float32 and keeps no token: use top_k = 1 for greedy
MAX_N = 16  # samples per request: more would hold the (single) model for too long
MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat (5 for legacy completions)
MAX_COMPLETION_LOGPROBS = 5
EXTENSIONS = ("top_k", "continue_final_message", "add_generation_prompt")  # vLLM's extra fields

_COMMON_NOOPS = {
    "frequency_penalty": (0,), "presence_penalty": (0,), "logit_bias": ({},), "stream": (False,),
    "stream_options": (), "user": None,  # user: an end-user id for abuse monitoring; no effect on the reply
}
_CHAT_NOOPS = dict(_COMMON_NOOPS, response_format=({"type": "text"},), tools=([],), tool_choice=("none",),
                   parallel_tool_calls=(), functions=([],), function_call=("none",), store=(False,), metadata=({},),
                   service_tier=("auto", "default"), modalities=(["text"],), audio=(), prediction=(),
                   reasoning_effort=(), web_search_options=())
_COMPLETION_NOOPS = dict(_COMMON_NOOPS, echo=(False,), best_of=(1,), suffix=("",))
_SAMPLING = {"temperature", "top_p", "n", "max_tokens", "seed", "stop", "logprobs", "top_k"}
CHAT_FIELDS = _SAMPLING | {"model", "messages", "max_completion_tokens", "top_logprobs", "continue_final_message",
                           "add_generation_prompt"} | set(_CHAT_NOOPS)
COMPLETION_FIELDS = _SAMPLING | {"model", "prompt"} | set(_COMPLETION_NOOPS)
EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class RequestError(Exception):
    """A refused request: HTTP ``status`` and a one-line ``message`` naming the field."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def bad(name: str, why: str) -> RequestError:
    """A 400 naming the field ``name``."""
    return RequestError(400, f"'{name}' {why}", param=name)


def show(value: Any, limit: int = 80) -> str:
    """A short repr of a received value for an error message (long or deeply nested values are cut)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 3, limit, limit, 6, 6
    return r.repr(value)[: limit * 2]


def check_structure(body: Any) -> None:
    """Refuse a body nested deeper than :data:`MAX_DEPTH` or holding a string that is not valid Unicode.

    The walk is iterative (no recursion limit), and runs before any field is read.

    Raises:
        RequestError: 400 naming the field (path) that is too deep or holds a lone surrogate.
    """
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            field_name = path.split("[")[0].split(".")[0] or "body"
            raise RequestError(400, f"'{field_name}' is nested more than {MAX_DEPTH} levels deep (at {path[:120]})",
                               param=field_name)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise bad(path or "body", "contains a lone surrogate (\\ud800-\\udfff): not valid Unicode") from None
        elif isinstance(value, dict):
            for k, v in value.items():
                name = f"{path}.{k}" if path else str(k)
                try:
                    str(k).encode("utf-8")
                except UnicodeEncodeError:
                    raise bad(path or "body", "has a field name with a lone surrogate: not valid Unicode") from None
                stack.append((v, name, depth + 1))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))


@dataclass
class GenerationRequest:
    """A checked chat or completion request. ``max_tokens`` None: fill the context (up to a default)."""

    conversation: Conversation
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int | None = None  # None: a fresh random seed per request (:func:`sampling`)
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: no log-probabilities; k: the chosen token's and the top k alternatives'


def check_fields(body: Any, allowed: set[str], noops: dict) -> dict:
    """``body`` as a dict with only ``allowed`` fields, no-op fields at their no-op values.

    Raises:
        RequestError: the body is not a JSON object, has an unknown field, or a no-op field
            carries a value pd.serve would have to act on.
    """
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    check_structure(body)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(400, f"unknown field(s) {show(unknown)} (not supported by pd.serve)",
                           param=show(unknown[0], 40))
    for name, neutral in noops.items():
        value = body.get(name)
        if value is None or neutral is None:
            continue
        if not any(value == v and type(value) is type(v) or (isinstance(v, int) and _is_number(value) and value == v)
                   for v in neutral):
            allowed_values = ", ".join(repr(v) for v in (None, *neutral))
            raise bad(name, f"= {show(value)} is not supported by pd.serve (accepted: {allowed_values})")
    return body


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi] with ``lo_open``); ``default`` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value) or not math.isfinite(value):
        raise bad(name, f"must be a finite number, got {show(value)}")
    if value < lo or (lo_open and value == lo) or value > hi:
        raise bad(name, f"= {value} is out of range {'(' if lo_open else '['}{lo}, {hi}]")
    return float(value)


def integer(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    """An integer in [lo, hi]; ``default`` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(name, f"must be an integer, got {show(value)}")
    if value < lo or (hi is not None and value > hi):
        raise bad(name, f"= {value} is out of range [{lo}, {hi if hi is not None else 'inf'}]")
    return value


def flag(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"must be true or false, got {show(value)}")
    return value


def stops(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(s, str) and s for s in values):
        raise bad("stop", f"must be a non-empty string or a list of them, got {show(value)}")
    if len(values) > MAX_STOP:
        raise bad("stop", f"has {len(values)} sequences; at most {MAX_STOP}")
    return values


def text_content(content: Any, where: str) -> str:
    """Message content as text: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) and set(p) <= {"type", "text"}
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise bad(where, "must be a string or a list of {'type': 'text', 'text': ...} parts (only text is supported)")


def conversation(body: dict) -> Conversation:
    """The chat ``messages`` as a pd conversation (a final assistant message is a prefill only when asked)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages", f"must be a non-empty list of messages, got {type(msgs).__name__}")
    conv = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}]", f"must be an object with 'role' and 'content', got {type(m).__name__}")
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise bad(f"messages[{i}].{extra[0]}", "is not supported by pd.serve (only 'role' and 'content')")
        if m.get("role") not in ROLES:
            raise bad(f"messages[{i}].role", f"= {show(m.get('role'))}; allowed: {', '.join(ROLES)}")
        conv.append({"role": ROLES[m["role"]], "content": text_content(m.get("content"), f"messages[{i}].content")})
    cont = flag(body, "continue_final_message", False)
    gen_prompt = flag(body, "add_generation_prompt", True)
    if cont != (not gen_prompt):
        raise bad("continue_final_message", "= true goes with add_generation_prompt = false, and only together")
    if cont != (conv[-1]["role"] == "assistant"):
        raise bad("messages", "may end with an assistant message only with continue_final_message = true "
                              "and add_generation_prompt = false (a prefill), and must then end with one")
    return conv


def sampling(body: dict, conv: Conversation, chat: bool) -> GenerationRequest:
    """The sampling fields shared by chat and completions, checked."""
    temperature = number(body, "temperature", 1.0, 0, math.inf)
    if 0 < temperature < MIN_TEMPERATURE:
        raise bad("temperature", f"= {temperature:g} is too small to sample with; give 0 (greedy) or at least "
                                 f"{MIN_TEMPERATURE:g}")
    top_p = number(body, "top_p", 1.0, 0, 1, lo_open=True)
    if top_p < MIN_TOP_P:
        raise bad("top_p", f"= {top_p:g} is too small (no token would be kept); give at least {MIN_TOP_P:g}, "
                           "or top_k = 1 for the most likely token")
    seed = integer(body, "seed", None, -(2**63), 2**64 - 1)
    req = GenerationRequest(conv, temperature=temperature, top_p=top_p, top_k=integer(body, "top_k", 0, 0),
                            n=integer(body, "n", 1, 1, MAX_N),
                            seed=seed if seed is not None else secrets.randbits(63), stop=stops(body))
    if chat:
        a, b = integer(body, "max_tokens", None, 1), integer(body, "max_completion_tokens", None, 1)
        if a is not None and b is not None and a != b:
            raise bad("max_completion_tokens", f"= {b} contradicts max_tokens = {a}; give one of them")
        req.max_tokens = a if a is not None else b
        top = integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
        if flag(body, "logprobs", False):
            req.logprobs = top or 0
        elif top is not None:
            raise bad("top_logprobs", "needs logprobs = true")
    else:
        req.max_tokens = integer(body, "max_tokens", None, 1)
        req.logprobs = integer(body, "logprobs", None, 0, MAX_COMPLETION_LOGPROBS)
    return req


def chat_request(body: Any) -> GenerationRequest:
    """A checked ``/v1/chat/completions`` body.

    Raises:
        RequestError: 400 naming the first offending field.
    """
    body = check_fields(body, CHAT_FIELDS, _CHAT_NOOPS)
    return sampling(body, conversation(body), chat=True)


def completion_request(body: Any) -> GenerationRequest:
    """A checked ``/v1/completions`` body (one string prompt).

    Raises:
        RequestError: 400 naming the first offending field.
    """
    body = check_fields(body, COMPLETION_FIELDS, _COMPLETION_NOOPS)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt", "must be one non-empty string (token arrays and lists of prompts are not supported)")
    return sampling(body, [{"role": "raw", "content": prompt}], chat=False)


def embedding_request(body: Any, dimensions: int | None) -> tuple[list[str], str]:
    """The texts and encoding format of a checked ``/v1/embeddings`` body.

    Args:
        body: the JSON body.
        dimensions: the served model's embedding size (``dimensions`` may only repeat it).

    Raises:
        RequestError: 400 naming the first offending field.
    """
    body = check_fields(body, EMBEDDING_FIELDS, {"user": None})
    inp = body.get("input")
    texts = [inp] if isinstance(inp, str) else inp
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise bad("input", "must be a non-empty string or a non-empty list of them (token arrays are not supported)")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad("encoding_format", f"= {show(fmt)}; allowed: float, base64")
    dims = integer(body, "dimensions", None, 1)
    if dims is not None and dims != dimensions:
        raise bad("dimensions", f"= {dims}: this model's embeddings have {dimensions} dimensions and are not shortened")
    return texts, fmt
