"""What the jobs of several kinds share: their generator, the completion cache, provenance."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pd.redact import redact


def generation_cache() -> Path:
    """The disk cache of completions that every generating job shares."""
    from pd.models import cache_dir

    return cache_dir() / "generations"


def make_job_generator(model: str, *, backend: str = "transformers", batch_size: int | str | None = "auto",
                       base_url: str | None = None, models_extra: dict | None = None, adapter: str | None = None,
                       cache_tag: str | None = None,
                       **options):
    """The generator a job uses: ``model`` on ``backend``, through the shared completion cache.

    Args:
        model: a registry name (for ``openai``, the server's model name).
        backend: ``transformers``, ``vllm`` or ``openai``.
        batch_size: prompts per forward pass, or ``auto`` (from the device's memory; transformers only).
        base_url: the server of the ``openai`` backend.
        cache_tag: names the weights behind the ``openai`` server's model in the cache (replaces its probe).
        models_extra: the config's own model entries (``models:``).
        adapter: a PEFT adapter folder to load on top of the model.
        **options: further backend options (e.g. ``progress``).

    Returns:
        A :class:`pd.generate.Generator`.

    Raises:
        ConfigError: an unknown model or backend.
    """
    from pd.generate import make_generator

    if backend == "transformers":
        options.setdefault("batch_size", batch_size or "auto")
    if backend == "vllm":  # tensor parallelism over every GPU the job was granted (pd.pipeline.resources sized it)
        from pd.pipeline.resources import job_gpus

        options.setdefault("gpus", job_gpus())
    if backend == "openai" and base_url:
        options.setdefault("base_url", base_url)
    if backend == "openai" and cache_tag:
        options.setdefault("cache_tag", cache_tag)
    return make_generator(model, backend, adapter=adapter, cache_dir=generation_cache(), models_extra=models_extra,
                          **options)


def job_generator(spec: Any, model: str, adapter: str | None = None):
    """The generator of a generating job (:class:`pd.pipeline.spec.GeneratingSpec`) for ``model``."""
    return make_job_generator(model, backend=spec.backend or "transformers", batch_size=spec.batch_size,
                              base_url=spec.base_url, models_extra=spec.models_extra, adapter=adapter,
                              cache_tag=getattr(spec, "cache_tag", None))


def provenance(spec: Any) -> dict:
    """Where and from what a file was made: its specification (credentials removed), host, SLURM job and time."""
    return {"spec": redact(spec.as_dict()), "host": os.uname().nodename, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
