"""A user's folder of ``.txt``/``.md`` documents, optionally with a questions file (``pd inject``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pd.data.dataset import Dataset, Document, TestItem
from pd.data.loaders import Loader, register
from pd.data.passages import document_passages
from pd.data.question_rows import read_question_rows
from pd.errors import DataError
from pd.io import read_text

DOC_SUFFIXES = (".txt", ".md")


def load_folder(folder: str | os.PathLike, questions: str | os.PathLike | None = None,
                name: str | None = None, passage_chars: int | None = None) -> Dataset:
    """A folder of ``.txt``/``.md`` documents, optionally with a questions file.

    Document ids are paths relative to the folder; documents are UTF-8 (a byte-order mark
    is dropped) and empty ones are skipped. With ``passage_chars`` a longer document becomes
    passages (:func:`split_passages`) with ids ``<path>#<offset>``: its character offset in the
    file's text. The questions file is JSONL or CSV, every row checked as
    :mod:`pd.data.question_rows` describes.

    Args:
        folder: the documents' folder (searched recursively).
        questions: the questions file, if any.
        name: the dataset's name (default: the folder's).
        passage_chars: the longest passage in characters (None: documents stay whole).

    Returns:
        The dataset (no items without a questions file); ``meta["passages"]`` maps each split
        passage's id to its ``source`` file and ``offset``.

    Raises:
        DataError: the folder is missing or holds no non-empty document, a document is not UTF-8,
            or the questions file is refused (a bad row, or a row naming an unknown document).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"document folder {folder} does not exist")
    docs: dict[str, Document] = {}
    passages: dict[str, dict] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in DOC_SUFFIXES:
            rel = p.relative_to(folder).as_posix()
            for pid, text, offset in document_passages(rel, read_text(p), passage_chars):
                docs[pid] = Document(pid, text, p.stem)
                if pid != rel:
                    passages[pid] = {"source": rel, "offset": offset}
    if not docs:
        raise DataError(f"no non-empty {'/'.join(DOC_SUFFIXES)} files under {folder}")
    items = [TestItem(**row) for row in read_question_rows(questions, docs)] if questions else []
    meta = {"source": str(folder), **({"passages": passages} if passages else {})}
    return Dataset(name or folder.name, docs, items, meta)


@register
class Folder(Loader):
    """``loader: folder``: the documents under ``path``; questions per passage when it has no ``questions`` file."""

    name = "folder"
    required = {"path": "a folder of .txt/.md files"}
    path_is_folder = True
    needs_test_items = False

    def load(self, name: str, settings: dict[str, Any]) -> Dataset:
        return load_folder(settings["path"], settings.get("questions"), name, settings.get("passage_chars"))

    def questions_per_passage(self, settings: dict[str, Any]) -> bool:
        return not settings.get("questions")

    def content_identity(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """The documents' text (and, loading them, a malformed questions row is refused at planning)."""
        from pd.io import stable_hash

        ds = self.load(name, settings)
        return {"documents_hash": stable_hash([[d.id, d.text] for d in ds.documents.values()])}
