"""The values the paper publishes (pd/report/paper_values.yaml) and lookup by cell axes.

A harness cell is "the same cell" as a paper value when the paper table's grader equals
the cell's grader and every axis the paper row names (plus the table's column axis) has
the same value in the cell. Dataset names are compared without a ``squadshifts-`` prefix;
``expert``, ``teacher`` and ``qgen`` that are unset or ``self`` mean the cell's model; other
unset axes take the YAML's ``defaults`` (the paper's standard settings).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from pd.errors import ConfigError

PAPER_VALUES_PATH = Path(__file__).parent / "paper_values.yaml"
_SELF_AXES = ("expert", "teacher", "qgen")


@dataclass(frozen=True)
class PaperValue:
    table: str
    row: str
    column: str
    block: str
    value: float  # percent
    inferred: str | None  # why the column was inferred, if it was


@dataclass(frozen=True)
class PaperRow:
    label: str
    block: str
    axes: dict[str, Any] | None
    values: dict[str, float]
    inferred: dict[str, str]


@dataclass(frozen=True)
class PaperTable:
    id: str
    title: str
    grader: str | None
    column_axis: str
    columns: dict[str, str]
    rows: tuple[PaperRow, ...]
    kind: str = "accuracy"
    defaults: tuple = ()  # (axis, value) pairs: what an unset cell axis means


@functools.lru_cache(maxsize=4)
def load_paper_values(path: str | os.PathLike | None = None) -> dict[str, PaperTable]:
    """Parse the YAML into tables keyed by id ("2", "13", "M.1", ...)."""
    p = Path(path) if path else PAPER_VALUES_PATH
    if not p.is_file():
        raise ConfigError(f"paper values file {p} does not exist")
    raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    defaults = tuple(sorted((raw.get("defaults") or {}).items()))
    tables: dict[str, PaperTable] = {}
    for tid, t in (raw.get("tables") or {}).items():
        columns = {str(k): str(v) for k, v in t["columns"].items()}
        rows = []
        for r in t["rows"]:
            values = {str(k): float(v) for k, v in r["values"].items()}
            bad = set(values) - set(columns)
            if bad:
                raise ConfigError(f"{p}: table {tid} row {r['label']!r} has values for unknown columns {sorted(bad)}")
            rows.append(PaperRow(str(r["label"]), str(r["block"]), r.get("axes"), values,
                                 {str(k): " ".join(str(v).split()) for k, v in (r.get("inferred") or {}).items()}))
        tables[str(tid)] = PaperTable(str(tid), " ".join(str(t["title"]).split()), t.get("grader"),
                                      str(t["column_axis"]), columns, tuple(rows), str(t.get("kind", "accuracy")),
                                      defaults)
    return tables


def normalise_value(axis: str, value: Any) -> str:
    """Compare axis values as text, with dataset prefixes dropped and 2 == 2.0."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    s = str(value)
    if axis == "dataset" and s.startswith("squadshifts-"):
        s = s[len("squadshifts-"):]
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if f.is_integer() else repr(f)


def _cell_value(axes: Mapping[str, Any], axis: str, defaults: Mapping[str, Any] = {}) -> Any:
    value = axes.get(axis)
    if axis in _SELF_AXES and value in (None, "self"):
        return axes.get("model")
    return defaults.get(axis) if value is None else value


def lookup(table_id: str | None, axes: Mapping[str, Any], grader: str | None,
           path: str | os.PathLike | None = None) -> PaperValue | None:
    """The paper's value for a cell with these axes, graded by ``grader``, or None."""
    if table_id is None:
        return None
    tables = load_paper_values(str(path) if path else None)
    table = tables.get(str(table_id))
    if table is None:
        raise ConfigError(f"paper_table {table_id!r} is not in the paper values; known: {', '.join(tables)}")
    if table.kind != "accuracy" or (table.grader is not None and grader is not None and table.grader != grader):
        return None
    defaults = dict(table.defaults)
    col_value = _cell_value(axes, table.column_axis, defaults)
    if col_value is None:
        return None
    col = normalise_value(table.column_axis, col_value)
    for row in table.rows:
        if row.axes is None or col not in row.values:
            continue
        values = {k: _cell_value(axes, k, defaults) for k in row.axes}
        if all(values[k] is not None and normalise_value(k, values[k]) == normalise_value(k, v)
               for k, v in row.axes.items()):
            return PaperValue(table.id, row.label, col, row.block, row.values[col], row.inferred.get(col))
    return None
