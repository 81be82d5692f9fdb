"""The per-step metrics handed to experiment trackers through accelerate's tracker API.

``training.log_with`` names the trackers (TensorBoard, Weights & Biases, MLflow); the run's
``Accelerator`` is made with them and ``project_dir=<work>/trackers``
(:func:`tracker_dir`), so TensorBoard's event files land in
``<adapter>.work/trackers/<adapter name>/``. Every line of ``train_log.jsonl`` is also
logged (``accelerator.log(values, step=)``, on the main process only), and the settings
are stored once (``init_trackers``). At the end the trackers are finished as
``end_training`` finishes them, without its teardown of the process group, which the loop
still needs to gather the adapter and its caller may use afterwards. The trackers'
folder survives the removal of the work folder after a successful run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pd.errors import ConfigError

TRACKERS_DIR = "trackers"


def tracker_dir(work: Path) -> Path:
    """Where the trackers log: ``<work>/trackers``."""
    return Path(work) / TRACKERS_DIR


def check_trackers(names: list[str] | None) -> None:
    """Fail early, naming the package, when a tracker's package is not installed.

    Raises:
        ConfigError: a tracker whose package is missing.
    """
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    missing = [n for n in names or [] if not available[n]()]
    if missing:
        raise ConfigError(f"training.log_with: {', '.join(missing)} not installed; "
                          f"run `pip install {' '.join(missing)}` or leave it out of log_with")


def _scalar(v: Any) -> bool | int | float | str:
    return v if isinstance(v, (bool, int, float, str)) else json.dumps(v)


class Trackers:
    """The run's trackers (a no-op without ``log_with``).

    Args:
        accelerator: the run's ``Accelerator``, made with ``log_with`` and ``project_dir``.
        log_with: the trackers' names (None or empty: none).
        run_name: the run's name in the trackers (the adapter folder's name).
        settings: the training settings, stored as the run's hyperparameters.
    """

    def __init__(self, accelerator, log_with: list[str] | None, run_name: str, settings: dict) -> None:
        self.accelerator = accelerator if log_with else None
        if self.accelerator is not None:
            self.accelerator.init_trackers(run_name, config={k: _scalar(v) for k, v in settings.items()})

    def log(self, row: dict) -> None:
        """Log one ``train_log.jsonl`` line: its numbers (the step as the step)."""
        if self.accelerator is None:
            return
        values = {k: v for k, v in row.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(values, step=row["step"])

    def finish(self) -> None:
        """Flush and close every tracker (``end_training`` without destroying the process group)."""
        if self.accelerator is None:
            return
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []


def clear_work(work: Path, keep_trackers: bool) -> None:
    """Remove the work folder after success; with ``keep_trackers``, all but its trackers' folder."""
    work = Path(work)
    if not keep_trackers:
        shutil.rmtree(work, ignore_errors=True)
        return
    for child in work.iterdir() if work.is_dir() else []:
        if child.name != TRACKERS_DIR:
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
