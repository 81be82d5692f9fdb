"""The floating-point precision a model runs in, chosen by the machine rather than the config.

``dtype: auto`` (every model's default) resolves per device:

* CUDA: ``bfloat16`` where the GPU supports it (Ampere and newer), else ``float16``;
* CPU: ``bfloat16`` only where a short measured probe shows it faster than ``float32``.
  On CPUs with AVX512-BF16 or AMX a bfloat16 matrix product of a small model's shapes
  runs about 2x faster than float32; on CPUs without them (AVX2 only: most laptops and
  many servers) torch emulates it, tens of times slower. The probe times a few matrix
  products of a transformer's shapes in both precisions (well under a second where
  bfloat16 is fast; it gives up early where it is slow) and is cached per machine
  (processor model, its feature flags, the torch version and the thread count) in
  ``$PD_CACHE_DIR/precision/``, as plain JSON.

A cluster's compute nodes may differ from the node that plans the workflow, so a
SLURM site declares its precision (``slurm_site.precision``) instead of probing: the
plan then resolves ``auto`` the same way on every node.
"""

from __future__ import annotations

import json
import logging
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

from pd.env import cache_dir
from pd.errors import ConfigError
from pd.io import stable_hash, write_json

log = logging.getLogger("pd")

PRECISIONS = ("float32", "bfloat16", "float16")
REQUESTS = ("auto",) + PRECISIONS

# bfloat16 must beat float32 by this factor to be chosen (noise and conversions at the
# edges of the model eat a few per cent).
MIN_SPEEDUP = 1.15
# Layers smaller than this (a 256-token product's multiply-adds x 2) are not probed: their products
# take microseconds, so timing them measures overhead and noise, and a model that small gains nothing
# from bfloat16; it runs in float32. SmolLM2-135M's layer is 453 MFLOP.
MIN_PROBE_FLOP = 1e8
# The probe's shape: tokens x hidden @ hidden x intermediate, with the model's own hidden and
# intermediate sizes where they are known (SmolLM2-135M's otherwise); 256 tokens keep an
# emulated bfloat16 product well under a second.
PROBE_TOKENS = 256
DEFAULT_LAYER = (576, 1536)
PROBE_SHAPE = (PROBE_TOKENS, *DEFAULT_LAYER)
PROBE_REPEATS = 5
PROBE_VERSION = 1


def _cpu_signature() -> dict:
    """What decides bfloat16 speed on this CPU: model name, feature flags, torch, threads."""
    name, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and name == "unknown":
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = value.strip()
    except OSError:
        pass
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "none"
    threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or 1)
    # oneDNN's instruction-set cap changes which kernels run (AVX2 caps bfloat16 to the emulated path).
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "default"
    return {"cpu": name, "flags": stable_hash(flags, 16), "torch": torch_version,
            "threads": threads, "isa": isa, "probe": PROBE_VERSION}


def _probe_file(signature: dict) -> Path:
    """The probe's cache file for this machine and shape."""
    return cache_dir() / "precision" / f"cpu-{stable_hash(signature, 16)}.json"


def time_matmul(dtype_name: str, shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = PROBE_REPEATS,
                budget_s: float = 1.0, block_s: float = 0.005) -> float:
    """Seconds of one ``[m, k] @ [k, n]`` product on the CPU in ``dtype_name``: the best of
    ``repeats`` timed blocks, each block as many products as fill ``block_s`` (small products
    take microseconds, so one alone would measure the timer and the scheduler).

    Args:
        dtype_name: a torch dtype name (``float32``, ``bfloat16``, ``float16``).
        shape: ``(m, k, n)``.
        repeats: timed blocks after one warm-up product.
        budget_s: stop once this much time is spent (a slow emulated dtype).
        block_s: the least duration of one block.

    Returns:
        The best block's seconds per product.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    start = time.perf_counter()
    for _ in range(3):  # warm-up: the thread pool, first-call dispatch, packing
        t = time.perf_counter()
        a @ b
        once = max(time.perf_counter() - t, 1e-7)
    per_block = max(1, min(1000, int(block_s / once)))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(per_block):
            a @ b
        best = min(best, (time.perf_counter() - t) / per_block)
        if time.perf_counter() - start > budget_s:
            break
    return best


def cpu_bfloat16_speedup(layer: tuple[int, int] = DEFAULT_LAYER, refresh: bool = False,
                         timer: Callable[[str, tuple[int, int, int]], float] = time_matmul) -> float:
    """Measured float32 time / bfloat16 time of a matrix product on this CPU (> 1: bfloat16 is faster).

    The result is cached per machine and shape (see the module docstring); an unreadable
    cache file is measured again and overwritten.

    Args:
        layer: the model's ``(hidden_size, intermediate_size)``; the product is
            ``[PROBE_TOKENS, hidden] @ [hidden, intermediate]``.
        refresh: measure even if a cached result exists.
        timer: seconds of one product of a dtype and ``(m, k, n)`` shape (default :func:`time_matmul`).

    Returns:
        The speed-up of bfloat16 over float32 (dimensionless); 1.0, unmeasured, for a layer
        below :data:`MIN_PROBE_FLOP`.
    """
    shape = (PROBE_TOKENS, int(layer[0]), int(layer[1]))
    if 2.0 * shape[0] * shape[1] * shape[2] < MIN_PROBE_FLOP:
        return 1.0  # too small to gain (see MIN_PROBE_FLOP): float32, the same on every run
    signature = _cpu_signature() | {"shape": list(shape)}
    path = _probe_file(signature)
    if not refresh and path.is_file():
        try:
            return float(json.loads(path.read_text(encoding="utf-8"))["speedup"])
        except (ValueError, KeyError, TypeError):
            log.warning("precision probe cache %s is unreadable: measuring again", path)
    # float32 on both sides of bfloat16: a start-up or a neighbour's burst must not pass for either's speed.
    fp32 = timer("float32", shape)
    bf16 = timer("bfloat16", shape)
    fp32 = min(fp32, timer("float32", shape))
    speedup = fp32 / bf16 if bf16 > 0 else 0.0
    write_json(path, {**signature, "float32_s": fp32, "bfloat16_s": bf16, "speedup": speedup,
                      "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    log.info("precision probe: bfloat16 is %.2fx float32 on this CPU (%s)", speedup, signature["cpu"])
    return speedup


def cuda_precision() -> str:
    """``bfloat16`` on a GPU that supports it, else ``float16``; ``bfloat16`` where no GPU is visible
    (planning here for a GPU elsewhere: every GPU since Ampere supports it)."""
    import torch

    if not torch.cuda.is_available():
        return "bfloat16"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def resolve_precision(requested: str, device: str, layer: tuple[int, int] = DEFAULT_LAYER,
                      speedup: float | None = None) -> str:
    """The precision a model runs in on ``device``.

    Args:
        requested: ``auto`` or one of :data:`PRECISIONS` (returned unchanged).
        device: a torch device string (``cpu``, ``cuda``, ``cuda:1``).
        layer: the model's ``(hidden_size, intermediate_size)``, the CPU probe's shape.
        speedup: the CPU's bfloat16 speed-up (default: measured by :func:`cpu_bfloat16_speedup`).

    Returns:
        One of :data:`PRECISIONS`.

    Raises:
        ConfigError: ``requested`` is not one of :data:`REQUESTS`.
    """
    if requested not in REQUESTS:
        raise ConfigError(f"dtype {requested!r}; allowed: {', '.join(REQUESTS)}")
    if requested != "auto":
        return requested
    if str(device).startswith("cuda"):
        return cuda_precision()
    if speedup is None:
        speedup = cpu_bfloat16_speedup(layer)
    return "bfloat16" if speedup >= MIN_SPEEDUP else "float32"


def plan_precision(device: str, site_device: str | None = None, site_precision: str | None = None,
                   layer: tuple[int, int] = DEFAULT_LAYER) -> str:
    """How a workflow resolves ``dtype: auto`` for the jobs it plans, the same on every node.

    Local runs probe this machine (its GPU, or its CPU's bfloat16 speed). A SLURM site's
    compute nodes cannot be probed from the node that plans, so a site uses its declared
    ``precision``, or else ``bfloat16`` for GPU sites (every GPU since Ampere) and
    ``float32`` for CPU sites (never the slow emulated path).

    Args:
        device: the config's ``device``: ``auto``, ``cpu`` or ``cuda``.
        site_device: a SLURM site's ``device`` (``gpu`` or ``cpu``), None for a local run.
        site_precision: a SLURM site's declared precision (``auto`` or None: the default above).
        layer: the model's ``(hidden_size, intermediate_size)``, the CPU probe's shape.

    Returns:
        One of :data:`PRECISIONS`.

    Raises:
        ConfigError: an unknown precision.
    """
    if site_device is not None:
        if site_precision and site_precision != "auto":
            return resolve_precision(site_precision, "cpu")
        return "bfloat16" if site_device == "gpu" else "float32"
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    return resolve_precision("auto", device, layer)


def _cuda_available() -> bool:
    """Whether a CUDA device is usable, without importing torch where no NVIDIA driver is present
    (planning happens in every Snakemake job, so the common CPU case stays cheap)."""
    if not Path("/dev/nvidiactl").exists() or os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    import torch

    return torch.cuda.is_available()
