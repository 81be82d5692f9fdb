"""pd.serve's request fields over real HTTP: each honoured as OpenAI documents it, or refused with 400 naming it."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import torch

from pd.generate.base import SamplingParams
from pd.generate.openai_backend import OpenAIGenerator
from pd.generate.transformers_backend import TransformersGenerator
from pd.serve import create_app, serve_in_thread

EMB = "all-minilm-l6-v2"
M = [{"role": "user", "content": "Where is the Brooklyn Bridge?"}]


@pytest.fixture(scope="module")
def local(tiny_llama):
    return TransformersGenerator(tiny_llama.spec, progress=False)


@pytest.fixture(scope="module")
def server(local):
    from pd.evaluation.retrieve import sentence_transformer

    app = create_app(local, sentence_transformer(EMB), model_name="tiny-llama", embedding_model_name=EMB)
    with serve_in_thread(app) as url:
        yield app, url


def post(url: str, path: str, body) -> httpx.Response:
    # NaN and Infinity are not JSON; Python's encoder writes them anyway, as some clients do.
    return httpx.post(f"{url}/{path}", content=json.dumps(body), headers={"content-type": "application/json"},
                      timeout=120)


def prompt_tokens(tok, messages) -> int:
    return len(tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False))


BAD = [  # (endpoint, body, the field the message must name)
    ("chat/completions", {"messages": "hi"}, "messages"),
    ("chat/completions", {"messages": []}, "messages"),
    ("chat/completions", {"messages": ["hi"]}, "messages[0]"),
    ("chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
    ("chat/completions",
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ("chat/completions", {"messages": M + [{"role": "assistant", "content": "It"}]}, "messages"),
    ("chat/completions", {"messages": M, "continue_final_message": True, "add_generation_prompt": False}, "messages"),
    ("chat/completions", {"messages": M, "continue_final_message": True}, "continue_final_message"),
    ("chat/completions", {"messages": M, "temperature": float("nan")}, "temperature"),
    ("chat/completions", {"messages": M, "temperature": float("inf")}, "temperature"),
    ("chat/completions", {"messages": M, "temperature": -0.5}, "temperature"),
    ("chat/completions", {"messages": M, "temperature": "0.5"}, "temperature"),
    ("chat/completions", {"messages": M, "temperature": True}, "temperature"),
    ("chat/completions", {"messages": M, "top_p": 0}, "top_p"),
    ("chat/completions", {"messages": M, "top_p": 1.5}, "top_p"),
    ("chat/completions", {"messages": M, "top_k": -1}, "top_k"),
    ("chat/completions", {"messages": M, "n": 0}, "n"),
    ("chat/completions", {"messages": M, "n": 17}, "n"),
    ("chat/completions", {"messages": M, "n": 2.5}, "n"),
    ("chat/completions", {"messages": M, "n": "2"}, "n"),
    ("chat/completions", {"messages": M, "max_tokens": 0}, "max_tokens"),
    ("chat/completions", {"messages": M, "max_tokens": "5"}, "max_tokens"),
    ("chat/completions", {"messages": M, "max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
    ("chat/completions", {"messages": M, "max_completion_tokens": -3}, "max_completion_tokens"),
    ("chat/completions", {"messages": M, "seed": "x"}, "seed"),
    ("chat/completions", {"messages": M, "stop": 5}, "stop"),
    ("chat/completions", {"messages": M, "stop": [""]}, "stop"),
    ("chat/completions", {"messages": M, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("chat/completions", {"messages": M, "logprobs": "yes"}, "logprobs"),
    ("chat/completions", {"messages": M, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("chat/completions", {"messages": M, "top_logprobs": 2}, "top_logprobs"),
    ("chat/completions", {"messages": M, "stream": True}, "stream"),
    ("chat/completions", {"messages": M, "frequency_penalty": 0.5}, "frequency_penalty"),
    ("chat/completions", {"messages": M, "presence_penalty": -1}, "presence_penalty"),
    ("chat/completions", {"messages": M, "logit_bias": {"5": 10}}, "logit_bias"),
    ("chat/completions", {"messages": M, "response_format": {"type": "json_object"}}, "response_format"),
    ("chat/completions", {"messages": M, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("chat/completions", {"messages": M, "tool_choice": "auto"}, "tool_choice"),
    ("chat/completions", {"messages": M, "store": True}, "store"),
    ("chat/completions", {"messages": M, "max_tokenz": 5}, "max_tokenz"),
    ("completions", {"prompt": ["a", "b"]}, "prompt"),
    ("completions", {"prompt": [1, 2, 3]}, "prompt"),
    ("completions", {"prompt": "x", "echo": True}, "echo"),
    ("completions", {"prompt": "x", "best_of": 2}, "best_of"),
    ("completions", {"prompt": "x", "suffix": "end"}, "suffix"),
    ("completions", {"prompt": "x", "logprobs": 6}, "logprobs"),
    ("completions", {"prompt": "x", "logprobs": True}, "logprobs"),
    ("completions", {"prompt": "x", "messages": M}, "messages"),
    ("embeddings", {"input": [1, 2, 3]}, "input"),
    ("embeddings", {"input": ""}, "input"),
    ("embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ("embeddings", {"input": "x", "dimensions": 10}, "dimensions"),
    ("embeddings", {"input": "x", "temperature": 0}, "temperature"),
]


@pytest.mark.parametrize("path, body, field", BAD, ids=[f"{p}-{f}-{i}" for i, (p, _, f) in enumerate(BAD)])
def test_a_bad_field_is_refused_by_name(server, path, body, field):
    _, url = server
    r = post(url, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert f"'{field}'" in err["message"] or f"['{field}']" in err["message"], err
    assert "\n" not in err["message"] and "Traceback" not in err["message"]


def test_bodies_that_are_not_objects_are_refused(server):
    _, url = server
    for path in ("chat/completions", "completions", "embeddings"):
        assert post(url, path, [1, 2]).status_code == 400
        r = httpx.post(f"{url}/{path}", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_no_op_values_of_unimplemented_fields_are_accepted(server, local):
    _, url = server
    body = {"messages": [{"role": "developer", "content": "Be brief."}] + M, "temperature": 0, "max_tokens": 3,
            "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "user": "u1", "stream": False,
            "response_format": {"type": "text"}, "tools": [], "tool_choice": "none", "service_tier": "auto",
            "store": False, "n": 2, "seed": 5}
    r = post(url, "chat/completions", body)
    assert r.status_code == 200, r.text
    want = local.generate([[{"role": "system", "content": "Be brief."}] + M],
                          SamplingParams(temperature=0, max_new_tokens=3))
    assert [c["message"]["content"] for c in r.json()["choices"]] == [want[0][0].text] * 2
    r = post(url, "embeddings", {"input": "x", "dimensions": 384, "user": "u1", "encoding_format": "float"})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384


def test_context_is_checked_and_the_message_gives_the_numbers(server, tiny_llama):
    _, url = server
    p = prompt_tokens(tiny_llama.tokenizer, M)
    r = post(url, "chat/completions", {"messages": M, "max_tokens": 10**9})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (f"prompt ({p} tokens) + max_tokens (1000000000) = {p + 10**9} exceeds "
                                            "the model's context of 2048 tokens")
    assert post(url, "chat/completions", {"messages": M, "max_tokens": 2049 - p}).status_code == 400
    long = [{"role": "user", "content": "word " * 2100}]
    r = post(url, "chat/completions", {"messages": long})  # no max_tokens: the prompt alone is too long
    assert r.status_code == 400 and "context is 2048 tokens" in r.json()["error"]["message"]
    # Exactly filling the context is allowed.
    r = post(url, "chat/completions", {"messages": M, "max_tokens": 2048 - p, "temperature": 0, "stop": "zzzz-never"})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == p
    assert r.json()["usage"]["completion_tokens"] + p <= 2048 + 1


def test_stop_cuts_the_reply_before_the_stop_string(server, local):
    import openai

    _, url = server
    full = local.generate([M], SamplingParams(temperature=0, max_new_tokens=16))[0][0]
    text = full.text
    at = next(i for i in range(2, len(text) - 3) if text.find(text[i:i + 3]) == i and text[i:i + 3].strip())
    stop = text[at:at + 3]
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    res = client.chat.completions.create(model="tiny-llama", messages=M, temperature=0, max_tokens=16,
                                         stop=["never-there", stop])
    assert res.choices[0].message.content == text[:at]
    assert res.choices[0].finish_reason == "stop"
    assert res.usage.completion_tokens < 16  # it stopped counting at the stop string
    res = client.chat.completions.create(model="tiny-llama", messages=M, temperature=0, max_tokens=16,
                                         stop="never-there")
    assert res.choices[0].message.content == text and res.choices[0].finish_reason == "length"
    raw = local.generate([[{"role": "raw", "content": "The bridge"}]], SamplingParams(temperature=0, max_new_tokens=8))
    cut = raw[0][0].text[3:6]
    res = client.completions.create(model="tiny-llama", prompt="The bridge", temperature=0, max_tokens=8, stop=cut)
    assert res.choices[0].text == raw[0][0].text[:raw[0][0].text.find(cut)] and res.choices[0].finish_reason == "stop"


def test_logprobs_are_the_models_own(server, local, tiny_llama):
    import openai

    _, url = server
    tok = tiny_llama.tokenizer
    greedy = local.generate([M], SamplingParams(temperature=0, max_new_tokens=5))[0][0]
    prompt = tok.encode(local.prompt(M), add_special_tokens=False)
    with torch.no_grad():
        ref = torch.log_softmax(local.model(torch.tensor([prompt + greedy.token_ids])).logits[0].double(), -1)
    ref = ref[len(prompt) - 1:-1]
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    res = client.chat.completions.create(model="tiny-llama", messages=M, temperature=0, max_tokens=5, logprobs=True,
                                         top_logprobs=3)
    content = res.choices[0].logprobs.content
    assert [c.token for c in content] == [tok.decode([i]) for i in greedy.token_ids]
    for step, c in enumerate(content):
        assert c.logprob == pytest.approx(ref[step, greedy.token_ids[step]].item(), abs=1e-4)
        top = torch.topk(ref[step], 3)
        assert [t.token for t in c.top_logprobs] == [tok.decode([i]) for i in top.indices.tolist()]
        assert [t.logprob for t in c.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert c.bytes == list(c.token.encode())
    plain = client.chat.completions.create(model="tiny-llama", messages=M, temperature=0, max_tokens=2, logprobs=True)
    assert plain.choices[0].logprobs.content[0].top_logprobs == []
    comp = post(url, "completions",
                {"prompt": local.prompt(M), "temperature": 0, "max_tokens": 5, "logprobs": 2}).json()
    lp = comp["choices"][0]["logprobs"]
    assert lp["token_logprobs"] == pytest.approx([ref[s, t].item() for s, t in enumerate(greedy.token_ids)], abs=1e-4)
    assert "".join(lp["tokens"]) == comp["choices"][0]["text"] and len(lp["top_logprobs"][0]) == 2


def test_a_client_that_disconnects_stops_its_generation(server, local):
    app, url = server
    big = {"messages": M, "max_tokens": 1900, "n": 16, "temperature": 1.0, "seed": 1}  # thousands of forward passes
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/chat/completions", json=big, timeout=0.5)
    gone, calls = time.time(), local.calls
    r = httpx.post(f"{url}/chat/completions", json={"messages": M, "max_tokens": 2, "temperature": 0}, timeout=120)
    assert r.status_code == 200
    assert time.time() - gone < 5  # served at once, not after the abandoned work
    assert local.calls - calls < 100  # the abandoned request stopped within a few steps (2 are the new request's)
    assert app.state.cancelled == 1


def test_api_key_is_required_when_set(local):
    key = "serve-key-0a9f"
    with serve_in_thread(create_app(local, model_name="tiny-llama", api_key=key)) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key},
                        {"Authorization": f"Basic {key}"}):
            r = httpx.get(f"{url}/models", headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
            assert httpx.post(f"{url}/chat/completions", json={"messages": M}, headers=headers).status_code == 401
        assert httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        got = OpenAIGenerator("tiny-llama", base_url=url, api_key=key, max_retries=0).generate(
            [M], SamplingParams(temperature=0, max_new_tokens=3))
        assert got[0][0].text == local.generate([M], SamplingParams(temperature=0, max_new_tokens=3))[0][0].text
