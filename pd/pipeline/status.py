"""Which cells of an experiment are done, missing or stale, read from the plan and the files alone.

A job's output is written atomically (:mod:`pd.io`) under a path that carries a hash of everything the
job depends on, so a file that exists is a finished job of exactly today's specification: a changed
setting gives another path, which is missing. What remains is Snakemake's other reason to rerun a job,
an input newer than its output (e.g. an adapter retrained with ``--forcerun``): such an output is
stale. A cell's status is that of its grade files and everything upstream of them:

* ``done``: every file the cell needs exists and none is older than a file it reads;
* ``stale``: every grade file exists, but one of the cell's files is older than one of its inputs;
* ``missing``: a file is absent; the status names how many of the cell's jobs still have to run.

No Snakemake run and no model are needed: this is what ``pd cells EXP`` shows after an interruption.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pd.pipeline.plan import Cell, Plan


@dataclass(frozen=True)
class CellStatus:
    """A cell's state on disk.

    Attributes:
        state: ``done``, ``stale`` or ``missing``.
        to_run: the cell's jobs whose output is absent (0 when done or stale).
        stale: the cell's files that are older than an input they read.
    """

    state: str
    to_run: int
    stale: tuple[str, ...] = ()

    def line(self) -> str:
        """The status as ``pd cells`` prints it."""
        if self.state == "missing":
            return f"missing ({self.to_run} job{'s' if self.to_run != 1 else ''} to run)"
        if self.state == "stale":
            return f"stale ({len(self.stale)} file{'s' if len(self.stale) != 1 else ''} older than an input)"
        return "done"


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def cell_status(plan: Plan, cell: Cell, base: str | os.PathLike = ".") -> CellStatus:
    """The state of one cell's files (see the module docstring).

    Args:
        plan: the experiment's plan (:func:`pd.pipeline.plan.build_plan`).
        cell: one of its cells.
        base: the folder the plan's relative paths start from (the workflow's directory).

    Returns:
        The :class:`CellStatus`.
    """
    paths = sorted({p for grade in cell.grades.values() for p in plan.upstream(grade)})
    times = {p: _mtime(p if os.path.isabs(p) else os.path.join(base, p)) for p in paths}
    absent = [p for p in paths if times[p] is None]
    if absent:
        return CellStatus("missing", len(absent))
    stale = tuple(p for p in paths
                  if any(times[i] is not None and times[i] > times[p] for i in plan.artifacts[p].inputs if i in times))
    return CellStatus("stale", 0, stale) if stale else CellStatus("done", 0)
