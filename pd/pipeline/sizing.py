"""The data sizes a job's work is counted from, against the paper-size job the runtimes assume.

:attr:`pd.pipeline.kind.JobKind.base_runtime` gives minutes for a job at the paper's data
size (:data:`REFERENCE`: a dataset of 1,000 test items, 30 training questions per item written
five per call in at most 512 tokens, answers of up to 512 tokens, 10 epochs, evaluation
answers of up to 500 tokens). Each kind's :meth:`~pd.pipeline.kind.JobKind.work` is its own
count of the same quantity over the reference's, so the runtime a job asks for follows its
real size; the counts it needs are here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pd.data import dataset_size  # noqa: F401  (each loader sizes its datasets; re-exported for the kinds)

if TYPE_CHECKING:
    from pd.pipeline.plan import Artifact, Plan

REFERENCE = {"items": 1000, "per_item": 30, "per_call": 5, "rounds": 2, "question_tokens": 512,
             "answer_tokens": 512, "epochs": 10, "eval_tokens": 500, "judge_tokens": 512, "mmlu_questions": 12032}
CACHE_BYTES_PER_ENTRY = 4 + 2  # int32 token id + float16 log-probability, per kept token of k


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
