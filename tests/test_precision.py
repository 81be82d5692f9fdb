"""Precision chosen by the machine: the CPU probe, its cache, the rule, and the identities it enters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pd import precision
from pd.errors import ConfigError
from pd.models import get_spec, layer_shape, resolve_dtype


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PD_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_explicit_precision_is_kept_and_unknown_refused():
    for name in precision.PRECISIONS:
        assert precision.resolve_precision(name, "cpu", speedup=0.01) == name
        assert precision.resolve_precision(name, "cuda") == name
    with pytest.raises(ConfigError, match="'fp8'.*allowed: auto, float32, bfloat16, float16"):
        precision.resolve_precision("fp8", "cpu")


@pytest.mark.parametrize("speedup, expected", [(0.016, "float32"), (1.0, "float32"), (1.1, "float32"),
                                                (1.5, "bfloat16"), (3.2, "bfloat16")])
def test_auto_on_cpu_follows_the_measured_speedup(speedup, expected):
    assert precision.resolve_precision("auto", "cpu", speedup=speedup) == expected


def test_probe_is_cached_per_machine_and_shape(cache):
    calls = []

    def timer(dtype, shape):
        calls.append((dtype, shape))
        return {"float32": 2.0, "bfloat16": 1.0}[dtype]

    assert precision.cpu_bfloat16_speedup((576, 1536), timer=timer) == 2.0
    assert calls == [("float32", (256, 576, 1536)), ("bfloat16", (256, 576, 1536)), ("float32", (256, 576, 1536))]

    def no_timer(dtype, shape):
        raise AssertionError("a cached result must not be measured again")

    assert precision.cpu_bfloat16_speedup((576, 1536), timer=no_timer) == 2.0
    files = list((cache / "precision").glob("*.json"))
    assert len(files) == 1
    row = json.loads(files[0].read_text())
    assert row["shape"] == [256, 576, 1536] and row["float32_s"] == 2.0 and row["speedup"] == 2.0
    # Another shape is another probe; an unreadable file is measured again.
    assert precision.cpu_bfloat16_speedup((512, 1024), timer=timer) == 2.0
    files[0].write_text("{not json")
    assert precision.cpu_bfloat16_speedup((576, 1536), timer=lambda d, s: {"float32": 1.0, "bfloat16": 4.0}[d]) == 0.25
    # A layer too small to time (tiny-llama's 64 x 128) is float32 without a probe, on every run.
    assert precision.cpu_bfloat16_speedup((64, 128), timer=no_timer) == 1.0
    assert precision.resolve_precision("auto", "cpu", (64, 128)) == "float32"


PROBE = textwrap.dedent("""
    import json, sys
    from pd import precision
    speedup = precision.cpu_bfloat16_speedup((576, 1536), refresh=True)
    # An independent measurement: a bigger product than the probe's, more repeats.
    fp32 = precision.time_matmul("float32", (512, 576, 1536), repeats=10, budget_s=5)
    bf16 = precision.time_matmul("bfloat16", (512, 576, 1536), repeats=10, budget_s=5)
    print(json.dumps({"speedup": speedup, "independent": fp32 / bf16,
                      "chosen": precision.resolve_precision("auto", "cpu", (576, 1536))}))
""")


def _probe(env_extra: dict, cache_dir) -> dict:
    env = {**os.environ, "PD_CACHE_DIR": str(cache_dir), **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_probe_agrees_with_an_independent_measurement(tmp_path):
    """On this machine, and on an AVX2-only CPU (oneDNN capped at AVX2 emulates bfloat16, as
    on CPUs without AVX512-BF16/AMX): the choice is the faster precision at a bigger shape."""
    for env in ({}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}):
        got = _probe(env, tmp_path)
        faster = "bfloat16" if got["independent"] >= precision.MIN_SPEEDUP else "float32"
        assert got["chosen"] == faster, (env, got)
    assert got["chosen"] == "float32" and got["independent"] < 0.5  # AVX2: emulated bfloat16 is slow


def test_models_resolve_auto_with_their_own_layer_shape(cache):
    smol, tiny = get_spec("smollm2-135m-instruct"), get_spec("tiny-llama")
    assert tiny.dtype == "float32"  # the test models are exact everywhere
    assert layer_shape(tiny) == (64, 128)
    assert str(resolve_dtype(tiny, "cpu")) == "torch.float32"
    expected = precision.resolve_precision("auto", "cpu", layer_shape(smol))
    assert str(resolve_dtype(smol, "cpu")) == f"torch.{expected}"
    with pytest.raises(ConfigError, match="models.x.dtype: 'half'"):
        import dataclasses

        resolve_dtype(dataclasses.replace(smol, name="x", dtype="half"), "cpu")


def test_plan_precision_is_declared_on_a_site_and_probed_locally(cache):
    assert precision.plan_precision("auto", site_device="gpu") == "bfloat16"
    assert precision.plan_precision("auto", site_device="cpu") == "float32"
    assert precision.plan_precision("auto", site_device="gpu", site_precision="float16") == "float16"
    local = precision.plan_precision("cpu", layer=(576, 1536))
    assert local == precision.resolve_precision("auto", "cpu", (576, 1536))


def test_generation_cache_identity_names_the_precision_run(cache):
    """The same spec run in float32 and in bfloat16 must not share cached generations."""
    import dataclasses

    from pd.generate.transformers_backend import TransformersGenerator

    spec = get_spec("tiny-llama")
    names = {TransformersGenerator(dataclasses.replace(spec, dtype=d), progress=False).name
             for d in ("float32", "bfloat16")}
    assert len(names) == 2
    # `auto` that resolves to float32 is the same identity as float32 itself.
    auto = dataclasses.replace(spec, dtype="auto")
    assert TransformersGenerator(auto, progress=False).name in names


def test_the_resolved_precision_is_part_of_every_model_jobs_identity(cache):
    """The same config planned for this CPU, a GPU site and a float16 site: model jobs get the
    precision they will run in and another path each; jobs that load no model keep theirs."""
    from pd.config import load_config
    from pd.pipeline.plan import build_plan

    here = build_plan(load_config(None, {"run": ["demo"]}))
    gpu = build_plan(load_config(None, {"run": ["demo"], "slurm_site": {"device": "gpu"}}))
    fp16 = build_plan(load_config(None, {"run": ["demo"], "slurm_site": {"device": "gpu", "precision": "float16"}}))
    smol = get_spec("smollm2-135m-instruct")
    local = precision.plan_precision("auto", layer=layer_shape(smol))
    for plan, want in ((here, local), (gpu, "bfloat16"), (fp16, "float16")):
        answers = plan.of_kind("answers")
        assert answers and all(a.spec.models_extra == {smol.name: {"base": smol.name, "dtype": want}} for a in answers)
    for kind in ("questions", "answers", "adapter", "evaluate"):
        assert {a.path for a in gpu.of_kind(kind)}.isdisjoint({a.path for a in fp16.of_kind(kind)}), kind
    assert {a.path for a in gpu.of_kind("retrieval") if a.spec.retriever == "bm25"} == \
           {a.path for a in fp16.of_kind("retrieval") if a.spec.retriever == "bm25"}
