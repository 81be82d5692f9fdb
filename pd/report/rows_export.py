"""The per-sample rows behind an experiment's tables, in two compressed files beside them.

A committed report must let a reader trace every number to the rows it came from without
the results folder (which holds adapters and caches, gigabytes) or a rerun:

* ``rows.jsonl.gz``: one line per graded answer of every cell of the experiment: the
  cell (``cell_id``, ``axes``, ``grader``), the item, its question, the passage ids retrieved for it
  (empty closed-book) and the hash of the prompt it was asked with (``prompt_hash``: the
  generation cache's key), its passage (the bootstrap's cluster; null in rows graded before
  grades carried it), the answer, its grade (``correct``,
  ``valid``, ``reason``), the gold answers, and the gold-answer log-likelihood of the
  cell's evaluation row (:mod:`pd.generate.loglik`; null where not computed). Accuracy cells are
  means of ``correct`` per seed; log-likelihood cells means of ``gold_logprob_per_token``.
* ``training.jsonl.gz``: one line per adapter: the cells it serves, its held-out
  KL(teacher || student) before and after (``heldout.json``) and its loss per step
  (``train_log.jsonl``).

Both are written deterministically (sorted, gzip without a timestamp), so re-rendering an
unchanged run leaves the committed files byte for byte as they were.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from pd.io import atomic_path, read_json, read_jsonl
from pd.report.aggregate import CellRecord, Grades, load_grades
from pd.report.evidence import HELDOUT_FILE, load_train_log

ROWS_FILE = "rows.jsonl.gz"
TRAINING_FILE = "training.jsonl.gz"
EVAL_FIELDS = ("question", "retrieved", "prompt_hash",
               "gold_logprob", "gold_logprob_per_token", "gold_alias", "gold_tokens", "finish_reason", "n_tokens")
GRADE_FIELDS = ("passage", "correct", "valid", "reason", "answer", "gold")


def _gzip_jsonl(rows: Iterable[dict]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    return buf.getvalue()


def answer_rows(records: Iterable[CellRecord], grades: Mapping[str, Grades | None] | None = None) -> list[dict]:
    """Every graded answer of ``records`` joined with its evaluation row (first sample per item).

    Args:
        records: the experiment's manifest cells (a missing grade file contributes nothing).
        grades: grade files already read, by path (:func:`pd.report.aggregate.build_groups`'s
            cache); the others are read here.

    Returns:
        Rows sorted by (cell, grader, item order in the grade file).
    """
    grades = grades or {}
    out = []
    for rec in sorted(records, key=lambda r: (r.cell_id, r.grader)):
        graded = grades[rec.grades] if rec.grades in grades else (
            load_grades(rec.grades) if rec.grades and Path(rec.grades).is_file() else None)
        if graded is None:
            continue
        evals: dict[str, dict] = {}
        path = rec.extra.get("evaluate")
        if path and Path(path).is_file():
            for r in read_jsonl(path):
                evals.setdefault(str(r.get("item_id")), r)
        for g in graded.rows:
            item = str(g["item_id"])
            e = evals.get(item, {})
            out.append({"cell_id": rec.cell_id, "axes": rec.axes, "grader": rec.grader, "item_id": item,
                        **{k: g.get(k) for k in GRADE_FIELDS}, **{k: e.get(k) for k in EVAL_FIELDS}})
    return out


def training_rows(records: Iterable[CellRecord]) -> list[dict]:
    """One row per adapter of ``records``: the cells it serves, held-out KL and step log.

    Returns:
        Rows sorted by the first cell each adapter serves; an adapter folder that is gone is skipped.
    """
    by_adapter: dict[str, list[CellRecord]] = {}
    for rec in records:
        adapter = rec.extra.get("adapter")
        if adapter and Path(adapter).is_dir():
            by_adapter.setdefault(adapter, []).append(rec)
    out = []
    for adapter, recs in by_adapter.items():
        heldout = Path(adapter) / HELDOUT_FILE
        cells = sorted({r.cell_id for r in recs})
        out.append({"cells": cells, "axes": recs[0].axes, "adapter": Path(adapter).name,
                    "heldout": read_json(heldout) if heldout.is_file() else None,
                    "train_log": load_train_log(adapter)})
    return sorted(out, key=lambda r: r["cells"][0])


def export_rows(records: list[CellRecord], exp_dir: str | os.PathLike,
                grades: Mapping[str, Grades | None] | None = None) -> dict[str, Path]:
    """Write ``rows.jsonl.gz`` and ``training.jsonl.gz`` into ``exp_dir`` (atomically).

    Args:
        records: the experiment's manifest cells.
        exp_dir: the experiment's report folder.
        grades: grade files already read, by path (see :func:`answer_rows`).

    Returns:
        ``{"rows": path, "training": path}``.
    """
    exp_dir = Path(exp_dir)
    paths = {"rows": exp_dir / ROWS_FILE, "training": exp_dir / TRAINING_FILE}
    for key, rows in (("rows", answer_rows(records, grades)), ("training", training_rows(records))):
        with atomic_path(paths[key]) as tmp:
            tmp.write_bytes(_gzip_jsonl(rows))
    return paths


def read_exported(path: str | os.PathLike) -> list[dict]:
    """The rows of a file :func:`export_rows` wrote (``rows.jsonl.gz`` or ``training.jsonl.gz``).

    Args:
        path: the gzip-compressed JSONL file.

    Returns:
        Its rows, in file order.
    """
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
