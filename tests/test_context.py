"""Texts against a model's context (issue 14 item 9): refused before generation, by name, with the numbers."""

from __future__ import annotations

import re

import pytest

from pd.context import PROMPT_MARGIN, check_dataset_fits, check_generator_fits, passage_chars, token_count
from pd.data import Dataset, Document, TestItem
from pd.errors import DataError


@pytest.fixture(scope="module")
def gen(tiny_llama):
    from pd.generate.transformers_backend import TransformersGenerator

    return TransformersGenerator(tiny_llama.spec, progress=False)


def test_a_5mb_document_is_refused_by_name_with_its_token_count(gen):
    big = "harbour " * 655_360  # 5 MiB
    ds = Dataset("d", {"ok.txt": Document("ok.txt", "short"), "big.txt": Document("big.txt", big)}, [])
    with pytest.raises(DataError) as err:
        check_dataset_fits(gen, ds, 48)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("document big.txt: ")
    n = token_count(gen.tokenizer, big)  # the independent count
    assert f"{n} tokens ({len(big)} characters)" in msg
    assert "reads at most 2048 tokens" in msg and f"leaving {2048 - 48 - PROMPT_MARGIN}" in msg


def test_a_100000_character_question_is_refused_by_its_id(gen):
    q = "x" * 100_000
    ds = Dataset("d", {"a.txt": Document("a.txt", "short")}, [TestItem("q7", q, ("a",), ("a.txt",))])
    with pytest.raises(DataError, match=r"^question q7: \d+ tokens \(100000 characters\)"):
        check_dataset_fits(gen, ds, 16)


def test_texts_that_fit_pass_and_the_boundary_is_exact(gen):
    room = 2048 - 10 - PROMPT_MARGIN
    tok = gen.tokenizer
    # Find a text of exactly `room` tokens and one of `room + 1` (independently counted).
    words = "salt harbour lantern mill " * 2000
    ids = tok(words, add_special_tokens=False)["input_ids"]
    fits, over = tok.decode(ids[:room]), tok.decode(ids[: room + 1])
    assert token_count(tok, fits) == room and token_count(tok, over) == room + 1
    check_generator_fits(gen, {"a": fits}, 10, "document")
    with pytest.raises(DataError, match=rf"document b: {room + 1} tokens"):
        check_generator_fits(gen, {"b": over}, 10, "document")


def test_nothing_is_checked_without_a_tokenizer():
    class Remote:
        tokenizer = None

    check_generator_fits(Remote(), {"a": "x" * 10_000_000}, 10, "document")


def test_passage_chars_fit_the_budget(gen):
    tok = gen.tokenizer
    text = "The harbour of Velmora was built in 1822 by the engineer Odric Thale. " * 200
    chars = passage_chars(tok, {"a": text}, 300)
    from pd.data.passages import split_passages

    parts = split_passages(text, chars)
    assert len(parts) > 1 and all(token_count(tok, p) <= 300 for _, p in parts)
    assert all(re.fullmatch(r".*\.", p, re.S) for _, p in parts[:-1])  # cut at sentence ends
