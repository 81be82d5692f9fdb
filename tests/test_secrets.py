"""Secrets never reach files: pd.redact, and a real OpenAI-backend run against pd.serve grepped for canaries."""

from __future__ import annotations

import logging

import pytest

from pd.redact import (
    MASK,
    RedactingFilter,
    is_secret_key,
    redact,
    redact_text,
    redact_url,
)

USER, PASSWORD, KEY = "canaryuser7", "canary-pw-5d1e", "sk-canary-key-93b0c2"


@pytest.mark.parametrize("url, want", [
    ("https://user:pw@host/v1", "https://host/v1"),
    ("https://user@host:8443/v1/", "https://host:8443/v1/"),
    ("http://a%40b:p%3Aw@10.0.0.1:8000/v1", "http://10.0.0.1:8000/v1"),
    ("https://host/v1", "https://host/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("https://host/v1?api_key=abc&model=x", "https://host/v1?api_key=%5Bredacted%5D&model=x"),
    ("not a url", "not a url"),
    ("HTTP://Host/x?", "HTTP://Host/x?"),  # nothing to hide: unchanged, not normalised
])
def test_redact_url(url, want):
    assert redact_url(url) == want


@pytest.mark.parametrize("name", ["api_key", "OPENAI_API_KEY", "apiKey", "hf_token", "token", "password",
                                  "Authorization", "client-secret", "aws_secret_access_key", "credentials", "auth"])
def test_secret_key_names(name):
    assert is_secret_key(name)


@pytest.mark.parametrize("name", ["max_tokens", "n_tokens", "token_ids", "key", "run_key", "inject_key", "author",
                                  "prompt_tokens", "monkey", "tokenizer_model", "base_url", 3])
def test_ordinary_key_names(name):
    assert not is_secret_key(name)


def test_redact_walks_nested_data_and_free_text():
    spec = {"generator": {"backend": "openai", "base_url": f"https://{USER}:{PASSWORD}@h.example/v1",
                          "api_key": KEY, "hf_token": None, "max_tokens": 7},
            "rows": [{"note": f"fetched https://{USER}:{PASSWORD}@h.example/v1/models with Bearer {KEY}"}],
            "pair": ("http://u:p@x/y", 3)}
    got = redact(spec)
    assert got == {"generator": {"backend": "openai", "base_url": "https://h.example/v1", "api_key": MASK,
                                 "hf_token": None, "max_tokens": 7},
                   "rows": [{"note": f"fetched https://h.example/v1/models with Bearer {MASK}"}],
                   "pair": ("http://x/y", 3)}
    assert spec["generator"]["api_key"] == KEY  # a copy: the input is unchanged
    assert redact_text(f"key={KEY}!", [KEY]) == f"key={MASK}!"


def test_logging_filter_redacts_formatted_records(tmp_path):
    log = logging.getLogger("pd.test_secrets")
    handler = logging.FileHandler(tmp_path / "log.txt", encoding="utf-8")
    handler.addFilter(RedactingFilter([KEY]))
    log.addHandler(handler)
    try:
        log.warning("request to %s with key %s", f"http://{USER}:{PASSWORD}@h/v1", KEY)
    finally:
        log.removeHandler(handler)
        handler.close()
    text = (tmp_path / "log.txt").read_text()
    assert text.strip() == f"request to http://h/v1 with key {MASK}"


def _files_containing(folder, needles) -> dict[str, list[str]]:
    found = {}
    for p in folder.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits = [n for n in needles if n.encode() in data]
            if hits:
                found[str(p)] = hits
    return found


def test_a_run_through_the_openai_backend_writes_no_secret(tiny_llama, tmp_path):
    """Canary key and credential URL: cache entries, rows, stats, logs and errors hold neither."""
    from pd.data import Dataset, Document, TestItem
    from pd.errors import PDError
    from pd.evaluation.evaluate import evaluate
    from pd.generate import make_generator
    from pd.generate.base import SamplingParams
    from pd.generate.transformers_backend import TransformersGenerator
    from pd.io import write_json, write_jsonl
    from pd.serve import create_app, serve_in_thread

    local = TransformersGenerator(tiny_llama.spec, progress=False)
    ds = Dataset("toy", {"d": Document("d", "The bridge opened in 1883.")},
                 [TestItem("q1", "When did it open?", ("1883",), ("d",), "When did the bridge open?")])
    handler = logging.FileHandler(tmp_path / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with serve_in_thread(create_app(local, model_name="tiny-llama")) as url:
            secret_url = url.replace("http://", f"http://{USER}:{PASSWORD}@")
            gen = make_generator("tiny-llama", backend="openai", base_url=secret_url, api_key=KEY,
                                 cache_dir=tmp_path / "cache", max_retries=0)
            rows, stats = evaluate(ds, gen, params=SamplingParams(temperature=0, max_new_tokens=4))
            write_jsonl(tmp_path / "rows.jsonl", rows)
            write_json(tmp_path / "stats.json", stats | redact({"spec": {"base_url": secret_url, "api_key": KEY}}))
            with pytest.raises(PDError) as err:
                make_generator("no-such-model", backend="openai", base_url=secret_url, api_key=KEY,
                               max_retries=0).generate([[{"role": "user", "content": "x"}]], SamplingParams())
            (tmp_path / "error.txt").write_text(str(err.value))
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
        handler.close()
    assert rows[0]["answer"] and len(list((tmp_path / "cache").rglob("*.json"))) == 1
    log = (tmp_path / "run.log").read_text()
    assert "HTTP Request: POST" in log and url.removesuffix("/v1") in log  # the log did record the requests
    assert url.removeprefix("http://") in rows[0]["generator"]
    assert _files_containing(tmp_path, [USER, PASSWORD, KEY]) == {}


def test_openai_cache_tag_travels_from_config_to_the_jobs_generator():
    """generation.openai_cache_tag reaches every generating job's spec and the generator it makes."""
    from pd.config import load_config
    from pd.pipeline.plan import build_plan

    cfg = load_config(None, {"run": ["demo"], "generation": {"backend": "openai", "openai_cache_tag": "weights-v2",
                                                              "openai_base_url": "http://127.0.0.1:9/v1"}})
    plan = build_plan(cfg)
    for kind in ("questions", "answers", "evaluate"):
        assert all(a.spec.cache_tag == "weights-v2" for a in plan.of_kind(kind)), kind
    plain = build_plan(load_config(None, {"run": ["demo"]}))
    assert all("cache_tag" not in a.spec.as_dict() for a in plain.of_kind("answers"))  # unset: hashes unchanged
