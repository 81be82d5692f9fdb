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


class ConsoleFormatter(logging.Formatter):
    """A job's lines on the console: ``12:23:31 <message>``, with the level before it from WARNING up, and
    ``pd``'s logger name left out (the job's log file keeps the full format)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        """The record as one console line (a traceback, where it has one, below it)."""
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, rest = text.partition(" ")
            origin = "" if record.name in {"pd", "root"} or record.name.startswith("pd.") else f" {record.name}"
            text = f"{stamp} {record.levelname}{origin}: {rest}"
        return text


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
        h.setFormatter(fmt if isinstance(h, logging.FileHandler) else ConsoleFormatter())
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


def _quiet_library_bars() -> None:
    """Hide transformers' and huggingface_hub's bars (loading weights, converting a GGUF file): one per model load,
    thirty in a demo, each telling nothing the job's own line does not."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # imported already: tell it (importing it here would cost every job seconds)
        hf_logging.disable_progress_bar()


def run_spec(spec: JobSpec, out: str) -> None:
    """Run one job in this process: install its prompt overrides, then its kind's :meth:`run`.

    Args:
        spec: the job's typed specification (its ``KIND`` names the job kind).
        out: the output path (a file, or a folder for adapters and teacher caches).

    Raises:
        PDError: a user mistake the stage finds (missing data, a bad model name).
    """
    from pd.pipeline.paths import job_label

    prompts.set_overrides(spec.prompt_paths)
    t = time.time()
    get_kind(spec.KIND).run(spec, out)
    log.info("%s: done in %.1f s", job_label(out, spec.KIND, getattr(spec, "dataset", None)), time.time() - t)


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
        SystemExit: status 2 after logging a :class:`pd.errors.PDError` (a user's mistake) as one line.
    """
    if rule not in kind_names():
        raise KeyError(f"no job kind for rule {rule!r}; known: {', '.join(kind_names())}")
    if threads and threads > 0:
        # torch would take every core, whatever other jobs run beside it. It reads the variable when
        # it is imported (jobs that never load a model never import it); if it already is, tell it.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    from pd.errors import PDError
    from pd.pipeline.paths import job_label
    from pd.progress import JOB_LABEL_ENV

    # The job's name on its progress bars (pd.progress); library loading bars say nothing a person needs.
    label = job_label(outputs[0], rule, spec.get("dataset") if isinstance(spec, Mapping) else None)
    os.environ[JOB_LABEL_ENV] = label
    _quiet_library_bars()
    with _job_log(logs[0] if logs else None):
        if os.environ.get("SLURM_JOB_ID"):
            log.info("SLURM job %s on %s", os.environ["SLURM_JOB_ID"], os.uname().nodename)
        try:
            run_spec(spec_from_dict(rule, spec), outputs[0])
        except PDError as err:  # the user's to fix: one line, as the CLI prints it; bugs keep their traceback
            log.error("%s: %s", label, err)
            raise SystemExit(2) from None
