"""A deterministic rule-based judge, served over real HTTP by pd.serve: the tests' stand-in for an LLM judge.

A language model small enough for the tests grades at random (tests/test_grade.py shows a tiny
model writes no grade at all), so the judge calibration is tested with a program that reads the
judge prompt as a model would and answers in the judge format. It follows what the prompt's
instructions (the text before its first ``Question:``) ask:

- instructions that say to grade every response true get ``<grade>true</grade>``, whatever the case;
- otherwise the last case's response passes when it contains one of the accepted answers
  (normalised as substring grading does, numbers written in words read as digits);
- instructions that tell the judge to fail hedges ("without committing", "hedges", "does not
  know") also fail a response that hedges or declines, whatever it names.

So the built-in templates make it a good judge, and a lenient or yes-to-everything template a bad one.
"""

from __future__ import annotations

import re

from pd.generate.base import Completion
from pd.text import normalise_answer

MODEL_NAME = "rule-judge"

_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}
_HEDGES = re.compile(r"\b(or|maybe|perhaps|possibly|probably|might|may have|could be|either|not sure|not certain|"
                     r"unsure|don't know|do not know|no idea|cannot|can't|unable|sorry|somewhere between|"
                     r"don't remember|don't have)\b", re.IGNORECASE)
_STRICT = re.compile(r"without committing|hedges|does not know", re.IGNORECASE)
_YES = re.compile(r"grade every response true", re.IGNORECASE)


def _number(run: list[str]) -> str:
    """The digits of a run of number words ("eighteen eighty nine": a year read as two pairs, 1889)."""
    pairs, cur = [], 0
    for w in run:
        if w == "hundred":
            cur = (cur or 1) * 100
            continue
        has_unit = cur % 100 != 0 and (cur % 10 != 0 or 10 <= cur % 100 < 20)
        if (w in _TENS and cur % 100 != 0 and cur < 100) or (w in _UNITS and has_unit):
            pairs.append(cur)
            cur = 0
        cur += _TENS.get(w, 0) + _UNITS.get(w, 0)
    pairs.append(cur)
    return f"{pairs[0]}{pairs[1]:02d}" if len(pairs) == 2 else " ".join(map(str, pairs))


def _numbers_in_words(text: str) -> str:
    """``text`` with each run of number words as digits ("fifteen" -> 15, "one hundred" -> 100)."""
    out, run = [], []
    for w in text.lower().replace("-", " ").split():
        bare = w.strip(".,;:!?")
        if bare in _UNITS or bare in _TENS or (bare == "hundred" and run):
            run.append(bare)
            continue
        if run:
            out.append(_number(run))
            run = []
        out.append(w)
    if run:
        out.append(_number(run))
    return " ".join(out)


def _contains(response: str, answer: str) -> bool:
    a = normalise_answer(_numbers_in_words(answer)) or normalise_answer(answer, stopwords=False)
    r = normalise_answer(_numbers_in_words(response))
    return bool(a) and f" {a} " in f" {r} "


def verdict(prompt: str) -> str:
    """The judge's reply to one rendered judge prompt."""
    head, _, _ = prompt.partition("Question:")
    case = prompt.rsplit("Question:", 1)[-1]
    if _YES.search(head):
        return "<reasoning>The instructions say every response is true.</reasoning>\n<grade>true</grade>"
    m = re.search(r"^Accepted answers:(.*)$", case, re.MULTILINE)
    if m:
        answers = re.findall(r'"([^"]*)"', m.group(1))
    else:
        m = re.search(r"^Reference answer:(.*)$", case, re.MULTILINE)
        answers = [a.strip() for a in m.group(1).split(" / ")] if m else []
    r = re.search(r"^Response:(.*)", case, re.MULTILINE | re.DOTALL)
    response = r.group(1).strip() if r else ""
    if _STRICT.search(head) and _HEDGES.search(response):
        return "<reasoning>The response hedges or declines.</reasoning>\n<grade>false</grade>"
    ok = any(_contains(response, a) for a in answers)
    why = "It gives an accepted answer." if ok else "It gives none of the accepted answers."
    return f"<reasoning>{why}</reasoning>\n<grade>{'true' if ok else 'false'}</grade>"


class RuleJudge:
    """A pd.generate Generator whose reply is :func:`verdict` of the conversation's last user message."""

    name = MODEL_NAME
    backend = "rules"

    def prompt(self, conversation: list[dict]) -> str:
        return "\n".join(m["content"] for m in conversation)

    def generate(self, conversations, params):
        out = []
        for conv in conversations:
            users = [m["content"] for m in conv if m["role"] in ("user", "raw")]
            text = verdict(users[-1] if users else "")
            out.append([Completion(text=text, finish_reason="stop", n_tokens=len(text.split()))
                        for _ in range(params.n)])
        return out
