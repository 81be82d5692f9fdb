"""A small OpenAI-compatible HTTP server over a local model (FastAPI + uvicorn).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (raw prompts),
``POST /v1/embeddings`` (a sentence-transformers model) and ``GET /v1/models``. It
lets any OpenAI client (and this harness's ``openai`` backend and ``openai``
retriever) use a model trained here, e.g. a base model with a PD adapter:

    python -m pd.serve --model smollm2-135m-instruct --adapter results/.../adapter --port 8000

Requests are served one at a time (a lock around the model); this is for tests and
small jobs, not throughput (use vLLM's server for that). Every request field either
works as OpenAI documents it or is refused with 400 naming it (see
``pd.serve_request``); ``stop`` cuts the reply before the stop string, ``logprobs``
gives the chosen tokens' log-probabilities (and the top alternatives) under the model's
untempered distribution. Extra fields beside OpenAI's: ``top_k``,
``continue_final_message`` (continue a final assistant message: a prefill) and
``add_generation_prompt``. A request whose prompt plus ``max_tokens`` exceeds the
model's context is refused; ``n`` is at most 16; generation stops when the client
disconnects. With ``--api-key`` every request needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import threading
import time
import uuid
from typing import Any, Callable, Iterator

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

from pd.errors import PDError
from pd.generate.base import Completion, SamplingParams
from pd.serve_request import (GenerationRequest, RequestError, chat_request, completion_request,
                              embedding_request)

DEFAULT_MAX_TOKENS = 512  # when a request gives no max_tokens (less where the context has less room)

__all__ = ["DEFAULT_MAX_TOKENS", "RequestError", "context_length", "create_app", "serve_in_thread", "main"]


class GenerationCancelled(Exception):
    """Raised inside the model's forward pass when the client of the running request has gone."""


def context_length(generator) -> int | None:
    """The generator's context in tokens: its ``context_length``, else its model's ``max_position_embeddings``.

    Returns:
        The number of positions the model takes, or None when the generator does not tell.
    """
    n = getattr(generator, "context_length", None)
    if n is None:
        n = getattr(getattr(getattr(generator, "model", None), "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


class _Runner:
    """One request at a time on the model; the running one is abandoned at the next forward once cancelled."""

    def __init__(self, generator):
        self.generator = generator
        self.lock = threading.Lock()
        self.cancel: threading.Event | None = None
        model = getattr(generator, "model", None)
        if model is not None and hasattr(model, "register_forward_pre_hook"):
            self.hook = model.register_forward_pre_hook(self._check)

    def _check(self, *_):
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled()

    def run(self, fn: Callable[[], Any], cancel: threading.Event):
        with self.lock:
            if cancel.is_set():
                raise GenerationCancelled()
            self.cancel = cancel
            try:
                return fn()
            finally:
                self.cancel = None


async def _until_done_or_gone(request, runner: _Runner, fn: Callable[[], Any]):
    """Run ``fn`` on the model in a thread; if the client disconnects meanwhile, cancel it (``app.state.cancelled``)."""
    cancel = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(runner.run, fn, cancel))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.05)
            if done:
                return task.result()
            if not cancel.is_set() and await request.is_disconnected():
                cancel.set()
    except GenerationCancelled:
        request.app.state.cancelled += 1
        raise RequestError(499, "the client closed the request; generation stopped", "client_closed") from None
    finally:
        if not task.done():
            cancel.set()


def _stop_cut(text: str, stop: list[str]) -> tuple[int, str] | None:
    """(index, stop string) of the earliest stop string in ``text``, or None."""
    found = [(text.find(s), s) for s in stop if s in text]
    return min(found) if found else None


def _first_prefix(tok, ids: list[int], reaches: Callable[[int], bool]) -> int:
    """The fewest leading tokens of ``ids`` whose decoded length ``reaches(n)``; len(ids)+1 when none does."""
    lo, hi = 0, len(ids) + 1
    while lo < hi:  # the decoded length grows with the number of tokens
        mid = (lo + hi) // 2
        if mid <= len(ids) and reaches(len(tok.decode(ids[:mid], skip_special_tokens=True))):
            hi = mid
        else:
            lo = mid + 1
    return lo


def token_logprobs(generator, prompt_ids: list[int], ids: list[int], top: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """Log-probabilities of generated tokens and their top alternatives, from one forward pass.

    Args:
        generator: a generator with ``model`` (a causal LM) and ``device``.
        prompt_ids: the prompt's token ids.
        ids: the generated token ids that follow it.
        top: how many alternatives per position (0: none).

    Returns:
        Per generated token: (its log-probability, [(token id, log-probability)] of the
        ``top`` most likely tokens at that position), under the untempered distribution.
    """
    import torch

    if not ids:
        return []
    x = torch.tensor([prompt_ids + ids], device=generator.device)
    with torch.inference_mode():
        logits = generator.model(input_ids=x, logits_to_keep=len(ids) + 1).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1)
    chosen = lp.gather(-1, torch.tensor(ids, device=lp.device)[:, None])[:, 0].tolist()
    if not top:
        return [(c, []) for c in chosen]
    vals, idx = lp.topk(top, dim=-1)
    return [(c, list(zip(i, v))) for c, i, v in zip(chosen, idx.tolist(), vals.tolist())]


def _cut(tok, comp: Completion, stop: list[str]) -> tuple[str, str, int, list[int]]:
    """(text, finish reason, tokens generated, token ids of the text) after cutting at the first stop string."""
    ids = list(comp.token_ids)
    counted = comp.n_tokens + (comp.finish_reason == "stop")  # the end-of-turn token counts, as servers count it
    hit = _stop_cut(comp.text, stop)
    if hit is None:
        return comp.text, comp.finish_reason, counted, ids
    at, s = hit
    used = _first_prefix(tok, ids, lambda n: n >= at + len(s))
    kept = _first_prefix(tok, ids, lambda n: n > at) - 1
    return comp.text[:at], "stop", used, ids[:kept]


def _chat_logprobs(tok, scored) -> dict:
    def entry(i, lp):
        t = tok.decode([i])
        return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}

    return {"content": [dict(entry(i, lp), top_logprobs=[entry(j, v) for j, v in alts]) for i, (lp, alts) in scored],
            "refusal": None}


def _completion_logprobs(tok, scored) -> dict:
    tokens = [tok.decode([i]) for i, _ in scored]
    offsets = [sum(len(t) for t in tokens[:k]) for k in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": [lp for _, (lp, _) in scored],
            "top_logprobs": [{tok.decode([j]): v for j, v in alts} for _, (_, alts) in scored], "text_offset": offsets}


class _Service:
    """What the endpoints do with a checked request: check the context, generate, cut, score."""

    def __init__(self, generator):
        self.generator = generator
        self.tok = getattr(generator, "tokenizer", None)
        self.context = context_length(generator)

    def max_new_tokens(self, req: GenerationRequest, prompt_ids: list[int]) -> int:
        p = len(prompt_ids)
        if self.context is None:
            return req.max_tokens or DEFAULT_MAX_TOKENS
        if req.max_tokens is None:
            if p >= self.context:
                raise RequestError(400, f"the prompt has {p} tokens; the model's context is {self.context} tokens",
                                   "context_length_exceeded", "messages")
            return min(DEFAULT_MAX_TOKENS, self.context - p)
        if p + req.max_tokens > self.context:
            raise RequestError(400, f"prompt ({p} tokens) + max_tokens ({req.max_tokens}) = {p + req.max_tokens} "
                                    f"exceeds the model's context of {self.context} tokens",
                               "context_length_exceeded", "max_tokens")
        return req.max_tokens

    def prepare(self, req: GenerationRequest) -> tuple[list[int], SamplingParams]:
        if req.logprobs is not None and (self.tok is None or getattr(self.generator, "model", None) is None):
            raise RequestError(400, "'logprobs' is not available for this model's backend", param="logprobs")
        prompt = self.generator.prompt(req.conversation)
        prompt_ids = self.tok.encode(prompt, add_special_tokens=False) if self.tok is not None else []
        params = SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=req.seed,
                                n=req.n, max_new_tokens=self.max_new_tokens(req, prompt_ids))
        return prompt_ids, params

    def generate(self, req: GenerationRequest, prompt_ids: list[int], params: SamplingParams) -> list[dict]:
        """Per sample: text, finish_reason, tokens (generated) and scored (ids with log-probabilities, or None)."""
        out = []
        for comp in self.generator.generate([req.conversation], params)[0]:
            if self.tok is None:
                text, reason, used, ids = comp.text, comp.finish_reason, comp.n_tokens, []
            else:
                text, reason, used, ids = _cut(self.tok, comp, req.stop)
            scored = None
            if req.logprobs is not None:
                scored = list(zip(ids, token_logprobs(self.generator, prompt_ids, ids, req.logprobs)))
            out.append({"text": text, "finish_reason": reason, "tokens": used, "scored": scored})
        return out


def _usage(prompt_ids: list[int], samples: list[dict]) -> dict:
    done = sum(s["tokens"] for s in samples)
    return {"prompt_tokens": len(prompt_ids), "completion_tokens": done, "total_tokens": len(prompt_ids) + done}


def _error(status: int, message: str, code: str, param: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": "invalid_request_error",
                                                               "param": param, "code": code}})


def create_app(generator=None, embedder=None, model_name: str | None = None, embedding_model_name: str | None = None,
               api_key: str | None = None):
    """An app serving ``generator`` (a pd.generate Generator) and ``embedder`` (a SentenceTransformer).

    Args:
        generator: the chat/completion model, or None for embeddings only.
        embedder: a sentence-transformers model, or None.
        model_name: the name clients give for ``generator`` (default: its ``name``).
        embedding_model_name: the name clients give for ``embedder``.
        api_key: when set, every request needs ``Authorization: Bearer <api_key>`` (else 401).

    Returns:
        A FastAPI app; ``app.state.requests`` counts the generation requests that reached the model,
        ``app.state.cancelled`` those abandoned because their client disconnected.
    """
    from fastapi import Depends, FastAPI

    def authorised(request: Request) -> None:  # a dependency, not a middleware, so that disconnects stay visible
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")

    app = FastAPI(title="pd.serve", dependencies=[Depends(authorised)])
    model_name = model_name or (generator.name if generator is not None else None)
    runner = _Runner(generator)
    service = _Service(generator) if generator is not None else None
    app.state.requests = 0
    app.state.cancelled = 0

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, err: RequestError):
        return _error(err.status, err.message, err.code, err.param)

    @app.exception_handler(PDError)
    async def _pd_error(_: Request, err: PDError):
        return _error(400, str(err), type(err).__name__)

    async def body_of(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise RequestError(400, "the request body is not valid JSON") from None

    def check_model(body: dict, served: str | None, what: str):
        if served is None:
            raise RequestError(404, f"this server has no {what} model", "model_not_found", "model")
        if body.get("model") not in (None, served):
            raise RequestError(404, f"model {body.get('model')!r} not served here; available: {served}",
                               "model_not_found", "model")

    async def generate(request: Request, parse, what: str):
        body = await body_of(request)
        req = parse(body)
        check_model(body, model_name if generator is not None else None, what)
        prompt_ids, params = await asyncio.to_thread(service.prepare, req)

        def work():
            app.state.requests += 1
            return service.generate(req, prompt_ids, params)

        return prompt_ids, await _until_done_or_gone(request, runner, work)

    @app.get("/v1/models")
    def models():
        names = [n for n in (model_name, embedding_model_name) if n]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "pd"} for n in names]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        prompt_ids, samples = await generate(request, chat_request, "chat")
        tok = service.tok
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": j, "message": {"role": "assistant", "content": s["text"]},
                             "finish_reason": s["finish_reason"],
                             "logprobs": None if s["scored"] is None else _chat_logprobs(tok, s["scored"])}
                            for j, s in enumerate(samples)],
                "usage": _usage(prompt_ids, samples)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        prompt_ids, samples = await generate(request, completion_request, "completion")
        tok = service.tok
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": j, "text": s["text"], "finish_reason": s["finish_reason"],
                             "logprobs": None if s["scored"] is None else _completion_logprobs(tok, s["scored"])}
                            for j, s in enumerate(samples)],
                "usage": _usage(prompt_ids, samples)}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await body_of(request)
        dim_of = getattr(embedder, "get_embedding_dimension", None) or getattr(embedder, "get_sentence_embedding_dimension", None)
        dims = dim_of() if dim_of is not None else None
        texts, fmt = embedding_request(body, dims)
        check_model(body, embedding_model_name if embedder is not None else None, "embedding")
        return await asyncio.to_thread(_embed, embedder, embedding_model_name, texts, fmt, runner.lock)

    return app


def _embed(embedder, name: str, texts: list[str], fmt: str, lock: threading.Lock) -> dict:
    import numpy as np

    with lock:
        vecs = np.asarray(embedder.encode(texts, convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)
    tok = getattr(embedder, "tokenizer", None)
    n_tok = sum(len(tok.encode(t)) for t in texts) if tok is not None else 0
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()}
            for i, v in enumerate(vecs)]
    return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yields its base URL (``http://host:port/v1``).

    ``port=0`` takes a free port. The server stops when the context exits.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError(f"pd.serve did not start on {host}:{port}")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    import os

    ap = argparse.ArgumentParser(prog="python -m pd.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="registry name of the chat model (omit to serve embeddings only)")
    ap.add_argument("--adapter", help="LoRA adapter folder to apply to --model")
    ap.add_argument("--served-name", help="model name clients use (default: the --model name)")
    ap.add_argument("--embedding-model", help="sentence-transformers folder or hub id; 'all-minilm-l6-v2' = the packaged one")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default=None)
    ap.add_argument("--api-key", default=os.environ.get("PD_SERVE_API_KEY"),
                    help="require 'Authorization: Bearer <key>' on every request (default: $PD_SERVE_API_KEY; "
                         "none: open to anyone who can reach --host)")
    args = ap.parse_args(argv)
    if not args.model and not args.embedding_model:
        ap.error("give --model, --embedding-model, or both")
    gen = emb = None
    if args.model:
        from pd.generate import make_generator

        gen = make_generator(args.model, adapter=args.adapter, batch_size=args.batch_size, device=args.device, progress=False)
    if args.embedding_model:
        from pd.retrieve import sentence_transformer

        emb = sentence_transformer(args.embedding_model)
    import uvicorn

    app = create_app(gen, emb, model_name=args.served_name or args.model, embedding_model_name=args.embedding_model,
                     api_key=args.api_key or None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
