"""Defaults and vocabularies are defined once: the schema, TrainConfig and the config layer agree.

The training part of config.yaml's schema is generated from TrainConfig's fields, so the
tests here check what generation cannot guarantee by itself: every field's annotation, its
schema and its default agree; both layers reject the same bad values; the defaults every
adapter's specification lists are exactly the ones the workflow has always hashed; and the
schema's vocabularies (methods, retrievers, judge templates) are the modules' own.
"""

import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml

import pd.config as pdc
from pd.errors import ConfigError
from pd.evaluation.grade import JUDGE_TEMPLATES
from pd.evaluation.retrieve import RETRIEVERS
from pd.train.sequences import Limits
from pd.train.settings import (
    DISTILLING_METHODS,
    GRID_METHODS,
    METHODS,
    OUTSIDE_LOOP,
    TrainConfig,
    spec_defaults,
    training_schema,
)

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)
NOT_IN_CONFIG = {"method", "seed", "progress"}  # set per cell by the plan, or by the caller of the loop

# The training defaults that every adapter's specification has listed since the first
# workflow run (the former pd.config.PAPER_TRAINING), value and type: changing one changes
# the hash, hence the path, of every adapter, so a change here must be deliberate. (grad_accum left the
# list when batch_size became the global batch: issue 21; micro-batches change no result and are not listed.)
SPEC_DEFAULTS = {
    "lr": 1e-5, "weight_decay": 0.1, "max_grad_norm": 1.0, "batch_size": 4,
    "epochs": 10, "warmup_epochs": 1, "warmup_steps": 0, "rank": 1024, "alpha_factor": 2.0,
    "lora_dropout": 0.0, "kd_temperature": 2.0, "t2_scale": False, "teacher_topk": 0,
    "max_answer_tokens": 512, "max_teacher_tokens": 768, "chunk_size": 128, "checkpoint_every": 0,
    "teacher_logprob_dtype": "float16",
    "snapshot_seconds": [], "reg_fraction": 0.5, "reg_data": "tulu3", "uft_chunk_tokens": 256,
    "uft_overlap": 64, "distractors": 2, "gold_drop_prob": 0.4, "heldout_fraction": 0.1,
}


def _json_types_of_annotation(tp) -> set[str]:
    """The JSON types a Python annotation admits (float admits what JSON calls number)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return set().union(*(_json_types_of_annotation(a) for a in typing.get_args(tp)))
    if typing.get_origin(tp) is list:
        return {"array"}
    return {bool: {"boolean"}, int: {"integer"}, float: {"number"}, str: {"string"}, type(None): {"null"}}[tp]


def _json_types_of_schema(s: dict) -> set[str]:
    if "type" in s:
        return {s["type"]} if isinstance(s["type"], str) else set(s["type"])
    if "enum" in s:
        return {"null" if v is None else {str: "string", int: "integer", float: "number"}[type(v)] for v in s["enum"]}
    if "oneOf" in s:
        return set().union(*(_json_types_of_schema(b) for b in s["oneOf"]))
    raise AssertionError(f"no type in {s}")


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _bad_value(s: dict):
    """A value the schema ``s`` must reject: out of its range where it has one, else of no allowed type."""
    if "minimum" in s:
        return s["minimum"] - 1
    if "exclusiveMinimum" in s:
        return s["exclusiveMinimum"]
    if "maximum" in s:
        return s["maximum"] + 1
    return {"not": "a setting"}


def test_schema_training_keys_are_trainconfig_fields():
    props = pdc.schema()["$defs"]["training"]["properties"]
    assert set(props) == (set(FIELDS) - NOT_IN_CONFIG) | set(OUTSIDE_LOOP)
    assert not set(OUTSIDE_LOOP) & set(FIELDS)
    assert {n for n, f in FIELDS.items() if not f.metadata["config"]} == NOT_IN_CONFIG
    assert props == training_schema()["properties"]


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_field_annotation_schema_and_default_agree(name):
    f = FIELDS[name]
    s = f.metadata["schema"]
    assert f.metadata["help"].strip(), f"{name} has no help text"
    assert _json_types_of_annotation(HINTS[name]) == _json_types_of_schema(s)
    TrainConfig(**{name: _default(f)})  # the default passes its own checks
    if f.metadata["config"]:
        pdc.validate_schema({"experiments": {"x": {"grid": {"model": ["m"], "method": ["pd"], "dataset": ["d"]}}},
                             "training": {name: _default(f)}})


@pytest.mark.parametrize("name", sorted((set(FIELDS) - NOT_IN_CONFIG) | set(OUTSIDE_LOOP)))
def test_both_layers_reject_the_same_bad_value(name):
    s = FIELDS[name].metadata["schema"] if name in FIELDS else OUTSIDE_LOOP[name]["schema"]
    bad = _bad_value(s)
    cfg = {"run": ["x"],
           "experiments": {"x": {"grid": {"model": ["tiny-llama"], "method": ["pd"], "dataset": ["nyt"]}}},
           "training": {name: bad}}
    with pytest.raises(ConfigError, match=rf"training\.{name}"):
        pdc.load_config(cfg)
    if name in FIELDS:
        with pytest.raises(ConfigError, match=rf"training\.{name}"):
            TrainConfig(**{name: bad})


def test_spec_defaults_are_the_hashed_ones():
    got = spec_defaults()
    assert got == SPEC_DEFAULTS
    # 1 and 1.0 hash apart
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in SPEC_DEFAULTS.items()}
    cfg = TrainConfig()
    assert all(getattr(cfg, k) == v for k, v in got.items() if k not in OUTSIDE_LOOP)
    got["snapshot_seconds"].append(1)
    assert spec_defaults()["snapshot_seconds"] == []  # a fresh copy each time


def test_limits_share_trainconfig_defaults():
    cfg = TrainConfig()
    assert Limits() == cfg.limits() == Limits(512, 768, 1024)


def test_method_vocabulary():
    schema = pdc.schema()
    assert schema["$defs"]["method"]["enum"] == list(GRID_METHODS) == ["base", *METHODS]
    assert set(DISTILLING_METHODS) < set(METHODS)
    assert {m: pdc.paper_method_settings(m) for m in GRID_METHODS}["uft"] == {"training": {"lr": 5e-5, "epochs": 3}}
    text = Path(pdc.SCHEMA_PATH).read_text(encoding="utf-8")
    assert "sft_distractors" not in text and "pd_reverse" not in text  # the file holds no second list
    cfg = pdc.load_config({"run": ["x"], "methods": {m: {} for m in GRID_METHODS},
                           "experiments": {"x": {"grid": {"model": ["tiny-llama"], "method": list(GRID_METHODS),
                                                          "dataset": ["nyt"]}}}})
    assert cfg["experiments"]["x"]["grid"]["method"] == list(GRID_METHODS)


def test_other_vocabularies_match_their_modules():
    schema = pdc.schema()
    grid = schema["$defs"]["grid"]["properties"]
    assert grid["retrieval"]["items"]["enum"] == ["none", *RETRIEVERS]
    dataset = schema["properties"]["datasets"]["additionalProperties"]["properties"]
    assert dataset["judge_template"]["enum"] == list(JUDGE_TEMPLATES)
    from pd.data import REGISTRY as LOADERS

    assert dataset["loader"]["enum"] == list(LOADERS)  # from the registry
    assert pdc.DATASET_DEFAULTS["judge_template"] in JUDGE_TEMPLATES
    for settings in (pdc.DATASET_DEFAULTS, *(loader.defaults for loader in LOADERS.values())):
        assert set(settings) <= set(pdc.DATASET_DEFAULTS) <= set(dataset)
        assert settings.get("judge_template", "judge_squadshifts") in JUDGE_TEMPLATES


def test_evaluation_sampling_is_defined_once():
    cfg = pdc.load_config({"run": ["x"], "experiments": {"x": {"grid": {"model": ["tiny-llama"], "method": ["base"],
                                                                        "dataset": ["nyt"]}}}})
    assert cfg["generation"]["evaluation"] == {"temperature": 0.25, "max_new_tokens": 500}
    assert pdc.evaluation_sampling({"max_new_tokens": 40}) == {"temperature": 0.25, "max_new_tokens": 40}
    assert pdc.evaluation_sampling(None) == pdc.EVAL_SAMPLING
    raw = yaml.safe_load(Path(pdc.SCHEMA_PATH).read_text(encoding="utf-8"))
    assert "default" not in raw["properties"]["generation"]["properties"]["evaluation"]
