"""pd.serve over real HTTP: the openai backend and the openai client against a local server."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from pd.errors import ConfigError, ModelUnavailableError
from pd.generate import make_generator
from pd.generate.base import SamplingParams
from pd.generate.openai_backend import OpenAIGenerator
from pd.generate.transformers_backend import TransformersGenerator
from pd.serve import create_app, serve_in_thread

CONVS = [
    [{"role": "user", "content": "Where is the Brooklyn Bridge?"}],
    [{"role": "system", "content": "Answer in one word."},
     {"role": "user", "content": "Name a colour of the sky at dusk."}],
]
EMB_NAME = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def local(tiny_llama):
    return TransformersGenerator(tiny_llama.spec, progress=False)


@pytest.fixture(scope="module")
def embedder():
    from pd.evaluation.retrieve import sentence_transformer

    return sentence_transformer(EMB_NAME)


@pytest.fixture(scope="module")
def server(local, embedder):
    app = create_app(local, embedder, model_name="tiny-llama", embedding_model_name=EMB_NAME)
    with serve_in_thread(app) as url:
        yield app, url


def remote(url, **kw) -> OpenAIGenerator:
    return OpenAIGenerator("tiny-llama", base_url=url, max_workers=4, max_retries=0, **kw)


def test_greedy_chat_over_http_equals_local_generation(server, local):
    app, url = server
    p = SamplingParams(temperature=0, max_new_tokens=7)
    got = remote(url).generate(CONVS, p)
    want = local.generate(CONVS, p)
    for g, w in zip(got, want):
        assert g[0].text == w[0].text
        assert g[0].finish_reason == "length" == w[0].finish_reason
        assert g[0].n_tokens == 7


def test_sampling_over_http_is_seeded_and_top_k_is_passed(server, local):
    _, url = server
    p = SamplingParams(temperature=1.2, top_k=40, max_new_tokens=6, n=3, seed=9)
    a, b = remote(url).generate(CONVS, p), remote(url).generate(CONVS, p)
    assert [[c.text for c in r] for r in a] == [[c.text for c in r] for r in b]
    assert len({c.text for c in a[0]}) == 3
    k1 = remote(url).generate(CONVS[:1], SamplingParams(temperature=1.5, top_k=1, max_new_tokens=6, seed=1))
    assert k1[0][0].text == local.generate(CONVS[:1], SamplingParams(temperature=0, max_new_tokens=6))[0][0].text


def test_prefill_and_raw_completions_over_http(server, local):
    _, url = server
    p = SamplingParams(temperature=0, max_new_tokens=5)
    pre = [{"role": "user", "content": "Ask a question."}, {"role": "assistant", "content": "Who"}]
    raw = [{"role": "raw", "content": "The bridge opened in"}]
    got = remote(url).generate([pre, raw], p)
    want = local.generate([pre, raw], p)
    assert [g[0].text for g in got] == [w[0].text for w in want]


def test_cache_over_the_openai_backend_makes_only_the_probe_request_on_rerun(server, tmp_path):
    app, url = server
    gen = make_generator("tiny-llama", backend="openai", base_url=url, cache_dir=tmp_path, max_retries=0)
    p = SamplingParams(temperature=0.7, max_new_tokens=4, seed=2)
    first = gen.generate(CONVS, p)
    before = app.state.requests
    again = make_generator("tiny-llama", backend="openai", base_url=url, cache_dir=tmp_path).generate(CONVS, p)
    assert app.state.requests == before + 1  # the fingerprint's probe, whatever the number of conversations
    assert [r[0].text for r in again] == [r[0].text for r in first]
    tagged = make_generator("tiny-llama", backend="openai", base_url=url, cache_dir=tmp_path, cache_tag="v1")
    tagged.generate(CONVS, p)
    before = app.state.requests
    make_generator("tiny-llama", backend="openai", base_url=url, cache_dir=tmp_path, cache_tag="v1").generate(CONVS, p)
    assert app.state.requests == before  # a user-set tag replaces the probe: no request at all


def test_embeddings_over_http_equal_local_ones(server, embedder):
    import openai

    _, url = server
    texts = ["The Yankees play in the Bronx.", "Photosynthesis needs light.", "Bonjour"]
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    want = embedder.encode(texts, convert_to_numpy=True)
    for fmt in ("float", "base64"):  # the client asks for base64 unless told otherwise
        resp = client.embeddings.create(model=EMB_NAME, input=texts, encoding_format=fmt) if fmt == "float" \
            else client.embeddings.create(model=EMB_NAME, input=texts)
        got = np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float64)
        assert got.shape == (3, 384)
        assert np.allclose(got, want, atol=1e-6)


def test_openai_retriever_through_the_server_ranks_like_the_local_dense_one(server):
    from pd.data import load_squadshifts
    from pd.evaluation.retrieve import dense_retriever, openai_retriever

    _, url = server
    ds = load_squadshifts("nyt").select_passages(6)
    queries = [it.closed_book_question for it in ds.items[:8]]
    via_http = openai_retriever(ds.documents, model=EMB_NAME, base_url=url, cache_dir=None).search(queries, 3)
    local = dense_retriever(ds.documents, model=EMB_NAME, cache_dir=None).search(queries, 3)
    assert via_http == local


def test_errors_are_clear(server):
    import httpx

    _, url = server
    with pytest.raises(ModelUnavailableError, match="no model 'other-model'"):
        OpenAIGenerator("other-model", base_url=url, max_retries=0).generate(CONVS[:1],
                                                                             SamplingParams(max_new_tokens=2))
    with pytest.raises(ConfigError, match="log-probabilities"):
        remote(url).generate(CONVS[:1], SamplingParams(logprobs=2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(ModelUnavailableError, match="cannot reach"):
        OpenAIGenerator("tiny-llama", base_url=dead, max_retries=0, timeout=5).generate(CONVS[:1], SamplingParams())
    r = httpx.post(f"{url}/chat/completions", json={"model": "tiny-llama", "messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "temperature": -1})
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/embeddings", json={"model": EMB_NAME, "input": []})
    assert r.status_code == 400
    assert {m["id"] for m in httpx.get(f"{url}/models").json()["data"]} == {"tiny-llama", EMB_NAME}


def test_openai_backend_without_key_or_url_is_a_config_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIGenerator("gpt-4o-mini")


@pytest.mark.slow
def test_smollm2_served_answers_a_chat_question(smollm2):
    import openai

    gen = TransformersGenerator(smollm2.spec, progress=False)
    with serve_in_thread(create_app(gen, model_name="smollm2")) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        resp = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=24,
                                              messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length") and resp.usage.completion_tokens > 0


def test_command_line_server_in_a_subprocess():
    """`python -m pd.serve` as a user starts it: chat and embeddings from one process."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(root))
    key = "cli-key-31c7"
    proc = subprocess.Popen([sys.executable, "-m", "pd.serve", "--model", "tiny-llama", "--embedding-model", EMB_NAME,
                             "--port", str(port), "--api-key", key],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 401:  # up, and it wants the key
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.5)
        out = remote(url, api_key=key).generate(CONVS[:1], SamplingParams(temperature=0, max_new_tokens=3))
        assert out[0][0].n_tokens == 3
        emb = httpx.post(f"{url}/embeddings", json={"model": EMB_NAME, "input": "hello", "encoding_format": "float"},
                         headers={"Authorization": f"Bearer {key}"}).json()
        assert len(emb["data"][0]["embedding"]) == 384
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cache_tells_apart_two_models_served_under_one_name_and_url(tiny_llama, tmp_path):
    """tiny-llama, then tiny-llama-large, both as 'm' on the same port: the second gets its own answers."""
    from pd.models import get_spec

    port, cache = _free_port(), tmp_path / "cache"
    p = SamplingParams(temperature=0, max_new_tokens=6)
    answers, names = [], []
    for spec in (tiny_llama.spec, get_spec("tiny-llama-large"), tiny_llama.spec):
        local = TransformersGenerator(spec, progress=False)
        app = create_app(local, model_name="m")
        with serve_in_thread(app, port=port) as url:
            gen = make_generator("m", backend="openai", base_url=url, cache_dir=cache, max_retries=0)
            answers.append([r[0].text for r in gen.generate(CONVS, p)])
            names.append(gen.name)
            assert answers[-1] == [r[0].text for r in local.generate(CONVS, p)]  # each server's own model answered
            assert app.state.requests == (1 + len(CONVS) if len(answers) < 3 else 1)  # probe (+ misses)
    assert answers[0] != answers[1]  # the models differ, so a cache hit would have shown the first one's answers
    assert names[0] != names[1] and names[0] == names[2]  # back to the first model: its entries hit again


def test_a_cache_tag_names_the_weights_in_place_of_the_probe(tiny_llama, tmp_path):
    """What the cache cannot know: with one tag set for both models, the second is served the first's answers."""
    from pd.models import get_spec

    port, cache = _free_port(), tmp_path / "cache"
    p = SamplingParams(temperature=0, max_new_tokens=6)
    answers = []
    for spec in (tiny_llama.spec, get_spec("tiny-llama-large")):
        app = create_app(TransformersGenerator(spec, progress=False), model_name="m")
        with serve_in_thread(app, port=port) as url:
            gen = make_generator("m", backend="openai", base_url=url, cache_dir=cache, max_retries=0, cache_tag="mine")
            answers.append([r[0].text for r in gen.generate(CONVS, p)])
            assert gen.name == f"openai:{url}:m@tag:mine"
    assert answers[0] == answers[1] and app.state.requests == 0
    with pytest.raises(ConfigError, match="cache_tag"):
        OpenAIGenerator("m", base_url="http://127.0.0.1:1/v1", cache_tag=" ")
