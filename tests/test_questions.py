"""Question generation: parsing/rejection table, targets, yield accounting, sentence mode."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from pd.data import Dataset, Document, TestItem, load_squadshifts
from pd.errors import ConfigError, DataError
from pd.generate.transformers_backend import TransformersGenerator
from pd.io import stats_path, write_with_stats
from pd.prompts import render
from pd.questions import (
    FEW_SHOT,
    QGenConfig,
    generate_questions,
    parse_output,
    question_conversation,
    question_targets,
    sentences,
)

QGEN_PROMPT = render("qgen", passage="Some passage.", n=5, examples=FEW_SHOT)
LONG = "Who " + " ".join(["very"] * 42) + " tall?"

# (mode, output text, prefix, accepted questions, rejections by reason)
CASES = [
    ("five", "<question>Who founded the Boston Globe in 1872?</question>\n<question>Where is Fenway Park?</question>\n"
             "<question>Which team plays at Fenway Park?</question>", "",
     ["Who founded the Boston Globe in 1872?", "Where is Fenway Park?", "Which team plays at Fenway Park?"], {}),
    ("five", "", "", [], {"no_question_tags": 1}),
    ("five", "Here are questions: Who is the mayor of Boston?", "", [], {"no_question_tags": 1}),
    ("five", "<question>Which river is the second-longest in Europe?</question>", "", [], {"echoed_example": 1}),
    ("five", "<question>Who won the 1998 World Series?</question>"
             "<question>who WON the 1998 world series ?</question>", "",
     ["Who won the 1998 World Series?"], {"duplicate": 1}),
    ("five", "<question>The Yankees won the game.</question>", "", [], {"not_a_question": 1}),
    ("five", "<question>What does the passage say about taxes?</question>", "", [], {"refers_to_passage": 1}),
    ("five", "<question>According to this article, who resigned?</question>", "", [], {"refers_to_passage": 1}),
    ("five", "<question>Why?</question>", "", [], {"too_short": 1}),
    ("five", f"<question>{LONG}</question>", "", [], {"too_long": 1}),
    ("five", "<question>Who founded Apple in 1976?</question><question>What is the", "",
     ["Who founded Apple in 1976?"], {"unclosed_tag": 1}),
    ("five", "<question><b>Who</b> is the mayor of Boston?</question>", "", [], {"contains_markup": 1}),
    ("five", "<QUESTION>Who is the mayor of Boston?</QUESTION>", "", ["Who is the mayor of Boston?"], {}),
    ("five", "<question>Who is\n   the mayor of Boston?</question>", "", ["Who is the mayor of Boston?"], {}),
    ("five", "<question></question>", "", [], {"empty": 1}),
    ("single", " is the capital of France? The capital is Paris.", "What", ["What is the capital of France?"], {}),
    ("single", "'s the tallest building in New York City?", "What",
     ["What's the tallest building in New York City?"], {}),
    ("single", "", "Who", [], {"not_a_question": 1}),
    ("single", " did the Titanic sink\n?", "When", [], {"not_a_question": 1}),
    ("single", " people live in Lagos?", "How many", [], {"duplicate": 1}),  # seen already (see test)
    ("sentence", " did the Berlin Wall fall? It fell in 1989.", "When", ["When did the Berlin Wall fall?"], {}),
    ("bonito", "What year did the Berlin Wall fall?\n<|pipe|>\n1989", "", ["What year did the Berlin Wall fall?"], {}),
    ("bonito", "Question: Who painted the Mona Lisa?\nAnswer using:\n{{context}}\n<|pipe|>Leonardo", "",
     ["Who painted the Mona Lisa?"], {}),
    ("bonito", "{{context}}\nSummarise this.<|pipe|>A summary", "", [], {"no_question": 1}),
]


@pytest.mark.parametrize("mode,text,prefix,accepted,rejected", CASES)
def test_parse_and_reject(mode, text, prefix, accepted, rejected):
    seen = {"how many people live in lagos"}
    got, rej = parse_output(text, mode, QGEN_PROMPT if mode == "five" else "", prefix, seen)
    assert got == accepted
    assert dict(rej) == rejected
    for q in accepted:
        assert " ".join("".join(ch if ch.isalnum() else " " for ch in q.lower()).split()) in seen


def test_targets_are_per_test_item_or_per_passage():
    ds = load_squadshifts("nyt").select_passages(3)
    counts = Counter(it.doc_ids[0] for it in ds.items)
    assert question_targets(ds, per_item=30) == {d: 30 * counts[d] for d in ds.documents}
    assert question_targets(ds, per_item=4, per_passage=True) == {d: 4 for d in ds.documents}
    with pytest.raises(DataError, match="per passage"):
        question_targets(Dataset("x", {"a": Document("a", "text")}, []), per_item=30)
    with pytest.raises(ConfigError, match="five, single, sentence, bonito"):
        QGenConfig(mode="ten")


def _two_docs() -> Dataset:
    docs = {"d1": Document("d1", "The Velmora bridge was painted orange in 1987."),
            "d2": Document("d2", "Lake Tarnow freezes every January and hosts a skating race."),
            "d3": Document("d3", "The Osk festival is held each spring in the city of Brell.")}
    items = [TestItem("t1", "What colour is the bridge?", ("orange",), ("d1",)),
             TestItem("t2", "When does the lake freeze?", ("January",), ("d2",)),
             TestItem("t3", "Which race is held on Lake Tarnow?", ("skating",), ("d2",))]
    return Dataset("toy", docs, items)


def test_yield_accounting_with_a_model_that_writes_junk(tiny_generator, tmp_path):
    """A random model never writes a tagged question: every call is counted, rounds are capped."""
    ds = _two_docs()
    cfg = QGenConfig(mode="five", per_item=4, max_rounds=2, max_new_tokens=8)
    rows, stats = generate_questions(ds, tiny_generator, cfg)
    targets = {"d1": 4, "d2": 8}  # 4 per test item; d3 has no test item
    per_round = sum(math.ceil(t / 5) for t in targets.values())
    assert rows == []
    assert stats["calls"] == 2 * per_round and stats["rounds"] == 2
    assert stats["rejected"] == {"no_question_tags": 2 * per_round}
    assert stats["shortfall"] == targets and stats["target"] == 12 and stats["accepted"] == 0
    assert stats["outputs_cut"] == stats["calls"]  # 8 tokens never end a random model's turn
    out = tmp_path / "q.jsonl"
    write_with_stats(out, rows, stats)
    assert out.read_text() == "" and stats_path(out).name == "q.stats.json" and stats_path(out).is_file()


@pytest.mark.slow
def test_smollm2_writes_questions_in_single_mode(smollm2):
    ds = load_squadshifts("nyt").select_passages(2)
    gen = TransformersGenerator(smollm2.spec, progress=False, batch_size=8)
    cfg = QGenConfig(mode="single", per_item=3, per_passage=True, max_rounds=2, max_new_tokens=40)
    rows, stats = generate_questions(ds, gen, cfg)
    assert stats["accepted"] == len(rows) >= 2
    assert {r["doc_id"] for r in rows} <= set(ds.documents)
    assert len({r["id"] for r in rows}) == len(rows)
    # Every output was counted: candidates = accepted + surplus + rejected candidates.
    per_output = {"no_question_tags", "unclosed_tag", "no_question"}
    rejected_candidates = sum(v for k, v in stats["rejected"].items() if k not in per_output)
    assert stats["candidates"] == stats["accepted"] + stats["surplus"] + rejected_candidates
    assert stats["calls"] >= 6
    for r in rows:
        assert r["question"].endswith("?") and r["question"].split()[0] in {"What", "Who", "Which", "When", "Where",
                                                                              "How", "In", "Why", "What's"}


@pytest.mark.parametrize("text,expected", [
    ("Dr. Smith went home. He stayed there for years.", ["Dr. Smith went home.", "He stayed there for years."]),
    # an initial or an abbreviation is not a sentence end
    ("The poet W. H. Auden lived in New York. So did many others later.",
     ["The poet W. H. Auden lived in New York.", "So did many others later."]),
    ("It moved to the U.S. Army base in 1990. Nobody knew why at first.",
     ["It moved to the U.S. Army base in 1990.", "Nobody knew why at first."]),
    # a closing quote stays with its sentence; a fragment under 4 words joins the next sentence
    ("\u201cWe won,\u201d she said. \u201cYes.\u201d The crowd cheered for a long time.",
     ["\u201cWe won,\u201d she said.", "\u201cYes.\u201d The crowd cheered for a long time."]),
    ("Prices rose 4.5 percent in 2019! Why? Nobody could say for certain.",
     ["Prices rose 4.5 percent in 2019!", "Why? Nobody could say for certain."]),
    ("Just one short line", ["Just one short line"]),
])
def test_sentences(text, expected):
    assert sentences(text) == expected


def test_sentence_mode_quotes_each_sentence_in_turn(tiny_generator):
    ds = _two_docs()
    doc = next(iter(ds.documents.values()))
    sents = sentences(doc.text)
    conv = question_conversation("sentence", doc.text, QGenConfig(mode="sentence"), "Who", sents[-1])
    assert f'"{sents[-1]}"' in conv[0]["content"] and doc.text in conv[0]["content"]
    assert conv[1] == {"role": "assistant", "content": "Who"}
    # One call per missing question in the first round; later rounds only for what is missing.
    cfg = QGenConfig(mode="sentence", per_item=2, per_passage=True, max_rounds=2, max_new_tokens=8)
    rows, stats = generate_questions(ds, tiny_generator, cfg)
    assert stats["mode"] == "sentence" and stats["accepted"] == len(rows) <= 2 * len(ds.documents)
    assert 2 * len(ds.documents) <= stats["calls"] <= 2 * 2 * len(ds.documents)
