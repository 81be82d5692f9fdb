"""pd report --log-to: one run per experiment in TensorBoard, MLflow (local file store) and W&B (offline),
each read back with the tracker's own reader and compared with the rendered report's numbers and files."""

from __future__ import annotations

import gzip
import json
import math
import statistics
import struct
import sys
from pathlib import Path

import pytest
import yaml
from synthetic_run import write_synthetic_run

from pd.cli import main
from pd.errors import ConfigError
from pd.io import read_json, read_jsonl, write_json, write_jsonl
from pd.report.trackers import ROWS_IN_TEXT, check_trackers, markdown_table, parse_trackers

EXPERIMENTS = ("main", "rank")
JUDGE = "judge:tiny-judge"
CONFIG = {"run": list(EXPERIMENTS), "results_dir": "results", "reports_dir": "reports", "experiments": {
    "main": {"grid": {"model": ["tiny-llama"], "method": ["pd", "sft", "base"], "dataset": ["amazon", "nyt"],
                      "retrieval": ["none", "bm25"], "seed": [0, 1, 2]},
             "table": {"rows": ["method"], "columns": ["dataset"], "blocks": "retrieval"}},
    "rank": {"grid": {"model": ["tiny-llama"], "method": ["pd", "sft"], "dataset": ["nyt"], "retrieval": ["none"],
                      "rank": [4, 16, 64], "seed": [0]},
             "table": {"rows": ["method"], "columns": ["rank"], "figure_x": "rank"}}}}


def _write_run(root: Path) -> None:
    """The synthetic run's main and rank experiments as the workflow's manifests, main also graded by substring."""
    raw = read_json(write_synthetic_run(root, n_questions=12))
    for name in EXPERIMENTS:
        cells = [c for c in raw["cells"] if c["experiment"] == name]
        if name == "main":  # a second grader (the page shows the judge's): every third answer wrong
            for c in list(cells):
                if (root / c["grades"]).is_file():
                    rows = [dict(r, grader="substring", valid=True, correct=i % 3 != 0, reason=None)
                            for i, r in enumerate(read_jsonl(root / c["grades"]))]
                    path = c["grades"].replace(".jsonl", ".substring.jsonl")
                    write_jsonl(root / path, rows)
                    cells.append(dict(c, grader="substring", grades=path))
        table = dict(raw["experiments"][name], grader=JUDGE)
        write_json(root / "results" / "manifests" / f"{name}.json",
                   {"experiment": name, "table": table, "description": None, "records": cells})
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One `pd report --log-to tensorboard,mlflow --log-to wandb` of the two experiments; returns the run folder."""
    root = tmp_path_factory.mktemp("tracked")
    _write_run(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store without it
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(root))
        mp.setenv("WANDB_PROJECT", "pd-test")
        trackers = ["--log-to", "tensorboard,mlflow"] + (["--log-to", "wandb"] if _has("wandb") else [])
        _wandb_teardown()  # W&B reads its environment once per process
        try:
            assert main(["--config", "config.yaml", "report", "--log-dir", "tb", *trackers]) == 0
        finally:
            _wandb_teardown()
    return root


def _wandb_teardown() -> None:
    if "wandb" in sys.modules and sys.modules["wandb"] is not None:
        sys.modules["wandb"].teardown()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _expected(root: Path, name: str) -> dict[str, float]:
    """The metrics the page's summary.json shows: accuracy, gold log-likelihood, KL closed, each with its 2 SE."""
    summary = read_json(root / "reports" / name / "summary.json")

    def cell(axes, *, block=True):
        shown = (["retrieval"] if block and "retrieval" in axes else []) + ["method", "dataset" if name == "main"
                                                                            else "rank"]
        return "/".join(f"{a}:{axes[a]}" for a in shown)

    out = {}
    for r in summary["rows"]:
        if r["mean"] is not None:
            out[f"accuracy/{JUDGE}/{cell(r['axes'])}"] = r["mean"]
            out[f"accuracy_2se/{JUDGE}/{cell(r['axes'])}"] = 2 * r["se"]
    for r in summary["sections"].get("gold_logprob", []):
        if r["mean"] is not None:
            out[f"gold_logprob/{cell(r['axes'])}"], out[f"gold_logprob_2se/{cell(r['axes'])}"] = r["mean"], 2 * r["se"]
    for r in summary["sections"].get("heldout_kl", []):
        if r["mean"] is not None:
            k = cell(r["axes"], block=False)
            out[f"kl_closed/{k}"], out[f"kl_before/{k}"], out[f"kl_after/{k}"] = r["mean"], r["before"], r["after"]
            out[f"kl_closed_2se/{k}"] = 2 * r["se"]
    return out


def _substring_accuracy(root: Path) -> dict[str, float]:
    """The second grader's accuracy per cell from its grade files (the page does not show it): mean over seeds ± 2 SE
    (sample std / √seeds; one seed: binomial)."""
    per_cell: dict[str, list[float]] = {}
    for c in read_json(root / "results" / "manifests" / "main.json")["records"]:
        if c["grader"] == "substring":
            rows = read_jsonl(root / c["grades"])
            a = c["axes"]
            key = f"accuracy/substring/retrieval:{a['retrieval']}/method:{a['method']}/dataset:{a['dataset']}"
            per_cell.setdefault(key, []).append(sum(r["correct"] for r in rows) / len(rows))
    out = {}
    for key, acc in per_cell.items():
        out[key] = statistics.mean(acc)
        two_se = 2 * (statistics.stdev(acc) / math.sqrt(len(acc)) if len(acc) > 1 else
                      math.sqrt(acc[0] * (1 - acc[0]) / 12))  # one seed: binomial over its 12 questions
        out[key.replace("accuracy/", "accuracy_2se/", 1)] = two_se
    return out


def _rows(root: Path, name: str) -> list[dict]:
    with gzip.open(root / "reports" / name / "rows.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def test_tensorboard_run_per_experiment_holds_the_reports_numbers_rows_and_files(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in EXPERIMENTS:
        (run,) = (logged / "tb" / name).iterdir()  # one run per experiment
        acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
        acc.Reload()
        scalars = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
        expected = _expected(logged, name)
        if name == "main":
            expected.update(_substring_accuracy(logged))
            assert any(k.startswith("gold_logprob/") for k in expected) and any(k.startswith("kl_closed/")
                                                                                 for k in expected)
        assert set(scalars) == set(expected)
        for tag, value in expected.items():
            (event,) = scalars[tag]
            assert event.step == 0 and event.value == pytest.approx(value, rel=1e-6, abs=1e-7), tag
        texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
        assert set(texts) == {"tags/text_summary", "cells/text_summary", "rows/text_summary"}
        rows = _rows(logged, name)
        shown = [line for line in texts["rows/text_summary"].splitlines() if line.startswith("| ")]
        assert len(shown) == 1 + min(len(rows), ROWS_IN_TEXT)  # the header, then one line per answer, capped
        assert (f"The first {ROWS_IN_TEXT} of {len(rows)} rows" in texts["rows/text_summary"]) == (name == "main")
        assert "| axis.method | pd,sft" in texts["tags/text_summary"]
        report = run / "report"
        assert (report / name / "rows.jsonl.gz").read_bytes() == (logged / "reports" / name / "rows.jsonl.gz"
                                                                  ).read_bytes()
        assert (report / "index.html").is_file() and (report / name / "table.md").is_file()
        assert not (report / ({"main", "rank"} - {name}).pop()).exists()  # the other experiment's run has those


def test_mlflow_run_per_experiment_read_back_from_the_file_store(logged):
    from mlflow import MlflowClient

    client = MlflowClient((logged / "mlruns").as_uri())
    for name in EXPERIMENTS:
        (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert run.info.run_name == name and run.info.status == "FINISHED"
        expected = _expected(logged, name)
        if name == "main":
            expected.update(_substring_accuracy(logged))
        assert set(run.data.metrics) == set(expected)
        for key, value in expected.items():
            assert run.data.metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        tags = run.data.tags
        assert tags["pd.experiment"] == name and tags["pd.grader"] == JUDGE and tags["pd.config"] == "config.yaml"
        assert len(tags["pd.config_hash"]) == 16 and tags["axis.model"] == "tiny-llama"
        assert tags["axis.method"] == ("pd,sft,base" if name == "main" else "pd,sft")
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert files == {"cells.json", "rows.json", "report"}
        assert {a.path for a in client.list_artifacts(run.info.run_id, f"report/{name}")} >= {
            f"report/{name}/rows.jsonl.gz", f"report/{name}/summary.json", f"report/{name}/table.tex"}
        table = json.loads(Path(client.download_artifacts(run.info.run_id, "rows.json", str(logged))).read_text())
        want = _rows(logged, name)
        got = [dict(zip(table["columns"], r)) for r in table["data"]]
        assert [(r["cell_id"], r["grader"], r["item_id"], r["correct"]) for r in got] == [
            (r["cell_id"], r["grader"], r["item_id"], r["correct"]) for r in want]
        assert got[0]["method"] == want[0]["axes"]["method"]  # the axes as columns


def _wandb_records(run_dir: Path) -> list:
    """The records of an offline run's .wandb file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = run_dir.glob("*.wandb")
    data, pos, records, part = log.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, last
            rec = pb.Record()
            rec.ParseFromString(part + chunk)
            records.append(rec)
            part = b""
        elif kind in (2, 3):  # first, middle
            part += chunk
        elif length == 0:
            break
    return records


def test_wandb_offline_run_per_experiment(logged):
    pytest.importorskip("wandb")
    runs = sorted((logged / "wandb").glob("offline-run-*"))
    assert len(runs) == len(EXPERIMENTS)
    for run_dir in runs:
        records = _wandb_records(run_dir)
        (info,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        name = info.display_name
        assert info.run_group == name and info.project == "pd-test" and "method:pd" in info.tags
        history = [item for r in records if r.WhichOneof("record_type") == "history" for item in r.history.item]
        logged_keys = {item.key or item.nested_key[0] for item in history}  # a table: nested keys below its name
        history = {item.key or item.nested_key[0]: json.loads(item.value_json) for item in history
                   if len(item.nested_key) <= 1}
        summary = {item.key or item.nested_key[0]: json.loads(item.value_json) for r in records
                   if r.WhichOneof("record_type") == "summary" for item in r.summary.update
                   if len(item.nested_key) <= 1}
        expected = _expected(logged, name)
        if name == "main":
            expected.update(_substring_accuracy(logged))
        assert {k for k in logged_keys if not k.startswith("_")} == set(expected) | {"cells", "rows"}
        for key, value in expected.items():
            assert history[key] == summary[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and
                     r.artifact.type == "report"]
        (artifact,) = artifacts
        paths = {e.path for e in artifact.manifest.contents}
        assert {f"report/{name}/rows.jsonl.gz", "report/index.html"} <= paths
        (table,) = (run_dir / "files" / "media" / "table").glob("rows_*.table.json")
        assert len(json.loads(table.read_text())["data"]) == len(_rows(logged, name))


def test_trackers_are_named_once_and_unknown_or_missing_ones_refused(monkeypatch, tmp_path):
    assert parse_trackers(["mlflow, tensorboard", "mlflow", "WandB"]) == ["mlflow", "tensorboard", "wandb"]
    assert parse_trackers(None) == []
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'; allowed: tensorboard, mlflow, wandb"):
        parse_trackers(["neptune"])
    for module, tracker, package in (("mlflow", "mlflow", "mlflow-skinny"), ("wandb", "wandb", "wandb"),
                                     ("tensorboard", "tensorboard", "tensorboard")):
        with monkeypatch.context() as mp:  # the library made unimportable, as where it is not installed
            mp.setitem(sys.modules, module, None)
            mp.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
            with pytest.raises(ConfigError, match=rf"--log-to {tracker}: {package} is not installed.*"
                                                  rf"pip install {package}"):
                check_trackers([tracker])
    # the CLI refuses before rendering anything: exit 2, one line
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert main(["--config", "config.yaml", "report", "--log-to", "mlflow"]) == 2
    assert main(["--config", "config.yaml", "report", "--log-to", "tensorboard,neptune"]) == 2
    assert not (tmp_path / "reports").exists()


def test_markdown_table_escapes_cells():
    text = markdown_table([{"a": "x|y", "b": 0.123456789}, {"a": None, "c": "*"}])
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", r"| x\|y | 0.123457 |  |", r"|  |  | \* |"]


def test_a_tracker_that_cannot_start_is_a_one_line_config_error(monkeypatch, tmp_path):
    """MLflow 3 refuses a file store unless opted in; W&B online without an API key: each says what to set."""
    from pd.report.trackers import ExperimentRun, MLflowTracker, WandbTracker

    run = ExperimentRun("x", "x", "substring")
    if _has("mlflow"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        try:
            MLflowTracker().log(run)
        except ConfigError as err:
            assert "--log-to mlflow: cannot open" in str(err) and "MLFLOW_ALLOW_FILE_STORE=true" in str(err)
            assert "\n" not in str(err)
        else:
            import mlflow

            assert int(mlflow.__version__.split(".")[0]) < 3, "MLflow 3 opened a file store without the opt-in"
    if _has("wandb"):
        import wandb

        wandb.teardown()  # W&B reads its environment once per process: forget the one of earlier tests
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no stored key
        monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
        monkeypatch.setenv("WANDB_DIR", str(tmp_path))
        monkeypatch.setenv("WANDB_MODE", "online")
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        try:
            with pytest.raises(ConfigError, match=r"--log-to wandb: .*API key.*WANDB_MODE=offline"):
                WandbTracker().log(run)
        finally:
            wandb.teardown()


def test_config_identity_changes_with_the_experiment_not_with_the_others():
    from pd.config import load_config
    from pd.report.trackers import config_identity

    cfg = load_config(CONFIG)
    first = config_identity(cfg, "main", "config.yaml")
    assert first["pd.config"] == "config.yaml" and len(first["pd.config_hash"]) == 16
    other = {**CONFIG, "run": ["main"], "results_dir": "elsewhere",
             "experiments": {**CONFIG["experiments"], "rank": {**CONFIG["experiments"]["rank"], "grid": {
                 **CONFIG["experiments"]["rank"]["grid"], "rank": [8]}}}}
    assert config_identity(load_config(other), "main") == {"pd.config_hash": first["pd.config_hash"]}
    changed = {**CONFIG, "experiments": {**CONFIG["experiments"], "main": {**CONFIG["experiments"]["main"], "grid": {
        **CONFIG["experiments"]["main"]["grid"], "seed": [0, 1]}}}}
    assert config_identity(load_config(changed), "main")["pd.config_hash"] != first["pd.config_hash"]
    shared = {**CONFIG, "training": {"lr": 3e-4}}  # a setting every experiment shares
    assert config_identity(load_config(shared), "main")["pd.config_hash"] != first["pd.config_hash"]
