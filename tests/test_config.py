"""config.yaml validation: the shipped config is valid; bad ones name the key and the allowed values."""

import copy

import pytest

from pd.config import (
    DEFAULT_CONFIG,
    dataset_judge_template,
    load_config,
    retrieval_k,
    training_settings,
)
from pd.errors import ConfigError


def minimal():
    return {"run": ["x"],
            "experiments": {"x": {"grid": {"model": ["tiny-llama"], "method": ["pd"], "dataset": ["nyt"]}}}}


def test_shipped_config_is_valid_and_defaults_filled():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg["run"] == ["demo"]
    assert cfg["generation"]["questions"]["per_item"] == 30
    assert cfg["generation"]["evaluation"] == {"temperature": 0.25, "max_new_tokens": 500}
    assert cfg["retrieval"]["k"] is None  # each dataset's own depth
    # The paper's four subsets and HotpotQA are built in beside the config's datasets.
    for d in ("amazon", "new_wiki", "nyt", "reddit", "hotpotqa", "demo-nyt"):
        assert d in cfg["datasets"]
    g = cfg["experiments"]["main"]["grid"]
    assert g["seed"] == [0, 1, 2] and g["expert"] == ["self"] and g["subset"] == ["all"]


def test_minimal_config_gets_defaults():
    cfg = load_config(minimal())
    assert cfg["device"] == "auto" and cfg["grading"]["graders"] == ["judge", "substring"]
    assert cfg["experiments"]["x"]["grid"]["retrieval"] == ["none"]
    assert cfg["experiments"]["x"]["table"]["blocks"] == "retrieval"


def test_training_settings_layering():
    cfg = load_config(DEFAULT_CONFIG)
    # The paper's Table 8 (Llama-3 column), written out here independently of pd.train.settings.
    table8 = {"lr": 1e-5, "weight_decay": 0.1, "max_grad_norm": 1.0, "batch_size": 4, "epochs": 10,
              "warmup_epochs": 1, "warmup_steps": 0, "rank": 1024, "alpha_factor": 2.0, "lora_dropout": 0.0,
              "kd_temperature": 2.0, "t2_scale": False, "max_answer_tokens": 512, "max_teacher_tokens": 768,
              "reg_fraction": 0.5, "reg_data": "tulu3"}
    p = training_settings(cfg, "pd", "llama3-8b-instruct")
    assert {k: p[k] for k in table8} == table8 and p["heldout_fraction"] == 0.1
    q = training_settings(cfg, "sft", "qwen2.5-14b-instruct")
    assert (q["epochs"], q["warmup_steps"], q["rank"], q["batch_size"]) == (5, 100, 512, 32)
    u = training_settings(cfg, "uft", "llama3-8b-instruct")
    assert (u["lr"], u["epochs"]) == (5e-5, 3)
    d = training_settings(cfg, "pd", "smollm2-135m-instruct", "demo")
    assert d["rank"] == 64 and d["lr"] == 1e-3


def _mutate(path, value):
    cfg = minimal()
    node = cfg
    *parents, last = path
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


# Each bad configuration, and the fragments its error must contain (key path + allowed values).
BAD = [
    ("unknown top-level key", _mutate(["colour"], "red"),
     ["(top level): unknown key 'colour'", "allowed: capability, datasets, device"]),
    ("misspelt key with suggestion", _mutate(["retreival"], {"k": 3}),
     ["unknown key 'retreival' (did you mean 'retrieval'?)"]),
    ("wrong type", _mutate(["training"], {"lr": "fast"}),
     ["training.lr: expected number, got str 'fast'"]),
    ("out of range", _mutate(["training"], {"batch_size": 0}),
     ["training.batch_size: 0 is less than the minimum of 1"]),
    ("generation batch neither a number nor auto", _mutate(["generation"], {"batch_size": "max"}),
     ["generation.batch_size: 'max' is not allowed; allowed: auto"]),
    ("unknown method", _mutate(["experiments", "x", "grid", "method"], ["pd", "distill"]),
     ["experiments.x.grid.method[1]: 'distill' is not allowed", "allowed: base, pd, pd_reverse"]),
    ("unknown model", _mutate(["experiments", "x", "grid", "model"], ["llama3-8b"]),
     ["experiments.x.grid.model[0]: unknown model 'llama3-8b'", "did you mean 'llama3-8b-instruct'", "tiny-qwen2"]),
    ("unknown dataset", _mutate(["experiments", "x", "grid", "dataset"], ["squad"]),
     ["experiments.x.grid.dataset[0]: unknown dataset 'squad'", "allowed: amazon, hotpotqa, new_wiki, nyt, reddit"]),
    ("unknown experiment in run", _mutate(["run"], ["y"]),
     ["run[0]: unknown experiment 'y'; allowed: x"]),
    ("unknown retriever", _mutate(["experiments", "x", "grid", "retrieval"], ["bm26"]),
     ["grid.retrieval[0]: 'bm26' is not allowed", "allowed: none, bm25, bm25_paper, dense, openai, oracle"]),
    ("unknown device", _mutate(["device"], "tpu"),
     ["device: 'tpu' is not allowed", "allowed: auto, cpu, cuda"]),
    ("teacher of another vocabulary", _mutate(["experiments", "x", "grid", "teacher"], ["tiny-qwen2"]),
     ["experiments.x.grid.teacher: teacher 'tiny-qwen2'", "must share the student's vocabulary"]),
    ("missing grid key", {"run": ["x"], "experiments": {"x": {"grid": {"model": ["tiny-llama"], "method": ["pd"]}}}},
     ["experiments.x.grid: 'dataset' is a required property"]),
    ("squadshifts dataset without subset", _mutate(["datasets"], {"mine": {"loader": "squadshifts"}}),
     ["datasets.mine: loader 'squadshifts' needs 'subset'"]),
    ("unknown dataset loader", _mutate(["datasets"], {"mine": {"loader": "csv"}}),
     ["datasets.mine.loader: 'csv' is not allowed", "allowed: squadshifts, hotpotqa, folder"]),
    ("unknown method name in methods", _mutate(["methods"], {"distill": {}}),
     ["methods: 'distill' is not allowed", "allowed: base, pd"]),
    ("bad model entry", _mutate(["models"], {"m": {"base": "tiny-llama", "size": 3}}),
     ["models.m: unknown key 'size'"]),
    ("unknown judge", _mutate(["grading"], {"judge": "gpt-9"}),
     ["grading.judge: unknown model 'gpt-9'"]),
    ("missing prompt file", _mutate(["prompts"], {"closed_book": "/nonexistent/file.j2"}),
     ["prompts.closed_book"]),
    ("repeated seed", _mutate(["experiments", "x", "grid", "seed"], [0, 0]),
     ["experiments.x.grid.seed: repeated value(s) [0]"]),
    ("table axis not in grid", _mutate(["experiments", "x", "table"], {"rows": ["colour"]}),
     ["experiments.x.table: unknown axis ['colour']"]),
]


@pytest.mark.parametrize("name,cfg,fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_named(name, cfg, fragments):
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    msg = str(err.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in:\n{msg}"


def test_all_problems_reported_at_once():
    cfg = _mutate(["device"], "tpu")
    cfg["training"] = {"lr": "x"}
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "device" in str(err.value) and "training.lr" in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    p = tmp_path / "c.yaml"
    p.write_text("run: [x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)


def test_overrides_merge_and_validate():
    cfg = load_config(DEFAULT_CONFIG, overrides={"run": ["main", "demo"], "retrieval": {"k": 3}})
    assert cfg["run"] == ["main", "demo"] and cfg["retrieval"]["k"] == 3
    with pytest.raises(ConfigError, match="run\\[0\\]"):
        load_config(DEFAULT_CONFIG, overrides={"run": ["nope"]})


def test_loading_does_not_mutate_input():
    raw = minimal()
    before = copy.deepcopy(raw)
    load_config(raw)
    assert raw == before


def test_a_list_of_grids_is_united():
    cfg = minimal()
    cfg["experiments"]["x"]["grid"] = [
        {"model": ["tiny-llama"], "method": ["base"], "dataset": ["nyt"], "retrieval": ["none", "bm25", "oracle"]},
        {"model": ["tiny-llama"], "method": ["pd", "sft"], "dataset": ["nyt"], "retrieval": ["none", "bm25"]},
    ]
    from pd.pipeline.plan import expand_grid

    cells = expand_grid(load_config(cfg), "x")
    assert len(cells) == 3 + 4
    bad = copy.deepcopy(cfg)
    bad["experiments"]["x"]["grid"][1]["method"] = ["pd", "pdd"]
    with pytest.raises(ConfigError, match=r"experiments\.x\.grid\[1\]\.method\[1\]: 'pdd' is not allowed"):
        load_config(bad)
    bad["experiments"]["x"]["grid"][1]["method"] = ["pd"]
    bad["experiments"]["x"]["grid"][1]["model"] = ["tiny-llamma"]
    with pytest.raises(ConfigError, match=r"experiments\.x\.grid\[1\]\.model\[0\]: unknown model 'tiny-llamma'"):
        load_config(bad)


def test_dataset_settings_come_from_the_entry_else_the_loader():
    cfg = load_config(DEFAULT_CONFIG)
    d = cfg["datasets"]
    assert [dataset_judge_template(d[n]) for n in ("nyt", "hotpotqa", "demo-nyt")] == \
        ["judge_squadshifts", "judge_hotpotqa", "judge_squadshifts"]
    assert [retrieval_k(cfg["retrieval"], d[n]) for n in ("nyt", "hotpotqa")] == [7, 10]
    assert retrieval_k({"k": 3}, d["hotpotqa"]) == 3  # an explicit k wins over the dataset's depth
    own = _mutate(["datasets"], {"mine": {"loader": "folder", "path": "docs", "judge_template": "judge_hotpotqa",
                                          "retrieval_k": 4}})
    mine = load_config(own)["datasets"]["mine"]
    assert dataset_judge_template(mine) == "judge_hotpotqa" and retrieval_k({"k": None}, mine) == 4
    with pytest.raises(ConfigError, match="judge_template: 'judge_x' is not allowed"):
        load_config(_mutate(["datasets"], {"mine": {"loader": "folder", "path": "docs", "judge_template": "judge_x"}}))


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    """Issue 14 item 12: YAML keeps the last of two equal keys; a second `training:` silently reset settings."""
    from pd.config_checks import load_yaml

    p = tmp_path / "c.yaml"
    p.write_text("run: [demo]\ntraining:\n  lr: 0.001\n  rank: 8\nexperiments: {}\ntraining:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line 6: duplicate key 'training' \(first given on line 2\)"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"x: line 3: duplicate key 'lr' \(first given on line 2\)"):
        load_yaml("a:\n  lr: 1\n  lr: 2\n", "x")
    assert load_yaml("a: {b: 1}\nc: [1, 1]\n", "x") == {"a": {"b": 1}, "c": [1, 1]}  # equal values are fine


@pytest.mark.parametrize("axis, value, ok", [("answer_temperature", -1, False), ("answer_temperature", 0, True),
                                             ("kd_temperature", 0, False), ("kd_temperature", 0.5, True),
                                             ("snapshot", -5, False), ("snapshot", 0, True)])
def test_grid_values_out_of_range_are_refused(axis, value, ok):
    cfg = _mutate(["experiments", "x", "grid", axis], [value])
    if ok:
        load_config(cfg)
    else:
        with pytest.raises(ConfigError, match=rf"^invalid configuration: experiments\.x\.grid\.{axis}\[0\]: "):
            load_config(cfg)
