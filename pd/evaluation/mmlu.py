"""General-capability check for the forgetting experiment: MMLU-Pro multiple choice.

Scoring choice: answer-letter log-likelihood, not generation and parsing. The prompt
(``mmlu_pro`` template, rendered with the model's chat template) lists the options
lettered A-J; the assistant turn is prefilled with ``"Answer:"``; each option's score is
log p(" <letter>" | prompt) and the prediction is the highest-scoring letter. This needs
no answer parser, never produces an unparseable answer, works the same for tiny and
large models, and costs one forward pass per question when every letter is one token
(the usual case; otherwise each letter's tokens are scored in full). Zero-shot, no
chain of thought: the number is a relative one (base model vs the same model with an
adapter), not comparable to MMLU-Pro's published 5-shot CoT accuracies.

Data: the hub's ``TIGER-Lab/MMLU-Pro`` (test split) through ``datasets`` on a machine
with network access, or a local JSONL in the same format: ``question``, ``options`` (2 to
10 strings), ``answer`` (letter) and/or ``answer_index``, ``category``, ``question_id``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from pd.errors import ConfigError, DataError
from pd.io import read_jsonl, write_json, write_jsonl

LETTERS = "ABCDEFGHIJ"
ANSWER_PREFIX = "Answer:"
HUB_ID = "TIGER-Lab/MMLU-Pro"


@dataclass(frozen=True)
class MCQuestion:
    id: str
    question: str
    options: tuple[str, ...]
    answer_index: int
    category: str = ""

    @property
    def answer(self) -> str:
        return LETTERS[self.answer_index]


# --------------------------------------------------------------------------- loading


def questions_from_rows(rows: Iterable[dict], where: str = "MMLU-Pro") -> list[MCQuestion]:
    """Validate MMLU-Pro rows; a malformed row is a DataError naming it."""
    out = []
    for n, r in enumerate(rows):
        at = f"{where} row {n + 1}"
        q, opts = r.get("question"), r.get("options")
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{at}: needs a non-empty 'question'")
        well_formed = isinstance(opts, list) and all(isinstance(o, str) for o in opts)
        if not well_formed or not 2 <= len(opts) <= len(LETTERS):
            raise DataError(f"{at}: 'options' must be a list of 2 to {len(LETTERS)} strings")
        idx, letter = r.get("answer_index"), r.get("answer")
        if letter is not None and (not isinstance(letter, str) or letter.strip().upper() not in LETTERS[: len(opts)]):
            raise DataError(f"{at}: 'answer' {letter!r} is not one of {', '.join(LETTERS[: len(opts)])}")
        if idx is not None and (not isinstance(idx, int) or not 0 <= idx < len(opts)):
            raise DataError(f"{at}: 'answer_index' {idx!r} is not in 0..{len(opts) - 1}")
        if idx is None and letter is None:
            raise DataError(f"{at}: needs 'answer' (a letter) or 'answer_index'")
        from_letter = LETTERS.index(letter.strip().upper()) if letter is not None else None
        if idx is not None and from_letter is not None and idx != from_letter:
            raise DataError(f"{at}: 'answer' {letter!r} and 'answer_index' {idx} disagree")
        out.append(MCQuestion(str(r.get("question_id", n)), q, tuple(opts), idx if idx is not None else from_letter,
                              str(r.get("category") or "")))
    if not out:
        raise DataError(f"{where}: no questions")
    return out


def load_mmlu_pro(path: str | os.PathLike | None = None, limit: int | None = None,
                  categories: Sequence[str] | None = None) -> list[MCQuestion]:
    """MMLU-Pro questions from a local JSONL, or from the hub when ``path`` is None."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"MMLU-Pro file {p} not found "
                            "(JSONL rows: question, options, answer/answer_index, category)")
        rows = read_jsonl(p)
        where = str(p)
    else:
        from pd.data import load_hub_dataset

        rows = load_hub_dataset(HUB_ID, split="test",
                                offline_hint="offline, give a local JSONL in the MMLU-Pro format as the path")
        where = HUB_ID
    qs = questions_from_rows(rows, where)
    if categories:
        known = sorted({q.category for q in qs})
        unknown = sorted(set(categories) - set(known))
        if unknown:
            raise DataError(f"MMLU-Pro: unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                            f"allowed: {known}")
        qs = [q for q in qs if q.category in set(categories)]
    return qs[:limit] if limit is not None else qs


# --------------------------------------------------------------------------- scoring


def question_prompt(tok, q: MCQuestion, spec=None) -> str:
    """Chat-formatted prompt up to and including the ``Answer:`` prefill."""
    from pd.chat import prompt_text
    from pd.prompts import render

    user = render("mmlu_pro", question=q.question, options=list(q.options), letters=LETTERS, category=q.category)
    return prompt_text(tok, user, spec) + ANSWER_PREFIX


def letter_tokens(tok, n: int) -> list[list[int]]:
    """The token ids of " A", " B", ... as they continue the prompt."""
    return [tok.encode(" " + LETTERS[i], add_special_tokens=False) for i in range(n)]


def score_questions(model, tok, questions: Sequence[MCQuestion], spec=None, batch_size: int = 8) -> list[list[float]]:
    """Per question, log p(letter | prompt) for each of its options (float, natural log)."""
    import torch

    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size}: must be >= 1")
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    # (question index, option index or -1 for "all single-token letters at once", ids, n scored tokens)
    seqs: list[tuple[int, int, list[int], int]] = []
    for qi, q in enumerate(questions):
        ctx = tok.encode(question_prompt(tok, q, spec), add_special_tokens=False)
        conts = letter_tokens(tok, len(q.options))
        if all(len(c) == 1 for c in conts):
            seqs.append((qi, -1, ctx, 0))
        else:
            seqs.extend((qi, oi, ctx + c, len(c)) for oi, c in enumerate(conts))
    scores: list[list[float]] = [[0.0] * len(q.options) for q in questions]
    order = sorted(range(len(seqs)), key=lambda s: -len(seqs[s][2]))  # less padding
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = [seqs[s] for s in order[start:start + batch_size]]
            width = max(len(ids) for _, _, ids, _ in chunk)
            # Right padding: causal attention means real positions never see the pads.
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, _, ids, _) in enumerate(chunk):
                input_ids[r, : len(ids)] = torch.tensor(ids)
                mask[r, : len(ids)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            for r, (qi, oi, ids, n_cont) in enumerate(chunk):
                if oi < 0:
                    last = logp[r, len(ids) - 1]
                    for o, c in enumerate(letter_tokens(tok, len(questions[qi].options))):
                        scores[qi][o] = float(last[c[0]])
                else:
                    L = len(ids)
                    positions = torch.arange(L - n_cont - 1, L - 1)
                    targets = torch.tensor(ids[L - n_cont:])
                    scores[qi][oi] = float(logp[r, positions, targets].sum())
    return scores


def evaluate_mmlu(model, tok, questions: Sequence[MCQuestion], spec=None, batch_size: int = 8,
                  out_path: str | os.PathLike | None = None, model_name: str = "", adapter: str | None = None) -> dict:
    """Accuracy overall and per category; per-question rows written atomically when ``out_path`` is given."""
    scores = score_questions(model, tok, questions, spec, batch_size)
    rows = []
    for q, s in zip(questions, scores):
        pred = max(range(len(s)), key=lambda i: (s[i], -i))  # ties: the earlier letter
        rows.append({"question_id": q.id, "category": q.category, "answer": q.answer, "pred": LETTERS[pred],
                     "correct": pred == q.answer_index, "logprobs": dict(zip(LETTERS, s)),
                     "model": model_name, "adapter": adapter})
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        by_cat[r["category"]].append(r["correct"])
    summary = {
        "n": len(rows),
        "accuracy": sum(r["correct"] for r in rows) / len(rows),
        "chance": sum(1 / len(q.options) for q in questions) / len(questions),
        "per_category": {c: sum(v) / len(v) for c, v in sorted(by_cat.items())},
        "scoring": "answer-letter log-likelihood after an 'Answer:' prefill, zero-shot",
        "model": model_name,
        "adapter": adapter,
    }
    if out_path is not None:
        write_jsonl(out_path, rows)
        p = Path(out_path)
        write_json(p.with_name(p.name.removesuffix(".jsonl") + ".summary.json"), summary)
    return summary


def load_for_scoring(model_name: str, adapter: str | os.PathLike | None = None, device: str | None = None,
                     models_extra: dict | None = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, spec) for a registry name, with a LoRA adapter folder applied if given."""
    from pd.models import get_spec, load_model, load_tokenizer

    spec = get_spec(model_name, models_extra)
    tok = load_tokenizer(spec)
    model = load_model(spec, device=device)
    if adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"LoRA adapter folder {adapter} has no adapter_config.json "
                              "(write it with peft's save_pretrained)")
        from pd.adapters import load_adapter

        model = load_adapter(model, adapter, spec, models_extra)  # refused by name unless it fits this model
    return model, tok, spec


def run_mmlu(model_name: str, path: str | os.PathLike | None, out_path: str | os.PathLike, adapter: str | None = None,
             limit: int | None = None, device: str | None = None, batch_size: int = 8,
             models_extra: dict | None = None) -> dict:
    """The workflow entry point: load questions and model (+adapter), score, write rows and summary."""
    questions = load_mmlu_pro(path, limit)
    model, tok, spec = load_for_scoring(model_name, adapter, device, models_extra)
    return evaluate_mmlu(model, tok, questions, spec, batch_size, out_path, model_name,
                         str(adapter) if adapter else None)
