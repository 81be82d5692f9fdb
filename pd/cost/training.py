"""Memory and time of LoRA training steps, and the layout (processes, micro-batch, checkpointing) that fits.

Fitted to the measured rows of ``calibration.yaml`` (``training``); every formula is written out there.
"""

from __future__ import annotations

from dataclasses import dataclass

from pd.cost.calibration import GPU, calibration, reference_gpu
from pd.cost.shapes import Shape, Tokens
from pd.errors import ConfigError

LORA_STATE_BYTES = 16  # fp32 LoRA weight, its gradient and AdamW's two moments, per LoRA parameter


def _act_bytes_per_token(shape: Shape, checkpointing: bool) -> float:
    c = calibration()["training"]
    layer = c["act_hidden"] * shape.hidden + c["act_intermediate"] * shape.intermediate
    if checkpointing:  # each block keeps its input; one block's activations live during its recomputation
        return shape.layers * shape.hidden * c["ckpt_hidden"] + layer
    return shape.layers * layer


def static_gb(shape: Shape, rank: int, shards: int = 1, teacher: Shape | None = None) -> float:
    """GB a training process holds whatever its batch: bf16 weights and the LoRA state, split over ``shards``
    (FSDP), plus a separate live teacher's weights (also split).

    Args:
        shape: the student's shape.
        rank: the LoRA rank.
        shards: processes the weights and LoRA state are sharded over (1: none).
        teacher: the shape of a second model run in the step (None: the student with its adapter off).

    Returns:
        GB (10^9 bytes).
    """
    total = 2 * shape.params + LORA_STATE_BYTES * shape.lora_params(rank) + (2 * teacher.params if teacher else 0)
    gathered = 2 * 2 * shape.layer_params if shards > 1 else 0  # FSDP: one block gathered, the next prefetched
    return (total / shards + gathered) / 1e9


def train_peak_gb(shape: Shape, rank: int, micro: int, tokens: Tokens, *, checkpointing: bool, shards: int = 1,
                  teacher: Shape | None = None) -> float:
    """Peak GPU memory of one training process (GB): :func:`static_gb` + activations + logits + overhead.

    Args:
        shape: the student's shape.
        rank: the LoRA rank.
        micro: rows per micro-batch.
        tokens: the longest row's student, teacher and answer lengths.
        checkpointing: gradient checkpointing on.
        shards: FSDP shards (1: the whole model in the process).
        teacher: a separate live teacher's shape (None: the student itself).

    Returns:
        GB (10^9 bytes), as ``torch.cuda.max_memory_allocated`` counts them.
    """
    c = calibration()["training"]
    act = micro * tokens.student * _act_bytes_per_token(shape, checkpointing)
    logits = micro * tokens.answer * shape.vocab * c["logit_bytes"]
    return static_gb(shape, rank, shards, teacher) + (act + logits) / 1e9 + c["overhead_gb"]


def micro_step_s(shape: Shape, rank: int, micro: int, tokens: Tokens, *, checkpointing: bool, live_teacher: bool,
                 gpu: GPU, teacher: Shape | None = None) -> float:
    """Seconds of one micro-batch's forward and backward (the teacher's forward included when it runs live).

    Matmul FLOPs at the calibrated share of the GPU's peak; elementwise work scaled by memory bandwidth; a fixed
    per-block cost (see ``calibration.yaml``).

    Args:
        shape: the student's shape. rank: LoRA rank. micro: rows. tokens: the rows' lengths (mean for time).
        checkpointing: recompute activations (one more forward). live_teacher: the teacher runs in the step.
        gpu: the GPU. teacher: a separate teacher's shape (None: the student's).

    Returns:
        Seconds.
    """
    c = calibration()["training"]
    ref = reference_gpu()
    ck = 1 if checkpointing else 0
    t_shape = teacher or shape
    flops = micro * ((4 + 2 * ck) * shape.params * tokens.student
                     + (6 + 2 * ck) * shape.lora_params(rank) * tokens.student
                     + (2 * t_shape.params * tokens.teacher if live_teacher else 0))
    passes = micro * ((2 + ck) * tokens.student + (tokens.teacher if live_teacher else 0))
    elementwise = passes * shape.layers * (shape.hidden + shape.intermediate) * c["elementwise_s"]
    fixed = shape.layers * c["layer_s"] * shape.hidden / 4096
    return (flops / (c["matmul_efficiency"] * gpu.tflops * 1e12)
            + (elementwise + fixed) * ref.bandwidth_gbs / gpu.bandwidth_gbs)


def optimizer_s(shape: Shape, rank: int, gpu: GPU, shards: int = 1) -> float:
    """Seconds of one AdamW step over the LoRA parameters (clipping included; bandwidth-bound)."""
    c = calibration()["training"]
    scale = reference_gpu().bandwidth_gbs / gpu.bandwidth_gbs
    return c["optimizer_s_per_param"] * shape.lora_params(rank) / shards * scale


@dataclass(frozen=True)
class Layout:
    """How a training job runs.

    Attributes:
        processes: training processes (one GPU each).
        micro_batch: rows per micro-batch and process.
        grad_accum: micro-batches per optimizer step and process.
        checkpointing: gradient checkpointing.
        parallel: ``ddp`` (each process holds the model) or ``fsdp`` (sharded).
        peak_gb: the predicted peak memory per GPU (GB).
        step_s: the predicted seconds per optimizer step (mean-length rows).
    """

    processes: int
    micro_batch: int
    grad_accum: int
    checkpointing: bool
    parallel: str
    peak_gb: float
    step_s: float


def _divisors(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def training_layout(shape: Shape, rank: int, global_batch: int, tokens: Tokens, *, world: int, gpu_gb: float,
                    live_teacher: bool, teacher: Shape | None = None, mean_tokens: Tokens | None = None,
                    gpu: GPU | None = None, checkpointing: bool | None = None,
                    parallel: str | None = None, micro_batch: int | None = None) -> Layout:
    """The fastest layout of ``world`` processes whose peak fits the GPU: micro-batch, checkpointing, sharding.

    Without sharding first (DDP: nothing to gather), then FSDP; among the layouts that fit, the one with the
    shortest optimizer step. ``checkpointing``/``parallel``/``micro_batch`` set (not None) are kept as given.

    Args:
        shape: the student's shape. rank: LoRA rank.
        global_batch: rows per optimizer step over all processes (``training.batch_size``).
        tokens: the longest row's lengths (memory). mean_tokens: the mean row's (time; default ``tokens``).
        world: processes (GPUs). gpu_gb: one GPU's memory (GB, 10^9 bytes).
        live_teacher: the teacher runs in the step. teacher: a separate teacher's shape.
        gpu: the GPU's speed (default: an H100 of ``gpu_gb``).
        checkpointing, parallel, micro_batch: fixed choices (None: free).

    Returns:
        The :class:`Layout`.

    Raises:
        ConfigError: ``global_batch`` is not divisible by ``world`` (x ``micro_batch``), or no layout fits (the
            message says what the smallest one needs).
    """
    if global_batch % world:
        raise ConfigError(f"training.batch_size {global_batch} is not divisible by the {world} training processes")
    if micro_batch is not None and (global_batch // world) % micro_batch:
        raise ConfigError(f"training.batch_size {global_batch} is not divisible by {world} processes x "
                          f"micro_batch_size {micro_batch}")
    gpu = gpu or GPU(memory_gb=gpu_gb)
    limit = calibration()["multi_gpu"]["headroom"] * gpu_gb
    mean_tokens = mean_tokens or tokens
    best, smallest = None, None
    for par in ([parallel] if parallel else (["ddp", "fsdp"] if world > 1 else ["ddp"])):
        shards = world if par == "fsdp" else 1
        for ck in ([checkpointing] if checkpointing is not None else [False, True]):
            for micro in [micro_batch] if micro_batch is not None else _divisors(global_batch // world):
                peak = train_peak_gb(shape, rank, micro, tokens, checkpointing=ck, shards=shards, teacher=teacher)
                if smallest is None or peak < smallest:
                    smallest = peak
                if peak > limit:
                    continue
                accum = global_batch // world // micro
                step = accum * micro_step_s(shape, rank, micro, mean_tokens, checkpointing=ck,
                                            live_teacher=live_teacher, gpu=gpu, teacher=teacher)
                step = step * (1 + calibration()["multi_gpu"][f"{par}_overhead"] * (world > 1))
                step += optimizer_s(shape, rank, gpu, shards)
                if best is None or step < best.step_s:
                    best = Layout(world, micro, accum, ck, par, round(peak, 2), round(step, 4))
                break  # smaller micro-batches of this setting fit too, and are slower
        if best is not None:
            return best
    raise ConfigError(f"training does not fit {world} GPU(s) of {gpu_gb:.1f} GB: the smallest layout needs "
                      f"{smallest:.1f} GB per GPU (usable {limit:.1f})")


def plan_training(shape: Shape, rank: int, global_batch: int, tokens: Tokens, *, gpu: GPU, max_gpus: int,
                  live_teacher: bool, teacher: Shape | None = None, mean_tokens: Tokens | None = None,
                  processes: int | str = "auto", checkpointing: bool | None = None,
                  parallel: str | None = None, micro_batch: int | None = None) -> Layout:
    """The layout of a training job on a site: with ``processes: auto`` the fewest GPUs (dividing the batch)
    on which a layout fits, so that sharding is used only when the memory needs it.

    Args:
        shape, rank, global_batch, tokens, live_teacher, teacher, mean_tokens, checkpointing, parallel,
            micro_batch: as :func:`training_layout`.
        gpu: the site's GPU. max_gpus: GPUs of one node.
        processes: ``auto`` or a fixed number of processes.

    Returns:
        The :class:`Layout`.

    Raises:
        ConfigError: no number of the node's GPUs fits, naming what the smallest layout needs; a fixed
            ``processes`` above ``max_gpus``.
    """
    if processes != "auto" and int(processes) > max_gpus:
        raise ConfigError(f"training.processes {processes} is more than the {max_gpus} GPUs of a node "
                          f"(gpus_per_node): set processes to auto or at most {max_gpus}")
    counts = [processes] if processes != "auto" else [n for n in range(1, max_gpus + 1) if global_batch % n == 0]
    errors = []
    for n in counts:
        try:
            return training_layout(shape, rank, global_batch, tokens, world=n, gpu_gb=gpu.memory_gb,
                                   live_teacher=live_teacher, teacher=teacher, mean_tokens=mean_tokens, gpu=gpu,
                                   checkpointing=checkpointing, parallel=parallel, micro_batch=micro_batch)
        except ConfigError as err:
            errors.append(str(err))
    raise ConfigError(f"no layout on up to {max_gpus} GPUs fits: {errors[-1] if errors else 'no process count'}")
