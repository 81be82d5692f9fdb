"""The judge-free measure: KL(teacher || student) on held-out question-answer pairs.

The teacher reads the passage, the student does not; both score the same answer
tokens. Before training (student = base model) this is the information the passage
adds about the answers; after training, what is left of it. The fraction closed is
``1 - after / before``. Reduction as the training loss: per answer token summed over
the vocabulary, averaged over each pair's answer tokens, then over pairs.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pd.data import Dataset, Document
from pd.errors import DataError
from pd.models import ModelSpec
from pd.train.losses import kl_from_hidden
from pd.train.sequences import Limits, Tokens, collate, pd_examples
from pd.train.teacher import answer_hidden, output_head, teacher_answer_logits, unwrap


def heldout_rows(examples: Sequence[dict]) -> tuple[list[dict], Dataset]:
    """Answer rows and a passage dataset from ``{"question", "answer", "passage"}`` dicts."""
    docs: dict[str, Document] = {}
    by_text: dict[str, str] = {}
    rows = []
    for n, ex in enumerate(examples):
        missing = [k for k in ("question", "answer", "passage") if not ex.get(k)]
        if missing:
            raise DataError(f"held-out example {n + 1}: missing {missing}; each needs question, answer and passage")
        doc_id = by_text.setdefault(ex["passage"], ex.get("doc_id") or f"heldout-p{len(by_text)}")
        docs[doc_id] = Document(doc_id, ex["passage"])
        rows.append({"id": str(ex.get("id") or f"heldout-{n}"), "doc_id": doc_id, "question": ex["question"],
                     "answer": ex["answer"], "finish_reason": ex.get("finish_reason", "stop")})
    return rows, Dataset("heldout", docs, [])


@torch.no_grad()
def heldout_kl_per_example(model, tokenizer, spec: ModelSpec | None, examples: Sequence[dict], temperature: float = 2.0,
                           *, teacher_model=None, teacher_cache=None, batch_size: int = 4,
                           limits: Limits = Limits(), chunk_size: int | None = 128) -> dict[str, float]:
    """KL(teacher || student) per held-out example id (see :func:`heldout_kl`).

    ``teacher_cache``: a :class:`~pd.train.teacher_cache.TeacherCache` holding the teacher's
    top-k targets for these examples (by id, at ``temperature``): then no teacher network
    runs here (a teacher larger than the student runs in its own job) and the KL is the
    top-k one with the rest of the mass in one bucket (:func:`pd.train.losses.kl_from_hidden`).
    """
    rows, dataset = heldout_rows(examples)
    tokens = Tokens(tokenizer, spec)
    seqs, _ = pd_examples(rows, dataset, tokens, limits, kind="heldout")
    if not seqs:
        raise DataError("no held-out example fits the length limits")
    was = model.training
    model.eval()
    device = next(unwrap(model).parameters()).device
    out: dict[str, float] = {}
    try:
        for start in range(0, len(seqs), batch_size):
            batch = collate(seqs[start:start + batch_size], tokens.pad_id)
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            if teacher_cache is not None:
                teacher = teacher_cache.targets_for(batch["example_ids"], batch["answer_mask"].cpu(), device)
            else:
                teacher = teacher_answer_logits(model, batch, teacher=teacher_model)
            hidden = answer_hidden(model, batch["student_input_ids"], batch["student_attention_mask"],
                                   batch["student_answer_positions"])
            lm_head = output_head(model)
            per = kl_from_hidden(hidden, lm_head, teacher, batch["answer_mask"], temperature=temperature,
                                 chunk_size=chunk_size, reduction="sample")
            out.update({i: float(v) for i, v in zip(batch["example_ids"], per.tolist())})
    finally:
        model.train(was)
    return out


def heldout_kl(model, tokenizer, spec: ModelSpec | None, examples: Sequence[dict], temperature: float = 2.0,
               **kwargs) -> float:
    """Mean KL(teacher || student) at ``temperature`` over held-out ``{"question", "answer", "passage"}`` pairs.

    ``model``: a PeftModel (student = adapter on, teacher = adapter off) or a plain
    model (both roles: the "before" value). ``teacher_model`` (keyword) replaces the
    adapter-off teacher by another network of the same vocabulary; ``teacher_cache`` by its
    cached top-k targets (see :func:`heldout_kl_per_example`).
    """
    per = heldout_kl_per_example(model, tokenizer, spec, examples, temperature, **kwargs)
    return sum(per.values()) / len(per)

