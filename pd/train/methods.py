"""What each training method trains on, and its loss on one batch.

``pd`` / ``pd_reverse``: KL between the teacher (adapter off, passage in the prompt) and
the student (no passage) on the answer tokens, forward or reverse. ``pd_reg``: the same,
with part of every batch instruction-response pairs whose teacher is the adapter-off
model on the very same sequence (the paper's Eq. 2). ``sft`` / ``sft_distractors`` /
``uft``: cross-entropy on the trained tokens of the student sequence.

All losses run on final hidden states gathered at the answer positions; the vocabulary
projection happens chunk by chunk inside :mod:`pd.train.losses`, so [batch x length x
vocab] student logits never exist.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from pd.data import Dataset
from pd.errors import ConfigError, DataError
from pd.io import read_jsonl, stable_hash
from pd.train.batch import gather_answers
from pd.train.lora import adapter_disabled, unwrap
from pd.train.losses import cross_entropy_from_hidden, kl_from_hidden
from pd.train.sequences import (BuildStats, Example, Tokens, distractor_examples, pd_examples, reg_examples,
                                sft_examples, uft_examples)
from pd.train.settings import TrainConfig
from pd.train.targets import TopKTargets

log = logging.getLogger("pd.train")

TULU3 = "allenai/tulu-3-sft-mixture"


# --------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """The examples one run trains on; ``reg`` holds pd_reg's instruction rows."""

    examples: list[Example]
    reg: list[Example] = field(default_factory=list)
    stats: list[BuildStats] = field(default_factory=list)

    def content_hash(self) -> str:
        """Hash of the exact token sequences: equal hashes mean equal training data."""
        return stable_hash([[e.to_row() for e in self.examples], [e.to_row() for e in self.reg]])


def build_training_data(cfg: TrainConfig, tokens: Tokens, *, rows: Sequence[dict] | None = None,
                        dataset: Dataset | None = None,
                        instruction_pairs: Sequence[dict] | None = None) -> TrainingData:
    """Sequences for ``cfg.method`` from answer rows (+ passages) or, for uft, the passages alone."""
    m = cfg.method
    if dataset is None:
        raise DataError(f"method {m} needs the dataset whose passages it trains on")
    limits = cfg.limits()
    if m == "uft":
        examples, stats = uft_examples(dataset, tokens, chunk_tokens=cfg.uft_chunk_tokens, overlap=cfg.uft_overlap)
        return _nonempty(TrainingData(examples, stats=[stats]), m)
    if not rows:
        raise DataError(f"method {m} needs training rows (question/answer JSONL from the generation step); got none")
    if m in ("pd", "pd_reverse", "pd_reg"):
        examples, stats = pd_examples(rows, dataset, tokens, limits)
    elif m == "sft":
        examples, stats = sft_examples(rows, dataset, tokens, limits)
    else:
        examples, stats = distractor_examples(rows, dataset, tokens, limits, seed=cfg.seed,
                                              distractors=cfg.distractors, gold_drop_prob=cfg.gold_drop_prob)
    data = _nonempty(TrainingData(examples, stats=[stats]), m)
    if m == "pd_reg":
        if instruction_pairs is None:
            instruction_pairs = load_instruction_pairs(cfg.reg_data, limit=cfg.reg_limit, seed=cfg.seed)
        reg, reg_stats = reg_examples(instruction_pairs, tokens, limits)
        if not reg:
            raise DataError("pd_reg: no instruction pair fits max_reg_tokens; nothing to regularise with")
        data.reg, data.stats = reg, data.stats + [reg_stats]
    return data


def _nonempty(data: TrainingData, method: str) -> TrainingData:
    if not data.examples:
        raise DataError(f"method {method}: no training sequence survived the length limits "
                        f"({data.stats[0].as_dict()}); raise max_teacher_tokens or check the inputs")
    return data


def _pair_from_messages(msgs: list) -> dict | None:
    """The first user turn and the assistant reply right after it; None if absent."""
    for a, b in zip(msgs, msgs[1:]):
        if a.get("role") == "user" and b.get("role") == "assistant" and a.get("content") and b.get("content"):
            return {"instruction": a["content"], "response": b["content"]}
    return None


def load_instruction_pairs(source: str | Path | None, *, limit: int | None = 2000, seed: int = 0) -> list[dict]:
    """Instruction-response pairs for pd_reg.

    ``source``: a local JSONL with ``instruction``/``response`` (or chat ``messages``)
    per line, or ``"tulu3"`` / ``"allenai/tulu-3-sft-mixture"`` from the hub (needs the
    ``datasets`` package and network). A seeded sample of ``limit`` pairs is kept.
    """
    if not source:
        raise ConfigError("pd_reg needs instruction data: set training.reg_data to a local JSONL of "
                          "{instruction, response} rows or to 'tulu3' (the Tülu 3 SFT mixture from the hub)")
    if str(source) in ("tulu3", TULU3):
        raw = _load_tulu3(limit, seed)
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"training.reg_data: {path} does not exist (expected a JSONL of {{instruction, response}} "
                            "rows, or 'tulu3')")
        try:
            raw = read_jsonl(path)
        except ValueError as err:
            raise DataError(str(err)) from None
    pairs = []
    for n, r in enumerate(raw):
        if "messages" in r and "instruction" not in r:
            p = _pair_from_messages(r["messages"])
            if p is None:
                continue
        elif r.get("instruction") and r.get("response"):
            p = {"instruction": r["instruction"], "response": r["response"]}
        else:
            raise DataError(f"{source} row {n + 1}: needs 'instruction' and 'response' (or chat 'messages')")
        p["id"] = str(r.get("id") or f"reg{n:06d}")
        pairs.append(p)
    if limit is not None and len(pairs) > limit:
        pairs = random.Random(seed).sample(pairs, limit)
    if not pairs:
        raise DataError(f"{source}: no usable instruction-response pair")
    return pairs


def _load_tulu3(limit: int | None, seed: int) -> list[dict]:
    try:
        import datasets  # type: ignore
    except ImportError:
        raise DataError(f"loading {TULU3} needs the `datasets` package (pip install datasets); offline, set "
                        "training.reg_data to a local JSONL of {instruction, response} rows") from None
    try:
        ds = datasets.load_dataset(TULU3, split="train")
    except Exception as err:  # the hub client raises many types; all mean "not available"
        raise DataError(f"{TULU3} could not be loaded from the hub ({type(err).__name__}: {err}). Offline, set "
                        "training.reg_data to a local JSONL of {instruction, response} rows") from None
    if limit is not None:
        ds = ds.shuffle(seed=seed).select(range(min(len(ds), 2 * limit)))  # some rows are multi-turn or empty
    return [{"id": r.get("id"), "messages": r["messages"]} for r in ds]


# --------------------------------------------------------------------------- forward


def final_hidden(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The decoder's final (normed) hidden states [B, L, H], without the full-vocabulary logits.

    The top-level model is called (so DDP's hooks run) with ``logits_to_keep=1``; the
    hidden states are taken from the decoder's output by a forward hook.
    """
    inner = unwrap(model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    decoder = base.get_decoder()
    captured: list[Tensor] = []

    def hook(_module, _args, out):
        captured.append(out[0] if isinstance(out, tuple) else out.last_hidden_state)

    handle = decoder.register_forward_hook(hook)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected one decoder output, captured {len(captured)}")
    return captured[0]


def answer_logits(model, input_ids: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
    """Logits [B, A, V] at the answer positions only (model dtype)."""
    hidden = gather_answers(final_hidden(model, input_ids, attention_mask), positions)
    return unwrap(model).get_output_embeddings()(hidden)


@torch.no_grad()
def teacher_logits(model, batch: dict, teacher_model=None) -> Tensor:
    """The teacher's logits [B, A, V] at the answer positions.

    Passage rows: ``teacher_model`` if given, else ``model`` with its adapter off.
    Instruction rows of pd_reg (kind "reg"): always ``model`` with its adapter off (Eq. 2).
    """
    ids, att, pos = batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_answer_positions"]
    kinds = batch.get("kind") or ["pd"] * ids.shape[0]
    groups: dict[bool, list[int]] = {}
    for b, kind in enumerate(kinds):
        groups.setdefault(teacher_model is not None and kind != "reg", []).append(b)
    out = None
    for use_other, rows in groups.items():
        idx = torch.tensor(rows, device=ids.device)
        real = int(att.index_select(0, idx).sum(1).max())  # drop columns that are padding in every row
        args = (ids.index_select(0, idx)[:, :real], att.index_select(0, idx)[:, :real], pos.index_select(0, idx))
        if use_other:
            part = answer_logits(teacher_model, *args)
        else:
            with adapter_disabled(model):
                part = answer_logits(model, *args)
        if out is None:
            out = part.new_empty((ids.shape[0], *part.shape[1:]))
        out[idx] = part
    return out


# --------------------------------------------------------------------------- loss


def batch_loss(cfg: TrainConfig, model, batch: dict, *, teacher: TopKTargets | Tensor | None = None,
               teacher_model=None) -> tuple[Tensor, dict]:
    """The method's loss on one batch (mean over samples of the per-sample token mean) and metrics.

    For KL methods ``teacher`` may be cached top-k targets [B, A, k] or precomputed
    logits; otherwise the teacher forward pass runs here.
    """
    mask = batch["answer_mask"]
    lm_head = unwrap(model).get_output_embeddings()
    if cfg.uses_kl and teacher is None:
        teacher = teacher_logits(model, batch, teacher_model)
    # The student: padding columns beyond the longest real row are dropped before the forward.
    real = int(batch["student_attention_mask"].sum(1).max())
    hidden = gather_answers(final_hidden(model, batch["student_input_ids"][:, :real],
                                         batch["student_attention_mask"][:, :real]),
                            batch["student_answer_positions"])
    if cfg.uses_kl:
        per_sample = kl_from_hidden(hidden, lm_head, teacher, mask, temperature=cfg.kd_temperature,
                                    direction=cfg.direction, t2_scale=cfg.t2_scale, chunk_size=cfg.chunk_size,
                                    reduction="sample")
        name = "kl"
    else:
        per_sample = cross_entropy_from_hidden(hidden, lm_head, batch["answer_ids"], mask, chunk_size=cfg.chunk_size,
                                               reduction="sample")
        name = "ce"
    valid = ~torch.isnan(per_sample)
    if not bool(valid.any()):
        raise DataError(f"batch {batch['example_ids']} has no answer tokens")
    loss = per_sample[valid].mean()
    metrics = {name: float(loss.detach())}
    kinds = batch.get("kind")
    if kinds and len(set(kinds)) > 1:
        for kind in sorted(set(kinds)):
            sel = torch.tensor([k == kind for k in kinds], device=per_sample.device) & valid
            if bool(sel.any()):
                metrics[f"{name}_{kind}"] = float(per_sample[sel].detach().mean())
    return loss, metrics

