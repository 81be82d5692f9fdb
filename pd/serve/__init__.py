"""A small OpenAI-compatible HTTP server over a local model (FastAPI + uvicorn).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (raw prompts),
``POST /v1/embeddings`` (a sentence-transformers model) and ``GET /v1/models``. It
lets any OpenAI client (and this harness's ``openai`` backend and ``openai``
retriever) use a model trained here, e.g. a base model with a PD adapter:

    python -m pd.serve --model smollm2-135m-instruct --adapter results/.../adapter --port 8000  # or: pd serve ...

Requests are served one at a time (a lock around the model); this is for tests and
small jobs, not throughput (use vLLM's server for that). Every request field either
works as OpenAI documents it or is refused with 400 naming it (see
``pd.serve.request``); ``stop`` cuts the reply before the stop string, ``logprobs``
gives the chosen tokens' log-probabilities (and the top alternatives) under the model's
untempered distribution. Extra fields beside OpenAI's: ``top_k``,
``continue_final_message`` (continue a final assistant message: a prefill) and
``add_generation_prompt``. A request whose prompt plus ``max_tokens`` exceeds the
model's context is refused; ``n`` is at most 16; generation stops when the client
disconnects. With ``--api-key`` every request needs ``Authorization: Bearer <key>``;
without one the server listens on loopback only (``--no-auth`` opens another address).
A request body over ``--max-body-mb`` (default 4 MiB) is refused with 413 before it is
parsed; a body nested past 32 levels or holding a lone surrogate is refused with 400 naming
the field; a sampled request without ``seed`` draws a fresh random seed.

The package: this module (the app, :func:`serve_in_thread`, :func:`main`), :mod:`pd.serve.request`
(checking request bodies) and :mod:`pd.serve.reply` (generating and shaping replies).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import ipaddress
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import (
    Request,  # at module level: FastAPI resolves the handlers' annotations here
)

from pd.errors import PDError
from pd.serve.reply import (
    DEFAULT_MAX_TOKENS,
    Completer,
    chat_response,
    completion_response,
)
from pd.serve.request import (
    RequestError,
    chat_request,
    completion_request,
    embedding_request,
)

__all__ = ["DEFAULT_MAX_BODY_MB", "DEFAULT_MAX_TOKENS", "create_app", "is_loopback", "main", "serve_in_thread"]


class GenerationCancelled(Exception):
    """Raised inside the model's forward pass when the client of the running request has gone."""


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


def _error(status: int, message: str, code: str, param: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": "invalid_request_error",
                                                               "param": param, "code": code}})


def _authoriser(api_key: str | None) -> Callable[[Request], None]:
    """A dependency refusing (401) requests without ``Authorization: Bearer <api_key>``; a no-op without a key.

    A dependency rather than a middleware: Starlette's middleware hides client disconnects from the handler.
    """

    def authorised(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")

    return authorised


DEFAULT_MAX_BODY_MB = 4.0  # request bodies larger than this are refused (413) before they are parsed


async def _body_of(request: Request) -> Any:
    """The request's JSON body, read up to the app's size limit (``app.state.max_body_bytes``).

    Raises:
        RequestError: 413 for a body over the limit (by its Content-Length, or as it arrives),
            400 for a body that is not JSON (or nested past the parser's recursion limit).
    """
    limit = request.app.state.max_body_bytes
    too_big = RequestError(413, f"the request body is larger than this server's limit of {limit} bytes "
                                "(python -m pd.serve --max-body-mb)", "request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0][:100]
        raise RequestError(400, f"the request body is not valid JSON ({why})") from None


def _check_model(body: dict, served: str | None, what: str) -> None:
    if served is None:
        raise RequestError(404, f"this server has no {what} model", "model_not_found", "model")
    if body.get("model") not in (None, served):
        raise RequestError(404, f"model {body.get('model')!r} not served here; available: {served}",
                           "model_not_found", "model")


def create_app(generator=None, embedder=None, model_name: str | None = None, embedding_model_name: str | None = None,
               api_key: str | None = None, max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20)):
    """An app serving ``generator`` (a pd.generate Generator) and ``embedder`` (a SentenceTransformer).

    Args:
        generator: the chat/completion model, or None for embeddings only.
        embedder: a sentence-transformers model, or None.
        model_name: the name clients give for ``generator`` (default: its ``name``).
        embedding_model_name: the name clients give for ``embedder``.
        api_key: when set, every request needs ``Authorization: Bearer <api_key>`` (else 401).
        max_body_bytes: the largest request body accepted (larger: 413, before parsing).

    Returns:
        A FastAPI app; ``app.state.requests`` counts the generation requests that reached the model,
        ``app.state.cancelled`` those abandoned because their client disconnected.
    """
    from fastapi import Depends, FastAPI

    app = FastAPI(title="pd.serve", dependencies=[Depends(_authoriser(api_key))])
    model_name = model_name or (generator.name if generator is not None else None)
    runner = _Runner(generator)
    service = Completer(generator) if generator is not None else None
    app.state.requests = 0
    app.state.cancelled = 0
    app.state.max_body_bytes = int(max_body_bytes)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, err: RequestError):
        return _error(err.status, err.message, err.code, err.param)

    @app.exception_handler(PDError)
    async def _pd_error(_: Request, err: PDError):
        return _error(400, str(err), type(err).__name__)

    async def generate(request: Request, parse, what: str):
        body = await _body_of(request)
        req = parse(body)
        _check_model(body, model_name if generator is not None else None, what)
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
        return chat_response(model_name, service.tok, *await generate(request, chat_request, "chat"))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return completion_response(model_name, service.tok, *await generate(request, completion_request, "completion"))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await _body_of(request)
        dim_of = (getattr(embedder, "get_embedding_dimension", None)
                  or getattr(embedder, "get_sentence_embedding_dimension", None))
        dims = dim_of() if dim_of is not None else None
        texts, fmt = embedding_request(body, dims)
        _check_model(body, embedding_model_name if embedder is not None else None, "embedding")
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (reachable from this machine only)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    import os

    ap = argparse.ArgumentParser(prog="python -m pd.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="registry name of the chat model (omit to serve embeddings only)")
    ap.add_argument("--adapter", help="LoRA adapter folder to apply to --model")
    ap.add_argument("--served-name", help="model name clients use (default: the --model name)")
    ap.add_argument("--embedding-model",
                    help="sentence-transformers folder or hub id; 'all-minilm-l6-v2' = the packaged one")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: loopback; another address needs --api-key or --no-auth)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB,
                    help="largest request body in MiB (default %(default)s; larger: 413)")
    ap.add_argument("--no-auth", action="store_true",
                    help="serve a non-loopback --host without an API key (anyone who reaches it is served)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--api-key", default=os.environ.get("PD_SERVE_API_KEY"),
                    help="require 'Authorization: Bearer <key>' on every request (default: $PD_SERVE_API_KEY; "
                         "without one the server listens on loopback only, unless --no-auth)")
    args = ap.parse_args(argv)
    if not args.model and not args.embedding_model:
        ap.error("give --model, --embedding-model, or both")
    if not (args.max_body_mb > 0 and args.max_body_mb < 2**20):
        ap.error(f"--max-body-mb {args.max_body_mb}: must be a positive number of MiB")
    if not args.api_key:
        if not (is_loopback(args.host) or args.no_auth):
            ap.error(f"--host {args.host} is reachable from other machines and there is no --api-key: give "
                     "--api-key (or $PD_SERVE_API_KEY), or --no-auth to serve anyone who reaches it")
        reach = (f"listening on loopback only ({args.host})" if is_loopback(args.host)
                 else f"OPEN to anyone who reaches {args.host} (--no-auth)")
        print(f"pd.serve: no --api-key: {reach}", file=sys.stderr)
    gen = emb = None
    try:  # a model or adapter that does not load (or fit) is the user's error: one line, exit 2
        if args.model:
            from pd.generate import make_generator

            gen = make_generator(args.model, adapter=args.adapter, batch_size=args.batch_size, device=args.device,
                                 progress=False)
        if args.embedding_model:
            from pd.evaluation.retrieve import sentence_transformer

            emb = sentence_transformer(args.embedding_model)
    except PDError as err:
        print(f"pd: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    import uvicorn

    app = create_app(gen, emb, model_name=args.served_name or args.model, embedding_model_name=args.embedding_model,
                     api_key=args.api_key or None, max_body_bytes=int(args.max_body_mb * 2**20))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
