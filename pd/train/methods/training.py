"""The training data of a run (its method's examples) and the loss on one batch.

A distilling method (``pd``, ``pd_reverse``, ``pd_reg``; :attr:`Method.distils
<pd.train.methods.registry.Method.distils>`): KL between the teacher (adapter off, passage in
the prompt) and the student (no passage) on the answer tokens, in the method's direction; a
regularised one (``pd_reg``) has part of every batch instruction-response pairs whose teacher
is the adapter-off model on the very same sequence (the paper's Eq. 2). Other methods
(``sft``, ``sft_distractors``, ``uft``): cross-entropy on the trained tokens of the student
sequence.

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
from pd.train.losses import cross_entropy_from_hidden, kl_from_hidden
from pd.train.methods.pd_reg import TULU3
from pd.train.methods.registry import get_method
from pd.train.sequences import BuildStats, Example, Tokens, reg_examples
from pd.train.settings import TrainConfig
from pd.train.targets import TopKTargets
from pd.train.teacher import answer_hidden, output_head, teacher_answer_logits
from pd.train.teacher_cache import TeacherCache

log = logging.getLogger("pd.train")


# --------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """The examples one run trains on; ``reg`` holds pd_reg's instruction rows."""

    examples: list[Example]
    reg: list[Example] = field(default_factory=list)
    stats: list[BuildStats] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        """The kinds of row (``pd``, ``reg``, ...) in the data, sorted."""
        return sorted({e.kind for e in self.examples} | {e.kind for e in self.reg})

    def content_hash(self) -> str:
        """Hash of the exact token sequences: equal hashes mean equal training data."""
        return stable_hash([[e.to_row() for e in self.examples], [e.to_row() for e in self.reg]])


def build_training_data(cfg: TrainConfig, tokens: Tokens, *, rows: Sequence[dict] | None = None,
                        dataset: Dataset | None = None,
                        instruction_pairs: Sequence[dict] | None = None) -> TrainingData:
    """Sequences for ``cfg.method`` (its :meth:`Method.examples <pd.train.methods.registry.Method.examples>`)
    from answer rows (+ passages), or from the passages alone for a method without answers; a
    regularised method adds its instruction rows."""
    m = cfg.method
    method = get_method(m)
    if dataset is None:
        raise DataError(f"method {m} needs the dataset whose passages it trains on")
    if method.answers is not None and not rows:
        raise DataError(f"method {m} needs training rows (question/answer JSONL from the generation step); got none")
    examples, stats = method.examples(cfg, tokens, rows if method.answers is not None else None, dataset)
    data = _nonempty(TrainingData(examples, stats=[stats]), m)
    limits = cfg.limits()
    if method.regularised:
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
    """Instruction-response pairs for a regularised method (pd_reg).

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
        raw = read_jsonl(path)
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
    from pd.data import load_hub_dataset

    ds = load_hub_dataset(TULU3, split="train", offline_hint="offline, set training.reg_data to a local JSONL of "
                                                             "{instruction, response} rows")
    if limit is not None:
        ds = ds.shuffle(seed=seed).select(range(min(len(ds), 2 * limit)))  # some rows are multi-turn or empty
    return [{"id": r.get("id"), "messages": r["messages"]} for r in ds]


# --------------------------------------------------------------------------- teacher sources


def _rows(batch: dict, rows: list[int]) -> dict:
    """Rows of a batch, with columns that are padding in every kept row dropped."""
    idx = torch.tensor(rows, device=batch["answer_mask"].device)
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v.index_select(0, idx.to(v.device))
        else:
            out[k] = [v[i] for i in rows]
    for side in ("student", "teacher"):
        if f"{side}_attention_mask" in out:
            real = int(out[f"{side}_attention_mask"].sum(1).max())
            out[f"{side}_input_ids"] = out[f"{side}_input_ids"][:, :real]
            out[f"{side}_attention_mask"] = out[f"{side}_attention_mask"][:, :real]
    return out


def teacher_groups(batch: dict, *, teacher_model=None,
                   caches: Sequence[TeacherCache] = ()) -> list[tuple[list[int], object]]:
    """Split a batch's rows by where their teacher comes from.

    A row whose example id is in one of ``caches`` takes its top-k targets from there;
    otherwise the teacher runs live: ``teacher_model`` for passage rows when given, and
    always ``model`` with the adapter off for pd_reg's instruction rows (Eq. 2).
    Returns ``[(rows, source)]`` with source a cache, ``"self"`` or ``"other"``.
    """
    groups: dict[int, tuple[list[int], object]] = {}
    kinds = batch.get("kind") or ["pd"] * len(batch["example_ids"])
    for b, (ex_id, kind) in enumerate(zip(batch["example_ids"], kinds)):
        source: object = next((c for c in caches if ex_id in c), None)
        if source is None:
            source = "other" if teacher_model is not None and kind != "reg" else "self"
        groups.setdefault(id(source), ([], source))[0].append(b)
    return list(groups.values())


def teacher_for(model, batch: dict, rows: list[int], source, teacher_model=None) -> TopKTargets | Tensor:
    """Top-k targets or live logits [n, A, V] for ``rows`` of the batch."""
    sub = _rows(batch, rows)
    if isinstance(source, TeacherCache):
        return source.targets_for(sub["example_ids"], sub["answer_mask"], sub["answer_mask"].device)
    return teacher_answer_logits(model, sub, teacher=teacher_model if source == "other" else None)


# --------------------------------------------------------------------------- loss


def batch_loss(cfg: TrainConfig, model, batch: dict, *, teacher_model=None,
               caches: Sequence[TeacherCache] = ()) -> tuple[Tensor, dict]:
    """The method's loss on one batch and its metrics.

    pd / pd_reverse: the paper's Eq. 1 (forward KL(teacher || student) per answer token at
    temperature T, both softmaxes divided by T; pd_reverse swaps the arguments), the
    teacher seeing the passage. pd_reg: Eq. 2, the same on passage rows plus, on the
    instruction rows, the KL between the base model (adapter off) and the student on the
    same instruction and response. Other methods: cross-entropy on the answer tokens. Each
    is averaged over a sample's answer tokens, then over the samples of the batch. The
    student runs once over the whole batch; KL methods then compare it, group by group,
    with the teacher each row has (see :func:`teacher_groups`).

    Args:
        cfg: the run's settings (method, temperature, direction, chunk size).
        model: the student (a PeftModel, possibly wrapped), in train or eval mode.
        batch: a collated batch (:mod:`pd.train.batch`) on the model's device.
        teacher_model: a separate teacher for the passage rows, or None (adapter off).
        caches: teacher caches whose rows take cached top-k targets.

    Returns:
        (scalar float32 loss in nats, with gradient; metrics: ``kl`` or ``ce`` and, for
        mixed batches, per-kind values such as ``kl_pd`` and ``kl_reg``).

    Raises:
        DataError: no row of the batch has an answer token, or a cache misses a row.
    """
    mask = batch["answer_mask"]
    lm_head = output_head(model)
    student = _rows(batch, list(range(mask.shape[0])))  # trims all-padding columns
    hidden = answer_hidden(model, student["student_input_ids"], student["student_attention_mask"],
                           student["student_answer_positions"])
    if cfg.uses_kl:
        name = "kl"
        per_sample = hidden.new_zeros(mask.shape[0], dtype=torch.float32)
        for rows, source in teacher_groups(batch, teacher_model=teacher_model, caches=caches):
            teacher = teacher_for(model, batch, rows, source, teacher_model)
            idx = torch.tensor(rows, device=hidden.device)
            part = kl_from_hidden(hidden.index_select(0, idx), lm_head, teacher,
                                  mask.index_select(0, idx.to(mask.device)),
                                  temperature=cfg.kd_temperature, direction=cfg.direction, t2_scale=cfg.t2_scale,
                                  chunk_size=cfg.chunk_size, reduction="sample")
            per_sample = per_sample.index_put((idx,), part)
    else:
        name = "ce"
        per_sample = cross_entropy_from_hidden(hidden, lm_head, batch["answer_ids"], mask, chunk_size=cfg.chunk_size,
                                               reduction="sample")
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
