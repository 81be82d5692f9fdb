"""What each job of a plan needs on a GPU site, from the cost model (:mod:`pd.cost`), and what it asks SLURM for.

A kind's :meth:`~pd.pipeline.kind.JobKind.workload` says what the job computes (rows to generate, forward
tokens, a training run); :func:`job_cost` turns it into GPUs, memory per GPU and hours on the site's GPU
(:meth:`pd.site.Site.gpu`); :func:`runtime_ask` into the minutes the job asks for: the calibrated need
times :data:`MARGIN` plus the model's loading, at least :data:`MIN_MINUTES`, times the attempt. Work longer
than the site's ``max_runtime`` is asked in ``max_runtime`` pieces when the job resumes where a killed attempt
stopped (:meth:`~pd.pipeline.kind.JobKind.resumable`): it needs :attr:`JobCost.attempts` attempts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pd.cost.calibration import GPU, calibration
from pd.cost.generation import decode_batch, forward_s, generation_peak_gb, generation_s, weights_gb
from pd.cost.shapes import Shape, shape_of
from pd.cost.training import plan_training
from pd.errors import ConfigError
from pd.pipeline.registry import get_kind
from pd.pipeline.sizing import Forwards, Generation, Training

if TYPE_CHECKING:
    from pd.pipeline.plan import Artifact, Plan
    from pd.site import Site

MARGIN = 1.5  # asked time over the calibrated need (the calibration's own error is within 15 %)
MIN_MINUTES = 15  # a job that loads a model asks at least this much
LOAD_GB_PER_S = 0.5  # reading weights from a busy shared file system


@dataclass(frozen=True)
class JobCost:
    """What one job needs on the site's GPUs.

    Attributes:
        gpus: GPUs of one node it runs on.
        memory_gb: peak memory per GPU (GB, 10^9 bytes).
        gpu_memory_gb: one GPU's memory (GB).
        hours: calibrated time of its work on those GPUs, loading excluded.
        load_minutes: loading the model(s).
        resumable: a killed attempt's work is kept (chunks, checkpoints).
        detail: how it runs (``micro_batch``, ``checkpointing``, ``parallel`` / ``batch``, ``backend``).
    """

    gpus: int
    memory_gb: float
    gpu_memory_gb: float
    hours: float
    load_minutes: float
    resumable: bool
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def need_minutes(self) -> float:
        """Calibrated minutes of the whole job (loading included)."""
        return 60 * self.hours + self.load_minutes


def _usable(gpu: GPU) -> float:
    return calibration()["multi_gpu"]["headroom"] * gpu.memory_gb


def _gpus_for(need_gb: float, gpu: GPU, max_gpus: int, power_of_two: bool) -> int:
    n = max(1, math.ceil(need_gb / _usable(gpu) - 1e-9))
    return 1 << (n - 1).bit_length() if power_of_two else n


def _generation(shape: Shape, w: Generation, gpu: GPU, max_gpus: int) -> tuple[int, float, float, dict]:
    vllm = w.backend == "vllm"
    floor = generation_peak_gb(shape, 8 if w.batch == "auto" else int(w.batch), w.prompt, w.new)
    gpus = _gpus_for(floor, gpu, max_gpus, power_of_two=vllm)
    batch = decode_batch(shape, w.batch, w.prompt, w.new, gpu=gpu, gpus=gpus, backend=w.backend)
    seconds = generation_s(shape, w.sequences, w.prompt, w.new, batch=batch, sampled=w.sampled, gpu=gpu,
                           gpus=gpus, backend=w.backend)
    peak = generation_peak_gb(shape, min(batch, max(1, w.sequences)), w.prompt, w.new) / gpus
    return gpus, peak, seconds, {"batch": batch, "backend": w.backend}


def _forwards(shape: Shape, w: Forwards, gpu: GPU, max_gpus: int) -> tuple[int, float, float, dict]:
    peak = generation_peak_gb(shape, w.batch, w.row_tokens, 0)
    gpus = _gpus_for(peak, gpu, max_gpus, power_of_two=False)
    return gpus, peak / gpus, forward_s(shape, w.tokens, gpu), {"batch": w.batch, "backend": "forward"}


def _training(shape: Shape, w: Training, gpu: GPU, max_gpus: int, registry: dict) -> tuple[int, float, float, dict]:
    teacher = shape_of(registry[w.teacher_model]) if w.teacher_model else None
    layout = plan_training(shape, w.rank, w.global_batch, w.tokens, gpu=gpu, max_gpus=max_gpus,
                           live_teacher=w.live_teacher, teacher=teacher, mean_tokens=w.mean_tokens,
                           processes=w.processes, checkpointing=w.checkpointing, parallel=w.parallel,
                           micro_batch=w.micro_batch)
    detail = {"processes": layout.processes, "micro_batch": layout.micro_batch, "grad_accum": layout.grad_accum,
              "checkpointing": layout.checkpointing, "parallel": layout.parallel, "steps": w.steps,
              "step_s": layout.step_s}
    return layout.processes, layout.peak_gb, w.steps * layout.step_s, detail


def job_cost(art: Artifact, plan: Plan, site: Site, registry: dict) -> JobCost | None:
    """What the job making ``art`` needs on ``site``'s GPUs (None: it runs no model on a GPU).

    Args:
        art: a planned artifact.
        plan: its plan.
        site: a GPU site (:class:`pd.site.Site`).
        registry: the model registry (:func:`pd.models.registry`).

    Returns:
        Its :class:`JobCost`, or None for a job without a GPU workload (CPU kinds, substring grades, a model
        served elsewhere).

    Raises:
        ConfigError: the job fits no number of the node's GPUs (naming the job and what it needs).
    """
    kind = get_kind(art.kind)
    work = kind.workload(art, plan) if art.model else None
    if work is None or (isinstance(work, Generation) and work.backend == "openai"):
        return None
    shape = shape_of(registry[art.model])
    gpu = site.gpu()
    try:
        if isinstance(work, Training):
            gpus, peak, seconds, detail = _training(shape, work, gpu, site.gpus_per_node, registry)
        elif isinstance(work, Forwards):
            gpus, peak, seconds, detail = _forwards(shape, work, gpu, site.gpus_per_node)
        else:
            gpus, peak, seconds, detail = _generation(shape, work, gpu, site.gpus_per_node)
    except ConfigError as err:
        raise ConfigError(f"{art.path} ({art.kind}, {art.model}): {err}") from None
    if gpus > site.gpus_per_node:
        raise ConfigError(f"{art.path} ({art.kind}, {art.model}) needs {gpus} GPUs of {gpu.memory_gb:.1f} GB, more "
                          f"than gpus_per_node={site.gpus_per_node}: use larger GPUs (gpu_mem_gb) or another model")
    load = 1.0 + weights_gb(shape) / LOAD_GB_PER_S / 60
    return JobCost(gpus=gpus, memory_gb=round(peak, 2), gpu_memory_gb=round(gpu.memory_gb, 1),
                   hours=seconds * site.runtime_factor / 3600, load_minutes=load, resumable=kind.resumable(art),
                   detail=detail)


def runtime_ask(cost: JobCost, attempt: int = 1, max_runtime: int | None = None) -> int:
    """Minutes a job asks for: its need x :data:`MARGIN`, at least :data:`MIN_MINUTES`, times ``attempt`` (a
    retry after a time-out asks more), at most ``max_runtime`` (a longer job must be resumable:
    :func:`attempts_needed`).

    Args:
        cost: the job's :class:`JobCost`.
        attempt: 1 on the first try.
        max_runtime: the site's cap in minutes (None: none).

    Returns:
        Minutes.
    """
    minutes = max(MIN_MINUTES, math.ceil(MARGIN * cost.need_minutes)) * attempt
    return minutes if max_runtime is None else min(minutes, max_runtime)


def attempts_needed(cost: JobCost, max_runtime: int | None) -> int:
    """Attempts a job needs to finish under ``max_runtime`` (1 without a cap); each attempt reloads the model."""
    if max_runtime is None or MARGIN * cost.need_minutes <= max_runtime:
        return 1
    per_attempt = max_runtime / MARGIN - cost.load_minutes
    if per_attempt <= 0:
        return 10**6
    return math.ceil(60 * cost.hours / per_attempt)
