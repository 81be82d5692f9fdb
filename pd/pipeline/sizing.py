"""The data sizes a job's work is counted from, against the paper-size job the runtimes assume.

:attr:`pd.pipeline.kind.JobKind.base_runtime` gives minutes for a job at the paper's data
size (:data:`REFERENCE`: a dataset of 1,000 test items, 30 training questions per item written
five per call in at most 512 tokens, answers of up to 512 tokens, 10 epochs, evaluation
answers of up to 500 tokens). Each kind's :meth:`~pd.pipeline.kind.JobKind.work` is its own
count of the same quantity over the reference's, so the runtime a job asks for follows its
real size; the counts it needs are here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pd.cost.shapes import Tokens
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


# --------------------------------------------------------------------------- what a job computes, for pd.cost


@dataclass(frozen=True)
class Generation:
    """What a generating job decodes: ``sequences`` rows of up to ``new`` tokens after ``prompt`` tokens.

    Attributes:
        sequences: rows generated (calls x samples x rounds).
        prompt: tokens of a row's prompt.
        new: its ``max_new_tokens``.
        sampled: sampling (temperature > 0) rather than greedy.
        backend: ``transformers``, ``vllm`` or ``openai`` (a server elsewhere: no GPU here).
        batch: ``generation.batch_size`` (a number or ``auto``).
    """

    sequences: int
    prompt: int
    new: int
    sampled: bool = True
    backend: str = "transformers"
    batch: int | str = "auto"


@dataclass(frozen=True)
class Forwards:
    """Forward passes without generation (a teacher cache, log-likelihood scoring): ``tokens`` in all,
    ``rows_tokens`` the longest row."""

    tokens: int
    row_tokens: int
    batch: int = 8


@dataclass(frozen=True)
class Training:
    """What an adapter job trains: ``rows`` passage rows seen over the run (examples x epochs) in optimizer steps of
    ``global_batch`` rows (of which ``reg_rows`` instruction rows), with the longest/mean row lengths;
    ``planned_steps``: the run's optimizer steps as the loop counts them (:func:`pd.train.steps.run_steps`), when
    known."""

    rows: int
    global_batch: int
    rank: int
    tokens: Tokens
    mean_tokens: Tokens
    live_teacher: bool
    reg_rows: int = 0
    teacher_model: str | None = None
    processes: int | str = "auto"
    checkpointing: bool | None = None
    parallel: str | None = None
    micro_batch: int | None = None  # a fixed micro-batch (None: the largest that fits)
    planned_steps: int | None = None

    @property
    def steps(self) -> int:
        """Optimizer steps of the run: ``planned_steps``, else rows over the passage rows of a step."""
        if self.planned_steps is not None:
            return self.planned_steps
        return max(1, math.ceil(self.rows / max(1, self.global_batch - self.reg_rows)))


def generation_run(spec: Any, plan: Plan) -> dict[str, Any]:
    """How a generating job runs its model: ``backend`` and ``batch`` (the spec's, else the config's)."""
    gen = plan.cfg.get("generation", {})
    return {"backend": getattr(spec, "backend", None) or gen.get("backend") or "transformers",
            "batch": getattr(spec, "batch_size", None) or gen.get("batch_size") or "auto"}


def lengths() -> dict[str, float]:
    """The token counts the plan assumes (``pd/cost/calibration.yaml`` ``lengths``)."""
    from pd.cost.calibration import calibration

    return calibration()["lengths"]


def uft_chunks(dataset_cfg: dict, chunk_tokens: int, overlap: int) -> int:
    """UFT's training examples on a dataset: each passage's overlapping windows
    (:func:`pd.train.steps.uft_chunk_starts`), its tokens estimated from its characters (``lengths``
    ``chars_per_token``); a dataset whose files are not here counts its passages at ``lengths`` ``passage`` tokens.

    Args:
        dataset_cfg: the dataset's config entry.
        chunk_tokens: ``training.uft_chunk_tokens`` (the tokenizer's leading special tokens are not counted).
        overlap: ``training.uft_overlap``.

    Returns:
        The estimated number of windows.

    Raises:
        ConfigError: ``overlap`` leaves no stride.
    """
    from pd.data import passage_lengths
    from pd.train.steps import uft_chunk_starts

    n = lengths()
    chars = passage_lengths(dataset_cfg)
    if chars is None:
        tokens = [int(n["passage"])] * dataset_size(dataset_cfg)[0]
    else:
        tokens = [math.ceil(c / n["chars_per_token"]) for c in chars]
    return sum(len(uft_chunk_starts(t, chunk_tokens, overlap)) for t in tokens)


def training_tokens(answer_limit: int, max_answer: int, max_teacher: int, passages: int = 1,
                    with_teacher: bool = True) -> tuple[Tokens, Tokens]:
    """The longest and the mean training row before the data exists.

    Args:
        answer_limit: the answers' ``max_new_tokens``.
        max_answer: ``training.max_answer_tokens`` (longer answers are cut).
        max_teacher: ``training.max_teacher_tokens``.
        passages: passages in the teacher's prompt.
        with_teacher: the method has a teacher sequence.

    Returns:
        ``(longest, mean)`` :class:`pd.cost.Tokens`.
    """
    n = lengths()
    answer = min(answer_limit, max_answer)
    mean_answer = round(answer * n["mean_answer"])

    def row(a: int) -> Tokens:
        student = int(n["chat"] + a)
        teacher = min(max_teacher, int(student + passages * n["passage"])) if with_teacher else 0
        return Tokens(student, teacher, a)

    return row(answer), row(mean_answer)
