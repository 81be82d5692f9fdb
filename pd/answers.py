"""The expert's answers to generated questions: the training targets of PD and SFT.

The expert (default: the model being trained) answers each question with the passage in
its prompt (template ``expert_answer``: passage, blank line, ``---``, blank line,
question); T = 1.5 for PD data and 0.25 for SFT data (the caller's params); answers cut at
the token cap are counted. Chain-of-thought answers for SFT with distractors see the
passages :func:`pd.train.sequences.choose_context` picks, so the trainer and this
generator agree on the context without sharing state.
"""

from __future__ import annotations

from typing import Sequence

from pd.data import Dataset
from pd.errors import DataError
from pd.generate.base import Completion, Generator, SamplingParams
from pd.prompts import render


def check_question_rows(rows: list[dict], dataset: Dataset) -> None:
    """Check that question rows can be answered from ``dataset``.

    Args:
        rows: rows as :func:`pd.questions.generate_questions` writes them (``id``, ``doc_id``, ``question``).
        dataset: the dataset whose documents the rows name.

    Raises:
        DataError: a row lacks a field or names a document the dataset does not hold (the message names the row).
    """
    for n, r in enumerate(rows):
        for key in ("id", "doc_id", "question"):
            if key not in r:
                raise DataError(f"question row {n + 1}: missing {key!r} (rows need id, doc_id, question)")
        if r["doc_id"] not in dataset.documents:
            raise DataError(f"question row {n + 1} (id {r['id']}): unknown doc_id {r['doc_id']!r} "
                            f"in dataset {dataset.name}")


def _answer_rows(rows: list[dict], outs: Sequence[Sequence[Completion]], expert: str, params: SamplingParams,
                 extra: list[dict] | None = None) -> tuple[list[dict], dict]:
    answers = []
    for i, (r, comps) in enumerate(zip(rows, outs)):
        for j, c in enumerate(comps):
            row = {"id": r["id"] if len(comps) == 1 else f"{r['id']}-a{j}", "question_id": r["id"],
                   "doc_id": r["doc_id"], "question": r["question"], "answer": c.text.strip(),
                   "finish_reason": c.finish_reason, "n_tokens": c.n_tokens, "expert": expert,
                   "temperature": params.temperature}
            answers.append(dict(row, **(extra[i] if extra else {})))
    cut = sum(a["finish_reason"] == "length" for a in answers)
    stats = {"answers": len(answers), "cut_at_max_tokens": cut, "max_new_tokens": params.max_new_tokens,
             "mean_tokens": round(sum(a["n_tokens"] for a in answers) / len(answers), 2) if answers else 0.0,
             "empty": sum(not a["answer"] for a in answers), "expert": expert, "params": params.as_dict()}
    return answers, stats


def generate_answers(question_rows: list[dict], dataset: Dataset, generator: Generator, params: SamplingParams,
                     expert: str | None = None) -> tuple[list[dict], dict]:
    """The expert's answers with the passage in its prompt (PD: T=1.5; SFT: T=0.25; max 512 tokens).

    Args:
        question_rows: rows with ``id``, ``doc_id`` and ``question``.
        dataset: holds the passages the rows name.
        generator: the expert model.
        params: sampling parameters; ``params.n`` answers per question (ids ``<id>-a<j>`` when n > 1).
        expert: the name recorded in each row (default: the generator's).

    Returns:
        The answer rows (``id``, ``question_id``, ``doc_id``, ``question``, ``answer``, ``finish_reason``,
        ``n_tokens``, ``expert``, ``temperature``) and stats (answers, cut at the token cap, mean tokens, empty).

    Raises:
        DataError: a question row is malformed or names an unknown document.
    """
    check_question_rows(question_rows, dataset)
    convs = [[{"role": "user", "content": render("expert_answer", passage=dataset.documents[r["doc_id"]].text,
                                                 question=r["question"])}] for r in question_rows]
    outs = generator.generate(convs, params)
    return _answer_rows(question_rows, outs, expert or generator.name, params)


def generate_cot_answers(question_rows: list[dict], dataset: Dataset, generator: Generator, params: SamplingParams,
                         expert: str | None = None, *, seed: int = 0, distractors: int = 2,
                         gold_drop_prob: float = 0.4) -> tuple[list[dict], dict]:
    """Chain-of-thought answers for SFT with distractors, each prompt showing the passages the trainer will show.

    Args:
        question_rows: rows with ``id``, ``doc_id`` and ``question``.
        dataset: holds the gold passages and the distractors' pool (all its documents).
        generator: the expert model.
        params: sampling parameters.
        expert: the name recorded in each row (default: the generator's).
        seed: seeds :func:`pd.train.sequences.choose_context` (with the row id).
        distractors: passages other than the gold one per prompt.
        gold_drop_prob: probability that the gold passage is left out.

    Returns:
        Answer rows as :func:`generate_answers` writes them plus ``context_doc_ids`` (in prompt order) and
        ``gold_in_context``; the stats add ``gold_in_context`` (a count), ``seed``, ``distractors``, ``gold_drop_prob``.

    Raises:
        DataError: a question row is malformed or names an unknown document.
    """
    from pd.train.sequences import choose_context

    check_question_rows(question_rows, dataset)
    all_docs = list(dataset.documents)
    contexts = [choose_context(str(r["id"]), r["doc_id"], all_docs, seed=seed, distractors=distractors,
                               gold_drop_prob=gold_drop_prob) for r in question_rows]
    convs = [[{"role": "user", "content": render("cot_answer", passages=[dataset.documents[d].text for d in ctx],
                                                 question=r["question"])}] for r, ctx in zip(question_rows, contexts)]
    outs = generator.generate(convs, params)
    extra = [{"context_doc_ids": ctx, "gold_in_context": r["doc_id"] in ctx} for r, ctx in zip(question_rows, contexts)]
    answers, stats = _answer_rows(question_rows, outs, expert or generator.name, params, extra)
    stats.update(gold_in_context=sum(e["gold_in_context"] for e in extra), seed=seed, distractors=distractors,
                 gold_drop_prob=gold_drop_prob)
    return answers, stats
