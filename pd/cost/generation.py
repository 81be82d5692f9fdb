"""Memory and time of generation (decoding, prefill, teacher forwards), by backend and GPU split.

Transformers backend: one process; a model split over GPUs with ``device_map`` runs its layers one GPU after
another, so a step takes as long as on one GPU holding every layer (the GPUs add memory, not speed). vLLM:
tensor-parallel over the job's GPUs, a memory-bound step (weights and KV cache read once per step) at a stated
bandwidth efficiency (not measured here: ``calibration.yaml`` ``vllm``). Formulas and constants:
``calibration.yaml`` ``decoding``.
"""

from __future__ import annotations

import math

from pd.cost.calibration import GPU, calibration, reference_gpu
from pd.cost.shapes import Shape
from pd.generate.sizing import MAX_BATCH, batch_for_memory

BACKENDS = ("transformers", "vllm", "openai")


def _bw_ratio(gpu: GPU) -> float:
    return reference_gpu().bandwidth_gbs / gpu.bandwidth_gbs


def decode_step_ms(shape: Shape, batch: int, context: float, *, sampled: bool, gpu: GPU,
                   backend: str = "transformers", gpus: int = 1) -> float:
    """Milliseconds of one decode step of ``batch`` rows with ``context`` tokens each (prompt + generated so far).

    Args:
        shape: the model's shape.
        batch: rows decoded together.
        context: tokens in each row's KV cache.
        sampled: rows are sampled (temperature > 0; the transformers backend draws each from its own generator).
        gpu: the GPU.
        backend: ``transformers`` or ``vllm``.
        gpus: GPUs the model is spread over (layers in turn for transformers; tensor parallel for vLLM).

    Returns:
        Milliseconds.
    """
    kv_layer = shape.kv_bytes_per_token() / shape.layers
    layer_bytes = 2 * shape.layer_params
    head_bytes = 2 * shape.vocab * shape.hidden
    bw = gpu.bandwidth_gbs * 1e9 / 1e3  # bytes per millisecond
    if backend == "vllm":
        v = calibration()["vllm"]
        read = (shape.layers * (layer_bytes + batch * context * kv_layer) + head_bytes) / gpus
        return read / (v["bandwidth_efficiency"] * bw) + shape.layers * v["layer_ms"]
    d = calibration()["decoding"]
    per_layer = (d["layer_ms"] + layer_bytes / bw + batch * context * kv_layer / bw
                 + batch * d["row_layer_ms"] * shape.hidden / 4096 * _bw_ratio(gpu))
    return shape.layers * per_layer + head_bytes / bw + (batch * d["sample_row_ms"] if sampled else 0.0)


def forward_s(shape: Shape, tokens: float, gpu: GPU, gpus: int = 1, backend: str = "transformers") -> float:
    """Seconds of a forward pass over ``tokens`` tokens (a prefill, a teacher-cache batch, a scoring pass).

    Matmuls at the training calibration's share of the peak, elementwise work at a third of a training
    step's (forward only); vLLM's tensor parallelism divides it by ``gpus``.
    """
    c = calibration()["training"]
    flops = 2 * shape.params * tokens
    elementwise = tokens * shape.layers * (shape.hidden + shape.intermediate) * c["elementwise_s"] / 3
    seconds = flops / (c["matmul_efficiency"] * gpu.tflops * 1e12) + elementwise * _bw_ratio(gpu)
    return seconds / (gpus if backend == "vllm" else 1)


def generation_peak_gb(shape: Shape, batch: int, prompt: int, new: int) -> float:
    """GPU memory (GB, all GPUs together) of decoding ``batch`` rows: bf16 weights plus each row's KV cache,
    logits and prefill activations (:func:`pd.generate.sizing.sequence_bytes`), plus the training calibration's
    overhead."""
    from pd.generate.sizing import sequence_bytes

    per = sequence_bytes(shape.config(), 2, prompt, new)
    return (2 * shape.params + batch * per) / 1e9 + calibration()["training"]["overhead_gb"]


def weights_gb(shape: Shape) -> float:
    """bf16 weights (GB)."""
    return 2 * shape.params / 1e9


def decode_batch(shape: Shape, setting: int | str, prompt: int, new: int, *, gpu: GPU, gpus: int = 1,
                 backend: str = "transformers") -> int:
    """The rows a generation job decodes together: ``setting`` if a number, else what ``auto`` gives on these
    GPUs (the transformers backend's :func:`pd.generate.sizing.batch_for_memory` on the memory left by the
    weights; vLLM's scheduler fills its KV cache up to ``max_num_seqs``).

    Args:
        shape: the model's shape. setting: ``generation.batch_size`` (a number or ``auto``).
        prompt, new: prompt and new tokens of a row. gpu, gpus: where it runs. backend: the generation backend.

    Returns:
        Rows per batch (>= 1).
    """
    if setting != "auto":
        return int(setting)
    free = gpus * gpu.memory_gb * 1e9 * calibration()["multi_gpu"]["headroom"] - 2 * shape.params
    if backend == "vllm":
        per = shape.kv_bytes_per_token() * (prompt + new)
        return max(1, min(calibration()["vllm"]["max_batch"], int(max(free, 0) // per)))
    return batch_for_memory(shape.config(), 2, prompt, new, max(int(free), 0), MAX_BATCH)


def generation_s(shape: Shape, sequences: int, prompt: int, new: int, *, batch: int, sampled: bool, gpu: GPU,
                 gpus: int = 1, backend: str = "transformers") -> float:
    """Seconds to generate ``sequences`` rows of ``new`` tokens at most after ``prompt`` tokens, ``batch`` at a
    time; every batch decodes ``new`` steps (a batch runs until its longest row stops: at the sampling
    temperatures used here some row nearly always reaches the limit).

    Returns:
        Seconds (0 for no sequences).
    """
    if sequences <= 0:
        return 0.0
    batches = math.ceil(sequences / batch)
    rows = min(batch, sequences)
    steps_ms = sum(decode_step_ms(shape, rows, prompt + k, sampled=sampled, gpu=gpu, backend=backend, gpus=gpus)
                   for k in range(0, new, max(1, new // 16))) * (new / len(range(0, new, max(1, new // 16))))
    return batches * (forward_s(shape, rows * prompt, gpu, gpus, backend) + steps_ms / 1000)
