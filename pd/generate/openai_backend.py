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

Identity (``name``, the generation cache's key): the server knows a model only by its
name, and the weights behind a name can change (another model served under it, another
adapter). So ``name`` holds a fingerprint: a hash of the server's ``/v1/models`` entry
for the model (without its time stamps) and of the reply to a fixed greedy probe
(:data:`PROBE`, 8 tokens at temperature 0), made once, when ``name`` is first read. A
user-set ``cache_tag`` replaces the fingerprint and no probe is made: use it where the
server is not deterministic at temperature 0 (then the fingerprint would change from run
to run and the cache would never hit), or to name the weights yourself.

Secrets: the key is sent as ``Authorization: Bearer <key>``. It is ``api_key``, else the
password (or lone user name) of a base URL with user-info (``https://user:key@host/v1``:
the client then talks to ``https://host/v1``), else ``OPENAI_API_KEY``. A workflow moves a
URL's password into ``OPENAI_API_KEY`` before its jobs start (:func:`pd.redact.export_url_key`), so job
specifications carry the URL without user-info. The base URL is recorded and logged without
its user-info, and the key is masked in this client's log records and error messages (``pd.redact``).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from pd.errors import ConfigError, ModelUnavailableError, PDError
from pd.generate.base import Completion, Conversation, SamplingParams
from pd.generate.transformers_backend import (
    check_conversation,
    check_params,
    sample_seed,
)
from pd.io import stable_hash
from pd.redact import redact_logger, redact_text, redact_url, split_url_credentials

# The fingerprint's probe: a chat request, or the raw prompt where the server has no chat template.
PROBE = [{"role": "user", "content": "Count from one to twenty in words, separated by commas."}]
PROBE_RAW = [{"role": "raw", "content": "One, two, three, four, five,"}]
PROBE_PARAMS = SamplingParams(temperature=0, top_p=1.0, max_new_tokens=8, seed=0)
# Fields of a /v1/models entry that identify what is served; time stamps and permissions change by themselves.
MODEL_ENTRY_FIELDS = ("id", "object", "owned_by", "root", "parent", "max_model_len")
# Loggers that write request URLs (user-info included) or options: their records are redacted. The
# openai package logs through its vendored copy of httpx ("httpx2") in recent versions, httpx before.
CLIENT_LOGGERS = ("httpx", "httpx2", "openai", "openai._base_client")


class OpenAIGenerator:
    backend = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None, max_workers: int = 8,
                 timeout: float = 600.0, max_retries: int = 3, cache_tag: str | None = None):
        """A client of ``model`` on ``base_url``.

        Args:
            model: the server's name for the model.
            base_url: the server's ``.../v1`` URL (default ``$OPENAI_BASE_URL``, else OpenAI's).
            api_key: the key (default ``$OPENAI_API_KEY``; local servers may need none).
            max_workers: concurrent requests.
            timeout: seconds per request.
            max_retries: the client's retries on connection errors and 429/5xx.
            cache_tag: names the weights behind ``model`` in ``name`` instead of the probe's fingerprint.

        Raises:
            ConfigError: no key and no base URL, ``max_workers`` < 1, or an empty ``cache_tag``.
        """
        import openai

        self.model = model
        # Credentials in the URL (https://user:key@host/v1) are the key, sent as "Authorization: Bearer"
        # (httpx would send user-info as Basic auth, which a keyed server answers 401); the URL keeps none.
        self.base_url, url_key = split_url_credentials(base_url or os.environ.get("OPENAI_BASE_URL") or None)
        self.where = redact_url(self.base_url) if self.base_url else "api.openai.com"
        if cache_tag is not None and (not isinstance(cache_tag, str) or not cache_tag.strip()):
            raise ConfigError(f"cache_tag {cache_tag!r}: must be a non-empty string (or unset: fingerprint by probe)")
        self.cache_tag = cache_tag
        key = api_key or url_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if not self.base_url:
                raise ConfigError("backend 'openai' needs an API key: set OPENAI_API_KEY, or set OPENAI_BASE_URL "
                                  "(or generation.openai_base_url in config.yaml) to a local OpenAI-compatible server")
            key = "unused"  # local servers ignore it, the client requires one
        if max_workers < 1:
            raise ConfigError(f"max_workers {max_workers}: must be >= 1")
        self.max_workers = max_workers
        self._secrets = tuple(x for x in (key if key != "unused" else None, url_key) if x)
        for logger in CLIENT_LOGGERS:
            redact_logger(logger, key if key != "unused" else None)
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self._name: str | None = None
        self._name_lock = threading.Lock()
        self.calls = 0
        self.conversations_generated = 0

    @property
    def name(self) -> str:
        """``openai:<url without user-info>:<model>@<fingerprint or tag:cache_tag>``; the first read probes
        the server."""
        with self._name_lock:
            if self._name is None:
                self._name = f"openai:{self.where}:{self.model}@{self.fingerprint()}"
            return self._name

    def fingerprint(self) -> str:
        """``tag:<cache_tag>``, else a hash of the model's ``/v1/models`` entry and a greedy probe's reply.

        Raises:
            ModelUnavailableError: the server cannot be reached or has no such model.
            PDError: the server refuses the probe both as a chat and as a raw completion.
        """
        if self.cache_tag:
            return f"tag:{self.cache_tag}"
        try:
            probe = self._one(PROBE, PROBE_PARAMS, 0)
        except ModelUnavailableError:
            raise
        except PDError:  # e.g. no chat template on a base model's server
            probe = self._one(PROBE_RAW, PROBE_PARAMS, 0)
        return stable_hash({"model": self._model_entry(), "probe": [probe.text, probe.finish_reason]}, 16)

    def _model_entry(self) -> dict | None:
        """The server's ``/v1/models`` entry for this model, stable fields only; None where the list is unavailable."""
        import openai

        try:
            entries = list(self.client.models.list())
        except openai.OpenAIError:
            return None
        for e in entries:
            d = e.model_dump() if hasattr(e, "model_dump") else dict(e)
            if d.get("id") == self.model:
                return {k: d[k] for k in MODEL_ENTRY_FIELDS if d.get(k) is not None}
        return None

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
        where = self.where
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
            raise ModelUnavailableError(f"cannot reach the OpenAI-compatible server at {where}: {self._clean(err)}; "
                                        "check OPENAI_BASE_URL and that the server runs") from None
        except openai.NotFoundError as err:
            raise ModelUnavailableError(f"server {where} has no model {self.model!r}: {self._clean(err)}") from None
        except openai.APIStatusError as err:
            raise PDError(f"server {where} refused the request ({err.status_code}): {self._clean(err)}") from None
        self.calls += 1
        reason = "length" if res.choices[0].finish_reason == "length" else "stop"
        n_tokens = res.usage.completion_tokens if res.usage else 0
        return Completion(text=text, finish_reason=reason, n_tokens=n_tokens)

    def _clean(self, err: Exception) -> str:
        """An error's text without the key, the credential URL or any user-info."""
        return redact_text(str(err), self._secrets)

