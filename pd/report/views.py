"""Views beneath an accuracy table: its cells' accuracy on a subset of the test questions.

A *view* re-reads the grades behind each cell of a built table (:class:`pd.report.tables.Table`)
with some test questions set aside (those the base model already answers,
:mod:`pd.report.base_answered`; those a generated training question restates,
:mod:`pd.report.leakage`) and lays the accuracy on the rest out as the table is laid out
(its blocks, rows and columns), with mean +- 2 SE from the same statistics as the table
(:func:`pd.report.stats.mean_se`). A view never changes a number of the table, makes no
paired test and joins no Holm family: it is shown beside the table, never in its place.
A view may add small tables of its own (per dataset: how many questions were set aside,
the closest pairs).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from pd.report.aggregate import Group
from pd.report.stats import MeanSE, mean_se
from pd.report.tables import MARK_BINOMIAL, MISSING, Table, pct


@dataclass
class SubsetAccuracy:
    """A group's accuracy on the questions not set aside: mean +- SE over seeds, as the table's cells.

    ``kept`` and ``total`` count distinct questions over the group's graded seeds (a question
    graded in any seed counts once); ``per_seed`` is each seed's accuracy on its kept questions.
    """

    summary: MeanSE | None
    kept: int
    total: int
    per_seed: dict[Any, float] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return self.total - self.kept


def accuracy_without(group: Group, removed: Iterable[str]) -> SubsetAccuracy:
    """The group's accuracy with the questions ``removed`` left out, per seed and over seeds.

    Each seed's accuracy is the mean of its grades (an invalid grade counts as not correct,
    as in the table) over its questions not in ``removed``; the summary is
    :func:`pd.report.stats.mean_se` over the seeds that kept any question (with one seed: the
    binomial SE over its kept questions), exactly as the table summarises all questions.

    Args:
        group: a table cell's group of seeds.
        removed: question ids to leave out.

    Returns:
        The accuracy on the rest; its summary is None when no seed kept a question.
    """
    out = set(removed)
    accs, ns, per_seed = [], [], {}
    every: set[str] = set()
    kept_ids: set[str] = set()
    for rec, grades in group.present:
        keep = [i for i, item in enumerate(grades.item_ids) if item not in out]
        every.update(grades.item_ids)
        kept_ids.update(grades.item_ids[i] for i in keep)
        if not keep:
            continue
        acc = float(grades.correct[keep].mean())
        accs.append(acc)
        ns.append(len(keep))
        per_seed[rec.seed] = acc
    return SubsetAccuracy(mean_se(accs, ns) if accs else None, len(kept_ids), len(every), per_seed)


@dataclass
class ViewCell:
    """One cell of a view: the accuracy on the kept questions (None: nothing to show) and a short note."""

    group: Group | None
    value: SubsetAccuracy | None = None
    detail: str = ""  # shown after the value, e.g. "(12/40 answered)"


@dataclass
class ViewRow:
    key: tuple
    labels: list[str]
    cells: list[ViewCell]


@dataclass
class ViewBlock:
    label: str
    rows: list[ViewRow]


@dataclass
class ViewTable:
    """A small table of plain text a view adds (e.g. per dataset); ``headers`` and each row align."""

    caption: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class View:
    """A view of a table: ``blocks`` laid out as the table, ``tables`` of its own, ``notes``.

    ``name`` makes the HTML table's id (``table-<experiment>-<name>``) and the key under
    ``views`` in ``summary.json``; ``data`` is the view's machine-readable form.
    """

    name: str
    title: str
    blocks: list[ViewBlock] = field(default_factory=list)
    tables: list[ViewTable] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def text(self, cell: ViewCell, fmt: str = "md") -> str:
        """The cell as ``fmt`` (md, tex or html) shows it: accuracy ± 2 SE in percent, its detail, marks.

        Args:
            cell: one of the view's cells.
            fmt: ``md``, ``tex`` or ``html`` (html: markup, to be inserted unescaped; the detail is plain text).

        Returns:
            The cell's text; the missing mark where it has no value.
        """
        s = cell.value.summary if cell.value is not None else None
        if s is None:
            core = MISSING if fmt != "tex" else "--"
        else:
            pm = {"md": " ± ", "html": " ± ", "tex": r"\,$\pm$"}[fmt]
            core = pct(s.mean) + (f"{pm}{pct(s.half_width)}" if not math.isnan(s.se) else "")
            if s.kind == "binomial":
                core += {"md": MARK_BINOMIAL, "html": f'<sup class="mark">{MARK_BINOMIAL}</sup>',
                         "tex": r"$^{\dagger}$"}[fmt]
        if cell.detail:
            core += " " + {"md": cell.detail, "html": html.escape(cell.detail),
                           "tex": cell.detail.replace("%", r"\%")}[fmt]
        return core

    @property
    def has_binomial(self) -> bool:
        """Whether a cell's SE is binomial over questions (one seed): its note is then needed."""
        return any(c.value is not None and c.value.summary is not None and c.value.summary.kind == "binomial"
                   for b in self.blocks for r in b.rows for c in r.cells)


BINOMIAL_NOTE = (MARK_BINOMIAL, "One seed only: ± 2 binomial standard errors over the questions kept.")


def lay_out(table: Table, cell_for: Callable[[Group], ViewCell]) -> list[ViewBlock]:
    """The view's cells where the table has its cells: ``cell_for`` of each cell's group.

    Args:
        table: the built accuracy table.
        cell_for: the view's cell of one group (called only for cells with grades).

    Returns:
        One block per table block, rows and columns as the table's; a cell without grades is empty.
    """
    blocks = []
    for block in table.blocks:
        rows = []
        for row in block.rows:
            cells = [cell_for(c.group) if c.group is not None and c.summary is not None else ViewCell(None)
                     for c in row.cells]
            rows.append(ViewRow(row.key, row.labels, cells))
        blocks.append(ViewBlock(block.label, rows))
    return blocks


def cell_rows(table: Table, view: View) -> list[dict[str, Any]]:
    """The view's cells in machine-readable form (fractions, not percent), one per table cell.

    Args:
        table: the table the view was laid out on (for the column keys).
        view: the view.

    Returns:
        Dicts with the block, row, column and axes, the questions kept and in all, and the mean,
        SE, its kind, seeds and per-seed accuracy on the kept questions (None where not shown).
    """
    out = []
    for tb, vb in zip(table.blocks, view.blocks):
        for row in vb.rows:
            for (ck, _), cell in zip(table.columns, row.cells):
                v = cell.value
                s = v.summary if v is not None else None
                out.append({"block": tb.key, "row": list(row.key), "column": list(ck),
                            "axes": cell.group.axes if cell.group is not None else None,
                            "questions": v.total if v is not None else None,
                            "kept": v.kept if v is not None else None,
                            "mean": s.mean if s else None, "se": s.se if s else None,
                            "se_kind": s.kind if s else None, "n_seeds": s.n_seeds if s else 0,
                            "per_seed": {str(k): a for k, a in v.per_seed.items()} if v is not None else {}})
    return out
