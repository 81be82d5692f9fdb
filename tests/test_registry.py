"""Declared once: a new job kind is one module (here written to a temporary file and imported), and the
plan, the Snakefile's rules, the job runner and the resources pick it up from the registry alone."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pd.config import load_config
from pd.pipeline.kind import REGISTRY, unregister

ROOT = Path(__file__).resolve().parent.parent

TOY_KIND = '''
"""A toy measurement: the passages and the answer length of each cell's evaluation."""

from dataclasses import dataclass
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.spec import JobSpec


@dataclass(frozen=True)
class ToySpec(JobSpec):
    KIND: ClassVar[str] = "toy_stats"
    dataset: str
    dataset_cfg: dict
    evaluation: str


@register
class ToyStats(JobKind):
    name = "toy_stats"
    pattern = PathPattern("{R}/{dataset}/toy/{stem}.json")
    spec = ToySpec
    priority = 7
    size_independent = True
    per_cell = True

    def plan(self, planner, c, adapter):
        epath = planner.need("evaluate", c, adapter)  # asks for its input by kind name
        spec = ToySpec(**planner.data(c), evaluation=epath)
        return planner.add(spec, {"dataset": c.dataset, "stem": f"toy_{planner.hash(spec)}"}, (epath,))

    def run(self, spec, out):
        from pd.io import read_jsonl, write_json

        rows = read_jsonl(spec.evaluation)
        write_json(out, {"passages": len(spec.load_dataset().documents), "answers": len(rows)})
'''


@pytest.fixture
def toy_kind(tmp_path):
    import pd.pipeline.registry  # noqa: F401  (the built-in kinds first, as in any run)

    path = tmp_path / "toy_kind_module.py"
    path.write_text(textwrap.dedent(TOY_KIND))
    spec = importlib.util.spec_from_file_location("toy_kind_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers the kind
    yield module
    unregister("toy_stats")


def _tiny_config(tmp_path) -> dict:
    raw = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    raw["results_dir"] = str(tmp_path / "results")
    raw["reports_dir"] = str(tmp_path / "reports")
    raw["experiments"]["tiny"]["grid"]["retrieval"] = ["none"]
    return load_config(raw)


def test_a_kind_in_one_module_joins_plan_rules_runner_and_resources(toy_kind, tmp_path):
    from pd.pipeline.plan import build_plan
    from pd.pipeline.registry import kind_names
    from pd.pipeline.resources import job_resources
    from pd.pipeline.run import run_job, run_spec
    from pd.pipeline.workflow import Workflow

    assert kind_names()[-1] == "toy_stats"
    cfg = _tiny_config(tmp_path)
    plan = build_plan(cfg)
    toys = plan.of_kind("toy_stats")
    assert len(toys) == 1 and toys[0].path.startswith(str(tmp_path / "results" / "tiny-nyt" / "toy" / "toy_"))
    assert toys[0].inputs == (plan.cells["tiny"][0].eval_path,)
    manifest = plan.get(plan.manifest_path("tiny"))
    assert toys[0].path in manifest.inputs  # the report waits for it
    assert manifest.spec.records[0]["outputs"] == {"toy_stats": toys[0].path}
    assert plan.count()["toy_stats"] == 1

    # The Snakefile's loop writes its rule: the strings and callables come from the kind.
    wf = Workflow(cfg.copy())
    assert "toy_stats" in [k.name for k in wf.generic_kinds()]
    assert wf.output("toy_stats") == f"{tmp_path}/results/{{dataset,[^/]+}}/toy/{{stem,[^/]+}}.json"
    assert wf.benchmark("toy_stats") == f"{tmp_path}/results/benchmarks/{{dataset}}/toy/{{stem}}.tsv"
    assert wf.priority("toy_stats") == 7
    assert job_resources("toy_stats", 0.0)["cpus_per_task"] >= 1

    # The runner runs it from its dictionary form, as workflow/scripts/stage.py does.
    for art in plan.in_order(toys[0].path)[:-1]:
        run_spec(art.spec, art.path)
    run_job("toy_stats", toys[0].spec.as_dict(), [toys[0].path], [str(tmp_path / "toy.log")])
    out = json.loads(Path(toys[0].path).read_text())
    assert out == {"passages": 2, "answers": len(toys[0].spec.load_dataset().items)}


def test_unregistered_kind_is_gone_and_names_are_unique(toy_kind):
    from pd.pipeline.kind import JobKind, PathPattern, register
    from pd.pipeline.spec import JobSpec

    class Clash(JobKind):
        name = "toy_stats"
        pattern = PathPattern("{R}/x/{stem}.json")
        spec = toy_kind.ToySpec

    with pytest.raises(ValueError, match="registered twice"):
        register(Clash)

    class WrongSpec(JobKind):
        name = "other"
        pattern = PathPattern("{R}/x/{stem}.json")
        spec = JobSpec

    with pytest.raises(ValueError, match="names another kind"):
        register(WrongSpec)
    unregister("toy_stats")
    assert "toy_stats" not in REGISTRY


def test_the_snakefile_lists_one_rule_per_registered_kind(tmp_path):
    """The real Snakefile has one rule per registered kind (the loop's and the written-out local ones)."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--list-rules"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from pd.pipeline.registry import all_kinds

    listed = {line.strip() for line in out.stdout.splitlines() if line.strip()}
    assert listed == {"all"} | {k.name for k in all_kinds()}
