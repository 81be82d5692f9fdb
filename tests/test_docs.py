"""The user's guide stays true: its links resolve, its config recipes validate, and the training-settings
table of docs/configuration.md is the one TrainConfig defines (no second source of defaults)."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from pd.config import load_config
from pd.errors import ConfigError
from pd.train.settings import OUTSIDE_LOOP, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)}


def _fenced(page: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert page.is_file(), page
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_readme_recipes_validate(tmp_path, monkeypatch):
    recipes = [yaml.safe_load(block) for block in _fenced(ROOT / "README.md", "yaml")]
    assert len(recipes) == 4  # a dataset, a hub model, a method's settings, an experiment
    docs = tmp_path / "my_docs"
    docs.mkdir()
    (docs / "brindlemarsh.txt").write_text("Brindlemarsh was founded in 1742 by Ada Quill.\n", encoding="utf-8")
    (docs / "questions.jsonl").write_text(json.dumps({"question": "Who founded Brindlemarsh?",
                                                      "answers": ["Ada Quill"]}) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # the dataset recipe names my_docs/ relative to where pd runs
    for recipe in recipes:
        cfg = load_config(ROOT / "config.yaml", recipe)
        for section, entries in recipe.items():
            if isinstance(entries, dict):
                assert set(entries) <= set(cfg[section]), section
    with pytest.raises(ConfigError, match="epochs"):  # the check is real: a misspelt key is refused
        load_config(ROOT / "config.yaml", {"methods": {"uft": {"training": {"epoch": 2}}}})


def _fmt(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def test_training_table_is_trainconfig():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    text = text.split("\n## Training settings\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \| (.*) \|$", text, re.M)
    table = {name: (default, help_) for name, default, help_ in rows}
    expected = {}
    for f in dataclasses.fields(TrainConfig):
        if f.metadata["config"]:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            expected[f.name] = (_fmt(default), f.metadata["help"])
    expected.update({n: (_fmt(o["default"]), o["help"]) for n, o in OUTSIDE_LOOP.items()})
    assert table == expected
