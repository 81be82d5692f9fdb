"""The only executor of jobs: a job's specification in, its output out.

Each kind's :meth:`~pd.pipeline.kind.JobKind.run` reads its inputs, calls the pd module that
does the work and writes its output atomically. The Snakemake rules call :func:`run_job`
through ``workflow/scripts/stage.py``; ``pd inject`` calls :func:`run_spec` in-process on
the jobs of its plan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from pd import prompts
from pd.pipeline.registry import get_kind, kind_names, spec_from_dict
from pd.pipeline.spec import JobSpec
from pd.redact import RedactingFilter

log = logging.getLogger("pd")


@contextlib.contextmanager
def _job_log(path: str | None):
    """Send pd's log records (and warnings) to the job's log file as well as stderr.

    The file is emptied, then appended to (``O_APPEND``), and named in ``PD_JOB_LOG`` while the
    job runs: the processes of a launched training job append their lines to it too.
    """
    from pd.train.launch import JOB_LOG_ENV

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    before = os.environ.get(JOB_LOG_ENV)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("", encoding="utf-8")
        handlers.append(logging.FileHandler(path, mode="a", encoding="utf-8"))
        os.environ[JOB_LOG_ENV] = str(Path(path).resolve())
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    root = logging.getLogger()
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(RedactingFilter())  # URLs lose their user-info, keys their values
        root.addHandler(h)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        if path and before is None:
            os.environ.pop(JOB_LOG_ENV, None)
        elif path:
            os.environ[JOB_LOG_ENV] = before


def run_spec(spec: JobSpec, out: str) -> None:
    """Run one job in this process: install its prompt overrides, then its kind's :meth:`run`.

    Args:
        spec: the job's typed specification (its ``KIND`` names the job kind).
        out: the output path (a file, or a folder for adapters and teacher caches).

    Raises:
        PDError: a user mistake the stage finds (missing data, a bad model name).
    """
    prompts.set_overrides(spec.prompt_paths)
    t = time.time()
    get_kind(spec.KIND).run(spec, out)
    log.info("%s %s done in %.1f s", spec.KIND, out, time.time() - t)


def run_job(rule: str, spec: Mapping[str, Any], outputs: list[str], logs: list[str], threads: int = 1) -> None:
    """Run the job of a Snakemake rule (``workflow/scripts/stage.py``).

    Args:
        rule: the rule's name, which is its job kind.
        spec: the job's specification in dictionary form (``params.spec``).
        outputs: the rule's outputs; the first is the job's.
        logs: the rule's log files; pd's log records go to the first as well as stderr.
        threads: the job's CPU threads; torch's thread count is set to it.

    Raises:
        KeyError: no job kind named ``rule``.
    """
    if rule not in kind_names():
        raise KeyError(f"no job kind for rule {rule!r}; known: {', '.join(kind_names())}")
    if threads and threads > 0:
        # torch would take every core, whatever other jobs run beside it. It reads the variable when
        # it is imported (jobs that never load a model never import it); if it already is, tell it.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    with _job_log(logs[0] if logs else None):
        if os.environ.get("SLURM_JOB_ID"):
            log.info("SLURM job %s on %s", os.environ["SLURM_JOB_ID"], os.uname().nodename)
        run_spec(spec_from_dict(rule, spec), outputs[0])
