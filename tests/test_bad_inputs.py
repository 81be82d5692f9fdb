"""Bad inputs, one table: each is refused with exit status 2 (or HTTP 4xx) and ONE line naming the key, file,
row or field at fault, with no traceback (issue 14). The CLI runs as a real subprocess; the server over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GRID = {"model": ["tiny-llama"], "method": ["base"], "dataset": ["nyt"]}


def base_config(**over) -> dict:
    return {"run": ["x"], "experiments": {"x": {"grid": dict(GRID)}}, **over}


def with_grid(**axes) -> dict:
    return {"run": ["x"], "experiments": {"x": {"grid": {**GRID, **axes}}}}


def folder_config(questions: str | None) -> dict:
    entry = {"loader": "folder", "path": "docs", **({"questions": questions} if questions else {})}
    return {"run": ["x"], "datasets": {"mine": entry},
            "experiments": {"x": {"grid": {**GRID, "dataset": ["mine"]}}}}


# Each config file case: (name, the file's text or a dict to dump, what the message must contain).
CONFIGS = [
    ("duplicate top-level key", "run: [x]\ntraining:\n  lr: 0.1\ntraining:\n  rank: 2\nexperiments: {}\n",
     "line 4: duplicate key 'training'"),
    ("duplicate nested key", "run: [x]\nexperiments:\n  x:\n    grid: {model: [tiny-llama], model: [tiny-qwen2]}\n",
     "duplicate key 'model'"),
    ("not YAML", "run: [x\nexperiments: {}\n", "not valid YAML: line"),
    ("top level a list", "- run\n- x\n", "the top level must be a mapping"),
    ("unknown top-level key", base_config(colour="red"), "(top level): unknown key 'colour'"),
    ("answer_temperature -1", with_grid(answer_temperature=[-1]), "experiments.x.grid.answer_temperature[0]: -1"),
    ("kd_temperature 0", with_grid(kd_temperature=[0]), "experiments.x.grid.kd_temperature[0]: 0"),
    ("snapshot -5", with_grid(snapshot=[-5]), "experiments.x.grid.snapshot[0]: -5"),
    ("per_model unknown model", base_config(per_model={"llama-9": {"lr": 0.1}}), "per_model.llama-9: unknown model"),
    ("folder path missing", {**base_config(), "datasets": {"mine": {"loader": "folder", "path": "nowhere"}}},
     "datasets.mine.path: folder nowhere does not exist"),
    ("questions file missing", folder_config("nope.jsonl"), "datasets.mine.questions: file nope.jsonl does not exist"),
    ("hotpotqa file missing", {**base_config(), "datasets": {"hp": {"loader": "hotpotqa", "path": "hp.json"}}},
     "datasets.hp.path: file hp.json does not exist"),
    ("dense model missing", {**with_grid(retrieval=["dense"]), "retrieval": {"dense_model": "./no-such-model"}},
     "retrieval.dense_model: './no-such-model'"),
    ("reg_data missing", base_config(training={"reg_data": "instr.jsonl"}), "training.reg_data: file instr.jsonl"),
    ("capability file missing", base_config(capability={"path": "mmlu.jsonl"}), "capability.path: file mmlu.jsonl"),
    ("prompt override missing", base_config(prompts={"closed_book": "mine.j2"}), "prompts.closed_book"),
    ("unknown model", with_grid(model=["llama-9"]), "experiments.x.grid.model[0]: unknown model 'llama-9'"),
    ("unknown run", {**base_config(), "run": ["y"]}, "run[0]: unknown experiment 'y'"),
    ("wrong type", base_config(training={"lr": "fast"}), "training.lr: expected number"),
    ("out of range", base_config(training={"batch_size": 0}), "training.batch_size: 0 is less than the minimum"),
    ("questions row not JSON", folder_config("q.jsonl"), "q.jsonl:2"),
    ("questions row lacks a field", folder_config("q2.jsonl"), "missing field 'question'"),
    ("questions CSV lacks a column", folder_config("q.csv"), "missing column(s) ['answers']"),
    ("questions row names an unknown document", folder_config("q3.jsonl"), "unknown document(s) ['b.txt']"),
    ("questions file empty", folder_config("empty.jsonl"), "empty.jsonl is empty"),
    ("template escapes the sandbox", base_config(prompts={"closed_book": "evil.j2"}),
     "prompts.closed_book: template evil.j2: refused by the sandbox"),
    ("template not Jinja2", base_config(prompts={"closed_book": "broken.j2"}), "template broken.j2: not valid Jinja2"),
    ("unhashable key", "run: [x]\n? [a, b]\n: 1\n", "line 2: a key must be a plain value"),
    ("NaN learning rate", "run: [x]\ntraining: {lr: .nan}\nexperiments: {}\n", "training.lr: nan is not a finite"),
    ("infinite epochs", "run: [x]\ntraining: {epochs: .inf}\nexperiments: {}\n", "training.epochs: inf is not"),
    ("rank 10^30", base_config(training={"rank": 10**30}), "training.rank: 1000000000000000000000000000000 is too"),
    ("seed 2^70", with_grid(seed=[2**70]), f"experiments.x.grid.seed[0]: {2**70} is too large"),
    ("epochs 1e-9", base_config(training={"epochs": 1e-9}), "training.epochs: 1e-09 is less than the minimum"),
    ("rank 2^20", base_config(training={"rank": 2**20}), "training.rank: 1048576 is greater than the maximum"),
    ("dotted GGUF package", base_config(models={"m": {"source": "gguf_package", "family": "llama", "package": "x.y",
                                                      "gguf_file": "m.gguf"}}), "is not a plain package name"),
    ("site env LD_PRELOAD", base_config(slurm_site={"env": {"LD_PRELOAD": "/tmp/evil.so"}}),
     "env.LD_PRELOAD: a site file may not set a variable that decides which code jobs run"),
]


def _workspace(tmp: Path) -> Path:
    """A folder with documents and malformed questions files, for the config cases that name them."""
    (tmp / "docs").mkdir(exist_ok=True)
    (tmp / "docs" / "a.txt").write_text("The harbour opened in 1889.\n", encoding="utf-8")
    good = json.dumps({"question": "When?", "answers": ["1889"], "doc_ids": ["a.txt"]})
    (tmp / "q.jsonl").write_text(good + "\n{not json\n", encoding="utf-8")
    (tmp / "q2.jsonl").write_text(json.dumps({"answers": ["1889"]}) + "\n", encoding="utf-8")
    (tmp / "q.csv").write_text("question,doc_ids\nWhen?,a.txt\n", encoding="utf-8")
    (tmp / "q3.jsonl").write_text(json.dumps({"question": "When?", "answers": ["x"], "doc_ids": ["b.txt"]}) + "\n",
                                  encoding="utf-8")
    (tmp / "empty.jsonl").write_text("", encoding="utf-8")
    (tmp / "evil.j2").write_text("{{ cycler.__init__.__globals__.os.popen('touch pwned').read() }}{{ question }}",
                                 encoding="utf-8")
    (tmp / "broken.j2").write_text("{% for x in %}", encoding="utf-8")
    return tmp


def pd_cli(cwd: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "pd.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_refused(out: subprocess.CompletedProcess, needle: str) -> None:
    """Exit 2, one line on stderr that contains ``needle``, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("pd: "), out.stderr[-2000:]  # the message is the last line, whole
    assert needle in lines[-1], (needle, lines[-1])


@pytest.mark.parametrize("name, text, needle", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_pd_validate_refuses_a_bad_config(tmp_path, name, text, needle):
    ws = _workspace(tmp_path)
    cfg = ws / "config.yaml"
    cfg.write_text(text if isinstance(text, str) else yaml.safe_dump(text), encoding="utf-8")
    assert_refused(pd_cli(ws, "--config", str(cfg), "validate"), needle)


def test_config_file_that_is_not_utf8_or_missing(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"run: [x]\n# caf\xe9\n")
    assert_refused(pd_cli(tmp_path, "--config", str(cfg), "validate"), "c.yaml: not UTF-8 text (byte 0xe9")
    assert_refused(pd_cli(tmp_path, "--config", str(tmp_path / "none.yaml"), "validate"), "none.yaml does not exist")


def test_pd_cells_refuses_unknown_experiment_and_empty_match(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**base_config(), "results_dir": str(tmp_path / "r")}), encoding="utf-8")
    assert_refused(pd_cli(tmp_path, "--config", str(cfg), "cells", "y"), "unknown experiment 'y'")
    assert_refused(pd_cli(tmp_path, "--config", str(cfg), "cells", "x", "zzz"), "no cell of x matches")


# pd inject: (name, extra arguments, what the message must contain); every one is refused before any model work.
INJECT = [
    ("weight_decay not a number", ["--set", "weight_decay=abc"], "training.weight_decay: 'abc'"),
    ("lr NaN", ["--set", "lr=.nan"], "nan is not a finite number"),
    ("rank 2^70 in --set", ["--set", "rank=1180591620717411303424"], "is too large (integers must be below 2**63)"),
    ("batch_size not an integer", ["--set", "batch_size=2.5"], "training.batch_size: 2.5"),
    ("heldout_fraction beyond the schema", ["--set", "heldout_fraction=0.9"],
     "training.heldout_fraction must be <= 0.5, got 0.9"),
    ("unknown setting", ["--set", "colour=red"], "unknown inject setting(s) ['colour']"),
    ("no equals sign", ["--set", "lr"], "--set 'lr': expected key=value"),
    ("value not YAML", ["--set", "lr=[1"], "--set 'lr=[1': not valid YAML"),
    ("duplicate key in a value", ["--set", "lr={a: 1, a: 2}"], "duplicate key 'a'"),
    ("zero questions", ["--questions", "0"], "must be positive integers: {'questions': 0}"),
    ("one question, one held out", ["--questions", "1"],
     "questions=1 with heldout_fraction=0.1 holds out 1 of every 2"),
    ("unknown question mode", ["--set", "qgen_mode=poem"], "qgen_mode 'poem'"),
    ("negative answer temperature", ["--answer-temperature", "-1"], "answer_temperature must be >= 0"),
    ("unknown model", ["--model-override"], "unknown model 'llama-9'"),
    ("out inside the documents", ["--out-inside"], "lies inside the documents folder"),
    ("out is a file", ["--out-file"], "is not a `pd inject` output folder"),
    ("documents missing", ["--docs-missing"], "does not exist"),
    ("documents all empty", ["--docs-empty"], "no non-empty .txt/.md files"),
    ("document not UTF-8", ["--docs-cp1252"], "letter.txt: not UTF-8 text"),
]


@pytest.mark.parametrize("name, extra, needle", INJECT, ids=[c[0] for c in INJECT])
def test_pd_inject_refuses_a_bad_input(tmp_path, name, extra, needle):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The harbour opened in 1889.\n", encoding="utf-8")
    model, out = "tiny-llama", tmp_path / "out"
    if extra == ["--model-override"]:
        model, extra = "llama-9", []
    elif extra == ["--out-inside"]:
        out, extra = docs / "adapter", []
    elif extra == ["--out-file"]:
        out, extra = tmp_path / "file.txt", []
        out.write_text("mine")
    elif extra == ["--docs-missing"]:
        docs, extra = tmp_path / "nowhere", []
    elif extra == ["--docs-empty"]:
        (docs / "a.txt").write_text("  \n")
        extra = []
    elif extra == ["--docs-cp1252"]:
        (docs / "letter.txt").write_bytes("Caf\u00e9 \u2013 opened".encode("cp1252"))
        extra = []
    res = pd_cli(tmp_path, "inject", str(docs), "--model", model, "--out", str(out), *extra)
    assert_refused(res, needle)
    assert not (docs / "adapter").exists()


def _adapter_folder(tmp: Path, damage: str) -> Path:
    """An adapter folder as pd inject writes it (a real PEFT adapter of tiny-llama), with one file damaged."""
    from peft import LoraConfig, get_peft_model

    from pd.models import get_spec, load_model

    folder = tmp / "adapter"
    model = get_peft_model(load_model(get_spec("tiny-llama"), device="cpu"),
                           LoraConfig(r=2, target_modules=["q_proj"], lora_alpha=4))
    model.save_pretrained(str(folder))
    (folder / "pd_meta.json").write_text(json.dumps({"model": "tiny-llama"}))
    files = {"meta": "pd_meta.json", "meta_field": "pd_meta.json", "config": "adapter_config.json",
             "weights": "adapter_model.safetensors"}
    if damage == "meta_field":
        (folder / files[damage]).write_text(json.dumps({"base": "tiny-llama"}))
    elif damage:
        (folder / files[damage]).write_bytes(b"\x00\x01garbage")
    return folder


ASK = [
    ("corrupt pd_meta.json", "meta", [], "pd_meta.json:1: not valid JSON"),
    ("pd_meta.json without model", "meta_field", [], "pd_meta.json: expected a JSON object with the base model's name"),
    ("corrupt adapter_config.json", "config", [], "adapter_config.json:1: not valid JSON"),
    ("corrupt safetensors", "weights", [], "adapter_model.safetensors: not a readable safetensors file"),
    ("k zero", "", ["--k", "0"], "--k must be a positive integer, got 0"),
    ("rag folder missing", "", ["--rag", "nowhere"], "document folder nowhere does not exist"),
]


@pytest.mark.parametrize("name, damage, extra, needle", ASK, ids=[c[0] for c in ASK])
def test_pd_ask_refuses_a_damaged_adapter_or_bad_option(tmp_path, name, damage, extra, needle):
    folder = _adapter_folder(tmp_path, damage)
    assert_refused(pd_cli(tmp_path, "ask", str(folder), "When did the harbour open?", *extra), needle)


def test_pd_ask_refuses_a_question_longer_than_the_context(tmp_path):
    """Issue 14 item 9: a 100,000-character question is refused before generation, with the numbers."""
    folder = _adapter_folder(tmp_path, "")
    question = "why " * 25_000
    res = pd_cli(tmp_path, "ask", str(folder), question, "--max-tokens", "16", timeout=300)
    assert_refused(res, "question 1 ('why why")
    assert "reads at most 2048 tokens" in res.stderr and "100000 characters" not in res.stderr  # the prompt's length
    assert "tokens (" in res.stderr and "shorten or split it" in res.stderr


# pd.serve over real HTTP: a representative subset of tests/test_serve_fields.py's table.
SERVE = [
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": float("nan")}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 17}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9}, "max_tokens (1000000000)"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": 5}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
]


@pytest.fixture(scope="module")
def server(tiny_llama):
    from pd.generate.transformers_backend import TransformersGenerator
    from pd.serve import create_app, serve_in_thread

    app = create_app(TransformersGenerator(tiny_llama.spec, progress=False), model_name="tiny-llama")
    with serve_in_thread(app) as url:
        yield url


@pytest.mark.parametrize("body, field", SERVE, ids=[f for _, f in SERVE])
def test_pd_serve_refuses_a_bad_field_by_name(server, body, field):
    r = httpx.post(f"{server}/chat/completions", content=json.dumps(body),
                   headers={"content-type": "application/json"}, timeout=120)
    assert 400 <= r.status_code < 500, r.text
    message = r.json()["error"]["message"]
    assert field in message and "\n" not in message and "Traceback" not in message, message


def test_the_table_has_at_least_40_inputs():
    assert len(CONFIGS) + 3 + 2 + len(INJECT) + len(ASK) + 1 + len(SERVE) >= 40


def test_resume_message_names_the_folder_to_delete(tmp_path):
    """Issue 14 item 13: a checkpoint of another run is refused with what the user can do (there is no
    resume=False on the command line): delete the work folder, named."""
    import torch

    from pd.errors import ConfigError
    from pd.train.checkpoint import Progress, load_checkpoint, save_checkpoint

    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    work = tmp_path / "adapter.work"
    folder = save_checkpoint(work, Progress(step=3), "run-a", {"w": torch.zeros(2)}, opt.state_dict(), sched)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(folder, "run-b", sched)
    msg = str(err.value)
    assert "resume=False" not in msg and f"delete {work} to train from the start" in msg and "\n" not in msg
