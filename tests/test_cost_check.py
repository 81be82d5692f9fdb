"""The GPU check's cost rows (bench/cost_check.py, run here with --tiny on the CPU) and the refit of the cost model's
constants (bench/calibrate.py, pd.cost.fit): the shipped rows refitted stay within the model's +-15 %, constants
that made synthetic rows come back, calibration.yaml's numbers rewritten in place."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pd.cost.calibration import CALIBRATION_PATH, GPU, calibration, constants, gpu_named, reference_gpu
from pd.cost.fit import FITTED, Measured, current, refit, row_errors, write_constants
from pd.cost.rows import FIELDS, MEASURED, calibration_rows, predict
from pd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.15
H100 = GPU(memory_gb=85.0, tflops=989.0, bandwidth_gbs=3350.0)
# known constants for the synthetic rows: every fitted constant moved off the shipped value
FACTORS = {"act_hidden": 1.3, "act_intermediate": 0.8, "ckpt_hidden": 1.5, "logit_bytes": 0.75, "overhead_gb": 1.6,
           "matmul_efficiency": 0.8, "elementwise_s": 1.4, "layer_s": 0.7, "optimizer_s_per_param": 2.5,
           "layer_ms": 1.2, "row_layer_ms": 0.6, "sample_row_ms": 0.5}


def _run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_tiny_cost_check_writes_calibration_rows_with_predictions(tmp_path):
    out = tmp_path / "cost_check.json"
    done = _run("cost_check.py", "--tiny", "--out", str(out))
    report = json.loads(out.read_text())
    assert "errors" not in report, report.get("errors")
    assert report["tiny"] and report["gpu"]["memory_gb"] is None and report["gpu"]["name"].startswith("cpu")
    train, decode = report["training"]["rows"], report["decoding"]["rows"]
    assert [r["model"] for r in train] == ["tiny-llama", "tiny-qwen2"]  # stand-ins of the 8B and 14B cells
    assert [r["batch"] for r in decode] == [8, 64, 32]  # 8, 64, auto (on a CPU: pd.generate.sizing.CPU_BATCH)
    for section, rows in (("training", train), ("decoding", decode)):
        for row in rows:
            assert set(row) == set(FIELDS[section]) | {"predicted", "error"}, row
            described = {k: row[k] for k in FIELDS[section]}
            want = predict(section, described, reference_gpu())  # --tiny predicts for the calibration's GPU
            for f in MEASURED[section]:
                assert row["predicted"][f] == pytest.approx(want[f], rel=1e-3, abs=1e-4)
                if row[f] is None:
                    assert row["error"][f] is None
                else:
                    assert row[f] > 0
                    assert row["error"][f] == pytest.approx(row["predicted"][f] / row[f] - 1, rel=1e-3, abs=1e-4)
    for row in train:
        assert row["peak_gb"] is None and row["step_s"] > 0  # no CUDA memory counter on a CPU
        assert row["rank"] == 8 and len(row["tokens"]) == 3 and row["tokens"][2] < row["tokens"][0]
    # the micro-batch and checkpointing one GPU runs are the plan's, for the main experiment's cells
    for plan, row in zip(report["plan"], train):
        assert row["micro"] == plan["run_on_one_gpu"]["micro_batch"] == plan["layout"]["micro_batch"]
        assert row["checkpointing"] == plan["layout"]["checkpointing"]
        assert "/pd/" in plan["artifact"] and plan["tokens"][0] > 500  # the real cell's rows, shortened for --tiny
    assert decode[2]["predicted"]["batch"] >= 64  # what batch_for_memory would give on the calibration's GPU
    assert "train tiny-llama r8 micro" in done.stdout and "decode tiny-llama batch 64" in done.stdout
    # a CPU's rows calibrate nothing
    refused = _run("calibrate.py", "--no-shipped", str(out), check=False)
    assert refused.returncode == 2 and "measured without a GPU" in refused.stderr


def test_refit_of_the_shipped_rows_reproduces_them(tmp_path):
    result = tmp_path / "fit.json"
    done = _run("calibrate.py", "--json", str(result))
    fit = json.loads(result.read_text())
    assert fit["old"] == current()
    assert len(fit["rows"]) == len(calibration_rows())
    for row in fit["rows"]:
        for f, e in row["after"].items():
            assert e is not None and abs(e) <= TOLERANCE, (row["source"], f, e)
    assert "largest error after" in done.stdout and "OUTSIDE" not in done.stdout
    # written into a copy of calibration.yaml (numbers rounded to 4 digits), the constants still reproduce every row
    copy = tmp_path / "calibration.yaml"
    copy.write_text(CALIBRATION_PATH.read_text())
    write_constants(fit["new"], copy)
    written = yaml.safe_load(copy.read_text())
    values = {s: {n: written[s][n] for n in names} for s, names in FITTED.items()}
    for s, names in values.items():
        for n, v in names.items():
            assert v == pytest.approx(fit["new"][s][n], rel=1e-3)
    errs = row_errors([Measured(s, r) for s, r in calibration_rows()], values)
    assert max(abs(e) for r in errs for e in r["error"].values()) <= TOLERANCE


def _synthetic_report(true: dict) -> dict:
    """Rows that the cost model with ``true`` constants predicts, as a GPU check's JSON on an H100."""
    rows: dict = {"training": [], "decoding": [], "forward": []}
    for model, rank, micro, tokens, ck in itertools.product(
            ["llama3-8b", "qwen2.5-14b", "qwen2.5-3b", "tiny-llama", "tiny-llama-large"], [16, 1024], [1, 32],
            [[32, 48, 16], [2048, 2048, 64], [600, 600, 500]], [False, True]):
        rows["training"].append(dict(model=model, rank=rank, micro=micro, tokens=tokens, checkpointing=ck))
    for model, batch, prompt, sampled in itertools.product(["llama3-8b", "qwen2.5-3b"], [1, 8, 64, 256], [40, 300],
                                                          [False, True]):
        rows["decoding"].append(dict(model=model, batch=batch, prompt=prompt, new=48, sampled=sampled))
    rows["forward"].append(dict(model="llama3-8b", tokens=4000))
    with constants(true):
        for section, rs in rows.items():
            for i, r in enumerate(rs):
                r.update(predict(section, r, H100), source=f"synthetic {section} {i}")
    return {"gpu": {"name": "NVIDIA H100 80GB HBM3", "memory_gb": H100.memory_gb, "tflops": H100.tflops,
                    "bandwidth_gbs": H100.bandwidth_gbs}, **{s: {"rows": rs} for s, rs in rows.items()}}


def _true_constants() -> dict:
    return {s: {n: v * FACTORS[n] for n, v in names.items()} for s, names in current().items()}


def test_calibrate_recovers_the_constants_that_made_synthetic_rows(tmp_path):
    true = _true_constants()
    report = tmp_path / "synthetic.json"
    report.write_text(json.dumps(_synthetic_report(true)))
    result = tmp_path / "fit.json"
    _run("calibrate.py", "--no-shipped", str(report), "--json", str(result))
    new = json.loads(result.read_text())["new"]
    for s, names in true.items():
        for n, v in names.items():
            assert new[s][n] == pytest.approx(v, rel=0.03), f"{s}.{n}: fitted {new[s][n]:.4g}, true {v:.4g}"
    assert calibration()["training"]["act_hidden"] == current()["training"]["act_hidden"]  # the file untouched


def test_without_the_prior_the_fit_is_exact_and_unmeasured_constants_stay():
    from pd.cost.fit import report_rows

    true = _true_constants()
    rows = report_rows(_synthetic_report(true))
    fitted = refit(rows, prior=0.0)
    for s, names in true.items():
        for n, v in names.items():
            assert fitted[s][n] == pytest.approx(v, rel=1e-4), f"{s}.{n}"
    # decoding rows alone measure no training memory constant: those stay as they are
    only_decoding = refit([m for m in rows if m.section == "decoding"])
    assert only_decoding["training"]["act_hidden"] == pytest.approx(current()["training"]["act_hidden"], rel=1e-6)
    assert only_decoding["decoding"]["sample_row_ms"] == pytest.approx(true["decoding"]["sample_row_ms"], rel=0.03)


def test_write_constants_changes_only_the_numbers(tmp_path):
    copy = tmp_path / "calibration.yaml"
    text = CALIBRATION_PATH.read_text()
    copy.write_text(text)
    changed = write_constants({"decoding": {"sample_row_ms": 0.1234567}, "training": {"elementwise_s": 4.5e-11}}, copy)
    assert changed == ["decoding.sample_row_ms: 0.6288 -> 0.1235", "training.elementwise_s: 3.126e-11 -> 4.500e-11"]
    new = copy.read_text().splitlines()
    old = text.splitlines()
    diff = [(a, b) for a, b in zip(old, new) if a != b]
    assert len(new) == len(old) and len(diff) == 2
    assert diff[0][1] == "  elementwise_s: 4.500e-11"
    assert diff[1][1] == "  sample_row_ms: 0.1235"
    loaded = yaml.safe_load(copy.read_text())
    assert loaded["decoding"]["sample_row_ms"] == 0.1235 and loaded["training"]["elementwise_s"] == 4.5e-11
    assert loaded["vllm"]["layer_ms"] == 0.02  # another section's constant of the same name is left alone
    with pytest.raises(ConfigError, match="no line `nonsense: <number>`"):
        write_constants({"training": {"nonsense": 1.0}}, copy)


def test_constants_are_restored_and_checked():
    before = calibration()["decoding"]["layer_ms"]
    with pytest.raises(RuntimeError), constants({"decoding": {"layer_ms": 9.0}}):
        assert calibration()["decoding"]["layer_ms"] == 9.0
        raise RuntimeError
    assert calibration()["decoding"]["layer_ms"] == before
    with pytest.raises(KeyError, match="nonsense"), constants({"decoding": {"nonsense": 1.0}}):
        pass


def test_gpus_by_name():
    assert gpu_named("NVIDIA H200", 150.0)[0].bandwidth_gbs == 4800
    assert gpu_named("NVIDIA H100 80GB HBM3", 85.0)[0].bandwidth_gbs == 3350
    assert gpu_named("NVIDIA H100 PCIe", 85.0)[0].bandwidth_gbs == 2000
    gpu, known = gpu_named("Some Future GPU", 100.0)
    assert not known and gpu.memory_gb == 100.0


def test_a_sharded_plan_is_measured_unsharded_where_one_gpu_holds_it(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from cost_check import CELLS, load_plan, planned
    finally:
        sys.path.remove(str(REPO / "bench"))
    config = tmp_path / "config.yaml"
    text = (REPO / "config.yaml").read_text()
    assert "\ntraining: {}\n" in text
    config.write_text(text.replace("\ntraining: {}\n", "\ntraining: {processes: auto, parallel: fsdp}\n"))
    plan, models = load_plan(str(config))
    small = planned(CELLS[0], GPU(memory_gb=45.0), plan, models, "main")  # 8B r1024: 59 GB before activations
    assert small["layout"]["parallel"] == "fsdp" and small["layout"]["processes"] > 1
    assert small["run"]["micro_batch"] is None and "FSDP" in small["run"]["why"]
    big = planned(CELLS[0], GPU(memory_gb=141.0), plan, models, "main")
    assert big["layout"]["processes"] == 1 and big["run"]["micro_batch"] == big["layout"]["micro_batch"]
    # the 14B's 8 processes share it over FSDP; one process's 4 rows fit one 85 GB GPU unsharded: measured so
    from pd.cost.shapes import shape_of
    from pd.cost.training import training_layout

    h100 = GPU(memory_gb=85.0)
    share = planned(CELLS[1], h100, plan, models, "main")
    assert share["layout"]["parallel"] == "fsdp" and share["layout"]["processes"] == 8
    one = training_layout(shape_of(models[CELLS[1].model]), CELLS[1].rank, 4, share["tokens"], world=1,
                          gpu_gb=85.0, live_teacher=True, gpu=h100)
    assert (share["run"]["micro_batch"], share["run"]["checkpointing"]) == (one.micro_batch, one.checkpointing)
    assert "world=1" in share["run"]["why"]
