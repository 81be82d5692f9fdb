"""A small OpenAI-compatible HTTP server over a local model (FastAPI + uvicorn).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (raw prompts),
``POST /v1/embeddings`` (a sentence-transformers model) and ``GET /v1/models``. It
lets any OpenAI client (and this harness's ``openai`` backend and ``openai``
retriever) use a model trained here, e.g. a base model with a PD adapter:

    python -m pd.serve --model smollm2-135m-instruct --adapter results/.../adapter --port 8000

Requests are served one at a time (a lock around the model); this is for tests and
small jobs, not throughput (use vLLM's server for that). Extra request fields accepted
beside OpenAI's: ``top_k``, ``continue_final_message`` (continue a final assistant
message: a prefill) and ``add_generation_prompt``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import threading
import time
import uuid
from typing import Any, Iterator

from pd.errors import PDError
from pd.generate.base import SamplingParams

DEFAULT_MAX_TOKENS = 512


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _text(content: Any) -> str:
    """Message content as text: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p.get("text", "") for p in content)
    raise RequestError(400, "message content must be a string or a list of text parts")


def _params(body: dict) -> SamplingParams:
    def get(key, default, cast):
        value = body.get(key)
        return default if value is None else cast(value)

    try:
        return SamplingParams(temperature=get("temperature", 1.0, float), top_k=get("top_k", 0, int),
                              top_p=get("top_p", 1.0, float),
                              max_new_tokens=get("max_tokens", get("max_completion_tokens", DEFAULT_MAX_TOKENS, int), int),
                              seed=get("seed", 0, int), n=get("n", 1, int))
    except (TypeError, ValueError) as err:
        raise RequestError(400, f"bad sampling parameter: {err}") from None


def create_app(generator=None, embedder=None, model_name: str | None = None, embedding_model_name: str | None = None):
    """An app serving ``generator`` (a pd.generate Generator) and ``embedder`` (a SentenceTransformer)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="pd.serve")
    lock = threading.Lock()
    model_name = model_name or (generator.name if generator is not None else None)
    app.state.requests = 0

    def check_model(body: dict, served: str | None, what: str):
        if served is None:
            raise RequestError(404, f"this server has no {what} model", "model_not_found")
        if body.get("model") not in (None, served):
            raise RequestError(404, f"model {body.get('model')!r} not served here; available: {served}", "model_not_found")

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, err: RequestError):
        return JSONResponse(status_code=err.status, content={"error": {"message": err.message, "type": "invalid_request_error",
                                                                       "code": err.code}})

    @app.exception_handler(PDError)
    async def _pd_error(_: Request, err: PDError):
        return JSONResponse(status_code=400, content={"error": {"message": str(err), "type": "invalid_request_error",
                                                                "code": type(err).__name__}})

    def run(conv, params):
        with lock:
            app.state.requests += 1
            return generator.generate([conv], params)[0]

    def usage(conv, comps) -> dict:
        tok = getattr(generator, "tokenizer", None)
        prompt = len(tok.encode(generator.prompt(conv), add_special_tokens=False)) if tok is not None else 0
        done = sum(c.n_tokens + (c.finish_reason == "stop") for c in comps)  # the end-of-turn token counts
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    @app.get("/v1/models")
    def models():
        names = [n for n in (model_name, embedding_model_name) if n]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "pd"} for n in names]}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        check_model(body, model_name if generator is not None else None, "chat")
        if body.get("stream"):
            raise RequestError(400, "streaming is not supported by pd.serve")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RequestError(400, "'messages' must be a non-empty list")
        conv = [{"role": m.get("role"), "content": _text(m.get("content"))} for m in msgs]
        prefill = bool(body.get("continue_final_message")) and body.get("add_generation_prompt", True) is False
        if conv[-1]["role"] == "assistant" and not prefill:
            raise RequestError(400, "a final assistant message is continued only with continue_final_message=true "
                                    "and add_generation_prompt=false")
        comps = run(conv, _params(body))
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": j, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason, "logprobs": None} for j, c in enumerate(comps)],
                "usage": usage(conv, comps)}

    @app.post("/v1/completions")
    def completions(body: dict):
        check_model(body, model_name if generator is not None else None, "completion")
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError(400, "'prompt' must be a string (one prompt per request)")
        conv = [{"role": "raw", "content": prompt}]
        comps = run(conv, _params(body))
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": j, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                            for j, c in enumerate(comps)],
                "usage": usage(conv, comps)}

    @app.post("/v1/embeddings")
    def embeddings(body: dict):
        import numpy as np

        check_model(body, embedding_model_name if embedder is not None else None, "embedding")
        inp = body.get("input")
        texts = [inp] if isinstance(inp, str) else inp
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError(400, "'input' must be a string or a non-empty list of strings")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise RequestError(400, f"encoding_format {fmt!r}; allowed: float, base64")
        with lock:
            vecs = np.asarray(embedder.encode(texts, convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)
        tok = getattr(embedder, "tokenizer", None)
        n_tok = sum(len(tok.encode(t)) for t in texts) if tok is not None else 0
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()}
                for i, v in enumerate(vecs)]
        return {"object": "list", "data": data, "model": embedding_model_name,
                "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}

    return app


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
    ap = argparse.ArgumentParser(prog="python -m pd.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="registry name of the chat model (omit to serve embeddings only)")
    ap.add_argument("--adapter", help="LoRA adapter folder to apply to --model")
    ap.add_argument("--served-name", help="model name clients use (default: the --model name)")
    ap.add_argument("--embedding-model", help="sentence-transformers folder or hub id; 'all-minilm-l6-v2' = the packaged one")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default=None)
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

    app = create_app(gen, emb, model_name=args.served_name or args.model, embedding_model_name=args.embedding_model)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
