"""A user's questions file (JSONL or CSV): read, checked row by row, coerced where unambiguous.

A folder dataset's test questions come from a file people write by hand or export from a
spreadsheet, so every row is checked when the file is loaded, and every refusal is one
line naming the file and the row (rows count from 1, blank JSONL lines and the CSV header
not counted):

- ``question``: a non-empty string.
- ``answers``: a non-empty string, a number, or a non-empty list of them. Numbers become
  strings: ``1889`` -> ``["1889"]``, ``[1889, 1890]`` -> ``["1889", "1890"]``, ``2.5`` ->
  ``["2.5"]``. A float Python would write in exponent form (``1e+20``), NaN and infinity,
  booleans, null, objects and nested lists are refused: no one string is meant. In CSV the
  column holds ``a|b`` or a JSON list (``[1889, 1890]``).
- ``doc`` (a string) or ``doc_ids`` (a list of strings): optional, the gold documents.
- ``id`` (a string or an integer; unique) and ``rewritten`` (a string): optional.

A JSONL line that is not an object (a list, a string) is refused by :func:`pd.io.read_jsonl`;
an empty file, or one without rows, is refused here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Collection, Iterator

from pd.errors import DataError
from pd.io import read_jsonl, read_text

CSV_COLUMNS = ("question", "answers")  # required; optional: doc, id, rewritten


def _kind(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def answer_text(value: Any, where: str) -> str:
    """One gold answer as a string: strings as they are, numbers written out.

    Args:
        value: the answer as read (JSON value or CSV text).
        where: names the file and row in an error.

    Returns:
        The answer text.

    Raises:
        DataError: the value is empty, a boolean, null, a container, or a number without one
            obvious spelling (exponent form, NaN, infinity).
    """
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: an answer is empty")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if math.isfinite(value) and "e" not in text:
            return text
        raise DataError(f"{where}: the answer {text} has no single spelling as text; write it as a string")
    raise DataError(f"{where}: an answer must be a string or a number, got {_kind(value)}")


def _answers(value: Any, where: str, from_csv: bool) -> tuple[str, ...]:
    if from_csv:
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: 'answers' starts with '[' but is not a JSON list ({err.msg})") from None
        else:
            value = [s.strip() for s in text.split("|") if s.strip()]
            if not value:
                raise DataError(f"{where}: 'answers' is empty")
    if isinstance(value, list):
        if not value:
            raise DataError(f"{where}: 'answers' is an empty list")
        return tuple(answer_text(v, where) for v in value)
    return (answer_text(value, where),)


def _optional_text(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: '{key}' must be a string, got {_kind(value)}")
    return value


def _doc_ids(row: dict, where: str) -> tuple[str, ...]:
    ids = row.get("doc_ids")
    if ids is None:
        doc = _optional_text(row, "doc", where).strip()
        return (doc,) if doc else ()
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list) or not all(isinstance(d, str) and d for d in ids):
        raise DataError(f"{where}: 'doc_ids' must be a list of document paths, got {ids!r}"[:300])
    return tuple(ids)


def check_row(row: dict, n: int, where: str, from_csv: bool = False) -> dict:
    """One questions-file row, checked and coerced.

    Args:
        row: the row as read (a JSON object, or a CSV row as ``csv.DictReader`` gives it).
        n: its 0-based position (the default id is ``q<n:04d>``).
        where: names the file and row in an error.
        from_csv: the row's values are CSV text (``answers`` holds ``a|b`` or a JSON list).

    Returns:
        ``{"id", "question", "answers", "doc_ids", "rewritten"}`` with ``answers`` and ``doc_ids``
        as tuples of strings (the fields of :class:`pd.data.TestItem`).

    Raises:
        DataError: a field is missing, empty or of a type with no unambiguous reading.
    """
    for key in ("question", "answers"):
        if row.get(key) is None:
            raise DataError(f"{where}: missing field '{key}' (rows need question and answers)")
    question = row["question"]
    if not isinstance(question, str):
        raise DataError(f"{where}: 'question' must be a string, got {_kind(question)}")
    if not question.strip():
        raise DataError(f"{where}: 'question' is empty")
    raw_id = row.get("id")
    if raw_id in (None, ""):
        item_id = f"q{n:04d}"
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
        item_id = str(raw_id)
    else:
        raise DataError(f"{where}: 'id' must be a string or an integer, got {_kind(raw_id)}")
    return {"id": item_id, "question": question, "answers": _answers(row["answers"], where, from_csv),
            "doc_ids": _doc_ids(row, where), "rewritten": _optional_text(row, "rewritten", where)}


def _checked(reader: csv.DictReader, path: Path) -> Iterator[dict]:
    """The reader's rows; a row the csv module refuses (a field over its size limit) as a DataError naming it."""
    n = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"{path} row {n + 1}: cannot read this CSV row ({err}); "
                            "a field that long belongs in a JSONL questions file") from None
        n += 1
        yield row


def _csv_rows(path: Path, text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = set(CSV_COLUMNS) - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; "
                        "columns are question, answers[, doc, id, rewritten]")
    rows = []
    for n, row in enumerate(_checked(reader, path), 1):
        if None in row:
            raise DataError(f"{path} row {n}: more fields than the header has columns (quote fields that hold commas)")
        rows.append(row)
    return rows


def read_question_rows(path: str | os.PathLike, documents: Collection[str] | None = None) -> list[dict]:
    """The checked rows of a questions file: JSONL, or CSV when the name ends in ``.csv``.

    Args:
        path: the questions file (UTF-8; a byte-order mark is dropped).
        documents: the known document ids; a row naming another is refused (None: not checked).

    Returns:
        One dict per row as :func:`check_row` returns it, in file order.

    Raises:
        DataError: the file is missing, not UTF-8, empty or without rows, a JSONL line is not a JSON
            object, a CSV column is missing, a row fails :func:`check_row`, two rows share an id, or a
            row names an unknown document.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"questions file {path} does not exist")
    text = read_text(path)
    if not text.strip():
        raise DataError(f"questions file {path} is empty")
    from_csv = path.suffix.lower() == ".csv"
    raw = _csv_rows(path, text) if from_csv else read_jsonl(path)
    if not raw:
        raise DataError(f"questions file {path} has no rows")
    rows: list[dict] = []
    seen: dict[str, int] = {}
    for n, r in enumerate(raw):
        where = f"{path} row {n + 1}"
        row = check_row(r, n, where, from_csv)
        if row["id"] in seen:
            raise DataError(f"{where}: id {row['id']!r} is also the id of row {seen[row['id']]}")
        seen[row["id"]] = n + 1
        unknown = [d for d in row["doc_ids"] if documents is not None and d not in documents]
        if unknown:
            raise DataError(f"{where}: unknown document(s) {unknown}; known: {sorted(documents)[:10]}")
        rows.append(row)
    return rows
