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
MAX_ENTRIES = 100_000  # files and folders looked at under a documents folder
MAX_BYTES = 1 << 30  # documents' total size


def document_files(folder: Path) -> list[Path]:
    """The ``.txt``/``.md`` files under ``folder`` (recursively, sorted), every one confined to it.

    A symbolic link named like a document, or to a folder, is refused rather than followed (it could
    put ``/etc/passwd`` into training data); so is a special file (a pipe, a device) named like one.

    Args:
        folder: an existing folder.

    Returns:
        The documents' paths (under ``folder``).

    Raises:
        DataError: a link, a special file, an unreadable folder, more than :data:`MAX_ENTRIES` entries
            or :data:`MAX_BYTES` of documents (each message one line naming the path).
    """
    root = folder.resolve()
    found: list[Path] = []
    seen = total = 0
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as err:
            raise DataError(f"{here}: cannot list this folder ({err.strerror or err}); "
                            "point the dataset at a folder of documents you can read") from None
        for entry in entries:
            seen += 1
            if seen > MAX_ENTRIES:
                raise DataError(f"{folder}: more than {MAX_ENTRIES:,} files and folders; "
                                "point the dataset at the folder that holds just the documents")
            p = Path(entry.path)
            is_doc = p.suffix.lower() in DOC_SUFFIXES
            try:
                if entry.is_symlink():
                    if is_doc or p.is_dir():
                        raise DataError(f"{p}: a symbolic link; documents are read only from files inside "
                                        f"{folder} (copy the file in instead of linking it)")
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(p)
                    continue
                if not is_doc:
                    continue
                if not entry.is_file(follow_symlinks=False):
                    raise DataError(f"{p}: not a regular file; documents must be plain .txt/.md files")
                size = entry.stat(follow_symlinks=False).st_size
            except OSError as err:
                raise DataError(f"{p}: cannot read ({err.strerror or err})") from None
            if not p.resolve().is_relative_to(root):
                raise DataError(f"{p}: lies outside {folder}; documents are read only from inside it")
            total += size
            if total > MAX_BYTES:
                raise DataError(f"{folder}: more than {MAX_BYTES >> 20:,} MiB of documents; "
                                "split them into smaller folders")
            found.append(p)
    return sorted(found)




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
        DataError: the folder is missing or holds no non-empty document, a document is not UTF-8, a link,
            a special file or too much (:func:`document_files`), or the questions file is refused (a bad row,
            or a row naming an unknown document).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"document folder {folder} does not exist")
    docs: dict[str, Document] = {}
    passages: dict[str, dict] = {}
    for p in document_files(folder):
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
