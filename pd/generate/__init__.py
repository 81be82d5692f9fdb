"""Generation backends behind one interface (see ``base.py``) and a factory.

``make_generator`` is what the rest of the harness calls; the backend is a config
setting (``transformers``, ``vllm`` or ``openai``), and a ``cache_dir`` wraps it in the
disk cache so that reruns make no model calls.
"""

from __future__ import annotations

import os

from pd.errors import ConfigError
from pd.generate.base import Completion, Conversation, Generator, SamplingParams

BACKENDS = ("transformers", "vllm", "openai")

__all__ = ["BACKENDS", "Completion", "Conversation", "Generator", "SamplingParams", "make_generator"]


def make_generator(model, backend: str = "transformers", adapter: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None, models_extra: dict | None = None,
                   **options) -> Generator:
    """A generator for ``model`` (a registry name or ModelSpec; for ``openai`` the server's model name).

    ``options`` go to the backend: transformers ``device``, ``batch_size``, ``progress``;
    vllm ``gpu_memory_utilization``, ``max_model_len``, ...; openai ``base_url``,
    ``api_key``, ``max_workers``, ``cache_tag`` (names the served weights in the cache key
    instead of the start-up probe's fingerprint; see ``openai_backend``).
    """
    if backend == "transformers":
        from pd.generate.transformers_backend import TransformersGenerator

        gen = TransformersGenerator(model, adapter, models_extra=models_extra, **options)
    elif backend == "vllm":
        from pd.generate.vllm_backend import VLLMGenerator

        gen = VLLMGenerator(model, adapter, models_extra=models_extra, **options)
    elif backend == "openai":
        from pd.generate.openai_backend import OpenAIGenerator

        if adapter:
            raise ConfigError("backend 'openai' cannot load a LoRA adapter; serve the adapter on the server "
                              "(e.g. vLLM --lora-modules) and name it as the model")
        gen = OpenAIGenerator(str(model), **options)
    else:
        raise ConfigError(f"unknown generation backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if cache_dir:
        from pd.generate.cache import CachedGenerator

        gen = CachedGenerator(gen, cache_dir)
    return gen
