"""Training sequences: aligned answer ids, masks, padding, truncation, method variants."""

import math

import pytest
import torch

from pd.chat import prompt_text
from pd.data import Dataset, Document
from pd.errors import ConfigError, DataError
from pd.train.batch import validate_batch
from pd.train.sequences import (
    Limits,
    Tokens,
    choose_context,
    collate,
    distractor_examples,
    pd_examples,
    reg_examples,
    sft_examples,
    uft_examples,
)

PASSAGES = {
    "d0": "Mattingly arrived for a cup of coffee in 1982 and retired in 1995, a year before the Yankees returned.",
    "d1": "The new bridge over the river opened in March after four years of construction and cost 80 million.",
    "d2": "A small bakery in Queens sells about three hundred loaves of rye bread every Saturday morning.",
    "d3": "The museum's winter exhibition shows paintings by two Dutch artists who worked in the same studio.",
}
ROWS = [
    {"id": "q1", "doc_id": "d0", "question": "When did Mattingly retire?", "answer": "He retired in 1995.",
     "finish_reason": "stop"},
    {"id": "q2", "doc_id": "d1", "question": "How much did the bridge cost?",
     "answer": "The bridge cost about 80 million dollars to build, after four years of work.", "finish_reason": "stop"},
    {"id": "q2", "doc_id": "d1", "question": "How much did the bridge cost?", "answer": "80 million",
     "finish_reason": "length"},
]


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return Dataset("toy", {k: Document(k, v) for k, v in PASSAGES.items()}, [])


def _eot_token(loaded) -> int:
    # The end-of-turn marker, looked up by name rather than through the code under test.
    name = "<|eot_id|>" if "<|eot_id|>" in loaded.tokenizer.get_vocab() else "<|im_end|>"
    return loaded.tokenizer.convert_tokens_to_ids(name)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen2", "smollm2"])
def test_answer_ids_identical_and_masks_exact(which, request, dataset):
    loaded = request.getfixturevalue(which)
    tok = loaded.tokenizer
    tokens = Tokens(tok, loaded.spec)
    examples, stats = pd_examples(ROWS, dataset, tokens)
    assert [e.id for e in examples] == ["q1", "q2", "q2~1"]
    batch = collate(examples, tokens.pad_id)
    validate_batch(batch)  # H1's contract: answer ids sit at positions + 1 in both views
    eot = _eot_token(loaded)
    for b, row in enumerate(ROWS):
        expected = tok.encode(row["answer"], add_special_tokens=False)
        if row["finish_reason"] == "stop":
            expected = expected + [eot]
        n = int(batch["answer_mask"][b].sum())
        assert n == len(expected)
        assert batch["answer_ids"][b, :n].tolist() == expected
        assert not batch["answer_mask"][b, n:].any()
        for side, user in (("teacher", PASSAGES[row["doc_id"]] + "\n\n---\n\n" + row["question"]),
                           ("student", row["question"])):
            ids = batch[f"{side}_input_ids"][b]
            length = int(batch[f"{side}_attention_mask"][b].sum())
            # The whole real sequence is the rendered prompt followed by the answer ids, nothing else.
            prompt_ids = tok.encode(prompt_text(tok, user, loaded.spec), add_special_tokens=False)
            assert ids[:length].tolist() == prompt_ids + expected
            assert batch[f"{side}_answer_positions"][b, 0] == len(prompt_ids) - 1
            assert (ids[length:] == tokens.pad_id).all()
            assert batch[f"{side}_attention_mask"][b, :length].all()
            assert not batch[f"{side}_attention_mask"][b, length:].any()
    assert stats.unfinished == 1 and stats.dropped == 0 and stats.answer_truncated == 0


def test_truncation_limits_are_counted(tiny_llama, dataset):
    tokens = Tokens(tiny_llama.tokenizer, tiny_llama.spec)
    enc = lambda s: tiny_llama.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    long_answer = " ".join(["the bridge opened in March"] * 30)
    rows = [dict(ROWS[0], id="long", answer=long_answer), ROWS[0]]
    teacher_prompt = len(enc(prompt_text(tiny_llama.tokenizer, PASSAGES["d0"] + "\n\n---\n\n" + ROWS[0]["question"])))

    ex, st = pd_examples(rows, dataset, tokens, Limits(max_answer_tokens=20, max_teacher_tokens=10_000))
    assert len(ex[0].answer_ids) == 20 and ex[0].answer_ids == enc(long_answer)[:20]  # cut: no end-of-turn
    assert st.answer_truncated == 1 and st.total_truncated == 0 and st.truncated_ids == ["long"]

    limit = teacher_prompt + len(enc(ROWS[0]["answer"])) + 1  # the short answer and its end-of-turn just fit
    ex, st = pd_examples(rows, dataset, tokens, Limits(max_answer_tokens=512, max_teacher_tokens=limit))
    assert [e.teacher_len for e in ex] == [limit, limit]
    assert ex[0].answer_ids == enc(long_answer)[: limit - teacher_prompt]
    assert st.total_truncated == 1 and st.answer_truncated == 0

    ex, st = pd_examples(rows, dataset, tokens, Limits(max_teacher_tokens=teacher_prompt))
    assert ex == [] and st.dropped == 2 and st.dropped_ids == ["long", "q1"]


def test_sft_and_reg_views(tiny_llama, dataset):
    tokens = Tokens(tiny_llama.tokenizer, tiny_llama.spec)
    sft, _ = sft_examples(ROWS, dataset, tokens)
    batch = collate(sft, tokens.pad_id)
    assert "teacher_input_ids" not in batch
    validate_batch(batch, need_teacher=False)
    reg, _ = reg_examples([{"instruction": "Name a colour.", "response": "Blue."},
                           {"id": "r7", "instruction": "Say hi.", "response": "Hi!"}], tokens)
    assert [r.id for r in reg] == ["reg000000", "r7"]
    pd_ex, _ = pd_examples(ROWS[:2], dataset, tokens)
    mixed = collate(pd_ex + reg, tokens.pad_id)
    validate_batch(mixed)
    assert mixed["kind"] == ["pd", "pd", "reg", "reg"]
    # Eq. 2: the instruction rows show the teacher exactly the student's sequence.
    for b in (2, 3):
        n = int(mixed["student_attention_mask"][b].sum())
        assert torch.equal(mixed["teacher_input_ids"][b, :n], mixed["student_input_ids"][b, :n])


def test_bad_rows_raise_clear_errors(tiny_llama, dataset):
    tokens = Tokens(tiny_llama.tokenizer, tiny_llama.spec)
    with pytest.raises(DataError, match="doc_id"):
        pd_examples([{"id": "x", "question": "q", "answer": "a"}], dataset, tokens)
    with pytest.raises(DataError, match="unknown doc_id 'nope'"):
        pd_examples([dict(ROWS[0], doc_id="nope")], dataset, tokens)
    with pytest.raises(ConfigError, match="max_answer_tokens"):
        Limits(max_answer_tokens=0)
    with pytest.raises(ConfigError, match="distractors"):
        choose_context("q", "d0", list(PASSAGES), seed=0, distractors=4)


def test_choose_context_is_seeded_and_drops_gold_at_the_rate():
    docs = [f"d{i}" for i in range(50)]
    n = 3000
    contexts = [choose_context(f"q{i}", "d7", docs, seed=3) for i in range(n)]
    assert contexts == [choose_context(f"q{i}", "d7", docs, seed=3) for i in range(n)]
    assert contexts != [choose_context(f"q{i}", "d7", docs, seed=4) for i in range(n)]
    without = sum("d7" not in c for c in contexts)
    sd = math.sqrt(n * 0.4 * 0.6)
    assert abs(without - 0.4 * n) < 4 * sd
    for c in contexts:
        assert len([d for d in c if d != "d7"]) == 2 and len(set(c)) == len(c)
    # Gold lands in each of the three slots about equally often.
    slots = [c.index("d7") for c in contexts if "d7" in c]
    for k in range(3):
        share = slots.count(k) / len(slots)
        assert abs(share - 1 / 3) < 4 * math.sqrt((1 / 3) * (2 / 3) / len(slots))


def test_distractor_sequences_hold_the_named_passages(tiny_llama, dataset):
    tokens = Tokens(tiny_llama.tokenizer, tiny_llama.spec)
    rows = [dict(ROWS[0], context_doc_ids=["d2", "d0", "d3"]), dict(ROWS[1])]
    ex, _ = distractor_examples(rows, dataset, tokens, seed=1)
    text = tiny_llama.tokenizer.decode(ex[0].student_prompt_ids)
    assert text.index(PASSAGES["d2"]) < text.index(PASSAGES["d0"]) < text.index(PASSAGES["d3"])
    assert ex[0].source["gold_in_context"] is True
    assert ex[1].source["context_doc_ids"] == choose_context("q2", "d1", list(PASSAGES), seed=1)
    validate_batch(collate(ex, tokens.pad_id), need_teacher=False)


def test_uft_windows_overlap_and_cover_each_passage(tiny_llama, dataset):
    tok = tiny_llama.tokenizer
    tokens = Tokens(tok, tiny_llama.spec)
    long = Dataset("one", {"p": Document("p", " ".join(PASSAGES.values()) * 3)}, [])
    body = tok.encode(long.documents["p"].text, add_special_tokens=False)
    chunk, overlap = 40, 10
    ex, _ = uft_examples(long, tokens, chunk_tokens=chunk, overlap=overlap)
    # tiny-llama's tokenizer adds no special tokens, so windows are plain slices of the body.
    stride = chunk - overlap
    assert len(ex) == math.ceil((len(body) - overlap) / stride)
    for k, e in enumerate(ex):
        window = e.student_prompt_ids + e.answer_ids
        assert window == body[k * stride : k * stride + chunk]
    joined = ex[0].student_prompt_ids + ex[0].answer_ids
    for e in ex[1:]:
        joined += (e.student_prompt_ids + e.answer_ids)[overlap:]
    assert joined == body
    validate_batch(collate(ex, tokens.pad_id), need_teacher=False)
