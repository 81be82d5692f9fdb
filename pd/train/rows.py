"""Which answer rows an adapter trains on and which it holds out (the judge-free measure's pairs).

:func:`split_heldout` holds out whole questions by a hash of their id, :func:`quintile_rows`
keeps one fifth by teacher entropy or initial KL (the paper's Tables 15-16). The adapter job
(:mod:`pd.pipeline.kinds.adapter`) reads them; this package never imports the job layer.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from pd.data import Dataset
from pd.errors import DataError

HELDOUT_FILE = "heldout.json"  # an adapter's held-out KL before and after training


def split_heldout(rows: Sequence[dict], heldout_fraction: float, minimum: int = 1) -> tuple[list[dict], list[dict]]:
    """Hold out whole questions, chosen by a hash of their id: the training and held-out rows.

    ``heldout_fraction`` has the config's meaning: held-out questions per training question
    (the questions were generated with that many extra, :func:`pd.config.heldout_extra`), so
    ``heldout_fraction / (1 + heldout_fraction)`` of all questions are held out (at least
    ``minimum``, never all). A hash, not a random draw: the same question is held out in
    every cell and seed that uses the same data, so before/after numbers compare like with like.

    Args:
        rows: answer rows with ``question_id`` (or ``id``).
        heldout_fraction: held-out questions relative to training questions (0: none).
        minimum: the fewest questions held out when any are.

    Returns:
        ``(train rows, held-out rows)``, each in the order of ``rows``.
    """
    if heldout_fraction <= 0 or not rows:
        return list(rows), []

    def score(r: dict) -> str:
        return hashlib.sha256(str(r.get("question_id", r["id"])).encode()).hexdigest()

    qids = sorted({str(r.get("question_id", r["id"])) for r in rows}, key=lambda q: score({"id": q}))
    n = heldout_count(len(qids), heldout_fraction, minimum)
    if n == 0:
        return list(rows), []
    held = set(qids[:n])
    train = [r for r in rows if str(r.get("question_id", r["id"])) not in held]
    heldout = [r for r in rows if str(r.get("question_id", r["id"])) in held]
    return train, heldout


def heldout_count(questions: int, heldout_fraction: float, minimum: int = 1) -> int:
    """How many of ``questions`` :func:`split_heldout` holds out (the plan counts the training rows with it).

    Args:
        questions: distinct questions.
        heldout_fraction: held-out questions relative to training questions (0: none).
        minimum: the fewest held out when any are.

    Returns:
        ``max(minimum, round(questions x f / (1 + f)))``; 0 when the fraction is 0 or that would be all of them.
    """
    if heldout_fraction <= 0 or questions <= 0:
        return 0
    n = max(minimum, round(heldout_fraction / (1 + heldout_fraction) * questions))
    return 0 if n >= questions else n


def quintile_rows(rows: Sequence[dict], stats: Sequence[dict], subset: str) -> list[dict]:
    """The rows in one quintile of teacher entropy or initial KL (the paper's Tables 15-16).

    ``subset`` is ``entropy_q1`` ... ``kl_q5``; q1 holds the lowest fifth.
    """
    measure, q = subset.split("_q")
    key = {"entropy": "teacher_entropy", "kl": "initial_kl"}[measure]
    by_id = {str(s["example_id"]): float(s[key]) for s in stats}
    ranked = sorted((r for r in rows if str(r["id"]) in by_id), key=lambda r: (by_id[str(r["id"])], str(r["id"])))
    if len(ranked) < 5:
        raise DataError(f"{len(ranked)} examples have teacher statistics; quintiles need at least 5")
    i = int(q) - 1
    lo, hi = round(i * len(ranked) / 5), round((i + 1) * len(ranked) / 5)
    return ranked[lo:hi]


def heldout_examples(rows: Sequence[dict], ds: Dataset) -> list[dict]:
    """Question-answer pairs with their passage's text, as :func:`pd.train.heldout.heldout_kl` reads them."""
    return [{"id": r["id"], "question": r["question"], "answer": r["answer"], "passage": ds.documents[r["doc_id"]].text}
            for r in rows]
