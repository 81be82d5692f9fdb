"""Answers to the test questions, closed-book or with retrieved passages.

The question asked is the rewritten one (``TestItem.closed_book_question``), as in the
paper. Closed-book the user message is the bare question (``closed_book``: what the
student was trained on); with retrieval it is the passages a retriever returned, most
similar first, separated by blank lines, then ``Question: ...`` (``rag``). The caller
passes the retriever's ordered doc ids per item (``pd.evaluation.retrieve``), so this module does
not know how they were found. Answers are sampled with :data:`pd.config.EVAL_SAMPLING`
(the paper's T = 0.25 and up to 500 tokens) unless the caller says otherwise; each
sample becomes one JSONL row that names the item, the prompt's hash, the passages shown
and the parameters.

Each row also carries the gold answer's log-likelihood under the same prompt
(:mod:`pd.generate.loglik`: ``gold_logprob`` in nats, ``gold_logprob_per_token``, ``gold_alias``,
``gold_tokens``), best over the item's aliases, from one teacher-forced pass of the
generator's own model (with its adapter). Only the transformers backend holds the
model's weights; with vLLM or an OpenAI-compatible server the fields are null and the
stats say why.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping, Sequence

from pd.config import EVAL_SAMPLING
from pd.data import Dataset
from pd.errors import DataError
from pd.generate.base import Conversation, Generator, SamplingParams
from pd.io import stable_hash
from pd.prompts import render

if TYPE_CHECKING:
    from pd.generate.loglik import GoldLogLik

EVAL_PARAMS = SamplingParams(**EVAL_SAMPLING)
GOLD_FIELDS = ("gold_logprob", "gold_logprob_per_token", "gold_alias", "gold_tokens")


def eval_conversation(question: str, passages: Sequence[str] | None = None) -> Conversation:
    if passages:
        return [{"role": "user", "content": render("rag", passages=list(passages), question=question)}]
    return [{"role": "user", "content": render("closed_book", question=question)}]


def _retrieved_per_item(dataset: Dataset, retrieved) -> list[list[str]]:
    if retrieved is None:
        return [[] for _ in dataset.items]
    if isinstance(retrieved, Mapping):
        missing = [it.id for it in dataset.items if it.id not in retrieved]
        if missing:
            raise DataError(f"retrieved passages missing for {len(missing)} item(s), e.g. {missing[:3]}")
        lists = [list(retrieved[it.id]) for it in dataset.items]
    else:
        lists = [list(r) for r in retrieved]
        if len(lists) != len(dataset.items):
            raise DataError(f"got {len(lists)} retrieval lists for {len(dataset.items)} items; "
                            "pass one ordered list of doc ids per item (or a dict by item id)")
    for it, ids in zip(dataset.items, lists):
        unknown = [d for d in ids if d not in dataset.documents]
        if unknown:
            raise DataError(f"item {it.id}: retrieved unknown document id(s) {unknown[:3]} "
                            f"(not in dataset {dataset.name})")
    return lists


def evaluate(dataset: Dataset, generator: Generator,
             retrieved: Sequence[Sequence[str]] | Mapping[str, Sequence[str]] | None = None,
             params: SamplingParams = EVAL_PARAMS, *, model: str | None = None,
             adapter: str | os.PathLike | None = None, gold_logprob: bool = True) -> tuple[list[dict], dict]:
    """Answer every test item and score its gold answer.

    Args:
        dataset: the test items and passages.
        generator: the model that answers (its ``prompt()`` renders each conversation).
        retrieved: None for closed-book, else per item (aligned with ``dataset.items`` or
            keyed by item id) the ordered doc ids to show, already cut to k.
        params: the sampling parameters.
        model: the model's name in the rows (default: the generator's).
        adapter: the adapter folder, recorded in the rows.
        gold_logprob: also compute the gold answers' log-likelihood (:func:`gold_logprobs`).

    Returns:
        Rows ``{"item_id", "question", "prompt_hash", "retrieved", "params", "answer",
        "finish_reason", "n_tokens", "model", "adapter", "generator"}`` plus the
        :data:`GOLD_FIELDS` (null where not computed) and ``sample`` when ``params.n > 1``;
        and the stats.

    Raises:
        DataError: retrieval lists that do not match the dataset.
    """
    lists = _retrieved_per_item(dataset, retrieved)
    convs = []
    for it, ids in zip(dataset.items, lists):
        convs.append(eval_conversation(it.closed_book_question, [dataset.documents[d].text for d in ids]))
    if gold_logprob:
        outs, gold, gold_note = generate_with_gold(generator, convs, params, [it.answers for it in dataset.items])
    else:
        outs, gold, gold_note = generator.generate(convs, params), [None] * len(convs), "not requested"
    rows = []
    for it, ids, conv, comps, g in zip(dataset.items, lists, convs, outs, gold):
        scores = g.as_row() if g is not None else dict.fromkeys(GOLD_FIELDS)
        for j, c in enumerate(comps):
            row = {"item_id": it.id, "question": it.closed_book_question, "prompt_hash": stable_hash(conv),
                   "retrieved": ids, "params": params.as_dict(), "answer": c.text.strip(),
                   "finish_reason": c.finish_reason, "n_tokens": c.n_tokens, "model": model or generator.name,
                   "adapter": str(adapter) if adapter else None, "generator": generator.name, **scores}
            if params.n > 1:
                row["sample"] = j
            rows.append(row)
    stats = {"items": len(dataset.items), "rows": len(rows), "mode": "rag" if retrieved is not None else "closed_book",
             "cut_at_max_tokens": sum(r["finish_reason"] == "length" for r in rows),
             "mean_tokens": round(sum(r["n_tokens"] for r in rows) / len(rows), 2) if rows else 0.0,
             "params": params.as_dict(), "generator": generator.name, "gold_logprob": gold_note}
    scored = [g.per_token for g in gold if g is not None]
    stats["mean_gold_logprob_per_token"] = round(sum(scored) / len(scored), 6) if scored else None
    return rows, stats


def generate_with_gold(generator: Generator, convs: Sequence[Conversation], params: SamplingParams,
                       gold: Sequence[Sequence[str]]) -> tuple[list, list[GoldLogLik | None], str]:
    """Completions, and the gold answers' log-likelihood under each conversation with the generator's own model.

    On the transformers backend the gold aliases are scored inside the generation's prefill
    (:meth:`~pd.generate.transformers_backend.TransformersGenerator.generate_scored`); the
    conversations a completion cache already holds are scored in a pass of their own.

    Args:
        generator: any generator; only the transformers backend (or a cache around one) scores.
        convs: the conversations the items are asked with.
        params: the sampling parameters.
        gold: each item's gold answers (aliases).

    Returns:
        Per conversation its completions, one :class:`pd.generate.loglik.GoldLogLik` per item (None:
        no usable alias, or not computed), and a note for the stats saying how it was
        computed, or why not.
    """
    from pd.generate.loglik import alias_tokens, best_alias

    backend = getattr(generator, "backend", None)
    if backend != "transformers":
        return (generator.generate(list(convs), params), [None] * len(convs),
                f"not computed: backend {backend} gives no teacher-forced pass")
    aliases = alias_tokens(generator.tokenizer, gold)
    outs, logps = generator.generate_scored(list(convs), params, [[ids for _, ids in a] for a in aliases])
    return (outs, [best_alias(a, lp) for a, lp in zip(aliases, logps)],
            "teacher-forced log p(gold alias | evaluation prompt), nats, best over aliases")
