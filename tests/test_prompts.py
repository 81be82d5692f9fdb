"""The prompt templates render the layouts the method prescribes."""

from __future__ import annotations

import pytest

from pd.errors import ConfigError
from pd.prompts import builtin_names, render, set_overrides, template_problem
from pd.questions import FEW_SHOT
from pd.train.sequences import passage_question

MINE = ["qgen", "qgen_single", "qgen_bonito", "expert_answer", "cot_answer", "closed_book", "rag", "rewrite_question"]


def test_all_templates_exist():
    assert set(MINE) <= set(builtin_names())


def test_expert_answer_is_the_teachers_layout():
    passage, question = "Line one.\nLine two; with ---.", "Who wrote it?"
    assert render("expert_answer", passage=passage, question=question) == passage + "\n\n---\n\n" + question
    # ... and identical to what the training sequences build for the teacher.
    assert render("expert_answer", passage=passage, question=question) == passage_question(passage, question)


def test_closed_book_is_the_bare_question():
    assert render("closed_book", question="How tall is the Eiffel Tower?") == "How tall is the Eiffel Tower?"


def test_rag_joins_passages_by_blank_lines_then_question():
    got = render("rag", passages=["First passage.", "Second\npassage.", "Third."], question="Why?")
    assert got == "First passage.\n\nSecond\npassage.\n\nThird.\n\nQuestion: Why?"


def test_cot_answer_shows_passages_in_order_then_question_and_asks_for_a_final_answer_line():
    got = render("cot_answer", passages=["AAA", "BBB"], question="QQQ?")
    assert got.startswith("AAA\n\nBBB\n\n---\n\nQQQ?\n\n")
    assert '"Answer: <short answer>"' in got


def test_qgen_is_few_shot_with_tagged_examples_and_the_passage_last():
    got = render("qgen", passage="THE PASSAGE", n=5, examples=FEW_SHOT)
    assert got.count("<question>") == 1 + len(FEW_SHOT[0]["questions"])  # the instruction names the tag once
    for q in FEW_SHOT[0]["questions"]:
        assert f"<question>{q}</question>" in got
    assert got.index(FEW_SHOT[0]["passage"]) < got.index("THE PASSAGE")
    assert "Write 5 trivia questions" in got


def test_bonito_layout_and_others():
    assert render("qgen_bonito", passage="P", task_type="extractive question answering") == \
        "<|tasktype|>\nextractive question answering\n<|context|>\nP\n<|task|>"
    assert render("qgen_single", passage="PPP").endswith("Passage:\nPPP")
    rw = render("rewrite_question", passage="PPP", question="How old was he?")
    assert rw.endswith("Passage:\nPPP\n\nQuestion: How old was he?") and "<question></question>" in rw


def test_missing_variable_is_a_config_error():
    with pytest.raises(ConfigError, match="passage"):
        render("expert_answer", question="q")


def test_override_by_path(tmp_path):
    f = tmp_path / "cb.j2"
    f.write_text("Answer briefly: {{ question }}")
    try:
        set_overrides({"closed_book": str(f)})
        assert render("closed_book", question="Q?") == "Answer briefly: Q?"
    finally:
        set_overrides(None)
    assert render("closed_book", question="Q?") == "Q?"


def test_a_template_from_config_cannot_run_code(tmp_path):
    f = tmp_path / "cb.j2"
    marker = tmp_path / "pwned"
    f.write_text("{{ cycler.__init__.__globals__.os.popen('touch %s').read() }}{{ question }}" % marker)
    try:
        set_overrides({"closed_book": str(f)})
        with pytest.raises(ConfigError, match="sandbox"):
            render("closed_book", question="Q?")
    finally:
        set_overrides(None)
    assert not marker.exists()
    assert template_problem(f.read_text()) and not marker.exists()
    assert template_problem("{{ question }}{% for p in passages %}{{ p }}{% endfor %}") is None
