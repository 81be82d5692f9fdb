"""The `pd` command: inspection commands, cell selection and user-facing errors."""

import subprocess
import sys
from pathlib import Path

import yaml

from pd.cli import main
from pd.config import DEFAULT_CONFIG, load_config
from pd.plan import build_plan

ROOT = Path(__file__).resolve().parent.parent


def test_validate_counts_the_grid(capsys):
    assert main(["--config", str(DEFAULT_CONFIG), "validate"]) == 0
    cfg = load_config(DEFAULT_CONFIG)
    plan = build_plan(cfg, list(cfg["experiments"]))
    out = capsys.readouterr().out
    assert f"{sum(len(c) for c in plan.cells.values())} cells" in out
    assert f"{len(plan.artifacts)} artifacts" in out


def test_cells_filters_and_lists_targets(capsys):
    assert main(["--config", str(DEFAULT_CONFIG), "cells", "demo", "/pd/", "s0"]) == 0
    out = capsys.readouterr().out
    listed = [line for line in out.splitlines() if line.startswith("[")]
    plan = build_plan(load_config(DEFAULT_CONFIG), ["demo"])
    expected = [c for c in plan.cells["demo"] if "/pd/" in c.cell_id and "s0" in c.cell_id]
    assert len(listed) == len(expected) == 2  # closed-book and BM25
    for c in expected:
        assert c.grades["substring"] in out


def test_user_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text(yaml.safe_dump({"run": ["x"], "experiments": {"x": {"grid": {
        "model": ["tiny-llama"], "method": ["pd"], "dataset": ["nyt"], "retrieval": ["bm52"]}}}}))
    for args in (["validate"], ["cells", "x"], ["report"]):
        out = subprocess.run([sys.executable, "-m", "pd.cli", "--config", str(bad), *args], capture_output=True,
                             text=True, cwd=tmp_path)
        assert out.returncode == 2
        assert "grid.retrieval[0]: 'bm52' is not allowed" in out.stderr and "Traceback" not in out.stderr
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"run": ["x"], "results_dir": str(tmp_path / "r"), "experiments": {"x": {"grid": {
        "model": ["tiny-llama"], "method": ["base"], "dataset": ["nyt"]}}}}))
    out = subprocess.run([sys.executable, "-m", "pd.cli", "--config", str(ok), "report"], capture_output=True, text=True)
    assert out.returncode == 2 and "no results yet for x" in out.stderr
    out = subprocess.run([sys.executable, "-m", "pd.cli", "--config", str(ok), "cells", "x", "nothing-matches"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no cell of x matches" in out.stderr
