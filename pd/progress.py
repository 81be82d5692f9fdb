"""Progress bars a person can tell apart: each is named after the job that draws it.

Two Snakemake jobs run side by side on one console. Their bars used to read ``generate
smollm2-135m-instruct`` and ``pd:`` alike; :func:`pd.pipeline.run.run_job` now puts the job's
label (:func:`pd.pipeline.paths.job_label`, e.g. ``evaluate demo-nyt pd smollm2-135m-instruct
s1 bm25``) in :data:`JOB_LABEL_ENV`, and every bar of the job starts with it.

A bar is drawn only on a terminal: in a log file (a SLURM job's, ``make demo > log``) tqdm's
carriage returns would pile a bar's every update onto one long line. ``PD_PROGRESS=1`` draws bars
anyway, ``PD_PROGRESS=0`` never.
"""

from __future__ import annotations

import os
import sys
from typing import Any

JOB_LABEL_ENV = "PD_JOB_LABEL"
PROGRESS_ENV = "PD_PROGRESS"


def job_label(default: str = "pd") -> str:
    """The label of the job this process runs (``default`` outside a pipeline job)."""
    return os.environ.get(JOB_LABEL_ENV) or default


def bars_shown(stream: Any = None) -> bool:
    """Whether bars are drawn: ``PD_PROGRESS`` when set (``0``/``1``), else whether ``stream`` (stderr) is a tty."""
    forced = os.environ.get(PROGRESS_ENV, "").strip()
    if forced in {"0", "1"}:
        return forced == "1"
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or foreign stream
        return False


def bar(total: int, what: str, *, enabled: bool = True, label: str | None = None, **kwargs: Any):
    """A tqdm bar named ``"<job label>: <what>"``.

    Args:
        total: the bar's total (rows, steps).
        what: what it counts, e.g. ``"generate 108 rows"`` or ``"train"``.
        enabled: False hides it whatever the console (a caller's own switch).
        label: the name before ``what`` (default :func:`job_label`).
        **kwargs: passed to :class:`tqdm.tqdm` (``initial``, ``leave``, ...).

    Returns:
        A ``tqdm.tqdm`` (disabled where no bar is to be drawn: its methods then do nothing).
    """
    from tqdm.auto import tqdm

    name = label if label is not None else job_label()
    return tqdm(total=total, desc=f"{name}: {what}", disable=not (enabled and bars_shown()), dynamic_ncols=True,
                **kwargs)
