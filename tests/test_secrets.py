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


@pytest.mark.parametrize("url, want", [
    ("https://user:pw@host/v1", ("https://host/v1", "pw")),
    ("https://sk-tok@host:8443/v1?x=1", ("https://host:8443/v1?x=1", "sk-tok")),
    ("http://a%40b:p%3Aw@10.0.0.1:8000/v1", ("http://10.0.0.1:8000/v1", "p:w")),
    ("http://127.0.0.1:8000/v1", ("http://127.0.0.1:8000/v1", None)),
    (None, (None, None)),
])
def test_split_url_credentials(url, want):
    from pd.redact import split_url_credentials

    assert split_url_credentials(url) == want


def test_a_password_in_the_url_is_sent_as_the_bearer_key(tiny_llama, monkeypatch):
    """A server started with a key accepts `http://user:key@host/v1` (the key as Bearer, not Basic auth)."""
    from pd.generate import make_generator
    from pd.generate.base import SamplingParams
    from pd.generate.transformers_backend import TransformersGenerator
    from pd.serve import create_app, serve_in_thread

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    local = TransformersGenerator(tiny_llama.spec, progress=False)
    with serve_in_thread(create_app(local, model_name="tiny-llama", api_key=PASSWORD)) as url:
        gen = make_generator("tiny-llama", backend="openai", base_url=url.replace("http://", f"http://{USER}:{PASSWORD}@"),
                             max_retries=0)
        out = gen.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(temperature=0, max_new_tokens=3))
        assert out[0][0].n_tokens > 0  # before: user-info went as Basic auth and the server answered 401
        assert gen.base_url == url  # the client talks to the bare URL


def test_the_job_spec_carries_the_url_without_user_info_and_the_key_travels_in_the_environment(monkeypatch):
    from pd.config import load_config
    from pd.pipeline.plan import build_plan

    monkeypatch.setenv("OPENAI_API_KEY", "a-key-set-before")  # restored after the test (the planner sets it)
    secret_url = f"http://{USER}:{PASSWORD}@127.0.0.1:9/v1"
    plan = build_plan(load_config(None, {"run": ["demo"], "generation": {"backend": "openai",
                                                                          "openai_base_url": secret_url}}))
    specs = [a.spec.as_dict() for k in ("questions", "answers", "evaluate") for a in plan.of_kind(k)]
    assert specs and all(s["base_url"] == "http://127.0.0.1:9/v1" for s in specs)
    assert USER not in repr(specs) and PASSWORD not in repr(specs)
    import os

    assert os.environ["OPENAI_API_KEY"] == PASSWORD


@pytest.mark.slow
def test_a_killed_and_resumed_workflow_against_a_keyed_server_writes_no_canary(tiny_llama, tmp_path):
    """A real Snakemake run through the openai backend, canaries in the URL and in the environment,
    killed during its first generating job and resumed: no file under the run folder holds one."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    from pd.generate.transformers_backend import TransformersGenerator
    from pd.serve import create_app, serve_in_thread

    root = Path(__file__).resolve().parent.parent
    env_canary = "canary-env-hf-7a31"
    local = TransformersGenerator(tiny_llama.spec, progress=False)
    with serve_in_thread(create_app(local, model_name="tiny-llama", api_key=PASSWORD)) as url:
        cfg = yaml.safe_load((root / "tests" / "configs" / "tiny.yaml").read_text())
        cfg["experiments"]["tiny"]["grid"]["retrieval"] = ["none", "bm25"]
        cfg |= {"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports"),
                "generation": {**cfg.get("generation", {}), "backend": "openai",
                               "openai_base_url": url.replace("http://", f"http://{USER}:{PASSWORD}@")}}
        conf = tmp_path / "c.yaml"
        conf.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "PYTHONPATH": str(root), "HF_TOKEN": env_canary, "OPENAI_API_KEY": KEY,
               "PD_CACHE_DIR": str(tmp_path / "cache")}
        cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "--profile",
               str(root / "profiles" / "local"), "--configfile", str(conf), "--cores", "1"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / "results").rglob("*.log")):
            time.sleep(0.2)
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert len(list((tmp_path / "results").rglob("*.substring-word.jsonl"))) < 2, "killed too late"
        subprocess.run([*cmd, "--unlock"], cwd=tmp_path, env=env, capture_output=True, timeout=120, check=True)
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    grades = list((tmp_path / "results").rglob("*.substring-word.jsonl"))
    assert len(grades) == 2
    leaks = {p: hits for p, hits in _files_containing(tmp_path, [USER, PASSWORD, KEY, env_canary]).items()
             if Path(p) != conf}  # the config itself holds the URL: the user's file, not the run's
    assert (tmp_path / ".snakemake").is_dir() and leaks == {}
