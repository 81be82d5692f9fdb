"""MMLU-Pro: loading and validation, letter log-likelihood scoring against a float64 reference, adapters."""

import json
from pathlib import Path

import pytest
import torch

from pd.errors import ConfigError, DataError
from pd.evaluation.mmlu import (
    LETTERS,
    MCQuestion,
    letter_tokens,
    load_mmlu_pro,
    question_prompt,
    questions_from_rows,
    run_mmlu,
    score_questions,
)
from pd.io import read_jsonl

EASY = Path(__file__).parent / "data" / "mmlu_pro_easy.jsonl"
TEN = MCQuestion("t10", "Which number is the largest?", tuple(str(i) for i in range(10)), 9, "math")


def reference_scores(model, tok, q: MCQuestion, spec) -> list[float]:
    """log p(letter tokens | prompt), one unbatched float64 forward per option."""
    ctx = tok.encode(question_prompt(tok, q, spec), add_special_tokens=False)
    out = []
    for i in range(len(q.options)):
        cont = tok.encode(" " + LETTERS[i], add_special_tokens=False)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        out.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    return out


def test_load_easy_file():
    qs = load_mmlu_pro(EASY)
    assert len(qs) == 12 and qs[0].answer == "C" and qs[0].options[2] == "Paris"
    assert [q.id for q in load_mmlu_pro(EASY, limit=2)] == ["9000", "9001"]
    assert {q.category for q in load_mmlu_pro(EASY, categories=["math"])} == {"math"}
    with pytest.raises(DataError, match="unknown category"):
        load_mmlu_pro(EASY, categories=["astrology"])


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "q", "options": ["a"], "answer": "A"}, "2 to 10 strings"),
        ({"question": "q", "options": list("abcdefghijk"), "answer": "A"}, "2 to 10 strings"),
        ({"question": "q", "options": ["a", "b"], "answer": "C"}, "not one of A, B"),
        ({"question": "q", "options": ["a", "b"], "answer_index": 2}, r"not in 0\.\.1"),
        ({"question": "q", "options": ["a", "b"], "answer": "A", "answer_index": 1}, "disagree"),
        ({"question": "q", "options": ["a", "b"]}, "needs 'answer'"),
        ({"question": " ", "options": ["a", "b"], "answer": "A"}, "non-empty 'question'"),
    ],
)
def test_bad_rows_are_named(row, message):
    with pytest.raises(DataError, match=message):
        questions_from_rows([row], "f.jsonl")


def test_missing_file_and_hub_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not found"):
        load_mmlu_pro(tmp_path / "nope.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="not valid JSON"):
        load_mmlu_pro(tmp_path / "bad.jsonl")
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match="needs the `datasets` package"):
        load_mmlu_pro(None)


def test_scores_equal_float64_reference(tiny_llama):
    model, tok, spec = tiny_llama.model(), tiny_llama.tokenizer, tiny_llama.spec
    qs = load_mmlu_pro(EASY)[:5] + [TEN]
    # tiny-llama splits " J" into two tokens: the ten-option question takes the multi-token path
    assert any(len(c) > 1 for c in letter_tokens(tok, 10)) and all(len(c) == 1 for c in letter_tokens(tok, 4))
    got = score_questions(model, tok, qs, spec, batch_size=4)
    one = score_questions(model, tok, qs, spec, batch_size=1)
    ref_model = tiny_llama.model().double()
    for q, g, o in zip(qs, got, one):
        ref = reference_scores(ref_model, tok, q, spec)
        assert g == pytest.approx(ref, abs=1e-4)
        assert g == pytest.approx(o, abs=1e-5)  # batching (right padding) changes nothing


def test_batch_size_must_be_positive(tiny_llama):
    with pytest.raises(ConfigError, match="batch_size"):
        score_questions(tiny_llama.model(), tiny_llama.tokenizer, load_mmlu_pro(EASY)[:1], batch_size=0)


def test_run_with_adapter_uses_it(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_llama.model(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                               init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().double().eval()

    base = run_mmlu("tiny-llama", EASY, tmp_path / "base.jsonl", limit=4)
    adapted = run_mmlu("tiny-llama", EASY, tmp_path / "lora.jsonl", adapter=str(tmp_path / "adapter"), limit=4)
    rows_base, rows_lora = read_jsonl(tmp_path / "base.jsonl"), read_jsonl(tmp_path / "lora.jsonl")
    qs = load_mmlu_pro(EASY, limit=4)
    for q, rb, rl in zip(qs, rows_base, rows_lora):
        ref = reference_scores(merged, tiny_llama.tokenizer, q, tiny_llama.spec)
        assert [rl["logprobs"][L] for L in LETTERS[:4]] == pytest.approx(ref, abs=1e-4)
        assert rl["logprobs"] != pytest.approx(rb["logprobs"], abs=1e-3)
        assert rl["pred"] == LETTERS[max(range(4), key=lambda i: ref[i])]
        assert rl["correct"] == (rl["pred"] == q.answer) and rl["question_id"] == q.id
    assert adapted["adapter"] == str(tmp_path / "adapter") and base["adapter"] is None
    assert adapted["accuracy"] == sum(r["correct"] for r in rows_lora) / 4
    assert adapted["chance"] == 0.25
    summary = json.loads((tmp_path / "lora.summary.json").read_text())
    assert summary["n"] == 4
    with pytest.raises(ConfigError, match="adapter_config.json"):
        run_mmlu("tiny-llama", EASY, tmp_path / "x.jsonl", adapter=str(tmp_path))
