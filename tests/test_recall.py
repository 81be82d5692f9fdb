"""The recall's grading rules on constructed answers (exact numbers), its summary, and the adapter switch."""

import pytest

from pd.errors import ConfigError
from pd.recall import F1_THRESHOLD, golds_of, grade, summarise, summary_line, token_f1

Q = "Who founded Brindlemarsh?"
REF = "Brindlemarsh was founded by the shipwright Tamsin Quorrel."  # new words: shipwright, tamsin, quorrel


@pytest.mark.parametrize("answer, f1", [
    ("Tamsin Quorrel", 0.8),  # P 2/2, R 2/3
    ("The shipwright Quorrel built the pier", 4 / 7),  # shipwright quorrel built pier: P 2/4, R 2/3
    ("Quorrel", 0.5),  # P 1, R 1/3: exactly the threshold
    ("Quorrel, the baker of the town", 1 / 3),  # quorrel baker town: P 1/3, R 1/3
    ("It was founded by Orrin Paskett.", 0.0),  # another document's name
    ("Brindlemarsh was founded by a fisherman", 0.0),  # repeats the question: its words do not count
    ("", 0.0),
])
def test_token_f1_leaves_out_the_question_words(answer, f1):
    assert token_f1(answer, REF, Q) == pytest.approx(f1)


def test_token_f1_counts_every_word_when_the_reference_only_repeats_the_question():
    q = "Is Brindlemarsh a fishing town?"
    # brindlemarsh fishing town (the reference, all question words) against yes fishing town: P 2/3, R 2/3
    assert token_f1("Yes, it is a fishing town", "Brindlemarsh is a fishing town.", q) == pytest.approx(2 / 3)
    assert token_f1("Yes.", "Yes, Brindlemarsh is a fishing town.", q) == 1.0  # "yes" is the reference's new word
    assert token_f1("No.", "Yes, Brindlemarsh is a fishing town.", q) == 0.0
    # Without a question, the repeated words count: the same fisherman answer scores 0.5 and would pass.
    assert token_f1("Brindlemarsh was founded by a fisherman", REF) == pytest.approx(2 * (2 / 3) * (2 / 5) / (16 / 15))


def test_grade_uses_gold_answers_first_then_f1_at_the_threshold():
    rows = [
        {"question": Q, "answer": "Tamsin Quorrel founded it", "golds": ["Quorrel"], "references": [REF]},
        {"question": Q, "answer": "the Quorrelton family", "golds": ["Quorrel"], "references": [REF]},  # whole words
        {"question": Q, "answer": "Quorrel", "golds": None, "references": [REF]},
        {"question": Q, "answer": "Quorrel, the baker of the town", "golds": None, "references": [REF]},
        # several teacher answers: the best F1 counts
        {"question": Q, "answer": "Orrin Paskett", "golds": None, "references": [REF, "Orrin Paskett did."]},
    ]
    got = grade(rows)
    assert [(g["rule"], g["correct"]) for g in got] == [("substring", True), ("substring", False), ("f1", True),
                                                         ("f1", False), ("f1", True)]
    assert [g["score"] for g in got] == [None, None, 0.5, 0.3333, 1.0]
    assert [g["correct"] for g in grade(rows, threshold=0.6)] == [True, False, False, False, True]
    with pytest.raises(ConfigError, match="threshold"):
        grade(rows, threshold=0)
    assert F1_THRESHOLD == 0.5


def test_a_judge_grades_where_there_is_no_gold_and_an_invalid_verdict_is_not_recalled(tiny_generator, one_thread):
    rows = [{"question": Q, "answer": "Tamsin Quorrel", "golds": None, "references": [REF]},
            {"question": Q, "answer": "Tamsin Quorrel", "golds": ["Quorrel"], "references": [REF]}]
    got = grade(rows, judge_generator=tiny_generator)  # random weights: no <grade> tag, an invalid verdict
    assert got[0]["rule"] == "judge" and got[0]["judge_valid"] is False and got[0]["correct"] is False
    assert got[1]["rule"] == "substring" and got[1]["correct"] is True  # gold answers come before the judge


def test_golds_come_from_answers_or_a_key_span():
    assert golds_of({"answers": ["Quorrel", " "]}) == ["Quorrel"]
    assert golds_of({"key_span": "Tamsin Quorrel"}) == ["Tamsin Quorrel"]
    assert golds_of({"answer": "a teacher's answer is a reference, not a gold"}) is None


def test_summary_counts_per_document_and_overall():
    def row(qid, doc, way, correct):
        return {"id": qid, "doc_id": doc, "way": way, "correct": correct, "rule": "f1"}

    graded = [row("a1", "a.txt", "adapter", True), row("a1", "a.txt", "base", False),
              row("a1", "a.txt", "passage", True), row("a2", "a.txt", "adapter", False),
              row("a2", "a.txt", "base", False), row("a2", "a.txt", "passage", True),
              row("b1", "b.txt", "adapter", True), row("b1", "b.txt", "base", True)]  # b1: no passage answer
    s = summarise(graded, documents=["a.txt", "b.txt", "c.txt"])
    assert s["line"] == "recalls 2 of 3 held-out facts (base 1, with the passage 2 of 2)"
    assert s["documents"]["a.txt"]["line"] == "recalls 1 of 2 held-out facts (base 0, with the passage 2)"
    assert s["documents"]["b.txt"]["line"] == "recalls 1 of 1 held-out facts (base 1)"
    assert s["documents"]["c.txt"] == {"questions": 0, "adapter": None, "base": None, "passage": None,
                                       "line": "no held-out facts to ask"}
    assert s["rules"] == {"f1": 8}
    assert summary_line({"questions": 4, "adapter": 3, "base": 0, "passage": 4}, "questions") == \
        "recalls 3 of 4 questions (base 0, with the passage 4)"


def test_the_base_view_is_the_base_model_and_the_adapter_comes_back(tmp_path, tiny_llama, one_thread):
    """One load: AdapterOff answers as a model loaded without the adapter, and the adapter is on again after."""
    import torch
    from peft import LoraConfig, get_peft_model

    from pd.generate import SamplingParams
    from pd.generate.transformers_backend import TransformersGenerator
    from pd.recall import AdapterOff

    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # B != 0: it changes outputs
    peft = get_peft_model(tiny_llama.model(), lora)
    peft.save_pretrained(tmp_path / "adapter")
    adapted = TransformersGenerator(tiny_llama.spec, tmp_path / "adapter", progress=False, merge_adapter=False)
    base = AdapterOff(adapted)
    plain = TransformersGenerator(tiny_llama.spec, progress=False)
    convs = [[{"role": "user", "content": q}] for q in ("Who built the harbour?", "Where is salt harvested?")]
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    first = [c[0].token_ids for c in adapted.generate(convs, params)]
    without = [c[0].token_ids for c in plain.generate(convs, params)]
    assert [c[0].token_ids for c in base.generate(convs, params)] == without
    assert [c[0].token_ids for c in adapted.generate(convs, params)] == first
    assert first != without  # the adapter changes the answers
    assert base.name == plain.name and "+adapter:" in adapted.name  # the base view shares the base model's cache
