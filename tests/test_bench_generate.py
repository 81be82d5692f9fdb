"""bench/generate.py's GPU rows (auto batch against batch 8 on a Llama-3 shape), run on CPU with one
layer so the code path `make gpu-check` takes is exercised before a GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    out = tmp_path / "gen.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "generate.py"), *args, "--out", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


def test_without_a_gpu_the_rows_say_so(tmp_path):
    report = _run("--llama3", "8b", tmp_path=tmp_path)
    assert report["llama3"].startswith("not measured") and report["results"] == []


@pytest.mark.slow
def test_auto_batch_rows_on_a_one_layer_llama3_shape(tmp_path):
    report = _run("--llama3", "1b", "--force-llama3-on-cpu", "--llama3-layers", "1", "--gpu-prompts", "32",
                  "--gpu-new-tokens", "3", tmp_path=tmp_path)
    (row,) = report["results"]
    assert row["auto_prompts"] == 32 and row["batch8_prompts"] == 16 and row["batch8_batch"] == 8
    assert row["auto_batch"] >= 1 and row["auto_tok_s"] > 0 and row["batch8_tok_s"] > 0
    assert row["ratio"] == pytest.approx(row["auto_tok_s"] / row["batch8_tok_s"], rel=0.01)
