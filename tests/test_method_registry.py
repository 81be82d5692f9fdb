"""Declared once: a new method is one module (here a temporary file). The schema, the grid, the plan
and the training loop read it from the registry alone; nothing else names it."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest

from pd.config import DEFAULT_CONFIG, load_config, schema
from pd.errors import ConfigError
from pd.train.methods import get_method, grid_methods, unregister

TOY_METHOD = '''
"""A toy method: SFT on the expert's answers, each answer upper-cased (a new way to build examples)."""

from pd.train.methods import Method, register


@register
class ShoutedSFT(Method):
    name = "toy_shout"
    label = "Shouted SFT"
    order = 45
    paper = {"answer_temperature": 0.5, "training": {"epochs": 2}}

    def examples(self, cfg, tokens, rows, dataset):
        from pd.train.sequences import sft_examples

        shouted = [dict(r, answer=r["answer"].upper()) for r in rows]
        return sft_examples(shouted, dataset, tokens, cfg.limits())
'''


@pytest.fixture
def toy_method(tmp_path):
    path = tmp_path / "toy_method_module.py"
    path.write_text(textwrap.dedent(TOY_METHOD))
    spec = importlib.util.spec_from_file_location("toy_method_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers the method
    yield module
    unregister("toy_shout")


def test_a_method_in_one_module_reaches_schema_grid_and_plan(toy_method, tmp_path):
    from pd.pipeline.plan import build_plan
    from pd.report.aggregate import TableSpec
    from pd.report.labels import label_for, sort_values

    assert "toy_shout" in grid_methods() and "toy_shout" in schema()["$defs"]["method"]["enum"]
    over = {"run": ["x"], "results_dir": str(tmp_path / "r"), "experiments": {"x": {"grid": {
        "model": ["tiny-llama"], "method": ["toy_shout", "sft"], "dataset": ["demo-nyt"]}}}}
    cfg = load_config(DEFAULT_CONFIG, over)
    plan = build_plan(cfg)
    toy = next(a for a in plan.of_kind("adapter") if a.spec.method == "toy_shout")
    answers = plan.get(toy.spec.answers)
    assert answers.spec.sampling.temperature == 0.5 and answers.spec.kind == "plain"  # its paper settings
    assert toy.spec.training["epochs"] == 2 and toy.spec.teacher_model is None  # it does not distil
    assert "/adapters/toy_shout/" in toy.path
    spec = TableSpec(rows=["method"], columns=["dataset"])
    assert label_for(spec, "method", "toy_shout") == "Shouted SFT"
    assert sort_values(spec, "method", ["base", "toy_shout", "pd"]) == ["pd", "toy_shout", "base"]


def test_a_registered_method_trains_through_the_real_loop(toy_method, tiny_llama, tmp_path):
    from pd.data import Dataset, Document
    from pd.train.loop import train
    from pd.train.methods import build_training_data
    from pd.train.sequences import Tokens
    from pd.train.settings import TrainConfig

    ds = Dataset("toy", {"d0": Document("d0", "The bridge opened in March and cost 80 million.")}, [])
    rows = [{"id": "q0", "doc_id": "d0", "question": "When did the bridge open?", "answer": "In March.",
             "finish_reason": "stop"},
            {"id": "q1", "doc_id": "d0", "question": "What did it cost?", "answer": "80 million.",
             "finish_reason": "stop"}]
    cfg = TrainConfig(method="toy_shout", rank=4, lr=1e-2, epochs=1, warmup_epochs=0, batch_size=2, progress=False)
    tokens = Tokens(tiny_llama.tokenizer, tiny_llama.spec)
    data = build_training_data(cfg, tokens, rows=rows, dataset=ds)
    assert tiny_llama.tokenizer.decode(data.examples[0].answer_ids).strip().startswith("IN MARCH")
    assert not cfg.uses_kl and cfg.direction == "forward"
    res = train(cfg, tiny_llama.spec, tmp_path / "adapter", rows=rows, dataset=ds, device="cpu")
    meta = json.loads((res.adapter_dir / "pd_meta.json").read_text())
    assert meta["method"] == "toy_shout" and res.steps == 1


def test_unknown_and_untrained_methods_are_refused_by_name():
    from pd.train.settings import TrainConfig

    with pytest.raises(ConfigError, match=r"unknown method 'nope'; allowed: base, pd, "):
        get_method("nope")
    with pytest.raises(ConfigError, match="trains nothing"):
        TrainConfig(method="base")
    with pytest.raises(ConfigError, match="method"):
        load_config(DEFAULT_CONFIG, {"run": ["x"], "experiments": {"x": {"grid": {
            "model": ["tiny-llama"], "method": ["nope"], "dataset": ["demo-nyt"]}}}})
