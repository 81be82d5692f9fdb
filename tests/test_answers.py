"""The expert's answers: ids, cut counts, and the CoT contexts SFT with distractors sees."""

from __future__ import annotations

import pytest

from pd.answers import generate_answers, generate_cot_answers
from pd.data import Dataset, Document
from pd.errors import DataError
from pd.generate.base import SamplingParams
from pd.prompts import render


def _two_docs() -> Dataset:
    docs = {"d1": Document("d1", "The Velmora bridge was painted orange in 1987."),
            "d2": Document("d2", "Lake Tarnow freezes every January and hosts a skating race.")}
    return Dataset("toy", docs, [])


def test_answers_carry_ids_and_count_cuts(tiny_generator):
    ds = _two_docs()
    qs = [{"id": "d1-q000", "doc_id": "d1", "question": "What colour is the Velmora bridge?"},
          {"id": "d2-q000", "doc_id": "d2", "question": "When does Lake Tarnow freeze?"}]
    params = SamplingParams(temperature=1.5, max_new_tokens=4, seed=1)
    rows, stats = generate_answers(qs, ds, tiny_generator, params, expert="tiny")
    assert [r["id"] for r in rows] == ["d1-q000", "d2-q000"] and [r["doc_id"] for r in rows] == ["d1", "d2"]
    assert all(r["expert"] == "tiny" and r["temperature"] == 1.5 and r["n_tokens"] == 4 for r in rows)
    assert stats["cut_at_max_tokens"] == sum(r["finish_reason"] == "length" for r in rows) == 2
    with pytest.raises(DataError, match="unknown doc_id"):
        generate_answers([{"id": "x", "doc_id": "nope", "question": "q"}], ds, tiny_generator, SamplingParams())


def test_cot_contexts_two_distractors_gold_dropped_about_40_percent(tiny_generator):
    docs = {f"p{i}": Document(f"p{i}", f"Short passage number {i}.") for i in range(12)}
    ds = Dataset("toy12", docs, [])
    qs = [{"id": f"q{i:03d}", "doc_id": f"p{i % 12}", "question": f"Question {i}?"} for i in range(100)]
    rows, stats = generate_cot_answers(qs, ds, tiny_generator, SamplingParams(temperature=0, max_new_tokens=1), seed=3)
    gold_in = 0
    for q, r in zip(qs, rows):
        ctx = r["context_doc_ids"]
        others = [d for d in ctx if d != q["doc_id"]]
        assert len(others) == 2 and len(set(ctx)) == len(ctx) and all(d in ds.documents for d in ctx)
        assert r["gold_in_context"] == (q["doc_id"] in ctx)
        gold_in += r["gold_in_context"]
    assert stats["gold_in_context"] == gold_in
    # Binomial(100, 0.6): mean 60, sd 4.9; 4 sd either side.
    assert 40 <= gold_in <= 80
    # The prompt shows the chosen passages in the chosen order.
    passages = [docs[d].text for d in rows[0]["context_doc_ids"]]
    conv_text = render("cot_answer", passages=passages, question="Question 0?")
    assert conv_text.index(docs[rows[0]["context_doc_ids"][0]].text) < conv_text.index("---")
    greedy = SamplingParams(temperature=0, max_new_tokens=1)
    again, _ = generate_cot_answers(qs[:10], ds, tiny_generator, greedy, seed=3)
    assert [r["context_doc_ids"] for r in again] == [r["context_doc_ids"] for r in rows[:10]]
    other, _ = generate_cot_answers(qs[:10], ds, tiny_generator, greedy, seed=4)
    assert [r["context_doc_ids"] for r in other] != [r["context_doc_ids"] for r in rows[:10]]
