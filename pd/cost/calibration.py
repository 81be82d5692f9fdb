"""The cost model's constants: ``calibration.yaml`` beside this file, with the measurements they come from."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
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


# bf16 dense peak (TFLOP/s) and memory bandwidth (GB/s) of the GPUs a check may run on, by a part of the name
# torch.cuda.get_device_name gives (most specific first). The cost model's time formulas scale by these.
KNOWN_GPUS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.0, 4800.0),
    ("H100 NVL", 835.0, 3900.0),
    ("H100 PCIe", 756.0, 2000.0),
    ("H100", 989.0, 3350.0),  # SXM (HBM3)
    ("A100-SXM4-80GB", 312.0, 2039.0),
    ("A100 80GB PCIe", 312.0, 1935.0),
    ("A100", 312.0, 1555.0),  # 40 GB
)


def gpu_named(name: str, memory_gb: float) -> tuple[GPU, bool]:
    """The cost model's :class:`GPU` for a device name (``torch.cuda.get_device_name``).

    Args:
        name: the device's name, e.g. ``NVIDIA H100 80GB HBM3``.
        memory_gb: its memory (GB, 10^9 bytes).

    Returns:
        ``(gpu, known)``: its peak and bandwidth from :data:`KNOWN_GPUS`; an unknown name gets the
        :class:`GPU` defaults (an H100 SXM) and ``known`` False.
    """
    for part, tflops, bandwidth in KNOWN_GPUS:
        if part.lower() in name.lower():
            return GPU(memory_gb=memory_gb, tflops=tflops, bandwidth_gbs=bandwidth), True
    return GPU(memory_gb=memory_gb), False


@contextlib.contextmanager
def constants(values: Mapping[str, Mapping[str, float]]) -> Iterator[None]:
    """Within the block, the cost model computes with other constants (what ``bench/calibrate.py`` fits);
    afterwards the file's values are back.

    Args:
        values: section (``training``, ``decoding``...) -> constant name -> value.

    Raises:
        KeyError: a section or constant that ``calibration.yaml`` does not have.
    """
    c = calibration()
    for section, names in values.items():
        missing = [n for n in names if n not in c.get(section, {})]
        if missing:
            raise KeyError(f"calibration.yaml has no constant(s) {missing} in section {section!r}")
    old = {section: {n: c[section][n] for n in names} for section, names in values.items()}
    try:
        for section, names in values.items():
            c[section].update(names)
        yield
    finally:
        for section, names in old.items():
            c[section].update(names)
