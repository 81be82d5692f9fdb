"""pd.serve against hostile requests over real HTTP: size limit (413), malformed values (4xx naming the field,
never 500), a random seed when none is given, and no open non-loopback server without a key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pd.generate.transformers_backend import TransformersGenerator
from pd.serve import create_app, is_loopback, serve_in_thread

REPO = Path(__file__).resolve().parent.parent
M = [{"role": "user", "content": "Where is the Brooklyn Bridge?"}]
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tiny_llama):
    app = create_app(TransformersGenerator(tiny_llama.spec, progress=False), model_name="tiny-llama",
                     max_body_bytes=LIMIT)
    with serve_in_thread(app) as url:
        yield app, url


def raw(url: str, path: str, content: bytes | str, **headers) -> httpx.Response:
    return httpx.post(f"{url}/{path}", content=content, headers={"content-type": "application/json", **headers},
                      timeout=120)


def refused(r: httpx.Response, status: int, field: str | None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    err = r.json()["error"]
    if field is not None:
        assert field in err["message"] and err["param"] == field, err
    return err


def test_a_body_over_the_limit_is_413_before_it_is_parsed(server):
    app, url = server
    before = app.state.requests
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (2 * LIMIT)}], "max_tokens": 1})
    err = refused(raw(url, "chat/completions", big), 413, None)
    assert "larger than this server's limit" in err["message"] and err["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit holds as the body arrives
        yield big[: LIMIT // 2].encode()
        yield big[LIMIT // 2:].encode()

    refused(raw(url, "chat/completions", chunks()), 413, None)
    assert app.state.requests == before
    ok = raw(url, "chat/completions", json.dumps({"messages": M, "max_tokens": 2, "temperature": 0}))
    assert ok.status_code == 200, ok.text


HOSTILE = [  # (raw JSON body, status, the field the message must name (None: the body as a whole))
    ('{"messages": ' + "[" * 30_000 + "]" * 30_000 + "}", 400, None),  # past the parser's recursion limit
    ('{"messages": [{"role": "user", "content": "hi"}], "stop": ' + "[" * 40 + '"x"' + "]" * 40 + "}", 400, "stop"),
    (json.dumps({"messages": M, "temperature": 1e-45}), 400, "temperature"),
    (json.dumps({"messages": M, "temperature": 5e-324}), 400, "temperature"),
    (json.dumps({"messages": M, "top_p": 1e-300}), 400, "top_p"),
    ('{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "a\\udfffb"}]}', 400, "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "hi"}], "model": "\\ud800"}', 400, "model"),
    ('{"messages": [{"role": "user", "content": "hi"}], "stop": "\\udc00"}', 400, "stop"),
    ('{"messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}', 400, None),
    ('{"messages": [{"role": "user", "content": "hi"}], "seed": 1e400}', 400, "seed"),
    ('{"messages": [{"role": "user", "content": "hi"}], "temperature": "0.5"}', 400, "temperature"),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e30}', 400, "max_tokens"),
    ('{"messages": [{"role": "user", "content": "hi"}], "user": {"a": ' + "[" * 50 + "]" * 50 + "}}", 400, "user"),
    ('{"prompt": "\\ud800"}', 400, "prompt"),
]


@pytest.mark.parametrize("body, status, field", HOSTILE, ids=[f"{i}:{c[2]}" for i, c in enumerate(HOSTILE)])
def test_malformed_values_are_4xx_naming_the_field(server, body, status, field):
    _, url = server
    path = "completions" if body.startswith('{"prompt"') else "chat/completions"
    refused(raw(url, path, body.encode("utf-8", "surrogatepass")), status, field)


def test_sampling_without_a_seed_draws_a_new_seed_per_request(server):
    _, url = server
    body = {"messages": M, "temperature": 1.0, "max_tokens": 8}
    texts = [raw(url, "chat/completions", json.dumps(body)).json()["choices"][0]["message"]["content"]
             for _ in range(4)]
    assert len(set(texts)) > 1, texts  # a constant default seed gave one text four times
    seeded = [raw(url, "chat/completions", json.dumps(dict(body, seed=7))).json()["choices"][0]["message"]["content"]
              for _ in range(2)]
    assert seeded[0] == seeded[1]  # a given seed still reproduces


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.9.9.9")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.5")


def _serve(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PD_SERVE_API_KEY"}
    return subprocess.run([sys.executable, "-m", "pd.serve", *args], capture_output=True, text=True, timeout=120,
                          env=dict(env, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1"))


def test_no_open_server_on_a_public_address_without_a_key():
    res = _serve("--model", "tiny-llama", "--host", "0.0.0.0", "--port", "1")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "--api-key" in res.stderr and "--no-auth" in res.stderr and "Traceback" not in res.stderr
    res = _serve("--model", "tiny-llama", "--max-body-mb", "0")
    assert res.returncode == 2 and "--max-body-mb" in res.stderr
