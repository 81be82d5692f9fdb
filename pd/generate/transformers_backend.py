"""The default generation backend: a transformers causal LM (optionally with a LoRA adapter).

It runs its own decoding loop rather than ``model.generate`` for two reasons:

- Each sample draws its random numbers from its own ``torch.Generator``, seeded from
  (``params.seed``, the conversation, the sample index). A sample therefore does not
  depend on which other conversations share its batch or in which order they come, so
  results can be cached per conversation and a rerun gives the same text.
- The top-k log-probabilities of every generated token come out of the same loop,
  for the teacher cache.

Reproducibility: on CPU the same seed and inputs give the same samples bit for bit.
Batching changes only the floating-point arithmetic (left padding changes matrix
shapes, so sums are taken in a different order); differences are around 1e-6 in the
logits and can flip a greedy choice or a sample only at a near tie. On GPU, kernels
are not bit-reproducible across batch sizes either. For exact reruns, rely on the
cache (``pd.generate.cache``), not on recomputation.

Conversation conventions (shared with the other backends):
- If the model spec has a ``system_prompt`` and the conversation starts without a
  system message, it is prepended (as ``pd.chat.messages`` does for training).
- A final ``assistant`` message is a *prefill*: the reply is forced to start with its
  text, and the completion holds only the continuation.
- A single ``{"role": "raw", "content": text}`` message is sent as plain text with no
  chat template (for base-format models such as Bonito).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from pd.adapters import adapter_config, load_adapter, merge_in_float32
from pd.errors import ConfigError
from pd.generate.base import Completion, Conversation, SamplingParams
from pd.generate.prefill_scoring import score_on_prefill
from pd.io import file_hash, stable_hash
from pd.models import ModelSpec, get_spec, load_model, load_tokenizer


def sample_seed(seed: int, conversation: Conversation, index: int) -> int:
    """The seed of one sample: independent of batch composition and order."""
    return int(stable_hash([seed, conversation, index], 15), 16)


def check_params(params: SamplingParams) -> None:
    problems = []
    if params.temperature < 0:
        problems.append(f"temperature {params.temperature} (must be >= 0; 0 is greedy)")
    if params.top_k < 0:
        problems.append(f"top_k {params.top_k} (must be >= 0; 0 disables it)")
    if not 0 < params.top_p <= 1:
        problems.append(f"top_p {params.top_p} (must be in (0, 1])")
    if params.max_new_tokens < 1:
        problems.append(f"max_new_tokens {params.max_new_tokens} (must be >= 1)")
    if params.n < 1:
        problems.append(f"n {params.n} (must be >= 1)")
    if params.logprobs < 0:
        problems.append(f"logprobs {params.logprobs} (must be >= 0)")
    if problems:
        raise ConfigError("bad sampling parameters: " + "; ".join(problems))


def check_conversation(conv: Conversation) -> None:
    if not isinstance(conv, list) or not conv:
        raise ConfigError("a conversation must be a non-empty list of {'role', 'content'} messages")
    for m in conv:
        if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
            raise ConfigError(f"bad message {m!r}: each needs 'role' and a string 'content'")
        if m["role"] not in ("system", "user", "assistant", "raw"):
            raise ConfigError(f"bad role {m['role']!r}; allowed: system, user, assistant (last = prefill), raw (alone)")
    if any(m["role"] == "raw" for m in conv) and len(conv) != 1:
        raise ConfigError("a 'raw' message must be the only message of its conversation")


def render_prompt(tok, conv: Conversation, system_prompt: str | None = None) -> str:
    """The text the model continues: chat template + generation header (+ prefill)."""
    check_conversation(conv)
    if conv[0]["role"] == "raw":
        return conv[0]["content"]
    msgs = list(conv)
    prefill = ""
    if msgs[-1]["role"] == "assistant":
        prefill = msgs.pop()["content"]
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    if not getattr(tok, "chat_template", None):
        raise ConfigError("this tokenizer has no chat template: set `chat_template` in the model's config entry, "
                          "or send a single {'role': 'raw'} message")
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + prefill


def stop_token_ids(tok, model=None) -> list[int]:
    """End-of-turn token(s) of the chat template, the tokenizer's EOS and the model's."""
    from pd.chat import end_of_turn

    ids: set[int] = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    if getattr(tok, "chat_template", None):
        eot = tok.encode(end_of_turn(tok).strip(), add_special_tokens=False)
        if len(eot) == 1:
            ids.add(eot[0])
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update([gen_eos] if isinstance(gen_eos, int) else gen_eos)
    return sorted(ids)


def adapter_hash(adapter: str | os.PathLike) -> str:
    """The content hash of a PEFT adapter folder, after checking its config (:func:`pd.adapters.adapter_config`).

    Raises:
        ModelUnavailableError: the folder or its adapter_config.json is missing.
        DataError: the config is unreadable or not a LoRA config.
    """
    adapter_config(adapter)
    return file_hash(adapter)


def model_identity(spec: ModelSpec) -> str:
    """Name plus a hash of everything that determines the weights and prompts."""
    return f"{spec.name}#{stable_hash(dataclasses.asdict(spec), 10)}"


class TransformersGenerator:
    """Batched, left-padded, KV-cached sampling from a local model.

    ``calls`` counts model forward passes and ``conversations_generated`` the
    conversations actually generated (not served from a cache): tests use them to
    prove a cache hit made no model call.
    """

    backend = "transformers"

    def __init__(self, model: str | ModelSpec, adapter: str | os.PathLike | None = None, *, device: str | None = None,
                 batch_size: int | str = 8, progress: bool = True, loaded_model: Any = None, tokenizer: Any = None,
                 name: str | None = None, models_extra: dict | None = None, merge_adapter: bool = True):
        """Load ``model`` (and ``adapter``) for generation.

        Args:
            model: a registry name or a ModelSpec.
            adapter: a PEFT LoRA folder trained on ``model``, or None.
            device: where to load the model (default: CUDA if present, else CPU).
            batch_size: rows per forward pass, or ``auto`` (from the device's memory: :meth:`batch_rows`).
            progress: show a progress bar.
            loaded_model: an already loaded model (then ``name`` is required: its cache identity).
            tokenizer: an already loaded tokenizer.
            name: the cache identity, where it cannot be derived from the spec.
            models_extra: models defined in the config, beside the registry.
            merge_adapter: merge the adapter into the weights after loading (PEFT ``merge_and_unload``,
                W <- W + (alpha / r) B A), so decoding costs what the base model's does: on this
                project's CPU 1.3-1.9x faster for the demo's rank-64 adapters
                (``python bench/eval_merged.py``); on a GPU an unmerged rank-1024 LoRA roughly
                doubles decoding cost. Merged weights are rounded once to the model's precision, so
                the cache identity says ``merged``. False keeps the LoRA layers separate, and so
                does a ``loaded_model`` (merging would change the caller's weights in place).

        Raises:
            ConfigError: a bad ``batch_size``, or ``loaded_model`` without ``name``.
            ModelUnavailableError: the model or the adapter folder cannot be found.
        """
        import torch  # noqa: F401  (fail early if missing)

        self.spec = model if isinstance(model, ModelSpec) else get_spec(model, models_extra)
        if batch_size != "auto" and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError(f"batch_size {batch_size!r}: must be an integer >= 1 or 'auto' "
                              "(from the device's memory)")
        self.batch_size = batch_size
        self.progress = progress
        self.adapter = str(adapter) if adapter else None
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.spec)
        if loaded_model is not None:
            if name is None:
                raise ConfigError("a generator over an in-memory model needs an explicit `name` (its cache identity)")
            self.model = loaded_model
        else:
            self.model = load_model(self.spec, device=device)
        merge_adapter = merge_adapter and loaded_model is None
        if self.adapter:
            ahash = adapter_hash(self.adapter)
            self.model = load_adapter(self.model, self.adapter, self.spec, models_extra)
            if merge_adapter:
                self.model = merge_in_float32(self.model).eval()
        # The cache identity names the precision the weights actually run in (``auto`` is resolved
        # by the machine: the same config gives float32 on one CPU and bfloat16 on another).
        loaded = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.name = name or (f"transformers:{model_identity(dataclasses.replace(self.spec, dtype=loaded))}"
                             + (f"+adapter:{ahash}" if self.adapter else "")
                             + ("@merged" if self.adapter and merge_adapter else ""))
        self.device = next(self.model.parameters()).device
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        # transformers renamed ``past_key_values`` to ``cache`` during 5.x; use what this version takes.
        self._cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        self.calls = 0
        self.conversations_generated = 0

    # ------------------------------------------------------------------ public

    def prompt(self, conv: Conversation) -> str:
        return render_prompt(self.tokenizer, conv, self.spec.system_prompt)

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[list[Completion]]:
        return self.generate_scored(conversations, params)[0]

    def generate_scored(self, conversations: list[Conversation], params: SamplingParams,
                        continuations: list[list[list[int]]] | None = None):
        """Completions, and the teacher-forced log-probabilities of given continuations, in one pass.

        Each continuation is scored on the KV cache of its conversation's prompt, right
        after the generation's prefill, so the prompt is read once for both (scoring a gold
        answer after a RAG prompt in its own pass repeats that prompt's whole prefill).
        The continuation's tokens are appended to the cache, scored, and cropped off
        again before decoding starts. Same quantity as :func:`pd.generate.loglik.answer_logprobs`.

        Args:
            conversations: the requests.
            params: the sampling parameters.
            continuations: None, or per conversation a list of token-id sequences (each
                non-empty) to score as the start of the assistant's reply.

        Returns:
            ``(completions, scores)``: ``params.n`` completions per conversation, and per
            conversation one float32 CPU tensor ``[len(continuation)]`` of log-probabilities
            (nats) per continuation (empty lists when ``continuations`` is None).
        """
        from pd.progress import bar as progress_bar

        check_params(params)
        conts = continuations if continuations is not None else [[] for _ in conversations]
        if len(conts) != len(conversations) or any(not c for cs in conts for c in cs):
            raise ValueError("continuations: one list per conversation, each continuation non-empty")
        if not conversations:
            return [], []
        greedy = params.temperature == 0
        prompts = [self.tokenizer.encode(self.prompt(c), add_special_tokens=False) for c in conversations]
        # One row per sample; greedy samples are identical, so compute one and copy it.
        rows = [(i, j) for i in range(len(conversations)) for j in range(1 if greedy else params.n)]
        rows.sort(key=lambda r: -len(prompts[r[0]]))  # similar lengths share a batch: less padding
        done: dict[tuple[int, int], Completion] = {}
        scores: list[list] = [[] for _ in conversations]
        bar = progress_bar(len(rows), f"generate ({self.spec.name})", enabled=self.progress, leave=False)
        start = 0
        while start < len(rows):
            batch = rows[start:start + self.batch_rows(len(prompts[rows[start][0]]), params.max_new_tokens)]
            start += len(batch)
            seeds = [sample_seed(params.seed, conversations[i], j) for i, j in batch]
            outs, got = self._generate_batch([prompts[i] for i, _ in batch], seeds, params,
                                             [conts[i] if j == 0 else [] for i, j in batch])
            done.update(zip(batch, outs))
            for (i, j), lps in zip(batch, got):
                if j == 0:
                    scores[i] = lps
            bar.update(len(batch))
        bar.close()
        self.conversations_generated += len(conversations)
        return [[done[(i, 0 if greedy else j)] for j in range(params.n)] for i in range(len(conversations))], scores

    def score(self, conversations: list[Conversation], continuations: list[list[list[int]]]) -> list[list]:
        """The continuations' log-probabilities without generating (:func:`pd.generate.loglik.answer_logprobs`).

        Args:
            conversations: the requests.
            continuations: per conversation, token-id sequences (each non-empty).

        Returns:
            Per conversation, one float32 CPU tensor ``[len(continuation)]`` (nats) per continuation.
        """
        from pd.generate.loglik import answer_logprobs

        prompts = [self.tokenizer.encode(self.prompt(c), add_special_tokens=False) for c in conversations]
        flat = [(i, c) for i, cs in enumerate(continuations) for c in cs]
        size = self.batch_size if isinstance(self.batch_size, int) else 8
        lps = iter(answer_logprobs(self.model.eval(), [prompts[i] for i, _ in flat], [c for _, c in flat],
                                   self.pad_id, size))
        self.calls += -(-len(flat) // size)
        return [[next(lps) for _ in cs] for cs in continuations]

    def batch_rows(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """Sequences per decoding batch: the configured number, or with ``batch_size: auto`` the
        largest that the GPU's free memory holds (:func:`pd.generate.sizing.batch_for_memory`;
        on a CPU, where decoding is compute-bound, :data:`~pd.generate.sizing.CPU_BATCH`).

        Args:
            prompt_tokens: the longest prompt of the batch.
            max_new_tokens: the tokens to generate at most.

        Returns:
            A positive batch size.
        """
        if self.batch_size != "auto":
            return int(self.batch_size)
        import torch

        from pd.generate import sizing

        if self.device.type != "cuda":
            return sizing.CPU_BATCH
        free, _ = torch.cuda.mem_get_info(self.device)
        width = next(self.model.parameters()).element_size()
        return sizing.batch_for_memory(self.model.config, width, prompt_tokens, max_new_tokens, free)

    # ------------------------------------------------------------------ decoding

    def _generate_batch(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams,
                        conts: list[list[list[int]]]) -> tuple[list[Completion], list[list]]:
        import torch

        dev = self.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        gens = [torch.Generator().manual_seed(s) for s in seeds]  # on the CPU: one uniform per row and step
        stop = torch.tensor(self.stop_ids, device=dev)
        out_ids: list[list[int]] = [[] for _ in prompts]
        top: list[list[dict[int, float]]] = [[] for _ in prompts]
        reasons = ["length"] * len(prompts)
        active = list(range(len(prompts)))  # rows still generating; finished rows leave the batch
        past = None
        scores: list[list] = [[] for _ in prompts]
        step_ids, step_mask = ids, mask
        with torch.inference_mode():
            for _ in range(params.max_new_tokens):
                pos = (step_mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
                out = self.model(input_ids=step_ids, attention_mask=step_mask, position_ids=pos,
                                 use_cache=True, logits_to_keep=1, **{self._cache_kw: past})
                self.calls += 1
                past = getattr(out, self._cache_kw)
                logits = out.logits[:, -1, :].float()
                if step_ids is ids and any(conts):
                    scores, calls = score_on_prefill(self.model, past, mask, logits, conts, self.pad_id, self._cache_kw)
                    self.calls += calls
                nxt = self._choose(logits, [gens[r] for r in active], params)
                if params.logprobs:
                    vals, idx = torch.log_softmax(logits, dim=-1).topk(params.logprobs, dim=-1)
                    vals, idx = vals.tolist(), idx.tolist()
                is_stop = torch.isin(nxt, stop).tolist()
                nxt_list = nxt.tolist()
                keep = []
                for a, r in enumerate(active):
                    if is_stop[a]:
                        reasons[r] = "stop"
                        continue
                    keep.append(a)
                    out_ids[r].append(nxt_list[a])
                    if params.logprobs:
                        top[r].append(dict(zip(idx[a], vals[a])))
                if not keep:
                    break
                if len(keep) < len(active):  # drop finished rows from the batch and the KV cache
                    sel = torch.tensor(keep, device=dev)
                    past.reorder_cache(sel)
                    step_mask, nxt = step_mask[sel], nxt[sel]
                    active = [active[a] for a in keep]
                step_ids = nxt[:, None]
                step_mask = torch.cat([step_mask, torch.ones_like(step_ids)], dim=1)
        return [Completion(text=self.tokenizer.decode(out_ids[r], skip_special_tokens=True), finish_reason=reasons[r],
                           n_tokens=len(out_ids[r]), token_ids=out_ids[r],
                           top_logprobs=top[r] if params.logprobs else None)
                for r in range(len(prompts))], scores

    @staticmethod
    def _choose(logits, gens, params: SamplingParams):
        """Greedy at temperature 0; otherwise temperature, top-k, top-p, then one draw per row by inverse
        transform sampling: the row's generator gives one uniform u, and the token is the first whose cumulative
        probability exceeds u times the row's total. All rows are drawn in one batched ``searchsorted``: a
        ``torch.multinomial`` per row cost about 0.6 ms of GPU launches per row and step (calibration.yaml's
        ``sample_row_ms``), 160 ms per step at a batch of 256.

        Args:
            logits: ``[rows, vocab]`` float32 logits of the next token.
            gens: one CPU ``torch.Generator`` per row (its sample's own seed).
            params: temperature, top_k, top_p.

        Returns:
            ``[rows]`` int64 token ids, on the logits' device.
        """
        import torch

        if params.temperature == 0:
            return logits.argmax(dim=-1)
        x = logits / params.temperature
        if params.top_k and params.top_k < x.shape[-1]:
            kth = x.topk(params.top_k, dim=-1).values[:, -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        probs = torch.softmax(x, dim=-1)
        if params.top_p < 1.0:
            sp, si = probs.sort(dim=-1, descending=True)
            drop = (sp.cumsum(-1) - sp) >= params.top_p  # keeps the smallest prefix reaching top_p
            sp = sp.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, si, sp)
            probs = probs / probs.sum(-1, keepdim=True)
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens]).to(probs.device)
        cdf = probs.cumsum(-1)
        target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
        return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
