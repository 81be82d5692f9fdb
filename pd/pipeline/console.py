"""A Snakemake console with one line of signal per job.

A local run of the demo printed 743 lines: for each of its 45 jobs a ten-line block (output,
log, wildcards, resources), then ``Select jobs to execute...``, ``Execute 1 jobs...``, a time
stamp and ``Finished jobid: 7 (Rule: grade)``, none of which names what the job did. What a
person needs is pd's ``<job label>: done in N s`` line (:func:`pd.pipeline.run.run_spec`) and
Snakemake's ``N of M steps (x%) done``.

:func:`compact_console` filters the rest out of the console handlers of Snakemake's logger (never
its log file under ``.snakemake/log``, which keeps everything) for a run that executes jobs on
this machine: not a dry run (``-n`` lists the jobs), not a cluster run (its blocks tie a
Snakemake job id to a SLURM one), not with ``--verbose``. Errors (a failed job's block with its
log), warnings and the final summary pass unchanged.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable

# Scheduler chatter that names no job (Snakemake 9's INFO messages without an event).
CHATTER = re.compile(r"^(Select jobs to execute\.\.\.|Execute \d+ jobs\.\.\.)$")


class CompactFilter(logging.Filter):
    """Drops Snakemake's per-job blocks and ``Finished jobid`` records and its job-less scheduler lines (INFO only).

    Args:
        active: asked for each record whether to filter at all (default: always). The Snakefile passes
            :func:`wanted` of its workflow: the executor is known only once jobs run, not when the Snakefile
            is read.
    """

    DROPPED_EVENTS = frozenset({"job_info", "job_finished", "shellcmd"})

    def __init__(self, active: Callable[[], bool] | None = None) -> None:
        super().__init__()
        self.active = active or (lambda: True)

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record :func:`compact_console` leaves out; True for every other."""
        if record.levelno > logging.INFO or not self.active():
            return True
        event = getattr(record, "event", None)
        if event is not None and str(getattr(event, "value", event)) in self.DROPPED_EVENTS:
            return False
        msg = record.msg if isinstance(record.msg, str) else ""
        return not CHATTER.match(msg.strip())


def wanted(workflow: Any) -> bool:
    """Whether a Snakemake ``workflow`` runs jobs here for a person to watch: the main process of a local, not dry,
    not ``--verbose`` run (attributes another Snakemake lacks count as no).

    Before jobs run (while the Snakefile is read) no executor is known and the run counts as local.
    """
    try:
        out = workflow.output_settings
        return bool(workflow.is_main_process and workflow.local_exec and not out.dryrun and not out.verbose)
    except AttributeError:
        return False


def compact_console(logger: logging.Logger, active: Callable[[], bool] | None = None) -> int:
    """Install :class:`CompactFilter` on ``logger``'s console handlers.

    Args:
        logger: Snakemake's logger (``snakemake.logging.logger``).
        active: asked per record whether to filter (the Snakefile passes ``lambda: wanted(workflow)``).

    Returns:
        How many handlers got the filter (0 when there is no console handler or they have it already).
    """
    count = 0
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
            continue
        if not any(isinstance(f, CompactFilter) for f in handler.filters):
            handler.addFilter(CompactFilter(active))
            count += 1
    return count
