"""Grading answers: substring match and an LLM judge.

Substring match (Mallen et al. 2022, the paper's Appendix N): both the answer and each
gold answer are normalised by :func:`pd.text.normalise_answer` (lower-case, punctuation
stripped, articles and common stop-words dropped, spaces collapsed); the answer is
correct if any normalised gold answer occurs in it. Two modes:

- ``word`` (default): the gold answer must occur as whole words (``"no"`` does not match
  ``"know"``);
- ``plain``: any substring (the looser reading, kept to compare with other work).

A gold answer made only of stop-words ("no", "the who") would normalise to nothing; for
it, both sides are normalised without dropping stop-words. A gold answer with no
letters or digits at all cannot be matched and is ignored; an item with no usable gold
answer is an error, not a silent zero.

LLM judge: the judge template (``judge_squadshifts`` with the list of accepted answers,
or ``judge_hotpotqa``) asks for reasoning in ``<reasoning>`` tags, then
``<grade>true|false</grade>``. :func:`parse_judge` reads the grade by these rules:

1. Empty (or whitespace-only) output: invalid (``empty_output``).
2. The grade lives only in a ``<grade>`` element. The opening tag is matched without
   regard to case or spaces inside the brackets (``<GRADE>``, ``< grade >``); a wrong
   opening tag (``<grad>``, ``grade: true``, a bare "true") is not a grade: invalid
   (``no_grade_tag``). A judge that did not open the tag did not follow the format.
3. The closing tag is forgiven: the grade text is whatever stands between ``<grade>``
   and the next ``<`` or the end of the output, so ``</grad>``, ``</Grade>``, ``<grade>``
   typed again, or a missing closing tag (the judge stopped there) all work.
4. The grade text, stripped of spaces, surrounding quotes/asterisks/backticks and one
   trailing ``.`` or ``!``, must be exactly ``true`` or ``false`` in any case. Anything
   else (empty, ``true or false``, ``true|false``, ``yes``, ``correct``, ``tru``, a
   sentence) is invalid (``unrecognised_grade``).
5. Several ``<grade>`` elements: valid if all read the same grade, invalid
   (``conflicting_grades``) if they differ or if any of them is unrecognised.
6. Text before or after the grade element is ignored; reasoning is recorded when present
   but not required (its absence is noted in the row, not counted invalid).
7. A judge that goes on to invent a further case after its grade (a line starting with
   ``Question:``, the few-shot format echoed) is cut there before rules 2-5 apply: the
   invented case's grade is not the judge's verdict. Conflicting grades within the
   judge's own answer still make it invalid (rule 5).

An invalid grade is never dropped and never counted correct: it is a row with
``"valid": false, "correct": null`` and a reason, and summaries report the validity rate
beside accuracy (accuracy counts invalid as not correct; ``accuracy_valid`` is over valid
grades only).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from pd.data import Dataset, TestItem
from pd.errors import ConfigError, DataError, PDError
from pd.generate.base import Generator, SamplingParams
from pd.io import read_jsonl, write_json, write_jsonl
from pd.prompts import render
from pd.text import normalise_answer

SUBSTRING_MODES = ("word", "plain")
JUDGE_TEMPLATES = ("judge_squadshifts", "judge_hotpotqa")
INVALID_REASONS = ("empty_output", "no_grade_tag", "unrecognised_grade", "conflicting_grades")

# --------------------------------------------------------------------------- substring match


def _gold_forms(gold: str) -> tuple[str, bool] | None:
    """The normalised gold answer and whether stop-words were dropped (None: unusable)."""
    g = normalise_answer(gold, stopwords=True)
    if g:
        return g, True
    g = normalise_answer(gold, stopwords=False)
    return (g, False) if g else None


def substring_match(answer: str, golds: Sequence[str], mode: str = "word") -> bool:
    """True if any normalised gold answer occurs in the normalised answer."""
    if mode not in SUBSTRING_MODES:
        raise ConfigError(f"substring match mode {mode!r}; allowed: {', '.join(SUBSTRING_MODES)}")
    if isinstance(golds, str):
        golds = [golds]
    forms = [f for f in (_gold_forms(g) for g in golds) if f is not None]
    if not forms:
        raise DataError(f"no usable gold answer among {list(golds)!r}: each is empty or punctuation only")
    answer_forms = {True: normalise_answer(answer or "", True), False: normalise_answer(answer or "", False)}
    for g, dropped in forms:
        a = answer_forms[dropped]
        if mode == "plain":
            if g in a:
                return True
        elif f" {g} " in f" {a} ":
            return True
    return False


# --------------------------------------------------------------------------- judge output parsing


@dataclass(frozen=True)
class JudgeVerdict:
    correct: bool | None  # None when invalid
    valid: bool
    reason: str  # "" when valid; else one of INVALID_REASONS, then ": detail"
    reasoning: str | None  # the <reasoning> text, None when absent


_GRADE_OPEN = re.compile(r"<\s*grade\s*>", re.IGNORECASE)
_REASONING = re.compile(r"<\s*reasoning\s*>(.*?)(?:<\s*/\s*reasoning\s*>|$)", re.IGNORECASE | re.DOTALL)
_NEW_CASE = re.compile(r"\n\s*question\s*:", re.IGNORECASE)
_WRAPPERS = " \t\r\n\"'`*_“”‘’"


def _grade_word(body: str) -> bool | None:
    word = body.strip().strip(_WRAPPERS)
    if word.endswith((".", "!")):
        word = word[:-1].strip(_WRAPPERS)
    word = word.lower()
    return {"true": True, "false": False}.get(word)


def parse_judge(output: str | None) -> JudgeVerdict:
    """Read the grade out of a judge's output by the rules in this module's docstring."""
    text = output or ""
    m = _REASONING.search(text)
    reasoning = m.group(1).strip() if m else None
    if not text.strip():
        return JudgeVerdict(None, False, "empty_output", reasoning)
    first = _GRADE_OPEN.search(text)
    if first:
        echo = _NEW_CASE.search(text, first.end())
        if echo:
            text = text[: echo.start()]
    spans = []  # (open tag start, body start, body end) per <grade>
    for om in _GRADE_OPEN.finditer(text):
        nxt = text.find("<", om.end())
        spans.append((om.start(), om.end(), len(text) if nxt < 0 else nxt))
    grades: list[bool | None] = []
    bodies: list[str] = []
    prev_end = -1
    for start, body_start, body_end in spans:
        body = text[body_start:body_end]
        # "<grade>true<grade>" with nothing after the second tag: a mistyped closing tag.
        if start == prev_end and not body.strip() and grades and grades[-1] is not None:
            prev_end = -1
            continue
        grades.append(_grade_word(body))
        bodies.append(body)
        prev_end = body_end
    if not grades:
        return JudgeVerdict(None, False, "no_grade_tag", reasoning)
    if len(grades) == 1:
        if grades[0] is None:
            return JudgeVerdict(None, False, f"unrecognised_grade: {bodies[0].strip()[:40]!r}", reasoning)
        return JudgeVerdict(grades[0], True, "", reasoning)
    if None in grades or len(set(grades)) > 1:
        shown = ", ".join(repr(b.strip()[:20]) for b in bodies[:4])
        return JudgeVerdict(None, False, f"conflicting_grades: {shown}", reasoning)
    return JudgeVerdict(grades[0], True, "", reasoning)


# --------------------------------------------------------------------------- judge driver


def judge_conversation(question: str, golds: Sequence[str], answer: str, template: str = "judge_squadshifts",
                       prefill: str = "") -> list[dict]:
    if template not in JUDGE_TEMPLATES:
        raise ConfigError(f"judge template {template!r}; allowed: {', '.join(JUDGE_TEMPLATES)}")
    conv = [{"role": "user", "content": render(template, question=question, answers=list(golds), response=answer)}]
    if prefill:
        conv.append({"role": "assistant", "content": prefill})
    return conv


def judge_params(max_new_tokens: int = 512, seed: int = 0) -> SamplingParams:
    """Greedy decoding: a grade should not depend on sampling luck."""
    return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, seed=seed, n=1)


def judge(generator: Generator, cases: Sequence[tuple[str, Sequence[str], str]], template: str = "judge_squadshifts",
          params: SamplingParams | None = None, prefill: str = "",
          batch_size: int = 16) -> list[tuple[JudgeVerdict, str, str]]:
    """Grade (question, golds, answer) cases; returns (verdict, full judge output, finish_reason) each.

    With ``prefill`` (e.g. ``"<reasoning>"``, for small judges) the reply is forced to
    start with it, and the prefill is put back in front of the output before parsing.
    """
    params = params or judge_params()
    convs = [judge_conversation(q, g, a, template, prefill) for q, g, a in cases]
    out: list[tuple[JudgeVerdict, str, str]] = []
    for i in range(0, len(convs), batch_size):
        for comps in generator.generate(convs[i : i + batch_size], params):
            if len(comps) != 1:
                raise PDError(f"judge generator returned {len(comps)} completions for one case; expected 1 (n=1)")
            text = prefill + comps[0].text
            out.append((parse_judge(text), text, comps[0].finish_reason))
    return out


# --------------------------------------------------------------------------- per-sample grading of files


def _items_by_id(dataset: Dataset | Mapping[str, TestItem]) -> Mapping[str, TestItem]:
    return {it.id: it for it in dataset.items} if isinstance(dataset, Dataset) else dataset


def item_passage(item: TestItem) -> str | None:
    """The passage a test question belongs to: its first gold passage (None without one).

    SQuADShifts items have one gold passage; a HotpotQA item has two (its supporting
    paragraphs, in the order of the supporting facts), and the first stands for it. The
    report resamples questions within their passage (:func:`pd.report.stats.cluster_bootstrap`).

    Args:
        item: the test item.

    Returns:
        ``item.doc_ids[0]``, or None when the item names no gold passage.
    """
    return item.doc_ids[0] if item.doc_ids else None


def _base_row(row: dict, item: TestItem, grader: str) -> dict:
    out = {"item_id": item.id, "passage": item_passage(item), "grader": grader}
    for key in ("sample", "prompt_hash", "retrieved", "model", "adapter"):
        if key in row:
            out[key] = row[key]
    return out


def _check_rows(rows: list[dict], items: Mapping[str, TestItem], where: str) -> None:
    for n, r in enumerate(rows):
        if "item_id" not in r or "answer" not in r:
            raise DataError(f"{where} row {n + 1}: needs 'item_id' and 'answer' "
                            "(rows written by pd.evaluation.evaluate)")
        if r["item_id"] not in items:
            raise DataError(f"{where} row {n + 1}: item {r['item_id']!r} is not in the dataset")
        if not isinstance(r["answer"], str):
            raise DataError(f"{where} row {n + 1}: 'answer' must be a string, got {type(r['answer']).__name__}")


def grade_substring_rows(rows: list[dict], items: Dataset | Mapping[str, TestItem], mode: str = "word") -> list[dict]:
    if mode not in SUBSTRING_MODES:
        raise ConfigError(f"substring match mode {mode!r}; allowed: {', '.join(SUBSTRING_MODES)}")
    items = _items_by_id(items)
    _check_rows(rows, items, "evaluation")
    grader = f"substring_{mode}"
    out = []
    for r in rows:
        it = items[r["item_id"]]
        ok = substring_match(r["answer"], it.answers, mode)
        out.append(_base_row(r, it, grader) | {"correct": ok, "valid": True, "reason": "",
                                              "answer": r["answer"], "gold": list(it.answers)})
    return out


def grade_judge_rows(rows: list[dict], items: Dataset | Mapping[str, TestItem], generator: Generator,
                     template: str = "judge_squadshifts", params: SamplingParams | None = None,
                     prefill: str = "", batch_size: int = 16) -> list[dict]:
    items = _items_by_id(items)
    _check_rows(rows, items, "evaluation")
    cases = [(items[r["item_id"]].closed_book_question, items[r["item_id"]].answers, r["answer"]) for r in rows]
    verdicts = judge(generator, cases, template, params, prefill, batch_size)
    grader = f"judge:{getattr(generator, 'name', 'unknown')}"
    out = []
    for r, (v, text, finish) in zip(rows, verdicts):
        it = items[r["item_id"]]
        reason = v.reason
        if not v.valid and finish == "length":
            reason += " (judge output cut at max_new_tokens)"
        out.append(_base_row(r, it, grader) | {"correct": v.correct, "valid": v.valid, "reason": reason,
                                              "has_reasoning": v.reasoning is not None, "judge_output": text,
                                              "answer": r["answer"], "gold": list(it.answers)})
    return out


def summarise(grades: list[dict]) -> dict:
    """Accuracy (invalid counts as not correct), accuracy over valid grades, validity rate, reasons."""
    n = len(grades)
    valid = sum(1 for g in grades if g["valid"])
    correct = sum(1 for g in grades if g["correct"] is True)
    reasons = Counter(g["reason"].split(":")[0].split(" (")[0] for g in grades if not g["valid"])
    return {
        "n": n,
        "correct": correct,
        "valid": valid,
        "invalid": n - valid,
        "accuracy": correct / n if n else None,
        "accuracy_valid": correct / valid if valid else None,
        "validity_rate": valid / n if n else None,
        "invalid_reasons": dict(sorted(reasons.items())),
        "grader": grades[0]["grader"] if grades else None,
    }


def grade_file(eval_path: str | os.PathLike, dataset: Dataset, out_path: str | os.PathLike, grader: str = "substring",
               mode: str = "word", generator: Generator | None = None, template: str = "judge_squadshifts",
               params: SamplingParams | None = None, prefill: str = "", batch_size: int = 16) -> dict:
    """Grade an evaluation JSONL into ``out_path`` (per-sample rows) and ``<out>.summary.json``.

    ``grader`` is ``substring`` (with ``mode`` word/plain) or ``judge`` (needs a
    ``generator`` and the dataset's ``template``, :func:`pd.config.dataset_judge_template`).
    Both files are written atomically; the summary is returned.
    """
    eval_path = Path(eval_path)
    if not eval_path.is_file():
        raise DataError(f"evaluation file {eval_path} does not exist")
    rows = read_jsonl(eval_path)
    if grader == "substring":
        grades = grade_substring_rows(rows, dataset, mode)
    elif grader == "judge":
        if generator is None:
            raise ConfigError("grader 'judge' needs a generator for the judge model")
        grades = grade_judge_rows(rows, dataset, generator, template,
                                  params, prefill, batch_size)
    else:
        raise ConfigError(f"unknown grader {grader!r}; allowed: substring, judge")
    write_jsonl(out_path, grades)
    summary = summarise(grades) | {"source": str(eval_path), "dataset": dataset.name}
    write_json(summary_path(out_path), summary)
    return summary


def summary_path(out_path: str | os.PathLike) -> Path:
    p = Path(out_path)
    return p.with_name(p.name.removesuffix(".jsonl") + ".summary.json")
