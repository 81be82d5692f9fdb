"""Judge calibration: does an LLM judge pass right answers and fail wrong and hedged ones?

A judge's accuracy numbers are only as good as its verdicts, so before they are trusted the
judge (model, prompt template and backend) grades a small labelled set whose right verdicts
are known, as practitioners who audit their judges do. The shipped set,
``data/judge-calibration.jsonl``, holds general-knowledge questions written for it, each with
its accepted answers and candidate responses labelled by class:

- ``gold``: an accepted answer itself: must pass;
- ``paraphrase``: the same answer in other words (a sentence around it, a number in words,
  another form of the name): must pass;
- ``wrong``: another answer: must fail;
- ``hedge``: several candidates without committing to one ("it could be X or Y", often with
  the right answer among them), "I'm not sure", a refusal: must fail.

One JSON object a line: ``{"id", "question", "answers": [...], "candidates": [{"text",
"label"}, ...]}``. :func:`calibrate` has the judge grade every candidate with the judge's own
template and parser (:func:`pd.evaluation.grade.judge`) and reports agreement with the labels
per class and overall, beside substring match's agreement with the labels and the judge's
agreement with substring match on the same candidates (where they differ is where a judge
earns its cost, or errs). An invalid judge output counts as a disagreement.

A judge is flagged (:func:`shortfalls`) when its agreement overall or on any class is below a
threshold, ``grading.calibration_threshold`` (0.9 unless set; ``workflow/schemas/config.schema.yaml``).
The workflow runs the calibration once per judge identity (model, template by content,
backend, calibration set by content: :mod:`pd.pipeline.kinds.calibrate_judge`), and a report
graded by the judge shows :func:`calibration_line`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pd.errors import DataError
from pd.evaluation.grade import judge, substring_match
from pd.generate.base import Generator, SamplingParams
from pd.io import read_jsonl, write_json

log = logging.getLogger(__name__)

LABELS = ("gold", "paraphrase", "wrong", "hedge")
MUST_PASS = frozenset({"gold", "paraphrase"})
CALIBRATION_SET = Path(__file__).resolve().parents[2] / "data" / "judge-calibration.jsonl"
# How calibration_line names each class's rate: the share that passes (must pass) or fails (must fail).
_CLASS_WORDS = {"gold": "gold pass", "paraphrase": "paraphrases pass", "wrong": "wrong fail", "hedge": "hedges fail"}


@dataclass(frozen=True)
class CalibrationCase:
    """One candidate response to grade, with its label.

    Attributes:
        item_id: the question's id in the set.
        question: the question.
        answers: its accepted answers.
        candidate: the response to grade.
        label: one of :data:`LABELS`.
    """

    item_id: str
    question: str
    answers: tuple[str, ...]
    candidate: str
    label: str

    @property
    def should_pass(self) -> bool:
        """Whether a right judge grades this candidate true."""
        return self.label in MUST_PASS


def load_calibration_set(path: str | os.PathLike | None = None) -> list[CalibrationCase]:
    """The cases of a calibration set, one per candidate, in file order.

    Args:
        path: a JSONL file in the format of this module's docstring (None: :data:`CALIBRATION_SET`).

    Returns:
        The cases.

    Raises:
        DataError: a missing file, a line without its fields, an unknown label, or a set without a
            case of every label.
    """
    path = Path(path) if path is not None else CALIBRATION_SET
    if not path.is_file():
        raise DataError(f"judge calibration set {path} does not exist")
    cases = []
    for n, item in enumerate(read_jsonl(path), 1):
        where = f"{path} line {n}"
        if not isinstance(item, dict) or not all(k in item for k in ("id", "question", "answers", "candidates")):
            raise DataError(f"{where}: needs 'id', 'question', 'answers' and 'candidates'")
        answers = item["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise DataError(f"{where}: 'answers' must be a non-empty list of non-empty strings")
        for c in item["candidates"]:
            if not isinstance(c, dict) or not isinstance(c.get("text"), str) or c.get("label") not in LABELS:
                raise DataError(f"{where}: each candidate needs 'text' and a 'label' of {', '.join(LABELS)}; "
                                f"got {c!r}")
            cases.append(CalibrationCase(str(item["id"]), item["question"], tuple(answers), c["text"], c["label"]))
    absent = [lab for lab in LABELS if not any(c.label == lab for c in cases)]
    if absent:
        raise DataError(f"judge calibration set {path}: no candidate labelled {', '.join(absent)}")
    return cases


def _rate(agree: int, n: int) -> float | None:
    return agree / n if n else None


def calibrate(generator: Generator, cases: Sequence[CalibrationCase], template: str = "judge_squadshifts",
              params: SamplingParams | None = None, prefill: str = "", batch_size: int = 16,
              substring_mode: str = "word") -> dict:
    """Have a judge grade every case; its agreement with the labels and with substring match.

    Args:
        generator: the judge.
        cases: the calibration cases (:func:`load_calibration_set`).
        template: the judge's prompt template (:data:`pd.evaluation.grade.JUDGE_TEMPLATES`).
        params: the judge's sampling (default :func:`pd.evaluation.grade.judge_params`).
        prefill: forced start of the judge's reply (see :func:`pd.evaluation.grade.judge`).
        batch_size: cases per generator call.
        substring_mode: substring match's mode for the comparison.

    Returns:
        ``{"judge", "template", "n", "agree", "agreement", "invalid", "classes": {label: {"n", "agree",
        "agreement", "substring_agree", "substring_agreement"}}, "substring": {"agree", "agreement"},
        "judge_vs_substring": {"agree", "agreement"}, "rows": [...]}``; each row has the case, the
        expected verdict, the judge's (None when invalid), substring match's and the judge's output.
    """
    outs = judge(generator, [(c.question, c.answers, c.candidate) for c in cases], template, params, prefill,
                 batch_size)
    rows = []
    for c, (v, text, _finish) in zip(cases, outs):
        sub = substring_match(c.candidate, c.answers, substring_mode)
        rows.append({"item_id": c.item_id, "label": c.label, "candidate": c.candidate, "expected": c.should_pass,
                     "judge": v.correct, "valid": v.valid, "reason": v.reason, "substring": sub,
                     "agree": v.correct is c.should_pass, "substring_agree": sub is c.should_pass,
                     "judge_output": text})
    n, agree = len(rows), sum(r["agree"] for r in rows)
    classes = {}
    for label in LABELS:
        mine = [r for r in rows if r["label"] == label]
        a, s = sum(r["agree"] for r in mine), sum(r["substring_agree"] for r in mine)
        classes[label] = {"n": len(mine), "agree": a, "agreement": _rate(a, len(mine)),
                          "substring_agree": s, "substring_agreement": _rate(s, len(mine))}
    sub_agree = sum(r["substring_agree"] for r in rows)
    both = sum(r["judge"] is r["substring"] for r in rows)
    return {"judge": getattr(generator, "name", "unknown"), "template": template, "n": n, "agree": agree,
            "agreement": _rate(agree, n), "invalid": sum(not r["valid"] for r in rows), "classes": classes,
            "substring": {"agree": sub_agree, "agreement": _rate(sub_agree, n)},
            "judge_vs_substring": {"agree": both, "agreement": _rate(both, n)},
            "invalid_reasons": dict(Counter(r["reason"].split(":")[0] for r in rows if not r["valid"])),
            "rows": rows}


def shortfalls(result: dict, threshold: float) -> list[str]:
    """Where a calibration falls below ``threshold``: ``"overall"`` and the classes whose agreement is lower.

    Args:
        result: :func:`calibrate`'s result (or the file :func:`run_calibration` writes).
        threshold: the least agreement (a fraction) of an unflagged judge.

    Returns:
        The names below it, overall first (empty: the judge passes).
    """
    out = ["overall"] if (result["agreement"] or 0.0) < threshold else []
    classes = result["classes"]
    return out + [lab for lab in LABELS if classes.get(lab, {}).get("n") and classes[lab]["agreement"] < threshold]


def calibration_line(result: dict, threshold: float) -> str:
    """The calibration in one line, as a report shows it.

    ``judge calibration: 97/102 (95%), gold pass 100%, paraphrases pass 91%, wrong fail 97%, hedges fail
    94%; agrees with substring match on 81%``, then ``. BELOW THE THRESHOLD 90% (hedge): ...`` for a
    flagged judge.

    Args:
        result: :func:`calibrate`'s result.
        threshold: ``grading.calibration_threshold``.

    Returns:
        The line.
    """
    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.0f}%"

    parts = [f"judge calibration: {result['agree']}/{result['n']} ({pct(result['agreement'])})"]
    classes = result["classes"]
    parts += [f"{_CLASS_WORDS[lab]} {pct(classes[lab]['agreement'])}"
              for lab in LABELS if classes.get(lab, {}).get("n")]
    line = ", ".join(parts) + f"; agrees with substring match on {pct(result['judge_vs_substring']['agreement'])}"
    if result.get("invalid"):
        line += f"; {result['invalid']} judge outputs unparsable"
    low = shortfalls(result, threshold)
    if low:
        line += (f". BELOW THE THRESHOLD {pct(threshold)} ({', '.join(low)}): this judge's grades are not to be "
                 "trusted")
    return line


def run_calibration(out: str | os.PathLike, generator: Generator, template: str = "judge_squadshifts",
                    params: SamplingParams | None = None, set_path: str | os.PathLike | None = None,
                    batch_size: int = 16) -> dict:
    """Calibrate a judge on a set and write the result (rows included) as JSON, atomically.

    Args:
        out: the JSON file.
        generator: the judge.
        template: its prompt template.
        params: its sampling.
        set_path: the calibration set (None: the shipped one).
        batch_size: cases per generator call.

    Returns:
        The result written (:func:`calibrate`'s, with ``set`` naming the calibration file).

    Raises:
        DataError: a malformed calibration set.
    """
    set_path = Path(set_path) if set_path is not None else CALIBRATION_SET
    result = calibrate(generator, load_calibration_set(set_path), template, params, batch_size=batch_size)
    result["set"] = set_path.name
    write_json(out, result)
    log.info("%s (%s, %s)", calibration_line(result, 0.0), result["judge"], template)
    return result
