"""Grading: substring match, judge-output parsing, grade files, and the judge driver on a real model."""

import json

import pytest

from pd.data import Dataset, Document, TestItem
from pd.errors import ConfigError, DataError
from pd.evaluation.grade import (
    grade_file,
    judge_conversation,
    parse_judge,
    substring_match,
    summarise,
    summary_path,
)
from pd.io import read_json, read_jsonl, write_jsonl
from pd.text import normalise_answer

# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  An   apple,  a PEAR!  ", "apple pear"),
        ("U.S.", "us"),
        ("1,000 dollars", "1000 dollars"),
        ("New York-based", "new york based"),
        ("and/or", ""),  # both halves are stop-words
        ("It's in the box.", "box"),
        ("“Quoted” — words", "quoted words"),
        ("Ünïcode Straße", "ünïcode strasse"),  # case-folded: ß is ss
    ],
)
def test_normalise_answer(text, expected):
    assert normalise_answer(text) == expected


def test_normalise_keeps_stopwords_when_asked():
    assert normalise_answer("The Who", stopwords=False) == "the who"
    assert normalise_answer("The Who") == ""


# --------------------------------------------------------------------------- substring match


@pytest.mark.parametrize(
    "answer, golds, word, plain",
    [
        # "no" vs "know": only plain mode matches inside a word.
        ("I know the answer.", ["no"], False, True),
        ("No, it was not.", ["no"], True, True),
        # gold made only of stop-words falls back to keeping stop-words on both sides
        ("I love the band The Who.", ["The Who"], True, True),
        ("Who knows?", ["The Who"], False, False),
        ("It happened in 1889.", ["1889"], True, True),
        ("It happened in 18890.", ["1889"], False, True),
        ("Paris, France", ["paris"], True, True),
        ("The capital is Lyon.", ["Paris", "Lyon"], True, True),
        ("The capital is Lyons.", ["Lyon"], False, True),
        ("He played for the New York Yankees.", ["the Yankees"], True, True),
        ("He played for the Yankees", ["New York Yankees"], False, False),
        ("around $1,000,000", ["1,000,000"], True, True),
        ("a well-known actor", ["well known"], True, True),
        ("", ["Paris"], False, False),
        ("Paris", ["???", "Paris"], True, True),  # unusable gold ignored, the other used
    ],
)
def test_substring_match_modes(answer, golds, word, plain):
    assert substring_match(answer, golds, "word") is word
    assert substring_match(answer, golds, "plain") is plain


def test_substring_match_errors():
    with pytest.raises(ConfigError, match="allowed: word, plain"):
        substring_match("x", ["x"], "fuzzy")
    with pytest.raises(DataError, match="no usable gold"):
        substring_match("x", ["?!", ""], "word")


# --------------------------------------------------------------------------- judge output parsing

V = "valid"
JUDGE_CASES = [
    # (name, output, correct, valid, reason prefix)
    ("plain true", "<reasoning>Same year.</reasoning>\n<grade>true</grade>", True, True, ""),
    ("plain false", "<reasoning>Wrong.</reasoning><grade>false</grade>", False, True, ""),
    ("upper case tag and word", "<REASONING>ok</REASONING><GRADE>TRUE</GRADE>", True, True, ""),
    ("mixed case word", "<grade>False</grade>", False, True, ""),
    ("spaces inside tags", "< grade > true </ grade >", True, True, ""),
    ("closing typo </grad>", "<reasoning>r</reasoning><grade>true</grad>", True, True, ""),
    ("closing typo <\\grade>", "<grade>false<\\grade>", False, True, ""),
    ("closing tag repeated as opening", "<grade>true<grade>", True, True, ""),
    ("missing closing tag at end", "<reasoning>r</reasoning>\n<grade>false", False, True, ""),
    ("trailing period", "<grade>true.</grade>", True, True, ""),
    ("markdown bold", "<grade>**false**</grade>", False, True, ""),
    ("quoted", "<grade>\"true\"</grade>", True, True, ""),
    ("extra text before and after", "Let me think.\n<reasoning>x</reasoning>\n<grade>true</grade>\nThanks!",
     True, True, ""),
    ("no reasoning is still valid", "<grade>false</grade>", False, True, ""),
    ("same grade twice", "<grade>true</grade> I repeat: <grade>true</grade>", True, True, ""),
    ("empty output", "", None, False, "empty_output"),
    ("whitespace output", "  \n\t ", None, False, "empty_output"),
    ("None output", None, None, False, "empty_output"),
    ("no tags, bare word", "true", None, False, "no_grade_tag"),
    ("no tags, reasoning only", "<reasoning>The answer matches.</reasoning>", None, False, "no_grade_tag"),
    ("grade written as a label", "Grade: true", None, False, "no_grade_tag"),
    ("opening tag typo", "<grad>true</grad>", None, False, "no_grade_tag"),
    ("both words in one tag", "<grade>true or false</grade>", None, False, "unrecognised_grade"),
    ("template echoed", "<grade>true|false</grade>", None, False, "unrecognised_grade"),
    ("empty grade", "<reasoning>hm</reasoning><grade></grade>", None, False, "unrecognised_grade"),
    ("synonym yes", "<grade>yes</grade>", None, False, "unrecognised_grade"),
    ("synonym correct", "<grade>correct</grade>", None, False, "unrecognised_grade"),
    ("misspelt word", "<grade>tru</grade>", None, False, "unrecognised_grade"),
    ("negated", "<grade>not true</grade>", None, False, "unrecognised_grade"),
    ("unclosed and followed by prose", "<grade>true\nBecause the answer names the city.",
     None, False, "unrecognised_grade"),
    ("two different grades", "<grade>true</grade><grade>false</grade>", None, False, "conflicting_grades"),
    ("grade inside reasoning disagrees", "<reasoning>I'd say <grade>false</grade></reasoning><grade>true</grade>",
     None, False, "conflicting_grades"),
    ("one valid, one unreadable", "<grade>true</grade> then <grade>maybe</grade>", None, False, "conflicting_grades"),
    ("invented next case after the grade is cut off",
     "<reasoning>Same.</reasoning>\n<grade>true</grade>\n\nQuestion: Who?\nAccepted answers: \"x\"\nResponse: y\n"
     "<reasoning>No.</reasoning>\n<grade>false</grade>", True, True, ""),
    ("invented case before any grade is not cut", "<reasoning>x</reasoning>\nQuestion: Who?\n<grade>false</grade>",
     False, True, ""),
    ("repeated tag with a second word", "<grade>true<grade>false</grade>", None, False, "conflicting_grades"),
]


@pytest.mark.parametrize("name, output, correct, valid, reason", JUDGE_CASES, ids=[c[0] for c in JUDGE_CASES])
def test_parse_judge_table(name, output, correct, valid, reason):
    v = parse_judge(output)
    assert v.valid is valid
    assert v.correct is correct
    if valid:
        assert v.reason == ""
    else:
        assert v.reason.split(":")[0] == reason
        assert v.correct is None  # never counted correct


def test_parse_judge_table_is_adversarial_enough():
    assert len(JUDGE_CASES) >= 20
    assert sum(1 for c in JUDGE_CASES if not c[3]) >= 15


def test_parse_judge_records_reasoning():
    assert parse_judge("<reasoning> It says 1889. </reasoning><grade>true</grade>").reasoning == "It says 1889."
    assert parse_judge("<grade>true</grade>").reasoning is None


# --------------------------------------------------------------------------- templates


def test_judge_templates_render_answers_and_response():
    conv = judge_conversation("Who built it?", ["Gustave Eiffel", "Eiffel"], "Eiffel did.")
    text = conv[0]["content"]
    assert conv[0]["role"] == "user" and len(conv) == 1
    assert text.endswith('Question: Who built it?\nAccepted answers: "Gustave Eiffel"; "Eiffel"\nResponse: Eiffel did.')
    assert "<grade>" in text and "<reasoning>" in text
    conv = judge_conversation("Q?", ["yes"], "No.", template="judge_hotpotqa", prefill="<reasoning>")
    assert conv[0]["content"].endswith("Question: Q?\nReference answer: yes\nResponse: No.")
    assert conv[1] == {"role": "assistant", "content": "<reasoning>"}
    with pytest.raises(ConfigError, match="allowed: judge_squadshifts, judge_hotpotqa"):
        judge_conversation("Q?", ["a"], "b", template="judge_nope")


# --------------------------------------------------------------------------- grade files


def _toy_dataset() -> Dataset:
    docs = {"d0": Document("d0", "Paris is the capital of France."), "d1": Document("d1", "Gold is Au.")}
    items = [
        TestItem("q0", "capital?", ("Paris",), ("d0",), "What is the capital of France?"),
        TestItem("q1", "symbol?", ("Au",), ("d1",), "What is the chemical symbol for gold?"),
        TestItem("q2", "answer?", ("no",), ("d1",), "Is gold a gas?"),
    ]
    return Dataset("toy", docs, items)


def test_grade_file_substring(tmp_path):
    ds = _toy_dataset()
    rows = [
        {"item_id": "q0", "answer": "It is Paris.", "prompt_hash": "h0", "retrieved": ["d0"]},
        {"item_id": "q1", "answer": "Silver (Ag).", "prompt_hash": "h1", "retrieved": []},
        {"item_id": "q2", "answer": "I know it is solid.", "prompt_hash": "h2", "retrieved": []},
    ]
    write_jsonl(tmp_path / "eval.jsonl", rows)
    s = grade_file(tmp_path / "eval.jsonl", ds, tmp_path / "g.jsonl", grader="substring", mode="word")
    graded = read_jsonl(tmp_path / "g.jsonl")
    assert [g["correct"] for g in graded] == [True, False, False]
    assert [g["item_id"] for g in graded] == ["q0", "q1", "q2"]
    assert [g["passage"] for g in graded] == ["d0", "d1", "d1"]  # the report's bootstrap clusters by it
    assert graded[0]["prompt_hash"] == "h0" and graded[0]["retrieved"] == ["d0"]
    assert graded[0]["gold"] == ["Paris"] and graded[0]["grader"] == "substring_word"
    assert s["accuracy"] == pytest.approx(1 / 3) and s["validity_rate"] == 1.0
    assert read_json(summary_path(tmp_path / "g.jsonl"))["n"] == 3
    s = grade_file(tmp_path / "eval.jsonl", ds, tmp_path / "p.jsonl", grader="substring", mode="plain")
    assert s["correct"] == 2  # "know" contains "no"


def test_a_question_belongs_to_its_first_gold_passage():
    from pd.evaluation.grade import item_passage

    assert item_passage(TestItem("h", "q", ("a",), ("hotpot-p00007", "hotpot-p00002"))) == "hotpot-p00007"
    assert item_passage(TestItem("m", "q", ("a",), ())) is None  # MMLU-style: no passage, its own cluster


def test_grade_file_bad_input(tmp_path):
    ds = _toy_dataset()
    write_jsonl(tmp_path / "e.jsonl", [{"item_id": "zz", "answer": "x"}])
    with pytest.raises(DataError, match="not in the dataset"):
        grade_file(tmp_path / "e.jsonl", ds, tmp_path / "g.jsonl")
    write_jsonl(tmp_path / "e.jsonl", [{"item_id": "q0"}])
    with pytest.raises(DataError, match="needs 'item_id' and 'answer'"):
        grade_file(tmp_path / "e.jsonl", ds, tmp_path / "g.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        grade_file(tmp_path / "missing.jsonl", ds, tmp_path / "g.jsonl")
    write_jsonl(tmp_path / "e.jsonl", [{"item_id": "q0", "answer": "Paris"}])
    with pytest.raises(ConfigError, match="allowed: substring, judge"):
        grade_file(tmp_path / "e.jsonl", ds, tmp_path / "g.jsonl", grader="bleu")
    with pytest.raises(ConfigError, match="needs a generator"):
        grade_file(tmp_path / "e.jsonl", ds, tmp_path / "g.jsonl", grader="judge")
    assert not (tmp_path / "g.jsonl").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_numeric_gold_answers_load_and_grade_by_substring(tmp_path, suffix):
    """Issue 14 item 8: numbers in a questions file (1889, [1889, 1890], CSV "[1889, 1890]") become
    strings at load, so grading matches them like any other answer instead of crashing."""
    from pd.data import load_folder

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("The bridge opened in 1889 and was widened in 1890.")
    q = tmp_path / f"q{suffix}"
    if suffix == ".jsonl":
        q.write_text(json.dumps({"id": "q0", "question": "Opened?", "answers": 1889, "doc": "a.txt"}) + "\n"
                     + json.dumps({"id": "q1", "question": "Widened?", "answers": [1890, 1891], "doc": "a.txt"}) + "\n")
    else:
        q.write_text('id,question,answers,doc\nq0,Opened?,1889,a.txt\nq1,Widened?,"[1890, 1891]",a.txt\n')
    ds = load_folder(tmp_path / "docs", q)
    answers = [("q0", "In 1889."), ("q1", "In 1889."), ("q1", "It was 1891, I think.")]
    write_jsonl(tmp_path / "eval.jsonl", [{"item_id": i, "answer": a} for i, a in answers])
    s = grade_file(tmp_path / "eval.jsonl", ds, tmp_path / "g.jsonl", grader="substring", mode="word")
    graded = read_jsonl(tmp_path / "g.jsonl")
    assert [g["correct"] for g in graded] == [True, False, True]
    assert [g["gold"] for g in graded] == [["1889"], ["1890", "1891"], ["1890", "1891"]]
    assert s["correct"] == 2


def test_summarise_counts_invalid_as_not_correct():
    grades = [
        {"grader": "j", "correct": True, "valid": True, "reason": ""},
        {"grader": "j", "correct": False, "valid": True, "reason": ""},
        {"grader": "j", "correct": None, "valid": False, "reason": "no_grade_tag"},
        {"grader": "j", "correct": None, "valid": False,
         "reason": "unrecognised_grade: 'yes' (judge output cut at max_new_tokens)"},
    ]
    s = summarise(grades)
    assert (s["n"], s["correct"], s["valid"], s["invalid"]) == (4, 1, 2, 2)
    assert s["accuracy"] == 0.25 and s["accuracy_valid"] == 0.5 and s["validity_rate"] == 0.5
    assert s["invalid_reasons"] == {"no_grade_tag": 1, "unrecognised_grade": 1}
    json.dumps(s)


# --------------------------------------------------------------------------- judge driver on real models


def _eval_rows():
    return [
        {"item_id": "q0", "answer": "The capital of France is Paris.", "prompt_hash": "h0"},
        {"item_id": "q1", "answer": "It is Ag.", "prompt_hash": "h1"},
        {"item_id": "q2", "answer": "No, it is a solid metal.", "prompt_hash": "h2"},
    ]


def test_judge_driver_tiny_model_reports_validity_and_is_cached(tmp_path):
    """A random-weight judge writes no grade tags: every row must be invalid, none correct, all kept."""
    from pd.evaluation.grade import judge_params
    from pd.generate import make_generator

    ds = _toy_dataset()
    write_jsonl(tmp_path / "eval.jsonl", _eval_rows())
    gen = make_generator("tiny-llama", cache_dir=tmp_path / "cache", progress=False)
    s = grade_file(tmp_path / "eval.jsonl", ds, tmp_path / "j.jsonl", grader="judge", generator=gen,
                   params=judge_params(12))
    rows = read_jsonl(tmp_path / "j.jsonl")
    assert [r["item_id"] for r in rows] == ["q0", "q1", "q2"] and rows[0]["prompt_hash"] == "h0"
    reparsed = [parse_judge(r["judge_output"]) for r in rows]
    assert [r["valid"] for r in rows] == [v.valid for v in reparsed]
    assert [r["correct"] for r in rows] == [v.correct for v in reparsed]
    assert all(r["grader"].startswith("judge:transformers:tiny-llama") for r in rows)
    assert s["n"] == 3 and s["validity_rate"] == sum(v.valid for v in reparsed) / 3
    assert s["correct"] == sum(v.correct is True for v in reparsed)
    assert gen.misses == 3 and gen.inner.conversations_generated == 3
    # the same judge calls again: served from the cache, no model call
    s2 = grade_file(tmp_path / "eval.jsonl", ds, tmp_path / "j2.jsonl", grader="judge", generator=gen,
                    params=judge_params(12))
    assert gen.inner.conversations_generated == 3 and gen.hits == 3
    assert read_jsonl(tmp_path / "j2.jsonl") == rows and s2["validity_rate"] == s["validity_rate"]


@pytest.mark.slow
def test_judge_driver_smollm2(tmp_path):
    """SmolLM2 as a stand-in judge (prefilled "<reasoning>"): its outputs are parsed and its validity reported."""
    from pd.evaluation.grade import judge_params
    from pd.generate import make_generator

    ds = _toy_dataset()
    write_jsonl(tmp_path / "eval.jsonl", _eval_rows()[:2])
    gen = make_generator("smollm2-135m-instruct", progress=False)
    s = grade_file(tmp_path / "eval.jsonl", ds, tmp_path / "j.jsonl", grader="judge", generator=gen,
                   params=judge_params(48), prefill="<reasoning>")
    rows = read_jsonl(tmp_path / "j.jsonl")
    assert all(r["judge_output"].startswith("<reasoning>") for r in rows)
    # SmolLM2 follows the format at least once here (measured: it writes reasoning, then a grade tag)
    assert any(r["has_reasoning"] for r in rows)
    reparsed = [parse_judge(r["judge_output"]) for r in rows]
    assert s["validity_rate"] == sum(v.valid for v in reparsed) / 2
    assert [r["correct"] for r in rows] == [v.correct for v in reparsed]


def test_grading_compares_unicode_forms_and_case_alike():
    nfc, nfd = "Caf\u00e9", "Cafe\u0301"
    assert nfc != nfd
    assert substring_match(f"It was the {nfd} de Flore.", [nfc])
    assert substring_match(f"It was the {nfc.upper()} de Flore.", [nfd])
    assert substring_match("He lived on the Stra\u00dfe.", ["STRASSE"])  # case-folding, not lower()
    assert substring_match("The \ufb01rst one", ["first"])  # NFKC: the ligature is two letters
    assert normalise_answer("The Caf\u00e9!") == normalise_answer("the CAFE\u0301")


def test_ascii_text_folds_as_lower_did():
    """Shipped numbers do not move for ASCII text: fold() is str.lower() on every ASCII string."""
    from pd.text import fold

    ascii_text = "".join(map(chr, range(128))) + " The U.S.-based CAFE? No!"
    assert fold(ascii_text) == ascii_text.lower()
