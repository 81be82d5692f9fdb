"""Adapter jobs that span processes: ``training.processes`` launches them with ``torchrun``.

An adapter job whose resolved ``processes`` (:func:`resolve_processes`) is above one, and
that is not itself a process of a distributed launch (no ``WORLD_SIZE`` in the
environment), starts that many copies of :func:`main` through
``python -m torch.distributed.run`` inside the same job (one SLURM job, one node) with
:func:`launch`. Each copy runs the same function, named by the caller as ``module:function``
(the adapter job's :func:`pd.pipeline.kinds.adapter.run_rank`, so this package never
imports the job layer); :func:`pd.train.loop.train` finds the
process group through ``accelerate`` (DDP, or FSDP with ``training.parallel: fsdp``; NCCL
on GPUs, gloo on a CPU) and only rank 0 writes the adapter folder. ``batch_size`` is the
global batch: the N processes share it (:mod:`pd.train.fit`).

Logs: rank 0 appends to the job's log (``PD_JOB_LOG``, set by :mod:`pd.pipeline.run` while a job
runs), rank r > 0 writes ``<log>.rank<r>`` beside it; each begins with one line naming the
SLURM job, the rank and the world size (:func:`rank_line`). A failing rank fails the
launch, and the launcher raises with that rank's error and log.

SIGTERM (a SLURM time limit): SLURM signals every process of the job; the launcher passes it on to
torchrun and waits, torchrun passes it to the ranks and gives them :data:`SHUTDOWN_TIMEOUT_S`
seconds, and the ranks save a checkpoint together and raise
:class:`~pd.errors.TrainingInterrupted` (:mod:`pd.train.interrupt`), which the launcher raises in turn.

This module imports neither torch nor the job layer at import time.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from importlib import import_module
from pathlib import Path
from typing import Any

from pd import errors
from pd.train.interrupt import forwarding_sigterm

log = logging.getLogger("pd.train")

JOB_LOG_ENV = "PD_JOB_LOG"  # the job's log file, for the launched ranks
ERROR_DIR_ENV = "PD_LAUNCH_ERRORS"  # where a failing rank leaves its error for the launcher
# Seconds torchrun gives the ranks to exit after a SIGTERM (their checkpoint) before it kills them; its own
# default, 30 s, is too short to write a large adapter's optimizer state.
SHUTDOWN_TIMEOUT_S = 900


def resolve_processes(setting: int | str) -> int:
    """The number of training processes ``training.processes`` asks for in this job.

    Args:
        setting: an integer >= 1, or ``auto``: one per GPU the job can see (1 without a GPU).

    Returns:
        The number of processes (>= 1).

    Raises:
        ConfigError: a value that is neither a positive integer nor ``auto``.
    """
    if setting == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise errors.ConfigError(f"training.processes must be an integer >= 1 or auto, got {setting!r}")
    return setting


def rank_log(job_log: str | os.PathLike, rank: int) -> Path:
    """The log file of ``rank``: the job's log for rank 0, ``<log>.rank<r>`` beside it for the others.

    Args:
        job_log: the job's log file.
        rank: the process's global rank.

    Returns:
        The path the rank logs to.
    """
    return Path(job_log) if rank == 0 else Path(f"{job_log}.rank{rank}")


def rank_line(rank: int, world: int) -> str:
    """The line every rank logs first: its SLURM job (``$SLURM_JOB_ID``), rank and world size."""
    return f"SLURM job {os.environ.get('SLURM_JOB_ID', 'none')}: rank {rank} of world size {world}"


def free_port() -> int:
    """A TCP port on this host that no process listens on now (for the rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(target: str, payload: dict[str, Any], out: str, processes: int, threads: int | None = None) -> None:
    """Run ``target(payload, out)`` in ``processes`` processes under torchrun, in this job.

    Args:
        target: ``module:function`` that every rank calls with ``(payload, out)``.
        payload: a JSON-serialisable mapping (the adapter job's specification).
        out: the output folder (written by rank 0, atomically).
        processes: how many processes (> 1).
        threads: CPU threads of the whole job, shared out among the processes (default:
            ``OMP_NUM_THREADS``, which :func:`pd.pipeline.run.run_job` sets to the job's threads; else 1 each).

    Raises:
        PDError: a rank failed with a user mistake (the same class, its message and log).
        RuntimeError: a rank failed otherwise (its error and log in the message).
    """
    threads = threads or int(os.environ.get("OMP_NUM_THREADS") or processes)
    with tempfile.TemporaryDirectory(prefix="pd-launch-") as tmp:
        spec_file = Path(tmp) / "payload.json"
        spec_file.write_text(json.dumps(payload), encoding="utf-8")
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, threads // processes)), **{ERROR_DIR_ENV: tmp})
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S), "-m", __name__, target, str(spec_file), out]
        log.info("training with %d processes: %s", processes, " ".join(cmd))
        for h in logging.getLogger().handlers:
            h.flush()
        proc = subprocess.Popen(cmd, env=env)
        with forwarding_sigterm(proc):
            returncode = proc.wait()
        if returncode != 0:
            _raise_rank_error(Path(tmp), returncode)


def _raise_rank_error(folder: Path, returncode: int) -> None:
    """Raise the error a failing rank left in ``folder``: a user mistake first (the other ranks then fail in
    a collective), else the earliest; a generic error when no rank left one (killed, out of memory)."""
    job_log = os.environ.get(JOB_LOG_ENV)
    reported = [json.loads(p.read_text(encoding="utf-8"))
                for p in sorted(folder.glob("error.rank*.json"), key=lambda p: p.stat().st_mtime)]
    if not reported:
        raise RuntimeError(f"the training launch exited with status {returncode} before a rank reported an error"
                           f"{f' (see {job_log})' if job_log else ''}")
    err = sorted(reported, key=lambda e: not _is_user_error(e["type"]))[0]
    where = f" (log: {rank_log(job_log, err['rank'])})" if job_log else ""
    if _is_user_error(err["type"]):
        raise getattr(errors, err["type"])(f"{err['message']}{where}")
    raise RuntimeError(f"training rank {err['rank']} failed: {err['type']}: {err['message']}{where}")


def _is_user_error(name: str) -> bool:
    cls = getattr(errors, name, None)
    return isinstance(cls, type) and issubclass(cls, errors.PDError)


def _rank_logging(rank: int) -> None:
    """Send this rank's log records to stderr and to its log file (see :func:`rank_log`)."""
    from pd.redact import RedactingFilter

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    job_log = os.environ.get(JOB_LOG_ENV)
    if job_log:
        handlers.append(logging.FileHandler(rank_log(job_log, rank), mode="a" if rank == 0 else "w", encoding="utf-8"))
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(name)s %(levelname)s %(message)s")
    root = logging.getLogger()
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(RedactingFilter())
        root.addHandler(h)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


def main(target: str, payload_file: str, out: str) -> None:
    """One rank of :func:`launch`: log who it is, then call ``target(payload, out)``.

    Args:
        target: ``module:function`` to call.
        payload_file: the JSON payload (the adapter job's specification).
        out: the output folder.

    Raises:
        Exception: whatever training raised (after writing it for the launcher).
    """
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _rank_logging(rank)
    log.info(rank_line(rank, world))
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        module, function = target.split(":")
        getattr(import_module(module), function)(json.loads(Path(payload_file).read_text(encoding="utf-8")), out)
    except BaseException as err:
        log.exception("rank %d failed", rank)
        folder = os.environ.get(ERROR_DIR_ENV)
        if folder:
            Path(folder, f"error.rank{rank}.json").write_text(
                json.dumps({"rank": rank, "type": type(err).__name__, "message": str(err)}), encoding="utf-8")
        raise


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
