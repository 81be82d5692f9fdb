"""SQuADShifts as the paper used it: ``<subset>.csv`` (question;[answers];passage) and its rewritten questions."""

from __future__ import annotations

import ast
import csv
import io
import os
from pathlib import Path
from typing import Any

from pd.data.dataset import Dataset, Document, TestItem
from pd.data.loaders import Loader, register
from pd.errors import DataError
from pd.io import read_text

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SQUADSHIFTS_DIR = REPO_ROOT / "data" / "squadshifts-pd"
SQUADSHIFTS_SUBSETS = ("amazon", "new_wiki", "nyt", "reddit")
SUBSET_LABELS = {"amazon": "Amazon", "new_wiki": "New Wiki", "nyt": "NYT", "reddit": "Reddit"}  # the paper's names


def parse_squadshifts_line(line: str, where: str = "") -> tuple[str, list[str], str]:
    """Split ``question;['answer', ...];context`` (unquoted, the paper's format).

    The first ``;`` ends the question; the answer list is a Python literal ending at the
    first ``];``; the rest, which may itself contain ``;``, is the passage.

    Args:
        line: one line of a SQuADShifts CSV.
        where: names the file and line in an error.

    Returns:
        The question, the answers, the passage.

    Raises:
        DataError: the line does not have that shape, the answers are not a list of strings,
            or the question or passage is empty.
    """
    line = line.rstrip("\r\n")
    q_end = line.find(";")
    a_end = line.find("];", q_end + 1)
    if q_end < 0 or a_end < 0 or line[q_end + 1 : q_end + 2] != "[":
        raise DataError(f"{where}: expected 'question;[answers];passage', got {line[:80]!r}")
    question = line[:q_end].strip()
    try:
        answers = ast.literal_eval(line[q_end + 1 : a_end + 1])
    except (ValueError, SyntaxError):
        literal = line[q_end + 1 : a_end + 1][:80]
        raise DataError(f"{where}: the answer list is not a Python list literal: {literal!r}") from None
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: the answer list must hold strings")
    context = line[a_end + 2 :].strip()
    if not question or not context:
        raise DataError(f"{where}: empty question or passage")
    return question, answers, context


def unquote_csv_line(line: str) -> str:
    """Undo the CSV quoting a few rewritten-question lines carry (``"..""..""..."``).

    Args:
        line: one line of a ``*_filtered.csv``.

    Returns:
        The line without its outer quotes and with doubled quotes halved (unquoted lines unchanged).
    """
    line = line.rstrip("\r\n")
    if line.startswith('"'):
        row = next(csv.reader(io.StringIO(line)))
        return ",".join(row)
    return line


def load_squadshifts(subset: str, root: str | os.PathLike | None = None, limit: int | None = None) -> Dataset:
    """One SQuADShifts subset as the paper used it: ``<subset>.csv`` and its rewritten questions.

    Args:
        subset: one of :data:`SQUADSHIFTS_SUBSETS`.
        root: the folder holding the files (default: the repository's data/squadshifts-pd).
        limit: read only the first ``limit`` lines.

    Returns:
        Items ``<subset>-q<line>``; passages (deduplicated by text) ``<subset>-p<n>`` in order of first use.

    Raises:
        DataError: an unknown subset, a missing or non-UTF-8 file, misaligned files or a malformed line.
    """
    if subset not in SQUADSHIFTS_SUBSETS:
        raise DataError(f"unknown SQuADShifts subset {subset!r}; allowed: {', '.join(SQUADSHIFTS_SUBSETS)}")
    root = Path(root) if root else SQUADSHIFTS_DIR
    main, rewritten_file = root / f"{subset}.csv", root / f"{subset}_filtered.csv"
    for p in (main, rewritten_file):
        if not p.is_file():
            raise DataError(
                f"SQuADShifts file {p} is missing. The repository ships these files in data/squadshifts-pd/; "
                "restore them with `git checkout -- data/` or point the dataset's `root` at a folder holding them."
            )
    lines = read_text(main).splitlines()
    rewrites = read_text(rewritten_file).splitlines()
    if len(rewrites) != len(lines):
        raise DataError(f"{rewritten_file} has {len(rewrites)} lines but {main} has {len(lines)}; "
                        "they must align line by line")
    docs: dict[str, Document] = {}
    by_text: dict[str, str] = {}
    items: list[TestItem] = []
    for i, (line, rw) in enumerate(zip(lines, rewrites)):
        if limit is not None and i >= limit:
            break
        question, answers, context = parse_squadshifts_line(line, where=f"{main}:{i + 1}")
        doc_id = by_text.get(context)
        if doc_id is None:
            doc_id = f"{subset}-p{len(docs):04d}"
            by_text[context] = doc_id
            docs[doc_id] = Document(doc_id, context)
        items.append(TestItem(f"{subset}-q{i:04d}", question, tuple(answers), (doc_id,), unquote_csv_line(rw).strip()))
    return Dataset(f"squadshifts-{subset}", docs, items, {"source": str(main), "subset": subset})


@register
class SquadShifts(Loader):
    """``loader: squadshifts``: a subset (``subset``) from ``root`` (default: the repository's files)."""

    name = "squadshifts"
    required = {"subset": "amazon, new_wiki, nyt, reddit"}

    def display_name(self, name: str, settings: dict[str, Any]) -> str:
        """The subset's name as the paper writes it (``New Wiki``), with a ``passages`` slice after it."""
        from pd.data.loaders import with_slice

        return with_slice(SUBSET_LABELS.get(settings["subset"], settings["subset"]), settings)

    def load(self, name: str, settings: dict[str, Any]) -> Dataset:
        return load_squadshifts(settings["subset"], settings.get("root"), settings.get("limit"))
