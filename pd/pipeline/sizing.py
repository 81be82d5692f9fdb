"""The data sizes a job's work is counted from, against the paper-size job the runtimes assume.

:attr:`pd.pipeline.kind.JobKind.base_runtime` gives minutes for a job at the paper's data
size (:data:`REFERENCE`: a dataset of 1,000 test items, 30 training questions per item written
five per call in at most 512 tokens, answers of up to 512 tokens, 10 epochs, evaluation
answers of up to 500 tokens). Each kind's :meth:`~pd.pipeline.kind.JobKind.work` is its own
count of the same quantity over the reference's, so the runtime a job asks for follows its
real size; the counts it needs are here.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

from pd.errors import PDError

if TYPE_CHECKING:
    from pd.pipeline.plan import Artifact, Plan

REFERENCE = {"items": 1000, "per_item": 30, "per_call": 5, "rounds": 2, "question_tokens": 512,
             "answer_tokens": 512, "epochs": 10, "eval_tokens": 500, "judge_tokens": 512, "mmlu_questions": 12032}
HOTPOTQA_ITEMS = 7405  # the distractor setting's validation questions
HOTPOTQA_PASSAGES_PER_ITEM = 10  # two gold paragraphs and eight distractors
CACHE_BYTES_PER_ENTRY = 4 + 2  # int32 token id + float16 log-probability, per kept token of k


@functools.lru_cache(maxsize=64)
def _dataset_size(cfg_json: str) -> tuple[int, int]:
    from pd.data import load_dataset

    cfg = json.loads(cfg_json)
    if cfg.get("loader") == "hotpotqa":  # a hub dataset: sized from its settings, never downloaded here
        items = int(cfg.get("limit") or HOTPOTQA_ITEMS)
        return items * HOTPOTQA_PASSAGES_PER_ITEM, items
    try:
        ds = load_dataset(cfg.get("name", "dataset"), cfg)
    except PDError:  # files not here (yet): assume the paper's size
        return REFERENCE["items"] // 5, REFERENCE["items"]
    return len(ds.documents), len(ds.items)


def dataset_size(dataset_cfg: dict) -> tuple[int, int]:
    """Passages and test items of a dataset entry (local files read once per process).

    Args:
        dataset_cfg: the config's entry (``loader`` and its settings).

    Returns:
        ``(passages, items)``; HotpotQA from its ``limit`` (no download), a dataset whose
        files are missing as the paper's size (200, 1000).
    """
    return _dataset_size(json.dumps(dataset_cfg, sort_keys=True, default=str))


def questions_behind(art: Artifact, plan: Plan) -> int:
    """Questions (held-out ones included) written for the data an artifact is made from: those of the
    nearest questions job upstream of it, through its first inputs (answers -> questions; a teacher or an
    adapter -> its answers). 0 when nothing upstream writes questions (UFT trains on the passages).

    Args:
        art: a planned artifact.
        plan: the plan that holds it and its inputs.

    Returns:
        The questions job's :meth:`pd.pipeline.kinds.questions.QuestionsSpec.question_count`.
    """
    seen = set()
    todo = list(art.inputs)
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        seen.add(path)
        up = plan.get(path)
        count = getattr(up.spec, "question_count", None)
        if count is not None:
            return count()
        todo.extend(up.inputs)
    return 0
