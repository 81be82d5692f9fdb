"""What a plan's jobs ask for: each job's resources from its kind's sizing hooks, and the per-kind table
``pd validate`` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pd.pipeline.registry import get_kind, kind_names

if TYPE_CHECKING:
    from pd.pipeline.plan import Artifact, Plan


def artifact_resources(art: Artifact, plan: Plan, params_b: float, attempt: int = 1, device: str | None = None,
                       site: Any = None) -> dict[str, Any]:
    """The resources the job that makes ``art`` asks for (:func:`pd.pipeline.resources.job_resources` with its kind's
    sizing hooks: work, cache, a second model, rank).

    Args:
        art: a planned artifact.
        plan: its plan.
        params_b: the size of the job's model, billions of parameters (0 for none).
        attempt: 1 on the first try.
        device: ``cpu`` or ``gpu`` (default: the site's).
        site: a :class:`pd.site.Site` or None.

    Returns:
        Snakemake resources (``mem_mb``, ``runtime``, ``cpus_per_task``, ``gpus``, SLURM keys).
    """
    from pd.pipeline.resources import job_resources

    kind = get_kind(art.kind)
    return job_resources(art.kind, params_b, attempt, device, site, lora_rank=kind.lora_rank(art),
                         work=kind.work(art, plan), cache_gb=kind.cache_gb(art, plan),
                         extra_params_b=kind.extra_params_b(art, plan))


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
