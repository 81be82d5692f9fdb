"""Chat formatting shared by generation, training sequences and evaluation.

One place renders a conversation with a model's chat template, so the teacher's
sequence, the student's sequence and every generation prompt agree token for token.
"""

from __future__ import annotations

from pd.models import ModelSpec


def messages(user: str, spec: ModelSpec | None = None, system: str | None = None) -> list[dict]:
    system = system if system is not None else (spec.system_prompt if spec else None)
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}]


def prompt_text(tok, user: str, spec: ModelSpec | None = None, system: str | None = None) -> str:
    """The text up to and including the assistant header, ready for the answer."""
    return tok.apply_chat_template(messages(user, spec, system), tokenize=False, add_generation_prompt=True)


def end_of_turn(tok) -> str:
    """What the template writes after an assistant message (e.g. ``<|im_end|>\\n``)."""
    probe = "\x00PROBE\x00"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}]
    full = tok.apply_chat_template(msgs, tokenize=False)
    tail = full[full.index(probe) + len(probe):]
    return tail if tail else (tok.eos_token or "")
