"""vLLM backend: offline ``vllm.LLM`` with an optional LoRA adapter (``LoRARequest``).

vLLM is an optional extra (``pip install 'pd-harness[vllm]'``, CUDA only). It renders
chat templates itself (``LLM.chat``), so conversations are passed as they are; a
final assistant message is continued (``continue_final_message``) and a single
``raw`` message is sent as a plain prompt, as in the transformers backend.
Each conversation gets its own seed (derived as in the transformers backend), so a
sample does not depend on its batch; vLLM's samples differ from transformers' samples
for the same seed (different kernels and sampler), which is why the backend is part
of the cache identity.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass

from pd.adapters import adapter_config, check_base
from pd.errors import ConfigError, ModelUnavailableError
from pd.generate.base import Completion, Conversation, SamplingParams
from pd.generate.transformers_backend import (
    adapter_hash,
    check_conversation,
    check_params,
    model_identity,
    sample_seed,
    stop_token_ids,
)
from pd.merge import VLLM_MAX_LORA_RANK, merged_model, vllm_can_serve
from pd.models import ModelSpec, get_spec, model_folder
from pd.precision import resolve_precision

# The LoRA ranks vLLM takes for max_lora_rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def require_vllm():
    if importlib.util.find_spec("vllm") is None:
        raise ModelUnavailableError(
            "backend 'vllm' needs the vllm package, which is not installed: run `pip install 'pd-harness[vllm]'` "
            "on a machine with a CUDA GPU, or use backend 'transformers' (the default)"
        )
    import vllm

    return vllm


@dataclass(frozen=True)
class EnginePlan:
    """How one job runs vLLM: the engine's arguments and the LoRA adapter it serves (if any).

    ``engine``: keyword arguments of ``vllm.LLM``; ``lora_path``: the adapter folder served
    as a LoRA, None when there is none or it was merged into the weights; ``spec``: the
    model actually loaded (the merged one, if merged).
    """

    engine: dict
    lora_path: str | None
    spec: ModelSpec


def engine_plan(spec: ModelSpec, adapter: str | os.PathLike | None = None, *, gpus: int = 1,
                gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                max_lora_rank: int = VLLM_MAX_LORA_RANK, **llm_options) -> EnginePlan:
    """vLLM's arguments for a job: tensor parallelism over the job's GPUs; an adapter vLLM can
    serve (rank <= 512, known modules) as a LoRA, any other merged into the weights first
    (:func:`pd.merge.merged_model`, cached) and served as a plain model.

    Args:
        spec: the base model (its ``dtype`` resolved for the GPU here).
        adapter: a PEFT adapter folder, or None.
        gpus: the GPUs the job holds (``tensor_parallel_size``).
        gpu_memory_utilization: share of each GPU's memory vLLM may take.
        max_model_len: the context vLLM reserves KV cache for (None: the model's).
        max_lora_rank: the largest rank served unmerged.
        llm_options: further ``vllm.LLM`` arguments.

    Returns:
        The :class:`EnginePlan`.

    Raises:
        ConfigError: ``gpus`` < 1.
        ModelUnavailableError: the adapter folder is missing.
    """
    if gpus < 1:
        raise ConfigError(f"vLLM needs at least one GPU, got gpus={gpus}")
    spec = dataclasses.replace(spec, dtype=resolve_precision(spec.dtype, "cuda"))
    lora = str(adapter) if adapter else None
    if lora is not None:
        check_base(lora, spec)  # vLLM loads the weights itself: the config must name this base model
        if not vllm_can_serve(lora, max_lora_rank):  # reads adapter_config.json: a missing folder fails here
            spec, lora = merged_model(spec, lora, dtype=spec.dtype), None
    engine = dict(model=model_folder(spec), dtype=spec.dtype, tensor_parallel_size=int(gpus),
                  gpu_memory_utilization=gpu_memory_utilization, **llm_options)
    if max_model_len:
        engine["max_model_len"] = int(max_model_len)
    if lora is not None:
        rank = int(adapter_config(lora)["r"])
        engine.update(enable_lora=True, max_lora_rank=min(r for r in VLLM_LORA_RANKS if r >= rank))
    return EnginePlan(engine, lora, spec)


class VLLMGenerator:
    """Offline batched generation with vLLM over the job's GPUs (see :func:`engine_plan`)."""

    backend = "vllm"

    def __init__(self, model: str | ModelSpec, adapter: str | os.PathLike | None = None, *,
                 models_extra: dict | None = None, gpus: int | None = None, **options):
        vllm = require_vllm()
        import torch

        spec = model if isinstance(model, ModelSpec) else get_spec(model, models_extra)
        plan = engine_plan(spec, adapter, gpus=gpus or max(1, torch.cuda.device_count()), **options)
        self.spec, self.adapter = plan.spec, plan.lora_path
        self.name = (f"vllm:{model_identity(self.spec)}"
                     + (f"+adapter:{adapter_hash(self.adapter)}" if self.adapter else ""))
        self.lora = None
        if self.adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, self.adapter)
        self.llm = vllm.LLM(**plan.engine)
        self.stop_ids = set(stop_token_ids(self.llm.get_tokenizer()))
        self.calls = 0
        self.conversations_generated = 0

    def _messages(self, conv: Conversation) -> list[dict]:
        msgs = list(conv)
        if self.spec.system_prompt and msgs[0]["role"] not in ("system", "raw"):
            msgs.insert(0, {"role": "system", "content": self.spec.system_prompt})
        return msgs

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[list[Completion]]:
        import vllm

        check_params(params)
        for c in conversations:
            check_conversation(c)
        sps = [vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                   top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
                                   seed=sample_seed(params.seed, c, 0) % (2**31), logprobs=params.logprobs or None)
               for c in conversations]
        raw = [i for i, c in enumerate(conversations) if c[0]["role"] == "raw"]
        chat = [i for i, c in enumerate(conversations) if c[0]["role"] != "raw"]
        outs: dict[int, object] = {}
        if chat:
            prefill = [conversations[i][-1]["role"] == "assistant" for i in chat]
            # One call per prefill mode: vLLM takes continue_final_message for a whole call.
            for mode in (False, True):
                idx = [i for i, p in zip(chat, prefill) if p == mode]
                if idx:
                    res = self.llm.chat([self._messages(conversations[i]) for i in idx], [sps[i] for i in idx],
                                        lora_request=self.lora, add_generation_prompt=not mode,
                                        continue_final_message=mode, use_tqdm=True)
                    outs.update(zip(idx, res))
        if raw:
            res = self.llm.generate([conversations[i][0]["content"] for i in raw], [sps[i] for i in raw],
                                    lora_request=self.lora, use_tqdm=True)
            outs.update(zip(raw, res))
        self.calls += 1
        self.conversations_generated += len(conversations)
        return [[self._completion(o, params) for o in outs[i].outputs] for i in range(len(conversations))]

    def _completion(self, o, params: SamplingParams) -> Completion:
        top = None
        if params.logprobs and o.logprobs is not None:
            top = [dict(sorted(((int(t), float(lp.logprob)) for t, lp in step.items()),
                               key=lambda kv: -kv[1])[:params.logprobs])
                   for step in o.logprobs]
        ids = list(o.token_ids)
        if ids and ids[-1] in self.stop_ids:  # as in the transformers backend, the end-of-turn token is not counted
            ids = ids[:-1]
            top = top[:-1] if top else top
        reason = "length" if o.finish_reason == "length" else "stop"
        return Completion(text=o.text, finish_reason=reason, n_tokens=len(ids), token_ids=ids, top_logprobs=top)
