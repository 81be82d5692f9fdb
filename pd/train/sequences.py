"""Token sequences for every training method, and their collation into a batch.

The trained tokens, an answer and the end-of-turn marker after it (the first token the
chat template writes after an assistant message, e.g. ``<|im_end|>``, so the student
learns when to stop), are tokenised once and spliced after each view's prompt: position j
of the answer holds the same id in the teacher's sequence (with the passage) and the
student's (without it). A cut answer (the generator's limit or ours) gets no marker: the
expert did not finish it. Template text after the marker cannot change any trained
prediction under causal attention and is left out. Every builder returns ``(examples,
stats)``; ``stats`` counts truncated and dropped items and is logged, so no cut is silent.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from pd.chat import end_of_turn, prompt_text
from pd.data import Dataset
from pd.errors import ConfigError, DataError
from pd.io import stable_hash
from pd.models import ModelSpec
from pd.prompts import render
from pd.train.settings import Limits
from pd.train.steps import uft_chunk_starts

log = logging.getLogger("pd.train")

PASSAGE_SEPARATOR = "\n\n---\n\n"


def passage_question(passage: str, question: str) -> str:
    """The teacher's user message: the expert's prompt (``expert_answer``), so a config override changes both.

    By default: passage, blank line, ``---``, blank line, question.
    """
    return render("expert_answer", passage=passage, question=question)


@dataclass
class Example:
    """One training sequence pair, before padding.

    ``teacher_prompt_ids`` is None for methods without a teacher (sft, uft, sft_distractors);
    for pd_reg's instruction rows it equals the student's prompt (Eq. 2: base model vs. student).
    """

    id: str
    kind: str  # "pd", "reg", "sft", "sft_distractors", "uft"
    student_prompt_ids: list[int]
    answer_ids: list[int]
    teacher_prompt_ids: list[int] | None = None
    source: dict = field(default_factory=dict)  # ids the example came from (doc ids, question id)

    @property
    def student_len(self) -> int:
        return len(self.student_prompt_ids) + len(self.answer_ids)

    @property
    def teacher_len(self) -> int:
        return len(self.teacher_prompt_ids or ()) + len(self.answer_ids)

    def to_row(self) -> dict:
        """A JSON-able form (for content hashing and debugging)."""
        return {"id": self.id, "kind": self.kind, "student_prompt_ids": self.student_prompt_ids,
                "teacher_prompt_ids": self.teacher_prompt_ids, "answer_ids": self.answer_ids, **self.source}


@dataclass
class BuildStats:
    """Counts from one build; ``truncated_ids`` / ``dropped_ids`` name the items."""

    kind: str
    rows: int = 0
    examples: int = 0
    answer_truncated: int = 0  # answer longer than max_answer_tokens
    total_truncated: int = 0  # answer cut further to fit the total length limit
    unfinished: int = 0  # the generator stopped at its own limit (finish_reason "length")
    dropped: int = 0  # the prompt alone did not fit
    truncated_ids: list[str] = field(default_factory=list)
    dropped_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.endswith("_ids")}

    def log(self) -> None:
        msg = (f"{self.kind} sequences: {self.examples} from {self.rows} rows; answers cut at the answer limit: "
               f"{self.answer_truncated}, cut to fit the total limit: {self.total_truncated}, unfinished by the "
               f"generator: {self.unfinished}, dropped (prompt too long): {self.dropped}")
        (log.warning if (self.answer_truncated or self.total_truncated or self.dropped) else log.info)(msg)


# --------------------------------------------------------------------------- token helpers


class Tokens:
    """The tokenizer-side pieces every builder needs, computed once."""

    def __init__(self, tok, spec: ModelSpec | None = None, system: str | None = None):
        self.tok = tok
        self.spec = spec
        self.system = system
        eot = tok(end_of_turn(tok), add_special_tokens=False).input_ids
        if not eot:
            raise ConfigError("the chat template writes nothing after an assistant message and the tokenizer has no "
                              "eos token: the end of an answer cannot be marked")
        self.eot_id: int = eot[0]
        self.pad_id: int = tok.pad_token_id if tok.pad_token_id is not None else self.eot_id

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def chat_prompt(self, user: str) -> list[int]:
        """Ids of the rendered conversation up to the assistant header (special tokens are in the text)."""
        return self.encode(prompt_text(self.tok, user, self.spec, self.system))

    def answer(self, text: str, complete: bool, max_tokens: int) -> tuple[list[int], bool]:
        """The trained ids of one answer; second value: whether it was cut here."""
        ids = self.encode(text)
        cut = len(ids) > max_tokens
        if cut:
            ids = ids[:max_tokens]
        elif complete:
            ids = ids + [self.eot_id]
        return ids, cut


def _fit(stats: BuildStats, ex_id: str, longest_prompt: int, answer: list[int], limit: int,
         cut_already: bool) -> list[int] | None:
    """Cut ``answer`` so that the longest view fits ``limit``; None (and counted) if nothing fits."""
    room = limit - longest_prompt
    if room < 1:
        stats.dropped += 1
        stats.dropped_ids.append(ex_id)
        return None
    if cut_already:
        stats.answer_truncated += 1
        stats.truncated_ids.append(ex_id)
    if len(answer) > room:
        answer = answer[:room]
        stats.total_truncated += 1
        if not cut_already:
            stats.truncated_ids.append(ex_id)
    return answer


def _require(row: dict, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if row.get(k) in (None, "")]
    if missing:
        raise DataError(f"{where}: missing or empty field(s) {missing}; a row needs {list(keys)}")


def _unique_ids(rows: Sequence[dict]) -> list[str]:
    """Row ids; repeats (several answers to one question) get ``~k`` suffixes in order."""
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        base = str(r["id"])
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.append(base if k == 0 else f"{base}~{k}")
    return out


def _doc_text(dataset: Dataset, doc_id: str, where: str) -> str:
    doc = dataset.documents.get(doc_id)
    if doc is None:
        known = list(dataset.documents)[:5]
        raise DataError(f"{where}: unknown doc_id {doc_id!r}; dataset {dataset.name} has {len(dataset.documents)} "
                        f"documents, e.g. {known}")
    return doc.text


# --------------------------------------------------------------------------- builders


def pd_examples(rows: Sequence[dict], dataset: Dataset, tokens: Tokens, limits: Limits = Limits(),
                kind: str = "pd") -> tuple[list[Example], BuildStats]:
    """Teacher (passage + question) and student (question) views of answer rows.

    Rows: ``{"id", "doc_id", "question", "answer"}`` and optionally ``finish_reason``
    ("length" marks an answer the generator cut). Also used for ``sft`` (only the student
    view is trained; building both keeps one code path, which the held-out KL reuses).
    """
    stats = BuildStats(kind, rows=len(rows))
    examples = []
    checked = [_checked(r, i, ("id", "doc_id", "question", "answer")) for i, r in enumerate(rows)]
    for n, (row, ex_id) in enumerate(zip(checked, _unique_ids(checked))):
        where = f"answer row {n + 1} (id {row['id']})"
        passage = _doc_text(dataset, row["doc_id"], where)
        complete = row.get("finish_reason", "stop") != "length"
        stats.unfinished += not complete
        teacher = tokens.chat_prompt(passage_question(passage, row["question"]))
        student = tokens.chat_prompt(row["question"])
        answer, cut = tokens.answer(row["answer"], complete, limits.max_answer_tokens)
        answer = _fit(stats, ex_id, max(len(teacher), len(student)), answer, limits.max_teacher_tokens, cut)
        if answer is None:
            continue
        examples.append(Example(ex_id, kind, student, answer, teacher,
                                {"question_id": str(row["id"]), "doc_ids": [row["doc_id"]]}))
    stats.examples = len(examples)
    stats.log()
    return examples, stats


def _checked(row: dict, i: int, keys: Sequence[str]) -> dict:
    _require(row, keys, f"row {i + 1}")
    return row


def sft_examples(rows: Sequence[dict], dataset: Dataset, tokens: Tokens,
                 limits: Limits = Limits()) -> tuple[list[Example], BuildStats]:
    """Student view only: cross-entropy on the expert's answer tokens after the bare question.

    The total-length limit is applied as for PD (to the teacher view), so that SFT and
    PD train on exactly the same answer tokens from the same rows.
    """
    examples, stats = pd_examples(rows, dataset, tokens, limits, kind="sft")
    for ex in examples:
        ex.teacher_prompt_ids = None
    return examples, stats


def choose_context(question_id: str, gold_doc_id: str, doc_ids: Sequence[str], *, seed: int,
                   distractors: int = 2, gold_drop_prob: float = 0.4) -> list[str]:
    """The passages shown with one question for SFT with distractors (RAFT-like).

    ``distractors`` random other passages of the dataset, plus the gold one unless it is
    left out (probability ``gold_drop_prob``), in random order. Seeded by (seed, question
    id), so the answer generator and the trainer pick the same context independently.
    """
    if not 0.0 <= gold_drop_prob <= 1.0:
        raise ConfigError(f"training.gold_drop_prob must lie in [0, 1], got {gold_drop_prob!r}")
    others = [d for d in doc_ids if d != gold_doc_id]
    if distractors < 0 or distractors > len(others):
        raise ConfigError(f"training.distractors={distractors}: the dataset has {len(others)} other passages; "
                          f"allowed: 0..{len(others)}")
    rng = random.Random(stable_hash(["distractors", seed, question_id]))
    picked = rng.sample(sorted(others), distractors)
    if rng.random() >= gold_drop_prob:
        picked.append(gold_doc_id)
    rng.shuffle(picked)
    return picked


def context_message(passages: Sequence[str], question: str) -> str:
    """Several passages (blank-line separated), ``---``, the question: the ``cot_answer`` layout
    without its answer-format instruction (the student is evaluated without it)."""
    return "\n\n".join(passages) + PASSAGE_SEPARATOR + question


def distractor_examples(rows: Sequence[dict], dataset: Dataset, tokens: Tokens, limits: Limits = Limits(), *,
                        seed: int = 0, distractors: int = 2,
                        gold_drop_prob: float = 0.4) -> tuple[list[Example], BuildStats]:
    """SFT with distractors: user = context passages + question, target = the (chain-of-thought) answer.

    A row names the passages it was answered with in ``context_doc_ids`` (in order);
    without that field they are chosen by :func:`choose_context` with the same seed.
    """
    stats = BuildStats("sft_distractors", rows=len(rows))
    examples = []
    all_docs = list(dataset.documents)
    checked = [_checked(r, i, ("id", "doc_id", "question", "answer")) for i, r in enumerate(rows)]
    for n, (row, ex_id) in enumerate(zip(checked, _unique_ids(checked))):
        where = f"answer row {n + 1} (id {row['id']})"
        ctx = row.get("context_doc_ids")
        if ctx is None:
            ctx = choose_context(str(row["id"]), row["doc_id"], all_docs, seed=seed, distractors=distractors,
                                 gold_drop_prob=gold_drop_prob)
        passages = [_doc_text(dataset, d, where) for d in ctx]
        complete = row.get("finish_reason", "stop") != "length"
        stats.unfinished += not complete
        student = tokens.chat_prompt(context_message(passages, row["question"]))
        answer, cut = tokens.answer(row["answer"], complete, limits.max_answer_tokens)
        answer = _fit(stats, ex_id, len(student), answer, limits.max_teacher_tokens, cut)
        if answer is None:
            continue
        examples.append(Example(ex_id, "sft_distractors", student, answer, None,
                                {"question_id": str(row["id"]), "doc_ids": [row["doc_id"]],
                                 "context_doc_ids": list(ctx), "gold_in_context": row["doc_id"] in ctx}))
    stats.examples = len(examples)
    stats.log()
    return examples, stats


def uft_examples(dataset: Dataset, tokens: Tokens, *, chunk_tokens: int = 256,
                 overlap: int = 64) -> tuple[list[Example], BuildStats]:
    """Raw passages cut into overlapping windows for next-token training (no chat template).

    Each window starts with the tokenizer's own leading special tokens (e.g. Llama 3's
    ``<|begin_of_text|>``; none for Qwen) and every token after the first is trained,
    overlap included, so that a fact on a window border is also seen whole.
    """
    if chunk_tokens < 2 or not 0 <= overlap < chunk_tokens:
        raise ConfigError(f"training.uft_chunk_tokens={chunk_tokens}, uft_overlap={overlap}: need "
                          "chunk >= 2 and 0 <= overlap < chunk")
    prefix = tokens.tok("", add_special_tokens=True).input_ids
    window = chunk_tokens - len(prefix)
    if window - overlap < 1:
        raise ConfigError(f"training.uft_chunk_tokens={chunk_tokens} leaves no room after {len(prefix)} special "
                          f"token(s) and an overlap of {overlap}")
    stats = BuildStats("uft", rows=len(dataset.documents))
    examples = []
    for doc_id, doc in dataset.documents.items():
        body = tokens.encode(doc.text)
        for k, s in enumerate(uft_chunk_starts(len(body), window, overlap)):
            ids = prefix + body[s : s + window]
            if len(ids) < 2:
                continue
            examples.append(Example(f"{doc_id}#c{k}", "uft", ids[:1], ids[1:], None,
                                    {"doc_ids": [doc_id], "token_start": s}))
    stats.examples = len(examples)
    stats.log()
    return examples, stats


def reg_examples(pairs: Sequence[dict], tokens: Tokens, limits: Limits = Limits()) -> tuple[list[Example], BuildStats]:
    """Instruction-response pairs for ``pd_reg`` (Eq. 2): teacher and student share the prompt.

    Pairs: ``{"instruction", "response"}``, optional ``id``; total length at most ``max_reg_tokens``.
    """
    stats = BuildStats("reg", rows=len(pairs))
    examples = []
    for n, p in enumerate(pairs):
        _require(p, ("instruction", "response"), f"instruction pair {n + 1}")
        ex_id = str(p.get("id") or f"reg{n:06d}")
        prompt = tokens.chat_prompt(p["instruction"])
        answer, cut = tokens.answer(p["response"], True, limits.max_answer_tokens)
        answer = _fit(stats, ex_id, len(prompt), answer, limits.max_reg_tokens, cut)
        if answer is None:
            continue
        examples.append(Example(ex_id, "reg", prompt, answer, list(prompt), {"reg_id": ex_id}))
    stats.examples = len(examples)
    stats.log()
    return examples, stats


# --------------------------------------------------------------------------- collation


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        att[b, : len(s)] = 1
    return ids, att


def collate(examples: Sequence[Example], pad_id: int) -> dict:
    """Right-padded batch following :mod:`pd.train.batch`; teacher keys when every row has a teacher view."""
    if not examples:
        raise DataError("cannot collate an empty batch")
    a = max(len(ex.answer_ids) for ex in examples)
    b = len(examples)
    answer_ids = torch.zeros((b, a), dtype=torch.long)
    mask = torch.zeros((b, a), dtype=torch.bool)
    for i, ex in enumerate(examples):
        answer_ids[i, : len(ex.answer_ids)] = torch.tensor(ex.answer_ids, dtype=torch.long)
        mask[i, : len(ex.answer_ids)] = True
    batch: dict = {"answer_ids": answer_ids, "answer_mask": mask, "example_ids": [ex.id for ex in examples],
                   "kind": [ex.kind for ex in examples]}
    sides = ["student"] + (["teacher"] if all(ex.teacher_prompt_ids is not None for ex in examples) else [])
    j = torch.arange(a)
    for side in sides:
        prompts = [ex.student_prompt_ids if side == "student" else ex.teacher_prompt_ids for ex in examples]
        ids, att = _pad([p + ex.answer_ids for p, ex in zip(prompts, examples)], pad_id)
        starts = torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long)
        pos = (starts[:, None] + j[None, :]) * mask  # padded entries hold 0
        batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], batch[f"{side}_answer_positions"] = ids, att, pos
    return batch


def count_tokens(examples: Iterable[Example]) -> dict[str, int]:
    """Totals for metadata: trained (answer) tokens and student/teacher sequence tokens."""
    out = {"answer_tokens": 0, "student_tokens": 0, "teacher_tokens": 0}
    for ex in examples:
        out["answer_tokens"] += len(ex.answer_ids)
        out["student_tokens"] += ex.student_len
        out["teacher_tokens"] += ex.teacher_len if ex.teacher_prompt_ids is not None else 0
    return out
