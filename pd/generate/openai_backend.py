"""Any OpenAI-compatible server (vLLM, llama.cpp, pd.serve, ...) or OpenAI itself, via the ``openai`` client.

The base URL and key come from the arguments, else ``OPENAI_BASE_URL`` /
``OPENAI_API_KEY``. Each sample is one request with ``n = 1`` and its own seed
(derived as in the transformers backend), sent concurrently (``max_workers``) so a
batching server can batch them; servers that honour ``seed`` then give reproducible
samples. Conventions shared with the local backends:

- ``top_k`` is not part of OpenAI's API; when > 0 it goes in the request body as
  ``top_k`` (vLLM and pd.serve accept it; OpenAI itself rejects unknown fields).
- A final assistant message (prefill) is sent with ``continue_final_message: true`` and
  ``add_generation_prompt: false`` (vLLM and pd.serve); OpenAI itself does not support it.
- A ``raw`` message goes to ``/v1/completions`` as a plain prompt.
- Top-k log-probabilities by token id cannot be had from this API (it returns token
  strings): asking for them is an error; use the transformers or vLLM backend.
- ``n_tokens`` is the server's ``usage.completion_tokens``; servers usually count the
  end-of-turn token, which the local backends leave out (one more on "stop" replies).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from pd.errors import ConfigError, ModelUnavailableError, PDError
from pd.generate.base import Completion, Conversation, SamplingParams
from pd.generate.transformers_backend import check_conversation, check_params, sample_seed


class OpenAIGenerator:
    backend = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None, max_workers: int = 8,
                 timeout: float = 600.0, max_retries: int = 3):
        import openai

        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if not self.base_url:
                raise ConfigError("backend 'openai' needs an API key: set OPENAI_API_KEY, or set OPENAI_BASE_URL "
                                  "(or generation.openai_base_url in config.yaml) to a local OpenAI-compatible server")
            key = "unused"  # local servers ignore it, the client requires one
        if max_workers < 1:
            raise ConfigError(f"max_workers {max_workers}: must be >= 1")
        self.max_workers = max_workers
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self.name = f"openai:{self.base_url or 'api.openai.com'}:{model}"
        self.calls = 0
        self.conversations_generated = 0

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[list[Completion]]:
        check_params(params)
        if params.logprobs:
            raise ConfigError("backend 'openai' cannot return top-k log-probabilities by token id; "
                              "use backend 'transformers' or 'vllm' for the teacher cache")
        for c in conversations:
            check_conversation(c)
        jobs = [(i, j) for i in range(len(conversations)) for j in range(params.n)]
        with ThreadPoolExecutor(self.max_workers) as pool:
            done = list(pool.map(lambda ij: self._one(conversations[ij[0]], params, ij[1]), jobs))
        self.conversations_generated += len(conversations)
        out: list[list[Completion]] = [[] for _ in conversations]
        for (i, _), c in zip(jobs, done):
            out[i].append(c)
        return out

    def _one(self, conv: Conversation, params: SamplingParams, index: int) -> Completion:
        import openai

        extra = {"top_k": params.top_k} if params.top_k > 0 else {}
        common = dict(model=self.model, temperature=params.temperature, top_p=params.top_p,
                      max_tokens=params.max_new_tokens, seed=sample_seed(params.seed, conv, index) % (2**31), n=1)
        where = self.base_url or "api.openai.com"
        try:
            if conv[0]["role"] == "raw":
                res = self.client.completions.create(prompt=conv[0]["content"], extra_body=extra or None, **common)
                text = res.choices[0].text
            else:
                if conv[-1]["role"] == "assistant":
                    extra.update(continue_final_message=True, add_generation_prompt=False)
                res = self.client.chat.completions.create(messages=conv, extra_body=extra or None, **common)
                text = res.choices[0].message.content or ""
        except openai.APIConnectionError as err:
            raise ModelUnavailableError(f"cannot reach the OpenAI-compatible server at {where}: {err}; "
                                        "check OPENAI_BASE_URL and that the server runs") from None
        except openai.NotFoundError as err:
            raise ModelUnavailableError(f"server {where} has no model {self.model!r}: {err}") from None
        except openai.APIStatusError as err:
            raise PDError(f"server {where} refused the request ({err.status_code}): {err}") from None
        self.calls += 1
        reason = "length" if res.choices[0].finish_reason == "length" else "stop"
        n_tokens = res.usage.completion_tokens if res.usage else 0
        return Completion(text=text, finish_reason=reason, n_tokens=n_tokens)
