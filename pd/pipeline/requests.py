"""What a plan's jobs ask for: each job's resources from its kind's sizing hooks, and the per-kind table
``pd validate`` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pd.pipeline.registry import get_kind, kind_names

if TYPE_CHECKING:
    from pd.pipeline.plan import Artifact, Plan


def artifact_cost(art: Artifact, plan: Plan, site: Any, registry: dict | None = None) -> Any:
    """The cost model's :class:`pd.pipeline.costs.JobCost` of the job making ``art`` on a GPU site, else None
    (no site, a CPU site, a job without a GPU workload).

    Raises:
        ConfigError: the job fits no number of the site's GPUs.
    """
    if site is None or site.device != "gpu" or art.model is None:
        return None
    from pd.models import registry as model_registry
    from pd.pipeline.costs import job_cost

    return job_cost(art, plan, site, registry if registry is not None else model_registry(plan.cfg.get("models")))


def artifact_resources(art: Artifact, plan: Plan, params_b: float, attempt: int = 1, device: str | None = None,
                       site: Any = None, registry: dict | None = None, cost: Any = None) -> dict[str, Any]:
    """The resources the job that makes ``art`` asks for (:func:`pd.pipeline.resources.job_resources` with its kind's
    sizing hooks: work, cache, a second model, rank).

    Args:
        art: a planned artifact.
        plan: its plan.
        params_b: the size of the job's model, billions of parameters (0 for none).
        attempt: 1 on the first try.
        device: ``cpu`` or ``gpu`` (default: the site's).
        site: a :class:`pd.site.Site` or None.
        registry: the model registry (default: the plan's config's).
        cost: the job's :class:`pd.pipeline.costs.JobCost` when the caller has it (else computed on a GPU site).

    Returns:
        Snakemake resources (``mem_mb``, ``runtime``, ``cpus_per_task``, ``gpus``, SLURM keys).
    """
    from pd.pipeline.resources import job_resources

    kind = get_kind(art.kind)
    if cost is None and (device or (site and site.device)) == "gpu":
        cost = artifact_cost(art, plan, site, registry)
    return job_resources(art.kind, params_b, attempt, device, site, lora_rank=kind.lora_rank(art),
                         work=kind.work(art, plan), cache_gb=kind.cache_gb(art, plan),
                         extra_params_b=kind.extra_params_b(art, plan), processes=kind.processes(art), cost=cost)


def resource_table(plan: Plan, registry: dict, site: Any = None, device: str | None = None) -> list[dict[str, Any]]:
    """What the plan's jobs ask for, per job kind and model size: GPUs, memory and time, min-max over the jobs.

    Args:
        plan: a plan (all its artifacts count).
        registry: the model registry (:func:`pd.models.registry`), for the models' sizes.
        site: a :class:`pd.site.Site` or None (local: CPU).
        device: ``cpu`` or ``gpu`` (default: the site's, else ``cpu``).

    Returns:
        Rows in job-kind order, then by size: ``kind``, ``params_b``, ``models`` (names),
        ``jobs`` and ``(min, max)`` pairs ``gpus``, ``mem_mb``, ``runtime`` (minutes).
    """
    order = kind_names()
    groups: dict[tuple[str, float], dict[str, Any]] = {}
    for art in plan.artifacts.values():
        size = registry[art.model].params_b if art.model else 0.0
        res = artifact_resources(art, plan, size, 1, device, site)
        row = groups.setdefault((art.kind, size), {"kind": art.kind, "params_b": size, "models": set(), "jobs": 0,
                                                   "gpus": [], "mem_mb": [], "runtime": []})
        row["jobs"] += 1
        if art.model:
            row["models"].add(art.model)
        for key in ("gpus", "mem_mb", "runtime"):
            row[key].append(res[key])
    rows = []
    for (kind, size), row in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        row["models"] = sorted(row["models"])
        for key in ("gpus", "mem_mb", "runtime"):
            row[key] = (min(row[key]), max(row[key]))
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """The lines of :func:`resource_table`'s rows as ``pd validate`` prints them (memory in GB, time in hours)."""
    def span(pair, fmt=str):
        lo, hi = pair
        return fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}"

    lines = [f"{'kind':<11} {'model':<44} {'jobs':>5} {'GPUs':>6} {'memory GB':>11} {'time h':>11}"]
    for r in rows:
        model = f"{', '.join(r['models'])} ({r['params_b']:g}B)" if r["models"] else "-"
        lines.append(f"{r['kind']:<11} {model:<44} {r['jobs']:>5} {span(r['gpus']):>6} "
                     f"{span(r['mem_mb'], lambda m: f'{m / 1000:g}'):>11} "
                     f"{span(r['runtime'], lambda t: f'{t / 60:.1f}'):>11}")
    return lines


def cost_table(plan: Plan, registry: dict, site: Any, paths: list[str] | None = None,
               restarts: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The cost model's view of a plan on a GPU site, per job kind and model: what each job needs and asks.

    Args:
        plan: the plan.
        registry: the model registry.
        site: a GPU :class:`pd.site.Site`.
        paths: the artifacts to count (default: all).
        restarts: the profile's ``restart-times`` (None: not checked), for jobs that resume over attempts.

    Returns:
        ``(rows, problems)``: rows in kind order with ``kind``, ``model``, ``jobs``, ``gpus``, ``how`` (the layout
        or decoding batch), ``memory_gb`` (the largest need per GPU), ``gpu_memory_gb``, ``need_h`` and ``ask_h``
        (the longest job's, first attempt), ``attempts`` (the most a job needs), ``gpu_hours_need`` and
        ``gpu_hours_ask`` (sums over the jobs; CPU-only jobs count none); problems: one line per job that cannot
        run as planned (fits no GPU count, or outlives ``max_runtime`` without resuming).
    """
    from pd.errors import ConfigError
    from pd.pipeline.costs import attempts_needed

    order = kind_names()
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    problems: list[str] = []
    for path in paths if paths is not None else list(plan.artifacts):
        art = plan.artifacts[path]
        try:
            cost = artifact_cost(art, plan, site, registry)
        except ConfigError as err:
            problems.append(str(err))
            continue
        if cost is None:
            continue
        # what the job's sbatch really asks (a site's `sizes:` tier may replace the cost model's time)
        res = artifact_resources(art, plan, registry[art.model].params_b, site=site, registry=registry, cost=cost)
        ask = res["runtime"]
        attempts = attempts_needed(cost, site.max_runtime)
        if attempts > 1 and not cost.resumable:
            problems.append(f"{art.path} ({art.kind}, {art.model}) needs {cost.need_minutes / 60:.1f} h, more than "
                            f"max_runtime={site.max_runtime} min, and cannot resume: raise max_runtime or split it")
        elif restarts is not None and attempts > restarts + 1:
            problems.append(f"{art.path} ({art.kind}) resumes over {attempts} attempts: set restart-times >= "
                            f"{attempts - 1} in the profile, or raise max_runtime")
        how = _layout(cost.detail)
        row = groups.setdefault((art.kind, art.model), {
            "kind": art.kind, "model": art.model, "jobs": 0, "gpus": set(), "how": set(), "memory_gb": 0.0,
            "gpu_memory_gb": cost.gpu_memory_gb, "need_h": 0.0, "ask_h": 0.0, "attempts": 1,
            "gpu_hours_need": 0.0, "gpu_hours_ask": 0.0})
        row["jobs"] += 1
        row["gpus"].add(cost.gpus)
        row["how"].add(how)
        row["memory_gb"] = max(row["memory_gb"], cost.memory_gb)
        row["need_h"] = max(row["need_h"], cost.need_minutes / 60)
        row["ask_h"] = max(row["ask_h"], ask / 60)
        row["attempts"] = max(row["attempts"], attempts)
        row["gpu_hours_need"] += cost.gpus * cost.need_minutes / 60
        row["gpu_hours_ask"] += res.get("gpus", cost.gpus) * ask * attempts / 60
    rows = [groups[k] for k in sorted(groups, key=lambda k: (order.index(k[0]), k[1]))]
    return rows, problems


def _layout(detail: dict[str, Any]) -> str:
    """A job's layout in a few characters: ``processes x micro-batch x accumulation [ckpt] [fsdp]`` for training,
    ``backend bN`` for generation."""
    if "micro_batch" not in detail:
        return f"{detail['backend']} b{detail['batch']}"
    return (f"{detail['processes']}x{detail['micro_batch']}x{detail['grad_accum']}"
            + (" ckpt" if detail["checkpointing"] else "") + (" fsdp" if detail["parallel"] == "fsdp" else ""))


def format_cost_table(rows: list[dict[str, Any]]) -> list[str]:
    """:func:`cost_table`'s rows as ``pd validate`` prints them, with a total line."""
    kw = max([len("total")] + [len(r["kind"]) for r in rows])  # the kind column fits its longest name
    lines = [f"{'kind':<{kw}} {'model':<22} {'jobs':>5} {'GPUs':>5} {'layout / batch':<22} {'GB need/GPU':>15} "
             f"{'h need/ask':>13} {'tries':>5} {'GPU-h need':>10} {'GPU-h ask':>10}"]
    for r in rows:
        gpus = "/".join(str(g) for g in sorted(r["gpus"]))
        how = sorted(r["how"])[0] + (f" (+{len(r['how']) - 1})" if len(r["how"]) > 1 else "")
        lines.append(f"{r['kind']:<{kw}} {r['model']:<22} {r['jobs']:>5} {gpus:>5} {how:<22} "
                     f"{r['memory_gb']:>7.1f}/{r['gpu_memory_gb']:<7.1f} {r['need_h']:>6.1f}/{r['ask_h']:<6.1f} "
                     f"{r['attempts']:>5} {r['gpu_hours_need']:>10.0f} {r['gpu_hours_ask']:>10.0f}")
    need, ask = sum(r["gpu_hours_need"] for r in rows), sum(r["gpu_hours_ask"] for r in rows)
    lines.append(f"{'total':<{kw}} {'':<22} {sum(r['jobs'] for r in rows):>5} {'':>5} {'':<22} {'':>15} {'':>13} "
                 f"{'':>5} {need:>10.0f} {ask:>10.0f}")
    return lines
