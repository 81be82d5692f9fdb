"""How a training run fits its processes: micro-batch, gradient accumulation, checkpointing and sharding.

``training.batch_size`` is the global batch: the rows of one optimizer step over all processes (the
paper's batch size). :func:`resolve_layout` turns it and the ``auto`` settings into a concrete
:class:`Fit`:

* a ``micro_batch_size``, ``gradient_checkpointing`` or ``parallel`` that the settings fix is kept;
* on a GPU the rest comes from the cost model (:func:`pd.cost.training.training_layout`): the largest
  micro-batch, without checkpointing and unsharded when that fits, else what does, for the GPU's real
  memory, the model's shape and the run's longest row;
* on a CPU each process runs its whole share of the batch as one micro-batch, without checkpointing,
  replicating the model (ddp).

The loop accumulates the micro-batches' gradients, each weighted by its share of the step's rows, so
the micro-batch changes the adapter by float rounding only (``tests/test_train_accumulation.py``).

This module imports torch only inside the functions that read a device.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from pd.cost.shapes import Shape, Tokens, shape_of
from pd.cost.training import training_layout
from pd.errors import ConfigError
from pd.train.settings import check_division

log = logging.getLogger("pd.train")


@dataclass(frozen=True)
class Fit:
    """How one training run's processes share its global batch.

    Attributes:
        processes: training processes.
        micro_batch: rows per forward/backward pass and process.
        grad_accum: micro-batches per optimizer step and process (``batch_size = processes x micro_batch x
            grad_accum``).
        checkpointing: gradient checkpointing on.
        parallel: ``ddp`` (each process holds the model) or ``fsdp`` (sharded).
        source: what decided it: ``cpu`` (no GPU memory to fit), ``cost model``, or ``cost model: nothing
            fits`` (the smallest layout, tried anyway).
        peak_gb: the cost model's peak memory per GPU (GB; None on a CPU).
        gpu_gb: the GPU's memory it was fitted to (GB; None on a CPU).
    """

    processes: int
    micro_batch: int
    grad_accum: int
    checkpointing: bool
    parallel: str
    source: str
    peak_gb: float | None = None
    gpu_gb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields by name (for ``pd_meta.json``)."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for the log."""
        mem = f", peak {self.peak_gb:.1f} of {self.gpu_gb:.1f} GB" if self.peak_gb is not None else ""
        return (f"{self.processes} process(es) x micro-batch {self.micro_batch} x {self.grad_accum} accumulated, "
                f"checkpointing {'on' if self.checkpointing else 'off'}, {self.parallel} ({self.source}{mem})")


def fixed_layout(cfg) -> dict[str, Any]:
    """The layout choices the settings fix: ``auto`` becomes None (the cost model chooses).

    Args:
        cfg: a :class:`~pd.train.settings.TrainConfig`.

    Returns:
        ``{"checkpointing": bool | None, "parallel": "ddp" | "fsdp" | None, "micro_batch": int | None}``.
    """
    return {"checkpointing": None if cfg.gradient_checkpointing == "auto" else bool(cfg.gradient_checkpointing),
            "parallel": None if cfg.parallel == "auto" else cfg.parallel,
            "micro_batch": None if cfg.micro_batch_size == "auto" else int(cfg.micro_batch_size)}


def row_tokens(examples: Sequence) -> tuple[Tokens, Tokens]:
    """The longest and the mean lengths of training rows, as the cost model reads them.

    Args:
        examples: :class:`~pd.train.sequences.Example` objects (passage and instruction rows alike).

    Returns:
        ``(longest, mean)``: each length (student, teacher, answer) its maximum, resp. its rounded mean,
        over the rows (the teacher's 0 for rows without a teacher sequence).

    Raises:
        ValueError: no examples.
    """
    if not examples:
        raise ValueError("row_tokens: no examples")
    cols = [(e.student_len, e.teacher_len if e.teacher_prompt_ids is not None else 0, len(e.answer_ids))
            for e in examples]
    longest = Tokens(*(max(c[i] for c in cols) for i in range(3)))
    mean = Tokens(*(round(sum(c[i] for c in cols) / len(cols)) for i in range(3)))
    return longest, mean


def limit_tokens(cfg) -> Tokens:
    """The longest row the settings allow (for a fit before the data exists).

    Args:
        cfg: a :class:`~pd.train.settings.TrainConfig`.

    Returns:
        :class:`~pd.cost.shapes.Tokens` of ``max_teacher_tokens`` (``max_reg_tokens`` when larger and the
        method regularises), the answer at ``max_answer_tokens``.
    """
    longest = cfg.max_teacher_tokens if not cfg.reg_rows else max(cfg.max_teacher_tokens, cfg.max_reg_tokens)
    return Tokens(longest, longest if cfg.uses_kl else 0, min(cfg.max_answer_tokens, longest))


def gpu_memory_gb(device) -> float:
    """The memory of a CUDA device in GB (10^9 bytes).

    Args:
        device: a torch device or its name (``cuda``, ``cuda:1``).

    Returns:
        ``torch.cuda.get_device_properties(device).total_memory`` / 1e9.
    """
    import torch

    return torch.cuda.get_device_properties(torch.device(device)).total_memory / 1e9


def resolve_layout(cfg, spec, world: int, device, *, tokens: Tokens | None = None, mean_tokens: Tokens | None = None,
                   live_teacher: bool | None = None, teacher: Any = None, gpu_gb: float | None = None,
                   shape: Shape | None = None) -> Fit:
    """The concrete micro-batch, accumulation, checkpointing and sharding of a run of ``world`` processes.

    Args:
        cfg: the run's :class:`~pd.train.settings.TrainConfig` (``batch_size`` is the global batch).
        spec: the student's :class:`~pd.models.ModelSpec` (its shape: :func:`pd.cost.shapes.shape_of`).
        world: training processes.
        device: this process's device (a torch device or its name); not CUDA and no ``gpu_gb``: the CPU rule.
        tokens: the longest training row (default: what the settings' limits allow, :func:`limit_tokens`).
        mean_tokens: the mean row (for the time of a step; default ``tokens``).
        live_teacher: the teacher runs in every step (default: a distilling method without a cached top-k).
        teacher: a separate live teacher's ModelSpec or :class:`~pd.cost.shapes.Shape` (None: the student).
        gpu_gb: one GPU's memory in GB (default: the device's, :func:`gpu_memory_gb`); given, the cost model
            decides even on a CPU (what the tests do).
        shape: the student's shape (default ``shape_of(spec)``).

    Returns:
        The :class:`Fit`.

    Raises:
        ConfigError: ``batch_size`` is not divisible by ``world``, or not by ``world x micro_batch_size``.
    """
    import torch

    fixed = fixed_layout(cfg)
    batch, micro = cfg.batch_size, fixed["micro_batch"]
    check_division(batch, world, micro)
    share = batch // world
    if torch.device(device).type != "cuda" and gpu_gb is None:
        m = micro or share
        return Fit(world, m, share // m, bool(fixed["checkpointing"]), fixed["parallel"] or "ddp", "cpu")
    gpu_gb = gpu_memory_gb(device) if gpu_gb is None else float(gpu_gb)
    shape = shape or shape_of(spec)
    if live_teacher is None:
        live_teacher = cfg.uses_kl and cfg.teacher_topk == 0
    teacher_shape = teacher if isinstance(teacher, Shape) or teacher is None else shape_of(teacher)
    tokens = tokens or limit_tokens(cfg)
    try:
        lay = training_layout(shape, cfg.rank, batch, tokens, world=world, gpu_gb=gpu_gb, live_teacher=live_teacher,
                              teacher=teacher_shape if live_teacher else None, mean_tokens=mean_tokens,
                              checkpointing=fixed["checkpointing"], parallel=fixed["parallel"], micro_batch=micro)
    except ConfigError as err:  # the batch divides (checked above): nothing fits by the model; try the smallest
        m = micro or 1
        ck = True if fixed["checkpointing"] is None else fixed["checkpointing"]
        par = fixed["parallel"] or ("fsdp" if world > 1 else "ddp")
        log.warning("%s; training anyway with micro-batch %d, checkpointing %s, %s", err, m, ck, par)
        return Fit(world, m, share // m, ck, par, "cost model: nothing fits", gpu_gb=round(gpu_gb, 1))
    return Fit(world, lay.micro_batch, lay.grad_accum, lay.checkpointing, lay.parallel, "cost model",
               peak_gb=lay.peak_gb, gpu_gb=round(gpu_gb, 1))
