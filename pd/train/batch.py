"""The batch contract shared by sequence building, the teacher pass, the losses and the loop.

A training batch is a plain ``dict`` (so that DataLoader collation, ``accelerate`` device
placement and pickling for DDP need nothing special). Its keys, with B = batch size,
Lt / Ls = padded teacher / student length, A = longest answer in the batch:

=============================  ===========  ====================================================
key                            shape, type  meaning
=============================  ===========  ====================================================
``teacher_input_ids``          [B, Lt] long system + passage + ``---`` + question + answer + EOT,
                                            right padded
``teacher_attention_mask``     [B, Lt] long 1 on real tokens, 0 on padding
``teacher_answer_positions``   [B, A] long  index t in the teacher sequence whose logits predict
                                            answer token j (i.e. the token at t + 1 is
                                            ``answer_ids[b, j]``); padded entries hold 0
``student_input_ids``          [B, Ls] long the same conversation without the passage
``student_attention_mask``     [B, Ls] long
``student_answer_positions``   [B, A] long  as above, in the student sequence
``answer_mask``                [B, A] bool  True on real answer tokens (left aligned, right padded)
``answer_ids``                 [B, A] long  the answer token ids (identical in both views;
                                            padded entries hold 0)
``example_ids``                list[str]    one id per row, carried into every per-sample output
=============================  ===========  ====================================================

"Answer tokens" are the tokens whose prediction is trained: the answer text and the
end-of-turn marker after it. Methods without a teacher view (``sft``, ``uft``) may leave
the three ``teacher_*`` keys out. Extra keys are allowed (e.g. ``kind`` for mixed batches
of ``pd_reg``); code that does not know a key ignores it.

The losses in :mod:`pd.train.losses` take tensors already gathered at the answer
positions, shape [B, A, ...], together with ``answer_mask``; :func:`gather_answers` does
that gathering from full [B, L, ...] model outputs.
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import Tensor

from pd.errors import DataError


class _Required(TypedDict):
    student_input_ids: Tensor
    student_attention_mask: Tensor
    student_answer_positions: Tensor
    answer_mask: Tensor
    answer_ids: Tensor
    example_ids: list[str]


class Batch(_Required, total=False):
    """See the module docstring for shapes and meaning."""

    teacher_input_ids: Tensor
    teacher_attention_mask: Tensor
    teacher_answer_positions: Tensor


REQUIRED_KEYS = tuple(_Required.__annotations__)
TEACHER_KEYS = ("teacher_input_ids", "teacher_attention_mask", "teacher_answer_positions")


def gather_answers(values: Tensor, positions: Tensor) -> Tensor:
    """Pick ``values[b, positions[b, j]]`` for every b, j: [B, L, ...] -> [B, A, ...]."""
    if values.dim() < 2 or positions.dim() != 2 or values.shape[0] != positions.shape[0]:
        raise DataError(f"gather_answers: values {tuple(values.shape)} and positions {tuple(positions.shape)} "
                        "must be [B, L, ...] and [B, A] with the same B")
    idx = positions.to(device=values.device, dtype=torch.long)
    idx = idx.view(*idx.shape, *([1] * (values.dim() - 2))).expand(*idx.shape, *values.shape[2:])
    return torch.gather(values, 1, idx)


def validate_batch(batch: dict, *, need_teacher: bool = True) -> None:
    """Raise :class:`DataError` naming the first key that breaks the contract."""
    keys = REQUIRED_KEYS + (TEACHER_KEYS if need_teacher else ())
    missing = [k for k in keys if k not in batch]
    if missing:
        raise DataError(f"batch is missing key(s) {missing}; a batch needs {list(keys)}")
    mask = batch["answer_mask"]
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise DataError(f"answer_mask must be a [B, A] bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    b, a = mask.shape
    if len(batch["example_ids"]) != b:
        raise DataError(f"example_ids has {len(batch['example_ids'])} ids for a batch of {b} rows")
    if tuple(batch["answer_ids"].shape) != (b, a):
        raise DataError(f"answer_ids has shape {tuple(batch['answer_ids'].shape)}, expected {(b, a)}")
    for side in ("student",) + (("teacher",) if need_teacher else ()):
        ids, att, pos = (batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], batch[f"{side}_answer_positions"])
        if ids.shape != att.shape or ids.shape[0] != b:
            raise DataError(f"{side}_input_ids {tuple(ids.shape)} and {side}_attention_mask {tuple(att.shape)} "
                            f"must both be [{b}, L]")
        if tuple(pos.shape) != (b, a):
            raise DataError(f"{side}_answer_positions has shape {tuple(pos.shape)}, expected {(b, a)}")
        real = pos[mask]
        if real.numel() and (int(real.min()) < 0 or int(real.max()) + 1 >= ids.shape[1]):
            raise DataError(f"{side}_answer_positions point outside the sequence (length {ids.shape[1]}); "
                            "position t must predict the token at t + 1")
        nxt = torch.gather(ids, 1, (pos + 1).clamp(max=ids.shape[1] - 1))
        if not torch.equal(nxt[mask], batch["answer_ids"][mask]):
            raise DataError(f"{side}_input_ids at {side}_answer_positions + 1 differ from answer_ids: "
                            "the answer tokens must be spliced in identically in both views")
