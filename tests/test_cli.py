"""The `pd` command: inspection commands, cell selection and user-facing errors."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from pd.cli import main
from pd.config import DEFAULT_CONFIG, load_config
from pd.pipeline.plan import build_plan

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


def test_cells_says_which_cells_are_done_missing_or_stale(tmp_path, capsys):
    """The status comes from the plan and the files: a cell whose files all exist is done, one whose input
    is newer than a file is stale, the others are missing with the number of their jobs still to run."""
    cfg = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    cfg |= {"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports")}
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    plan = build_plan(load_config(conf), ["tiny"])
    first, *rest = plan.cells["tiny"]
    needed = sorted({p for g in first.grades.values() for p in plan.upstream(g)})
    for i, path in enumerate(needed):  # as an uninterrupted run leaves them: each written after its inputs
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("x")
        os.utime(path, (1_000_000 + i * 10, 1_000_000 + i * 10))
    assert main(["--config", str(conf), "cells", "tiny"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines[0].endswith("done")
    others = {p for c in rest for g in c.grades.values() for p in plan.upstream(g)} - set(needed)
    assert all("missing (" in line for line in lines[1:]) and others
    # an input rewritten after the grade (e.g. a retrained adapter) makes the cell stale, naming the file
    grade = next(iter(first.grades.values()))
    upstream = plan.artifacts[grade].inputs[0]
    os.utime(upstream, (3_000_000, 3_000_000))
    assert main(["--config", str(conf), "cells", "tiny", first.cell_id]) == 0
    out = capsys.readouterr().out
    assert "stale (1 file older than an input)" in out and f"stale      {grade}" in out
    assert "0 done" not in out and "1 stale" in out


def test_version_models_and_every_option_has_help(capsys):
    import pytest

    from pd import __version__
    from pd.cli import build_parser

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"pd {__version__}"
    assert main(["--config", str(DEFAULT_CONFIG), "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["model", "family", "params", "here"]
    smollm2 = next(line for line in lines if line.startswith("smollm2-135m-instruct"))
    tiny = next(line for line in lines if line.startswith("tiny-llama"))
    assert " present " in tiny and (" present " in smollm2 or " missing " in smollm2)
    # every option and positional argument of every subcommand explains itself in --help
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subs.items():
        for action in sub._actions:
            if action.dest != "help" and name != "serve":
                assert action.help, f"pd {name}: {action.option_strings or action.dest} has no help"


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
    out = subprocess.run([sys.executable, "-m", "pd.cli", "--config", str(ok), "report"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no results yet for x" in out.stderr
    out = subprocess.run([sys.executable, "-m", "pd.cli", "--config", str(ok), "cells", "x", "nothing-matches"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no cell of x matches" in out.stderr


def test_validate_with_the_slurm_site_prints_each_kinds_needs_and_asks(capsys):
    from pd.config import load_config
    from pd.config_checks import load_yaml_mapping
    from pd.models import registry
    from pd.pipeline.plan import build_plan
    from pd.pipeline.requests import cost_table
    from pd.pipeline.resources import load_site

    site_file = ROOT / "profiles/slurm/site.yaml"
    assert main(["--config", str(DEFAULT_CONFIG), "validate", "--configfile", str(site_file)]) == 0
    out = capsys.readouterr().out
    assert "layout / batch" in out and "GPU-h need" in out and "The whole grid (16 experiments)" in out
    cfg = load_config(DEFAULT_CONFIG, overrides=load_yaml_mapping(site_file))
    plan, site = build_plan(cfg, list(cfg["experiments"])), load_site(cfg["slurm_site"])
    rows, problems = cost_table(plan, registry(), site)
    assert problems == []
    by = {(r["kind"], r["model"]): r for r in rows}
    # every GPU kind of the paper grid has a row, and every job's need fits its GPUs with the allocator's headroom
    assert {k for k, _ in by} >= {"questions", "answers", "teacher", "adapter", "evaluate", "grade", "capability"}
    for r in rows:
        assert r["memory_gb"] <= 0.92 * r["gpu_memory_gb"], r
        assert r["ask_h"] >= 1.5 * r["need_h"] - 0.02 or r["ask_h"] >= 0.25, r
    # a 70B model's weights (141 GB) need two 80 GB GPUs for the answers (layers in turn); its teacher job
    # holds them, never the 8B student's training job (one GPU)
    assert max(by[("answers", "llama3-70b-instruct")]["gpus"]) >= 2
    assert max(by[("teacher", "llama3-70b-instruct")]["gpus"]) >= 2
    assert by[("adapter", "llama3-8b-instruct")]["gpus"] == {1}
    assert by[("evaluate", "llama3-8b-instruct")]["gpus"] == {1}
    # the table's ask is what the job's sbatch asks: a site's `sizes:` tier replaces the cost model's time
    tiered = load_site({**cfg["slurm_site"], "sizes": {"adapter": [{"max_params_b": 10, "runtime": 3000}]}})
    from pd.pipeline.requests import artifact_resources

    art = next(a for a in plan.of_kind("adapter") if a.model == "llama3-8b-instruct")
    rows_t, _ = cost_table(plan, registry(), tiered, [art.path])
    sbatch = artifact_resources(art, plan, 8.0, site=tiered, registry=registry())["runtime"]
    assert rows_t[0]["ask_h"] == sbatch / 60 and sbatch != round(60 * by[("adapter", art.model)]["ask_h"])
    # without a site: a hint, no table
    assert main(["--config", str(DEFAULT_CONFIG), "validate"]) == 0
    assert "--configfile profiles/slurm/site.yaml" in capsys.readouterr().out


def test_validate_takes_snakemakes_config_values_and_the_profiles_restarts(capsys, tmp_path):
    from pd.config_checks import parse_config_item
    from pd.errors import ConfigError

    site_file = ROOT / "profiles/slurm/site.yaml"
    args = ["--config", str(DEFAULT_CONFIG), "validate", "--configfile", str(site_file)]
    assert main([*args, "--config", "run=[main]"]) == 0
    out = capsys.readouterr().out
    assert "`run` selects main" in out and "What the jobs of main need" in out
    assert main([*args, "--config", "run=[demo]"]) == 0
    out = capsys.readouterr().out
    assert "What the jobs of demo need" in out
    assert parse_config_item("run=[main, demo]") == {"run": ["main", "demo"]}
    assert parse_config_item("generation={batch_size: auto}") == {"generation": {"batch_size": "auto"}}
    for bad in ("run", "=x", "run=[main"):
        try:
            parse_config_item(bad)
        except ConfigError as err:
            assert "--config" in str(err)
        else:
            raise AssertionError(bad)
    # a site whose jobs outlive max_runtime must resume over more attempts than the profile's restart-times
    profile = tmp_path / "profile"
    profile.mkdir()
    site = yaml.safe_load(site_file.read_text())
    site["slurm_site"]["max_runtime"] = 240
    (profile / "site.yaml").write_text(yaml.safe_dump(site))
    (profile / "config.yaml").write_text("restart-times: 0\n")
    assert main(["--config", str(DEFAULT_CONFIG), "validate", "--configfile", str(profile / "site.yaml"),
                 "--config", "run=[main]"]) == 2
    out = capsys.readouterr().out
    assert "cannot run as planned" in out and "set restart-times >=" in out
    (profile / "config.yaml").write_text("restart-times: 99\n")  # enough attempts for every job of the grid
    assert main(["--config", str(DEFAULT_CONFIG), "validate", "--configfile", str(profile / "site.yaml"),
                 "--config", "run=[main]"]) == 0
    assert "cannot run as planned" not in capsys.readouterr().out


def test_merge_command_writes_a_loadable_merged_model(tmp_path, monkeypatch):
    import torch

    from pd.models import get_spec, load_model, load_tokenizer
    from pd.train.lora import attach_lora

    monkeypatch.setenv("PD_CACHE_DIR", str(tmp_path / "cache"))
    spec = get_spec("tiny-llama")
    tok = load_tokenizer(spec)
    lora = attach_lora(load_model(spec, device="cpu", dtype=torch.float32), rank=8, alpha=16.0, seed=0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.full_like(p, 0.01))
    lora.save_pretrained(tmp_path / "adapter")
    ids = tok("The Hudson river flows south.", return_tensors="pt").input_ids
    with torch.no_grad():
        want = lora.eval()(input_ids=ids).logits.float()
        base = load_model(spec, device="cpu", dtype=torch.float32)(input_ids=ids).logits.float()
    assert (want - base).abs().max() > 1e-3

    assert main(["--config", str(DEFAULT_CONFIG), "merge", str(tmp_path / "adapter"), "--model", "tiny-llama",
                 "--out", str(tmp_path / "merged"), "--dtype", "float32"]) == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        got = merged(input_ids=ids).logits.float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert main(["--config", str(DEFAULT_CONFIG), "merge", str(tmp_path / "nope"), "--model", "tiny-llama",
                 "--out", str(tmp_path / "m2")]) == 2


def test_cells_run_builds_the_chosen_targets_with_snakemake_flags_after_dashes(tmp_path):
    """`pd cells EXP FILTER --run -- -n ...`: the targets reach Snakemake as targets (not --config entries)."""
    cfg = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    cfg |= {"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports")}
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pd.cli", "--config", str(conf), "cells", "tiny", "bm25", "--run",
                          "--profile", str(ROOT / "profiles" / "local"), "--", "-n", "-s", str(ROOT / "Snakefile"),
                          "--cores", "2"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    log = out.stdout + out.stderr
    target = next(line.split()[-1] for line in out.stdout.splitlines() if line.startswith("      substring"))
    assert "bm25" in target and f"{target} --config run=[tiny]" in log
    stats = dict(line.split() for line in log.split("Job stats:")[1].splitlines()[3:6])
    assert stats == {"retrieval": "1", "evaluate": "1", "grade": "1"}  # one cell's chain, not the experiment
    assert not (tmp_path / "results").exists()  # a dry run (-n passed through) writes nothing
    wrong = subprocess.run([sys.executable, "-m", "pd.cli", "--config", str(conf), "cells", "tiny", "--", "-n"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert wrong.returncode == 2 and "need --run" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
