"""The paper's filter as a view: how many test questions the base model already answers, and accuracy on the rest.

The paper keeps only the test questions the base model does not answer. The harness keeps
every question in its tables and shows this filter beside them (:mod:`pd.report.views`):
per cell, how many of its questions the base model already answered, and the cell's
accuracy on the others, with mean +- 2 SE as the table's.

Which runs are "the base model" for a cell: the experiment's cells of the same ``model``
and ``dataset`` whose method is :data:`BASE_METHOD`, evaluated closed-book (retrieval
``none``, or no retrieval axis) and graded by the table's grader. Every such run is pooled
(all seeds, and base cells that differ in axes the base model ignores, e.g. a question
count; a grade file listed twice is read once).

When a question counts as already answered (:data:`RULES`):

- ``any`` (the default, :data:`DEFAULT_RULE`): the base model answered it correctly in at
  least one pooled run. This is the stricter filter: only questions the base model never
  got right remain.
- ``majority``: correctly in more than half of the pooled runs that graded it.

A question no pooled run graded is not counted as answered. An invalid (unparseable) judge
grade of the base model counts as not correct, as everywhere in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from pd.errors import ConfigError
from pd.report.aggregate import Grades, Group
from pd.report.labels import label_for
from pd.report.tables import Table
from pd.report.views import BINOMIAL_NOTE, View, ViewCell, ViewTable, accuracy_without, cell_rows, lay_out

BASE_METHOD = "base"
CLOSED_BOOK = "none"
RULES = ("any", "majority")
DEFAULT_RULE = "any"
NAME = "base_answered"


def check_rule(rule: str) -> None:
    """Refuse a rule that is not one of :data:`RULES`.

    Args:
        rule: when a question counts as already answered.

    Raises:
        ConfigError: naming the rule and the allowed ones.
    """
    if rule not in RULES:
        raise ConfigError(f"base-answered rule {rule!r} is not known; allowed: {', '.join(RULES)}")


def answered_items(runs: Sequence[Grades], rule: str = DEFAULT_RULE) -> set[str]:
    """The questions the pooled base runs count as already answered under ``rule``.

    Args:
        runs: the base model's grade files (each a run: one seed of one cell).
        rule: ``any`` (correct in at least one run) or ``majority`` (correct in more than half of
            the runs that graded the question).

    Returns:
        The question ids counted as answered.

    Raises:
        ConfigError: an unknown rule.
    """
    check_rule(rule)
    correct: dict[str, int] = {}
    graded: dict[str, int] = {}
    for g in runs:
        for item, c in zip(g.item_ids, g.correct):
            graded[item] = graded.get(item, 0) + 1
            correct[item] = correct.get(item, 0) + int(c > 0)
    if rule == "any":
        return {i for i, c in correct.items() if c > 0}
    return {i for i, c in correct.items() if 2 * c > graded[i]}


@dataclass
class BasePool:
    """The base model's closed-book runs for one (model, dataset) under one grader."""

    model: Any
    dataset: Any
    runs: list[Grades] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)  # cell ids of the pooled runs

    @property
    def graded(self) -> set[str]:
        """Every question some pooled run graded."""
        return {i for g in self.runs for i in g.item_ids}


def base_pools(groups: Sequence[Group], grader: str, method_axis: str = "method") -> dict[tuple, BasePool]:
    """The pooled base runs per (model, dataset): closed-book, graded by ``grader``, graded files only.

    Args:
        groups: the experiment's groups (every grader; the table's ``where`` does not apply).
        grader: the table's grader.
        method_axis: the axis naming the method.

    Returns:
        ``(model, dataset)`` -> its pool, for each pair with at least one graded base run.
    """
    pools: dict[tuple, BasePool] = {}
    seen: set[str] = set()
    for g in groups:
        if str(g.axes.get(method_axis)) != BASE_METHOD or str(g.axes.get("retrieval", CLOSED_BOOK)) != CLOSED_BOOK:
            continue
        for rec, grades in g.present:
            if rec.grader != grader or grades.path in seen:
                continue
            seen.add(grades.path)
            key = (g.axes.get("model"), g.axes.get("dataset"))
            pool = pools.setdefault(key, BasePool(*key))
            pool.runs.append(grades)
            pool.cells.append(rec.cell_id)
    return pools


def base_answered_view(table: Table, groups: Sequence[Group], rule: str = DEFAULT_RULE) -> View:
    """Per cell of ``table``: the questions the base model already answered, and accuracy on the rest.

    A cell shows ``accuracy ± 2 SE (k/n answered)``: its accuracy on its questions the base model
    did not answer (:func:`pd.report.views.accuracy_without`), ``k`` of its ``n`` questions
    answered by the base model. A cell whose model and dataset have no base run shows the missing
    mark, and the notes name the pair.

    Args:
        table: the built accuracy table.
        groups: the experiment's groups (the base runs are found among them, :func:`base_pools`).
        rule: when a question counts as answered (:data:`RULES`).

    Returns:
        The view; ``data`` holds the rule, the pools and the cells' numbers.

    Raises:
        ConfigError: an unknown rule.
    """
    check_rule(rule)
    answered_by: dict[tuple, set[str]] = {}
    pools = base_pools(groups, table.grader, table.spec.method_axis)
    for key, pool in pools.items():
        answered_by[key] = answered_items(pool.runs, rule)
    lacking: dict[tuple, None] = {}

    def cell_for(g: Group) -> ViewCell:
        key = (g.axes.get("model"), g.axes.get("dataset"))
        if key not in answered_by:
            lacking[key] = None
            return ViewCell(g)
        value = accuracy_without(g, answered_by[key])
        return ViewCell(g, value, f"({value.removed}/{value.total} answered)")

    view = View(NAME, "Questions the base model does not already answer (the paper's filter, as a view)")
    view.blocks = lay_out(table, cell_for) if pools else []  # no base run at all: the notes say so, no grid
    if not pools:
        lacking.update(dict.fromkeys((c.group.axes.get("model"), c.group.axes.get("dataset")) for b in table.blocks
                                     for r in b.rows for c in r.cells if c.group is not None))
    spec = table.spec
    if pools:
        view.tables.append(ViewTable(
            "The base model's closed-book runs, pooled per model and dataset",
            ["Model", "Dataset", "Base runs", "Questions", "Already answered"],
            [[str(m), label_for(spec, "dataset", d), str(len(p.runs)), str(len(p.graded)),
              _share(len(answered_by[(m, d)]), len(p.graded))] for (m, d), p in pools.items()]))
    rule_text = ("correct in at least one of the pooled base runs" if rule == "any"
                 else "correct in more than half of the pooled base runs that graded it")
    view.notes = [("", f"Accuracy in percent on the questions the base model (method {BASE_METHOD}, same model and "
                       f"dataset, closed-book, grader {table.grader}, all its seeds pooled) did not already answer, "
                       f"mean ± 2 SE over seeds as in the table above; (k/n answered): k of the cell's n questions "
                       f"were already answered. A question counts as answered when it was {rule_text} "
                       f"(rule '{rule}'). The table above keeps every question.")]
    if view.has_binomial:
        view.notes.append(BINOMIAL_NOTE)
    for m, d in lacking:
        view.notes.append(("", f"No base cell in this experiment for model {m}, dataset "
                               f"{label_for(spec, 'dataset', d)} (closed-book, grader {table.grader}): "
                               "its cells show —."))
    view.data = {"rule": rule, "base_method": BASE_METHOD,
                 "pools": [{"model": m, "dataset": d, "cells": p.cells, "questions": len(p.graded),
                            "answered": sorted(answered_by[(m, d)])} for (m, d), p in pools.items()],
                 "missing_base": [{"model": m, "dataset": d} for m, d in lacking],
                 "cells": cell_rows(table, view)}
    return view


def _share(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.1f}%)" if n else f"{k}/0"
