"""Stopping a training run without losing its work: checkpoints by wall clock, and a checkpoint on SIGTERM.

A job killed at its time limit loses what it did since its last checkpoint; two things keep that small:

* :class:`CheckpointClock`: with ``training.checkpoint_minutes`` (a SLURM site's default:
  ``checkpoint_minutes`` in its site file, :mod:`pd.site`) the loop saves a checkpoint whenever that
  many minutes passed since the last one;
* :class:`StopSignal`: while the loop runs, SIGTERM only sets a flag; the loop saves a checkpoint at
  the end of the current optimizer step and raises :class:`~pd.errors.TrainingInterrupted`, so the job
  fails and its retry resumes from that checkpoint. SLURM sends SIGTERM to every process of a job at
  its time limit and kills it ``KillWait`` seconds later; adapter jobs are submitted with
  ``--signal=TERM@<seconds>`` (:mod:`pd.pipeline.resources`) so that it comes minutes earlier.

With several processes the loop decides both together (:meth:`pd.train.parallel.Processes.agree_any`):
a checkpoint is collective, so every rank must take it at the same step.

This module imports no torch.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

from pd.errors import TrainingInterrupted

log = logging.getLogger("pd.train")


class CheckpointClock:
    """Says when a checkpoint is due by wall clock.

    Args:
        minutes: minutes between checkpoints (0: never).
    """

    def __init__(self, minutes: float):
        self.period = 60.0 * float(minutes)
        self.last = time.monotonic()

    def due(self) -> bool:
        """Whether ``minutes`` passed since the clock started or was last :meth:`reset`."""
        return self.period > 0 and time.monotonic() - self.last >= self.period

    def reset(self) -> None:
        """A checkpoint was saved now."""
        self.last = time.monotonic()


class StopSignal:
    """Between :meth:`install` and :meth:`restore`, SIGTERM sets :attr:`received` instead of ending the process.

    Outside the main thread (where Python cannot install signal handlers) it does nothing and
    SIGTERM keeps its usual effect.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            log.warning("received %s: saving a checkpoint at the end of this optimizer step, then stopping",
                        signal.Signals(signum).name)
        self.received = signum

    def install(self) -> StopSignal:
        """Catch SIGTERM from now on.

        Returns:
            This object.
        """
        if threading.current_thread() is threading.main_thread() and self._previous is None:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def restore(self) -> None:
        """Give SIGTERM back the handler it had before :meth:`install`."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def interrupted(self, step: int, total: int, work: Path) -> TrainingInterrupted:
        """The error to raise once the checkpoint of ``step`` is saved.

        Args:
            step: optimizer steps taken (the checkpoint's step).
            total: the run's steps.
            work: the run's work folder.

        Returns:
            A :class:`~pd.errors.TrainingInterrupted` naming the step and the checkpoint's folder.
        """
        name = signal.Signals(self.received).name if self.received else "a signal"
        return TrainingInterrupted(f"training stopped by {name} after step {step} of {total}; its checkpoint is in "
                                   f"{work / 'checkpoints'}: run the job again to resume from it")


@contextlib.contextmanager
def forwarding_sigterm(proc: subprocess.Popen) -> Iterator[None]:
    """While it lasts, SIGTERM to this process is passed on to ``proc`` instead of ending this one.

    The job process that launched the training processes (:func:`pd.train.launch.launch`) must
    outlive them: they save a checkpoint before they exit, and it then reports their error.

    Args:
        proc: the child to pass SIGTERM to (torchrun, which passes it to the training processes).

    Returns:
        A context manager.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum, frame):
        log.warning("received SIGTERM: passing it to the training processes and waiting for their checkpoint")
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
