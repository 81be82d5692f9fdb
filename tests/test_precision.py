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
        assert precision.resolve_precision(name, "cpu") == name
        assert precision.resolve_precision(name, "cuda") == name
    with pytest.raises(ConfigError, match="'fp8'.*allowed: auto, float32, bfloat16, float16"):
        precision.resolve_precision("fp8", "cpu")


@pytest.mark.parametrize("flags, cap, layer, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, None, (576, 1536), "bfloat16"),  # AMD Zen 4, Intel Cooper Lake
    ({"avx2", "amx_bf16", "amx_tile"}, None, (576, 1536), "bfloat16"),  # Intel Sapphire Rapids (AMX)
    ({"avx2", "avx512f", "avx512_vnni"}, None, (576, 1536), "float32"),  # AVX-512 without bfloat16
    ({"avx2", "fma"}, None, (576, 1536), "float32"),  # most laptops: bfloat16 would be emulated
    (set(), None, (576, 1536), "float32"),  # flags unknown (no /proc/cpuinfo)
    ({"avx512_bf16", "amx_bf16"}, "AVX2", (576, 1536), "float32"),  # oneDNN capped below bfloat16
    ({"avx512_bf16", "amx_bf16"}, "avx512_core_amx", (576, 1536), "bfloat16"),
    ({"avx512_bf16", "amx_bf16"}, None, (64, 128), "float32"),  # tiny-llama: too small to gain
])
def test_cpu_rule_follows_flags_cap_and_layer(flags, cap, layer, expected):
    choice = precision.choose_cpu_precision(frozenset(flags), cap, layer)
    assert choice.precision == expected and choice.reason


def test_cpu_choice_never_times_anything_so_load_cannot_change_it(cache, monkeypatch):
    """The old probe timed matmuls and cached what it saw first: 0.65x under load on a CPU with AMX
    (4.96x idle), float32 for good. The choice is now the flags' answer whatever a timing would say."""
    monkeypatch.setattr(precision, "time_matmul", lambda *a, **k: pytest.fail("the choice must not time anything"))
    _, flags = precision.cpu_flags()
    want = precision.choose_cpu_precision(flags, os.environ.get("ONEDNN_MAX_CPU_ISA"), (576, 1536)).precision
    answers = {precision.resolve_precision("auto", "cpu", (576, 1536)) for _ in range(3)}
    assert answers == {want}
    records = list((cache / "precision").glob("*.json"))
    assert len(records) == 1
    row = json.loads(records[0].read_text())
    assert row["precision"] == want and row["reason"] and row["layer"] == [576, 1536]
    line = precision.describe_cpu_choice()
    assert line.startswith(f"CPU precision: {want} (") and "\n" not in line


def test_an_avx2_cap_is_float32_and_really_slower_in_bfloat16(tmp_path):
    """oneDNN capped at AVX2 emulates bfloat16 (as CPUs without AVX512-BF16/AMX do): the rule says
    float32, and a measurement agrees by a wide margin (emulation is many times slower)."""
    env = {**os.environ, "PD_CACHE_DIR": str(tmp_path), "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = textwrap.dedent("""
        import json
        from pd import precision
        fp32 = precision.time_matmul("float32", (256, 576, 1536), repeats=5, budget_s=3)
        bf16 = precision.time_matmul("bfloat16", (256, 576, 1536), repeats=5, budget_s=3)
        print(json.dumps({"ratio": fp32 / bf16, "chosen": precision.resolve_precision("auto", "cpu", (576, 1536))}))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["chosen"] == "float32" and got["ratio"] < 0.5, got


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
