"""The floating-point precision a model runs in, chosen by the machine rather than the config.

``dtype: auto`` (every model's default) resolves per device:

* CUDA: ``bfloat16`` where the GPU supports it (Ampere and newer), else ``float16``;
* CPU: a rule on the processor's feature flags, never a timing, so the same machine gives the
  same answer under any load (a timed probe measured bfloat16 4.96x faster on an idle Xeon with
  AMX and 0.65x under load, and kept whichever it saw first): ``bfloat16`` where the CPU has
  native bfloat16 matrix instructions (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``) and
  oneDNN is not capped below them (``ONEDNN_MAX_CPU_ISA``), else ``float32`` (without them torch
  emulates bfloat16, tens of times slower). A model whose layers are too small to gain
  (:data:`MIN_LAYER_FLOP`) runs in ``float32`` everywhere. :func:`cpu_choice` returns the
  decision with its reason, :func:`describe_cpu_choice` the line a report prints, and the
  decision is recorded once per machine in ``$PD_CACHE_DIR/precision/`` as plain JSON.

A cluster's compute nodes may differ from the node that plans the workflow, so a
SLURM site declares its precision (``slurm_site.precision``) instead of probing: the
plan then resolves ``auto`` the same way on every node.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from pd.env import cache_dir
from pd.errors import ConfigError
from pd.io import stable_hash, write_json

log = logging.getLogger("pd")

PRECISIONS = ("float32", "bfloat16", "float16")
REQUESTS = ("auto",) + PRECISIONS

# CPU feature flags (Linux /proc/cpuinfo names) that give native bfloat16 matrix products.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) that still include native bfloat16 kernels; any
# other cap (SSE41, AVX2, AVX512_CORE, AVX512_CORE_VNNI, ...) leaves only the emulated path.
BF16_ISAS = frozenset({"ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                       "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
                       "AVX10_2_512", "AVX10_2_512_AMX_2"})
# Layers smaller than this (a 256-token product's multiply-adds x 2) gain nothing from bfloat16: their
# products take microseconds, dominated by overhead. Such a model runs in float32. SmolLM2-135M's is 453 MFLOP.
MIN_LAYER_FLOP = 1e8
PROBE_TOKENS = 256
# A model's (hidden_size, intermediate_size) where its config does not say (SmolLM2-135M's).
DEFAULT_LAYER = (576, 1536)
PROBE_SHAPE = (PROBE_TOKENS, *DEFAULT_LAYER)
PROBE_REPEATS = 5
RULE_VERSION = 2


@dataclass(frozen=True)
class CpuChoice:
    """The precision ``dtype: auto`` resolves to on a CPU, and why."""

    precision: str  # float32 or bfloat16
    reason: str  # one phrase: the flags or the cap that decided


def cpu_flags() -> tuple[str, frozenset[str]]:
    """This CPU's model name and feature flags, from ``/proc/cpuinfo`` (``unknown`` and none elsewhere)."""
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
    return name, frozenset(flags.split())


def choose_cpu_precision(flags: frozenset[str] | set[str], isa_cap: str | None,
                         layer: tuple[int, int] = DEFAULT_LAYER) -> CpuChoice:
    """The rule: native bfloat16 instructions, not capped away, and a layer big enough to gain -> bfloat16.

    Args:
        flags: the CPU's feature flags (``/proc/cpuinfo`` names).
        isa_cap: ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``), None where unset.
        layer: the model's ``(hidden_size, intermediate_size)``.

    Returns:
        The choice and its reason; it depends on nothing else (no timing, no load).
    """
    flop = 2.0 * PROBE_TOKENS * int(layer[0]) * int(layer[1])
    if flop < MIN_LAYER_FLOP:
        return CpuChoice("float32", f"layer {layer[0]}x{layer[1]} too small to gain from bfloat16")
    native = [f for f in BF16_FLAGS if f in flags]
    if not native:
        return CpuChoice("float32", "no native bfloat16 on this CPU (no avx512_bf16/amx_bf16 flag)")
    if isa_cap and isa_cap.upper() not in BF16_ISAS:
        return CpuChoice("float32", f"ONEDNN_MAX_CPU_ISA={isa_cap} caps oneDNN below its bfloat16 kernels")
    return CpuChoice("bfloat16", f"native bfloat16 on this CPU ({', '.join(native)})")


def _isa_cap() -> str | None:
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


def cpu_choice(layer: tuple[int, int] = DEFAULT_LAYER) -> CpuChoice:
    """This CPU's choice for a model of ``layer`` shape (:func:`choose_cpu_precision` on this machine's flags).

    The first decision for a machine, cap and shape is recorded in ``$PD_CACHE_DIR/precision/``
    (processor, flags' hash, torch version, decision, reason), for a reader; it is never read back.

    Args:
        layer: the model's ``(hidden_size, intermediate_size)``.

    Returns:
        The choice and its reason.
    """
    name, flags = cpu_flags()
    choice = choose_cpu_precision(flags, _isa_cap(), layer)
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "none"
    record = {"cpu": name, "flags": stable_hash(" ".join(sorted(flags)), 16), "isa": _isa_cap() or "default",
              "torch": torch_version, "layer": list(layer), "rule": RULE_VERSION}
    path = cache_dir() / "precision" / f"cpu-rule-{stable_hash(record, 16)}.json"
    if not path.is_file():
        try:
            write_json(path, {**record, **asdict(choice), "decided": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            log.info("precision: %s", describe_cpu_choice(choice, name))
        except OSError:  # a read-only cache changes nothing: the rule decides again next time
            pass
    return choice


def describe_cpu_choice(choice: CpuChoice | None = None, cpu: str | None = None) -> str:
    """One line for a report: ``CPU precision: bfloat16 (native bfloat16 on this CPU (avx512_bf16); AMD EPYC)``."""
    choice = choice or cpu_choice()
    cpu = cpu or cpu_flags()[0]
    return f"CPU precision: {choice.precision} ({choice.reason}; {cpu})"


def time_matmul(dtype_name: str, shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = PROBE_REPEATS,
                budget_s: float = 1.0, block_s: float = 0.005) -> float:
    """Seconds of one ``[m, k] @ [k, n]`` product on the CPU in ``dtype_name``: the best of
    ``repeats`` timed blocks, each block as many products as fill ``block_s``. A measurement for
    benchmarks and tests; :func:`cpu_choice` decides without timing.

    Args:
        dtype_name: a torch dtype name (``float32``, ``bfloat16``, ``float16``).
        shape: ``(m, k, n)``.
        repeats: timed blocks after the warm-up products.
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


def cuda_precision() -> str:
    """``bfloat16`` on a GPU that supports it, else ``float16``; ``bfloat16`` where no GPU is visible
    (planning here for a GPU elsewhere: every GPU since Ampere supports it)."""
    import torch

    if not torch.cuda.is_available():
        return "bfloat16"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def resolve_precision(requested: str, device: str, layer: tuple[int, int] = DEFAULT_LAYER) -> str:
    """The precision a model runs in on ``device``.

    Args:
        requested: ``auto`` or one of :data:`PRECISIONS` (returned unchanged).
        device: a torch device string (``cpu``, ``cuda``, ``cuda:1``).
        layer: the model's ``(hidden_size, intermediate_size)`` (a small model runs in float32).

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
    return cpu_choice(layer).precision


def plan_precision(device: str, site_device: str | None = None, site_precision: str | None = None,
                   layer: tuple[int, int] = DEFAULT_LAYER) -> str:
    """How a workflow resolves ``dtype: auto`` for the jobs it plans, the same on every node.

    Local runs ask this machine (its GPU, or its CPU's flags: :func:`cpu_choice`). A SLURM site's
    compute nodes cannot be probed from the node that plans, so a site uses its declared
    ``precision``, or else ``bfloat16`` for GPU sites (every GPU since Ampere) and
    ``float32`` for CPU sites (never the slow emulated path).

    Args:
        device: the config's ``device``: ``auto``, ``cpu`` or ``cuda``.
        site_device: a SLURM site's ``device`` (``gpu`` or ``cpu``), None for a local run.
        site_precision: a SLURM site's declared precision (``auto`` or None: the default above).
        layer: the model's ``(hidden_size, intermediate_size)``.

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
