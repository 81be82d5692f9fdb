"""HotpotQA's distractor setting: a local official JSON, or the hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from pd.data.dataset import Dataset, Document, TestItem, load_hub_dataset
from pd.data.loaders import Loader, register
from pd.errors import DataError
from pd.io import read_json

HUB = ("hotpotqa/hotpot_qa", "distractor", "validation")  # repo, configuration, split
ITEMS = 7405  # the distractor setting's validation questions
PASSAGES_PER_ITEM = 10  # two gold paragraphs and eight distractors


def _hotpot_paragraphs(example: dict) -> list[tuple[str, str]]:
    """(title, text) pairs from either the official JSON or the hub's columnar layout."""
    ctx = example["context"]
    if isinstance(ctx, dict):  # hub: {"title": [...], "sentences": [[...], ...]}
        pairs = zip(ctx["title"], ctx["sentences"])
    else:  # official: [[title, [sentences]], ...]
        pairs = ((c[0], c[1]) for c in ctx)
    return [(title, "".join(sents).strip()) for title, sents in pairs]


def _hotpot_support_titles(example: dict) -> list[str]:
    sf = example.get("supporting_facts", [])
    titles = sf["title"] if isinstance(sf, dict) else [s[0] for s in sf]
    return list(dict.fromkeys(titles))


def hotpotqa_from_examples(examples: Iterable[dict], limit: int | None = None, name: str = "hotpotqa") -> Dataset:
    """Documents are the distinct paragraphs (by title) of the items' ten-paragraph contexts.

    Args:
        examples: HotpotQA examples, official or hub layout.
        limit: use only the first ``limit`` examples.
        name: the dataset's name.

    Returns:
        The dataset; ``meta["context_doc_ids"]`` lists each item's ten paragraphs (its RAG corpus).
    """
    docs: dict[str, Document] = {}
    by_title: dict[str, str] = {}
    items: list[TestItem] = []
    context_ids: dict[str, list[str]] = {}
    for n, ex in enumerate(examples):
        if limit is not None and n >= limit:
            break
        ids = []
        for title, text in _hotpot_paragraphs(ex):
            doc_id = by_title.get(title)
            if doc_id is None:
                doc_id = f"hotpot-p{len(docs):05d}"
                by_title[title] = doc_id
                docs[doc_id] = Document(doc_id, f"{title}\n{text}", title)
            ids.append(doc_id)
        gold = [by_title[t] for t in _hotpot_support_titles(ex) if t in by_title]
        item_id = str(ex.get("_id") or ex.get("id") or f"hotpot-q{n:05d}")
        context_ids[item_id] = ids
        items.append(TestItem(item_id, ex["question"], (ex["answer"],), tuple(gold), ex["question"]))
    return Dataset(name, docs, items, {"context_doc_ids": context_ids})


def load_hotpotqa(path: str | os.PathLike | None = None, limit: int | None = None) -> Dataset:
    """HotpotQA distractor validation: a local official-format JSON, or the hub.

    Args:
        path: the official ``hotpot_dev_distractor_v1.json`` (None: the hub).
        limit: use only the first ``limit`` examples.

    Returns:
        The dataset (see :func:`hotpotqa_from_examples`).

    Raises:
        DataError: the file is missing, not UTF-8 or not JSON, or the hub cannot be reached.
    """
    if path:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"HotpotQA file {p} not found (expected the official hotpot_dev_distractor_v1.json format)")
        return hotpotqa_from_examples(read_json(p), limit)
    split = HUB[2] if limit is None else f"{HUB[2]}[:{limit}]"
    ds = load_hub_dataset(HUB[0], HUB[1], split=split,
                          offline_hint="offline, download hotpot_dev_distractor_v1.json on a connected machine "
                                       "and set the dataset's `path` to it")
    return hotpotqa_from_examples(ds, limit)


@register
class HotpotQA(Loader):
    """``loader: hotpotqa``: ``path`` (the official JSON) or the hub; graded with its own judge, k = 10."""

    name = "hotpotqa"
    defaults = {"judge_template": "judge_hotpotqa", "retrieval_k": 10}  # the paper's k for multi-hop questions
    passages_per_item = 2  # the two gold paragraphs of a distractor-setting question

    def display_name(self, name: str, settings: dict[str, Any]) -> str:
        """``HotpotQA``."""
        return "HotpotQA"

    def load(self, name: str, settings: dict[str, Any]) -> Dataset:
        return load_hotpotqa(settings.get("path"), settings.get("limit"))

    def size(self, settings: dict[str, Any]) -> tuple[int, int]:
        """From its ``limit`` (or the full validation split) x 10 passages: never downloaded to be sized."""
        items = int(settings.get("limit") or ITEMS)
        return items * PASSAGES_PER_ITEM, items

    def passage_lengths(self, settings: dict[str, Any]) -> list[int] | None:
        """From a local ``path`` only: the hub's split is never downloaded to be sized (None)."""
        return super().passage_lengths(settings) if settings.get("path") else None

    def hub_datasets(self, settings: dict[str, Any]) -> dict[str, tuple[str, str | None, str]]:
        """The hub's validation split, unless a local ``path`` is set."""
        return {} if settings.get("path") else {"hotpotqa": HUB}
