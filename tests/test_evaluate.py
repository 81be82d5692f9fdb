"""Closed-book and RAG answering of test questions."""

from __future__ import annotations

import pytest

from pd.data import Dataset, Document, TestItem
from pd.errors import DataError
from pd.evaluation.evaluate import EVAL_PARAMS, evaluate
from pd.generate.base import SamplingParams
from pd.generate.transformers_backend import TransformersGenerator
from pd.io import stable_hash

# An invented fact: the model cannot know it closed-book. (A longer passage with the same fact
# made SmolLM2-135M answer evasively; this short one it reads.)
FACT = "The Harbor Bridge in Velmora is painted orange. It was built in 1987 by the engineer Tomas Reyl."


def toy() -> Dataset:
    docs = {"velmora": Document("velmora", FACT),
            "lake": Document("lake", "Lake Tarnow freezes every January and hosts a skating race "
                                     "called the Tarnow Mile."),
            "fest": Document("fest", "The Osk festival is held each spring in the city of Brell.")}
    items = [TestItem("i1", "What colour was it painted?", ("orange",), ("velmora",),
                      rewritten="What colour is the Harbor Bridge in Velmora?"),
             TestItem("i2", "What is the race called?", ("Tarnow Mile",), ("lake",),
                      rewritten="What is the skating race on Lake Tarnow called?")]
    return Dataset("toy", docs, items)


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return TransformersGenerator(tiny_llama.spec, progress=False)


def test_defaults_are_the_papers():
    assert EVAL_PARAMS.temperature == 0.25 and EVAL_PARAMS.max_new_tokens == 500


def test_rows_closed_book_and_rag(tiny):
    ds = toy()
    p = SamplingParams(temperature=0.25, max_new_tokens=3, seed=1)
    closed, cstats = evaluate(ds, tiny, None, p, model="tiny-llama")
    rag, rstats = evaluate(ds, tiny, [["lake", "velmora"], ["lake"]], p, model="tiny-llama", adapter="some/adapter")
    assert [r["item_id"] for r in closed] == ["i1", "i2"]
    assert closed[0]["question"] == "What colour is the Harbor Bridge in Velmora?"  # the rewritten one
    assert closed[0]["retrieved"] == [] and rag[0]["retrieved"] == ["lake", "velmora"]
    # The prompt hashes are those of the layouts, built here by hand.
    q1 = "What colour is the Harbor Bridge in Velmora?"
    assert closed[0]["prompt_hash"] == stable_hash([{"role": "user", "content": q1}])
    rag_text = ds.documents["lake"].text + "\n\n" + FACT + "\n\nQuestion: " + q1
    assert rag[0]["prompt_hash"] == stable_hash([{"role": "user", "content": rag_text}])
    assert rag[0]["adapter"] == "some/adapter" and closed[0]["adapter"] is None and closed[0]["model"] == "tiny-llama"
    assert rag[0]["params"] == p.as_dict() and rag[0]["finish_reason"] == "length" and rag[0]["n_tokens"] == 3
    assert cstats["mode"] == "closed_book" and rstats["mode"] == "rag" and rstats["cut_at_max_tokens"] == 2
    by_id, _ = evaluate(ds, tiny, {"i2": ["lake"], "i1": ["lake", "velmora"]}, p)
    assert [r["answer"] for r in by_id] == [r["answer"] for r in rag]


def test_bad_retrieval_input(tiny):
    ds = toy()
    with pytest.raises(DataError, match="one ordered list"):
        evaluate(ds, tiny, [["lake"]])
    with pytest.raises(DataError, match="unknown document"):
        evaluate(ds, tiny, [["lake"], ["nope"]])
    with pytest.raises(DataError, match="missing for 1 item"):
        evaluate(ds, tiny, {"i1": ["lake"]})


@pytest.mark.slow
def test_smollm2_reads_the_passage_it_is_given(smollm2):
    """With the passage in its prompt SmolLM2 names the invented colour in some samples at T=0.25 (6 of 8 seeds
    when written), without it never: one sample of a 135M model is too few to tell."""
    ds = toy().head(1)
    gen = TransformersGenerator(smollm2.spec, progress=False)
    answers = {}
    for name, docs in (("with", ["velmora"]), ("without", [])):
        answers[name] = []
        for seed in range(6):
            rows, _ = evaluate(ds, gen, [docs], SamplingParams(temperature=0.25, max_new_tokens=40, seed=seed))
            assert rows[0]["finish_reason"] in ("stop", "length")
            answers[name].append("orange" in rows[0]["answer"].lower())
    assert sum(answers["with"]) >= 2 and sum(answers["without"]) == 0, answers


def _direct_logprob(model, tok, prompt: str, answer: str) -> float:
    """log p(answer | prompt) from one unpadded forward pass, log-softmax in float64."""
    import torch

    p = tok.encode(prompt, add_special_tokens=False)
    a = tok.encode(answer, add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0].double(), -1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(a)))


def test_rows_carry_the_gold_loglik_of_their_own_prompt(tiny):
    """Closed-book and RAG rows score the gold answer under the prompt they were asked with."""
    from pd.evaluation.evaluate import eval_conversation
    from pd.generate.transformers_backend import render_prompt

    ds = toy()
    p = SamplingParams(temperature=0.25, max_new_tokens=2, seed=1)
    retrieved = [["lake", "velmora"], ["lake"]]
    for lists in (None, retrieved):
        rows, stats = evaluate(ds, tiny, lists, p)
        for it, row, ids in zip(ds.items, rows, lists or [[], []]):
            conv = eval_conversation(it.closed_book_question, [ds.documents[d].text for d in ids])
            prompt = render_prompt(tiny.tokenizer, conv)
            direct = _direct_logprob(tiny.model, tiny.tokenizer, prompt, it.answers[0])
            n = len(tiny.tokenizer.encode(it.answers[0], add_special_tokens=False))
            assert row["gold_alias"] == it.answers[0] and row["gold_tokens"] == n
            assert row["gold_logprob"] == pytest.approx(direct, abs=1e-4)
            assert row["gold_logprob_per_token"] == pytest.approx(direct / n, abs=1e-4)
        per_token = [r["gold_logprob_per_token"] for r in rows]
        assert stats["mean_gold_logprob_per_token"] == pytest.approx(sum(per_token) / 2, abs=1e-5)
        assert stats["gold_logprob"].startswith("teacher-forced")
    # The RAG prompt holds the passage with the answer: its gold log-likelihood differs from closed-book's.
    closed, _ = evaluate(ds, tiny, None, p)
    rag, _ = evaluate(ds, tiny, retrieved, p)
    assert closed[0]["gold_logprob"] != pytest.approx(rag[0]["gold_logprob"], abs=1e-6)


def test_other_backends_record_null_gold_loglik():
    """A backend without the model's weights (vLLM, a server) writes null and says so in the stats."""
    from pd.generate.base import Completion

    class Served:
        name = backend = "openai"

        def generate(self, convs, params):
            return [[Completion(text="orange", finish_reason="stop", n_tokens=1)] for _ in convs]

    rows, stats = evaluate(toy(), Served(), None, SamplingParams(max_new_tokens=4))
    assert all(r["gold_logprob"] is None and r["gold_logprob_per_token"] is None and r["gold_alias"] is None
               for r in rows)
    assert "not computed: backend openai" in stats["gold_logprob"] and stats["mean_gold_logprob_per_token"] is None
    rows, stats = evaluate(toy(), Served(), None, SamplingParams(max_new_tokens=4), gold_logprob=False)
    assert rows[0]["gold_logprob"] is None and stats["gold_logprob"] == "not requested"
