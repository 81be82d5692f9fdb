"""Declared once: a new dataset loader is one module (here a temporary file). The config schema, the
checks, loading, sizing, the plan and `pd fetch` read it from the registry alone."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from pd.config import DEFAULT_CONFIG, dataset_setting, load_config, schema
from pd.errors import ConfigError, DataError

TOY_LOADER = '''
"""A toy loader: a tab-separated file of passage, question, answer."""

from pd.data import Dataset, Document, Loader, TestItem, register


@register
class TabLoader(Loader):
    name = "toy_tsv"
    required = {"path": "a .tsv file of passage<TAB>question<TAB>answer lines"}
    defaults = {"retrieval_k": 3}

    def load(self, name, settings):
        docs, items = {}, []
        with open(settings["path"], encoding="utf-8") as f:
            for n, line in enumerate(f):
                passage, question, answer = line.rstrip("\\n").split("\\t")
                docs[f"p{n}"] = Document(f"p{n}", passage)
                items.append(TestItem(f"q{n}", question, (answer,), (f"p{n}",), question))
        return Dataset(name, docs, items)

    def hub_datasets(self, settings):
        return {"toy": ("someone/toy", None, "test")} if settings.get("hub") else {}
'''


@pytest.fixture
def toy_loader(tmp_path):
    import pd.data  # noqa: F401  (the built-in loaders first)

    path = tmp_path / "toy_loader_module.py"
    path.write_text(textwrap.dedent(TOY_LOADER))
    spec = importlib.util.spec_from_file_location("toy_loader_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    from pd.data import unregister

    unregister("toy_tsv")


def test_a_loader_in_one_module_is_loaded_sized_and_planned(toy_loader, tmp_path):
    from pd.data import dataset_size, load_dataset
    from pd.pipeline.plan import build_plan

    tsv = tmp_path / "facts.tsv"
    tsv.write_text("The bridge opened in March.\tWhen did the bridge open?\tMarch\n"
                   "The bakery is in Queens.\tWhere is the bakery?\tQueens\n")
    entry = {"loader": "toy_tsv", "path": str(tsv)}
    assert "toy_tsv" in schema()["properties"]["datasets"]["additionalProperties"]["properties"]["loader"]["enum"]
    ds = load_dataset("facts", entry)
    assert (len(ds.documents), len(ds.items), ds.items[1].answers) == (2, 2, ("Queens",))
    assert dataset_size(entry) == (2, 2) and dataset_setting(entry, "retrieval_k") == 3
    over = {"run": ["x"], "results_dir": str(tmp_path / "r"), "datasets": {"facts": entry},
            "experiments": {"x": {"grid": {"model": ["tiny-llama"], "method": ["base", "sft"], "dataset": ["facts"],
                                           "retrieval": ["bm25"]}}}}
    plan = build_plan(load_config(DEFAULT_CONFIG, over))
    assert plan.of_kind("retrieval")[0].spec.k == 3  # the loader's default
    assert plan.count()["evaluate"] == 2 and plan.of_kind("questions")[0].spec.dataset_cfg["loader"] == "toy_tsv"
    from pd.fetch import plan_needs

    assert not [n for n in plan_needs(plan) if "toy" in str(n)]


def test_a_loaders_required_settings_and_unknown_loaders_are_named():
    with pytest.raises(ConfigError, match=r"datasets\.d.*loader"):
        load_config(DEFAULT_CONFIG, {"datasets": {"d": {"loader": "nope"}}})
    with pytest.raises(DataError, match="unknown dataset loader 'nope'; allowed: squadshifts, hotpotqa, folder"):
        from pd.data import load_dataset

        load_dataset("d", {"loader": "nope"})


def test_a_registered_loader_declares_its_required_settings(toy_loader):
    with pytest.raises(ConfigError, match="loader 'toy_tsv' needs 'path'"):
        load_config(DEFAULT_CONFIG, {"datasets": {"d": {"loader": "toy_tsv"}}})
