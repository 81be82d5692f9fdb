"""Job resources (memory, runtime, CPUs, GPUs) for each job kind, derived from model size.

The kinds are the Snakemake rules' names; each declares its facts (:class:`pd.pipeline.kind.JobKind`:
``gpu``, ``base_runtime``, ``size_independent``, ``local``) in its module of :mod:`pd.pipeline.kinds`.

Snakemake asks for resources per job and passes ``attempt`` (1 on the first try, 2 on the
first retry, ...) to resource callables; a retried job gets more memory and time here, so
``--restart-times`` turns an out-of-memory or timeout failure into a bigger request.

The estimates, in decimal GB (1 GB = 1e9 bytes, 1 GB = 1000 MB as Snakemake's ``mem_mb``):

* weights: 2 bytes per parameter in bf16 on a GPU, 4 bytes (float32) on a CPU;
* generation-like kinds (questions, answers, teacher, evaluate, grade, capability): weights
  plus 20 % and 4 GB for the KV cache, activations and the CUDA context;
* training with LoRA: weights (frozen) plus 16 bytes per adapter parameter (float32
  weight, gradient and AdamW's two moments) plus activations (10 % of the weights and
  4 GB, with gradient checkpointing and the chunked KL);
* GPUs: the need divided by the usable part of one GPU (``GPU_USABLE`` of
  ``gpu_mem_gb``, the size it is sold as, which counts GiB: an "80GB" H100 holds
  85.9 GB), rounded up to a power of two (tensor parallelism needs a divisor of the
  attention heads): an 8B model fits one 80GB GPU, a 70B judge gets four;
* kinds without ``gpu`` (retrieval, manifest, report) never ask for a GPU, nor does a
  grade without a judge;
* a second model the job loads (``extra_params_b``: a teacher that runs inside the
  training job, :meth:`JobKind.extra_params_b <pd.pipeline.kind.JobKind.extra_params_b>`) adds
  its frozen weights;
* the teacher cache an adapter job reads (``cache_gb``,
  :meth:`JobKind.cache_gb <pd.pipeline.kind.JobKind.cache_gb>`) adds to its host memory.

Runtimes: a kind's ``base_runtime`` is the minutes of a paper-size job (a 1,000-item dataset,
30 questions per item, 10 epochs: :data:`pd.pipeline.sizing.REFERENCE`) for an 8B model on one
GPU (or a 0.5B model on a CPU); it scales with the model's size, the job's ``work`` (its
own size over the reference's, :meth:`JobKind.work <pd.pipeline.kind.JobKind.work>`) and the
GPUs, and never goes below :data:`MIN_RUNTIME` for a job that loads a model (loading and start-up).

A site (:class:`Site`, read from ``profiles/slurm/site.yaml``) adds the SLURM settings a
cluster needs (partition, account, GPU type or gres string, constraint, caps) and can
replace any estimate for a kind and size range (``sizes``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from pd import site as site_settings
from pd.errors import ConfigError
from pd.pipeline.registry import get_kind, kind_names
from pd.site import DEVICES, Site, SizeTier

GPU_USABLE = 0.9  # fraction of a GPU's memory a job may plan to fill
GIB_IN_GB = 2**30 / 1e9  # GPU sizes as sold ("80GB") are GiB
CPU_BASE_GB = 2.0  # python + torch + tokenizer, before any weights
GPU_HOST_BASE_GB = 8.0  # host RAM of a GPU job besides a copy of the weights
ADAPTER_BYTES = 16  # float32 weight + gradient + two AdamW moments per adapter parameter

REFERENCE_PARAMS_B = {"gpu": 8.0, "cpu": 0.5}
MIN_RUNTIME = 15  # minutes at attempt 1 of a job that loads a model, however small its work
SIGNAL_RESOLUTION_S = 60  # SLURM checks for due --signal signals about once a minute



def load_site(source: Any, key: str = "slurm_site") -> Site | None:
    """:func:`pd.site.load_site` with the ``sizes`` tiers checked against the registered job kinds.

    Raises:
        ConfigError: as :func:`pd.site.load_site`, or a tier for an unknown kind (named with the allowed ones).
    """
    return site_settings.load_site(source, key, kinds=kind_names())

def lora_params_per_rank(params_b: float) -> float:
    """Estimated LoRA parameters per unit of rank with adapters on every linear layer.

    A layer of shape d_in x d_out gets rank x (d_in + d_out) parameters; summed over a
    transformer's linear layers this grows like params^0.59 for the Llama/Qwen shapes:
    0.93e6 x params_b^0.59 is 11 % under to 21 % over the exact counts from SmolLM2-135M
    to Llama-3-70B (the largest miss is Llama-3-8B, over-estimated: the safe side).
    """
    return 0.93e6 * max(params_b, 1e-6) ** 0.59


def default_lora_rank(params_b: float) -> int:
    """The paper's ranks: 1024 for the 3B and 8B models, 512 for 14B."""
    return 1024 if params_b <= 10 else 512


# --------------------------------------------------------------------------- estimates


def memory_growth(attempt: int) -> float:
    """Memory multiplier on retries: 1, 1.5, 2, ..."""
    return 1.0 + 0.5 * (attempt - 1)


def gpu_need_gb(kind: str, params_b: float, lora_rank: int | None = None) -> float:
    """GPU memory (GB) a job of this kind needs for a model of ``params_b`` billion parameters."""
    weights = 2.0 * params_b
    if kind == "adapter":
        rank = default_lora_rank(params_b) if lora_rank is None else lora_rank
        adapter = ADAPTER_BYTES * lora_params_per_rank(params_b) * rank / 1e9
        return weights + adapter + 0.1 * weights + 4.0
    return 1.2 * weights + 4.0


def cpu_need_gb(kind: str, params_b: float, lora_rank: int | None = None) -> float:
    """Host memory (GB) of a CPU-only job: float32 weights and, for training, adapter state."""
    if get_kind(kind).size_independent:
        return CPU_BASE_GB
    weights = 4.0 * params_b
    if kind == "adapter":
        rank = default_lora_rank(params_b) if lora_rank is None else lora_rank
        adapter = ADAPTER_BYTES * lora_params_per_rank(params_b) * rank / 1e9
        return CPU_BASE_GB + weights + adapter + 0.5 * weights
    return CPU_BASE_GB + 1.2 * weights


def gpus_for(need_gb: float, gpu_mem_gb: float) -> int:
    """GPUs for a memory need (GB): enough usable memory, rounded up to a power of two."""
    n = max(1, math.ceil(need_gb / (GPU_USABLE * gpu_mem_gb * GIB_IN_GB) - 1e-9))
    return 1 << (n - 1).bit_length()


def _tier(site: Site | None, kind: str, params_b: float) -> SizeTier | None:
    if site is None:
        return None
    for tier in site.sizes.get(kind, ()):
        if params_b <= tier.max_params_b:
            return tier
    return None


def job_resources(
    kind: str,
    params_b: float,
    attempt: int = 1,
    device: str | None = None,
    site: Site | Mapping[str, Any] | None = None,
    *,
    lora_rank: int | None = None,
    work: float = 1.0,
    cache_gb: float = 0.0,
    extra_params_b: float = 0.0,
    processes: int | str = 1,
    cost: Any = None,
) -> dict[str, Any]:
    """Resources of one job: ``mem_mb``, ``runtime`` (minutes), ``cpus_per_task``, ``gpus``.

    ``device`` defaults to the site's (``gpu`` for a cluster site) or ``cpu`` without a
    site. ``work`` scales the runtime (e.g. epochs x questions relative to the paper's).
    With a GPU job the SLURM plugin's keys are added (``gpu`` and ``gpu_model``, or a
    ``gres`` string when the site asks for ``gpu_request: gres``); with a site its
    partition, account, qos, constraint and extra sbatch flags. Keys that do not apply
    are left out.

    Args:
        kind: a job kind (:func:`pd.pipeline.registry.kind_names`).
        params_b: the size of the job's model in billions of parameters (0 for none).
        attempt: 1 on the first try, 2 on the first retry, ...
        device: ``cpu`` or ``gpu``.
        site: the cluster's settings (a :class:`Site` or its mapping).
        lora_rank: the adapter's rank (training only; default: the paper's for the size).
        work: a runtime multiplier (the job's size over the paper's).
        cache_gb: host memory (GB) of data the job holds besides the model (a teacher cache).
        extra_params_b: billions of frozen parameters of a second model the job loads (a
            teacher that runs inside the training job), added to the memory need.
        processes: an adapter job's ``training.processes``: N asks for at least N GPUs on a
            GPU site (one per process), N times the CPUs and host memory on a CPU; ``auto``
            is one process per GPU the job gets (one on a CPU).
        cost: on a GPU site, the job's :class:`pd.pipeline.costs.JobCost` (the cost model's GPUs and
            calibrated time): it replaces the size-scaled estimates below.

    Returns:
        Snakemake resources: ``mem_mb`` (MB), ``runtime`` (minutes), ``cpus_per_task``,
        ``gpus`` and the SLURM plugin's keys that apply.

    Raises:
        ConfigError: an unknown kind or device, an invalid number, or a job that needs more
            GPUs than a node has.
    """
    _check_job(kind, params_b, attempt, work)
    for name, v in (("cache_gb", cache_gb), ("extra_params_b", extra_params_b)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"{name} must be a number >= 0, got {v!r}")
    if processes != "auto" and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 1):
        raise ConfigError(f"processes must be an integer >= 1 or auto, got {processes!r}")
    site = load_site(site) if not isinstance(site, Site) else site
    device = device or (site.device if site else "cpu")
    if device not in DEVICES:
        raise ConfigError(f"device {device!r} is not one of {list(DEVICES)}")
    defaults = site or Site(device=device)
    res = _size(kind, params_b, attempt, device, defaults, _tier(site, kind, params_b), lora_rank, work,
                cache_gb, extra_params_b, processes if kind == "adapter" else 1, cost)
    _add_slurm_keys(res, defaults, site, get_kind(kind).stops_on_sigterm)
    return res


def _check_job(kind: str, params_b: float, attempt: int, work: float) -> None:
    if kind not in kind_names():
        raise ConfigError(f"unknown job kind {kind!r}; allowed: {list(kind_names())}")
    if isinstance(params_b, bool) or not isinstance(params_b, (int, float)) or params_b < 0:
        raise ConfigError(f"params_b must be a model size in billions (>= 0), got {params_b!r}")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ConfigError(f"attempt must be an integer >= 1, got {attempt!r}")
    if not isinstance(work, (int, float)) or work <= 0:
        raise ConfigError(f"work must be a positive number, got {work!r}")


def _size(kind: str, params_b: float, attempt: int, device: str, defaults: Site, tier: SizeTier | None,
          lora_rank: int | None, work: float, cache_gb: float = 0.0, extra_params_b: float = 0.0,
          processes: int | str = 1, cost: Any = None) -> dict[str, Any]:
    """``mem_mb``, ``runtime``, ``cpus_per_task`` and ``gpus``: the estimates (or the cost model's), a site's
    tier, its caps.

    ``processes`` (training processes of an adapter job, or ``auto``) sets a floor on the GPUs
    (one each) and multiplies the CPUs and the host memory (each process loads the model).
    """
    growth = memory_growth(attempt)
    facts = get_kind(kind)
    on_gpu = device == "gpu" and facts.gpu and params_b > 0  # substring grades load no model
    if on_gpu and cost is not None:  # the cost model sized it: its GPUs on every attempt (a layout, not a guess)
        first_gpus = gpus = tier.gpus if tier is not None and tier.gpus is not None else cost.gpus
        processes = cost.detail.get("processes", 1)
    elif on_gpu:
        first_gpus, gpus = _estimated_gpus(kind, params_b, lora_rank, extra_params_b, processes, growth, defaults,
                                           tier)
    else:
        gpus = first_gpus = 0
    if on_gpu:
        host_gb = max(16.0, 1.25 * 2.0 * (params_b + extra_params_b) + GPU_HOST_BASE_GB)
        cpus = defaults.cpus_per_gpu * gpus
        host_gb *= gpus if processes == "auto" else processes
    else:
        n = 1 if processes == "auto" else processes
        host_gb = (cpu_need_gb(kind, params_b, lora_rank) + 4.0 * extra_params_b) * n
        cpus = 1 if facts.local else defaults.cpus_per_task * n
    mem_mb = math.ceil((host_gb + cache_gb) * 1000 * growth / 100) * 100

    # More GPUs on a retry are for memory: the runtime stays that of the first attempt's
    # GPU count, times the attempt number.
    if tier is not None and tier.runtime is not None:
        runtime = tier.runtime * work  # the site's minutes for a paper-size job
    elif on_gpu and cost is not None:
        from pd.pipeline.costs import runtime_ask

        runtime = runtime_ask(cost)  # its margin and floor included; the attempt multiplies below
    else:
        size_factor = 1.0 if facts.size_independent else max(
            0.25, params_b / REFERENCE_PARAMS_B["gpu" if on_gpu else "cpu"])
        runtime = facts.base_runtime * size_factor / max(first_gpus, 1) * work * defaults.runtime_factor
    if params_b > 0 and not facts.size_independent:
        runtime = max(runtime, MIN_RUNTIME)

    if tier is not None:
        if tier.mem_mb is not None:
            mem_mb = math.ceil(tier.mem_mb * growth)
        if tier.cpus_per_task is not None:
            cpus = tier.cpus_per_task
    runtime = math.ceil(runtime * attempt - 1e-9)

    if defaults.max_mem_mb is not None:
        mem_mb = min(mem_mb, defaults.max_mem_mb)
    if defaults.max_runtime is not None:
        runtime = min(runtime, defaults.max_runtime)
    if defaults.max_cpus_per_task is not None:
        cpus = min(cpus, defaults.max_cpus_per_task)
    return {"mem_mb": mem_mb, "runtime": max(1, runtime), "cpus_per_task": max(1, cpus), "gpus": gpus}


def _estimated_gpus(kind: str, params_b: float, lora_rank: int | None, extra_params_b: float, processes: int | str,
                    growth: float, defaults: Site, tier: SizeTier | None) -> tuple[int, int]:
    """GPUs of a job the cost model did not size (first attempt's, this attempt's) from the model's size."""
    need = gpu_need_gb(kind, params_b, lora_rank) + 2.0 * extra_params_b
    first_gpus = gpus_for(need, defaults.gpu_mem_gb)  # the runtime estimate's basis
    gpus = gpus_for(need * growth, defaults.gpu_mem_gb)
    if tier is not None and tier.gpus is not None:
        gpus = first_gpus = tier.gpus
    if processes != "auto":  # one GPU per process, at least what the model needs
        if processes > defaults.gpus_per_node:
            raise ConfigError(f"training.processes: {processes} asks for {processes} GPUs, more than "
                              f"gpus_per_node={defaults.gpus_per_node} (a job runs on one node)")
        gpus, first_gpus = max(gpus, processes), max(first_gpus, processes)
    if first_gpus > defaults.gpus_per_node:
        raise ConfigError(
            f"a {kind} job for a {params_b:g}B model needs {first_gpus} GPUs of {defaults.gpu_mem_gb:g} GB, "
            f"more than gpus_per_node={defaults.gpus_per_node}; set gpu_mem_gb, gpus_per_node or a "
            f"sizes.{kind} tier in the site file"
        )
    return first_gpus, min(gpus, defaults.gpus_per_node)  # a retry asks for at most one full node


def _add_slurm_keys(res: dict[str, Any], defaults: Site, site: Site | None, stops_on_sigterm: bool = False) -> None:
    """The SLURM plugin's GPU keys and the site's partition, account, qos, constraint and flags (with
    :func:`term_signal` for a kind that stops on SIGTERM)."""
    gpus = res["gpus"]
    if gpus:
        if defaults.gpu_request == "gres":
            res["gres"] = f"gpu:{defaults.gpu_model}:{gpus}" if defaults.gpu_model else f"gpu:{gpus}"
        else:
            res["gpu"] = gpus
            if defaults.gpu_model:
                res["gpu_model"] = defaults.gpu_model
    if site is not None:
        partition = (site.gpu_partition or site.partition) if gpus else site.partition
        constraint = (site.gpu_constraint or site.constraint) if gpus else site.constraint
        for key, value in (("slurm_partition", partition), ("slurm_account", site.account),
                           ("qos", site.qos), ("constraint", constraint),
                           ("slurm_extra", _with_term_signal(site, res["runtime"], stops_on_sigterm))):
            if value is not None:
                res[key] = value


def term_signal(site: Site, runtime: int) -> str | None:
    """The sbatch flag that sends SIGTERM ahead of a job's time limit, so that it saves its progress and exits.

    Args:
        site: the site (its ``term_before_limit_s``).
        runtime: the job's time limit in minutes.

    Returns:
        ``--signal=TERM@<s>`` with ``s`` the site's seconds, at most a quarter of the time limit; None when
        that is under :data:`SIGNAL_RESOLUTION_S` (SLURM may send the signal that much early) or the site
        sets 0 (then SLURM's own SIGTERM at the limit, ``KillWait`` seconds before the kill, is all there is).
    """
    seconds = min(site.term_before_limit_s, runtime * 60 // 4)
    return f"--signal=TERM@{seconds}" if seconds >= SIGNAL_RESOLUTION_S else None


def _with_term_signal(site: Site, runtime: int, stops_on_sigterm: bool) -> str | None:
    """The site's ``slurm_extra`` with :func:`term_signal` added (unless the site sends a signal of its own)."""
    extra = site.slurm_extra
    flag = term_signal(site, runtime) if stops_on_sigterm else None
    if flag is None or "--signal" in (extra or ""):
        return extra
    return f"{extra} {flag}" if extra else flag


RESOURCE_KEYS = ("mem_mb", "runtime", "cpus_per_task", "gpus", "gpu", "gpu_model", "gres",
                 "slurm_partition", "slurm_account", "qos", "constraint", "slurm_extra")


def rule_resources(
    kind: str,
    params_b: float | Callable[[Any], float],
    *,
    device: str | None = None,
    site: Site | Mapping[str, Any] | None = None,
    lora_rank: int | None | Callable[[Any], int | None] = None,
    work: float | Callable[[Any], float] = 1.0,
    cache_gb: float | Callable[[Any], float] = 0.0,
    extra_params_b: float | Callable[[Any], float] = 0.0,
    processes: int | str | Callable[[Any], int | str] = 1,
    cost: Any = None,
) -> dict[str, Callable]:
    """Snakemake ``resources:`` callables for one rule: ``resources: **rule_resources(...)``.

    ``params_b``, ``lora_rank``, ``work``, ``cache_gb``, ``extra_params_b``, ``processes`` and ``cost`` (a
    :class:`pd.pipeline.costs.JobCost` on a GPU site) may be functions of the job's wildcards.
    Each callable takes ``(wildcards, attempt)``; a key that does not apply to a job
    returns None, which Snakemake drops.
    """
    if kind not in kind_names():
        raise ConfigError(f"unknown job kind {kind!r}; allowed: {list(kind_names())}")
    site = load_site(site) if not isinstance(site, Site) else site

    def value(v, wildcards):
        return v(wildcards) if callable(v) else v

    def make(key: str) -> Callable:
        def resource(wildcards, attempt):
            res = job_resources(kind, value(params_b, wildcards), attempt, device, site,
                                lora_rank=value(lora_rank, wildcards), work=value(work, wildcards),
                                cache_gb=value(cache_gb, wildcards),
                                extra_params_b=value(extra_params_b, wildcards),
                                processes=value(processes, wildcards), cost=value(cost, wildcards))
            return res.get(key)

        resource.__name__ = f"{kind}_{key}"
        return resource

    return {key: make(key) for key in RESOURCE_KEYS}


def job_gpus() -> int:
    """The GPUs this job holds: SLURM's ``SLURM_GPUS_ON_NODE`` (what ``--gpus``/``--gres`` granted),
    else the CUDA devices the process sees, at least 1 (vLLM's ``tensor_parallel_size``)."""
    import os

    granted = os.environ.get("SLURM_GPUS_ON_NODE", "")
    if granted.isdigit() and int(granted) > 0:
        return int(granted)
    import torch

    return max(1, torch.cuda.device_count())
