"""The cost model's constants: ``calibration.yaml`` beside this file, with the measurements they come from."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CALIBRATION_PATH = Path(__file__).with_name("calibration.yaml")


@dataclass(frozen=True)
class GPU:
    """One GPU as the cost model sees it.

    Attributes:
        memory_gb: its memory in GB (10^9 bytes; an "80 GB" H100 holds 85.9).
        tflops: its bf16 dense peak, TFLOP/s (H100 and H200: 989).
        bandwidth_gbs: its memory bandwidth, GB/s (H100 SXM 3350, H200 4800).
    """

    memory_gb: float
    tflops: float = 989.0
    bandwidth_gbs: float = 3350.0


@functools.cache
def calibration() -> dict[str, Any]:
    """The parsed ``calibration.yaml`` (cached; do not modify it).

    Returns:
        Its sections: ``gpu`` (the GPU of the measurements), ``training``, ``decoding``, ``vllm``, ``multi_gpu``.
    """
    return yaml.safe_load(CALIBRATION_PATH.read_text(encoding="utf-8"))


def reference_gpu() -> GPU:
    """The GPU the calibration rows were measured on (its memory does not matter to the fits)."""
    g = calibration()["gpu"]
    return GPU(memory_gb=141.0, tflops=g["tflops"], bandwidth_gbs=g["bandwidth_gbs"])
