"""Datasets as one record model: Documents to inject and TestItems to ask about them.

Every loader (:mod:`pd.data.loaders`) returns a :class:`Dataset`; nothing downstream knows
which file format the data came from. Ids are stable across runs (derived from file positions
or paths), so every per-sample row written later can be traced back to its source line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pd.errors import DataError


@dataclass(frozen=True)
class Document:
    """A passage to inject (and to retrieve): a stable id, its text and an optional title."""

    id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class TestItem:
    """One evaluation question.

    ``question`` is the original (it may lean on its passage: "How old was he?");
    ``rewritten`` is the version understandable without the passage, which is what the
    paper asks closed-book. ``doc_ids`` are the gold passages.
    """

    __test__ = False  # not a pytest class

    id: str
    question: str
    answers: tuple[str, ...]
    doc_ids: tuple[str, ...]
    rewritten: str = ""

    @property
    def closed_book_question(self) -> str:
        """The question asked without the passage: the rewritten one when there is one."""
        return self.rewritten or self.question


@dataclass
class Dataset:
    """Documents by id, the test items that ask about them, and where they came from (``meta``)."""

    name: str
    documents: dict[str, Document]
    items: list[TestItem]
    meta: dict[str, Any] = field(default_factory=dict)

    def select_passages(self, count: int | None = None, offset: int = 0) -> "Dataset":
        """Keep the items whose gold passages are all among passages [offset, offset+count).

        Passages are ordered by first appearance, so slices are stable; a tuning slice
        and an evaluation slice of the same dataset can be taken without overlap.

        Args:
            count: passages kept (None: all from ``offset`` on).
            offset: passages skipped first.

        Returns:
            A new dataset with those passages and the items they fully answer.
        """
        order = list(self.documents)
        chosen = order[offset : None if count is None else offset + count]
        keep = set(chosen)
        items = [it for it in self.items if it.doc_ids and all(d in keep for d in it.doc_ids)]
        docs = {d: self.documents[d] for d in chosen}
        meta = dict(self.meta, passage_offset=offset, passage_count=len(chosen))
        return Dataset(self.name, docs, items, meta)

    def head(self, limit: int | None) -> "Dataset":
        """The first ``limit`` items and only the documents they (or distractors) need.

        Args:
            limit: items kept (None, or at least the item count: the dataset itself).

        Returns:
            The smaller dataset (``meta["limit"]`` records the limit).
        """
        if limit is None or limit >= len(self.items):
            return self
        items = self.items[:limit]
        context = self.meta.get("context_doc_ids", {})
        used = {d for it in items for d in (*it.doc_ids, *context.get(it.id, ()))}
        docs = {k: v for k, v in self.documents.items() if k in used}
        return Dataset(self.name, docs, items, dict(self.meta, limit=limit))


def load_hub_dataset(repo: str, name: str | None = None, *, split: str, offline_hint: str):
    """A dataset from the Hugging Face hub through ``datasets``.

    Every failure (package missing, offline, gated, not found) becomes one DataError that
    ends with ``offline_hint``: how to do without the hub.

    Args:
        repo: the hub id.
        name: the dataset's configuration, if any.
        split: the split (slicing syntax allowed).
        offline_hint: how to do without the hub, appended to every error.

    Returns:
        The ``datasets.Dataset``.

    Raises:
        DataError: the package is missing or the dataset cannot be loaded.
    """
    try:
        import datasets  # type: ignore
    except ImportError:
        raise DataError(f"loading {repo} from the hub needs the `datasets` package (pip install datasets); "
                        f"{offline_hint}") from None
    try:
        return datasets.load_dataset(repo, name, split=split)
    except Exception as err:  # the hub client raises many types; all mean "not available"
        raise DataError(f"{repo} could not be loaded from the hub ({type(err).__name__}: {err}); "
                        f"{offline_hint}") from None
