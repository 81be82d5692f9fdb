"""Checkpoints (exact resume) and snapshots (the adapter at given training times).

A checkpoint is a folder ``<work>/checkpoints/step-XXXXXXXX`` with

* ``adapter.safetensors``: the LoRA weights (peft's names, full size);
* ``optimizer.pt``: the optimizer's state dict (full size, also after sharded training);
* ``state.pt``: :data:`CHECKPOINT_FORMAT`, the loop's progress (step, elapsed seconds,
  tokens, snapshots taken, the run key), the learning-rate scheduler's state and the
  random generators' states (python ``random``, numpy, torch CPU and CUDA), all as
  tensors and plain values.

Both ``.pt`` files are read with ``torch.load(weights_only=True)``, which builds tensors
and plain containers only: a crafted file cannot run code on resume, it is refused with
a :class:`~pd.errors.CheckpointError`. Together with the data order, a pure function of
(seed, step) (:mod:`pd.train.schedule`), a checkpoint makes a resumed run bit-identical
to an uninterrupted one (on CPU).

A snapshot is a complete adapter folder ``<work>/snapshots/t<seconds>`` taken when the
run's wall clock passes a requested time; the final adapter folder carries them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from pd.errors import CheckpointError, ConfigError, DataError
from pd.io import atomic_path, stable_hash, write_json
from pd.models import ModelSpec
from pd.train.lora import META_FILE, save_adapter
from pd.train.settings import TrainConfig

CHECKPOINT_FORMAT = 2
# Settings that do not change what is computed: a checkpoint stays valid when only these differ.
BOOKKEEPING = ("checkpoint_every", "checkpoint_minutes", "snapshot_seconds", "snapshot_interval", "log_every",
               "progress", "keep_checkpoints", "max_steps", "max_seconds", "min_steps")


@dataclasses.dataclass
class Progress:
    """Where the loop stands: what a checkpoint restores besides the tensors.

    ``step``: optimizer steps taken; ``elapsed``: training wall-clock seconds;
    ``tokens_total``: tokens run through the models, all processes; ``snapshots``: the
    snapshot times (seconds) already taken.
    """

    step: int = 0
    elapsed: float = 0.0
    tokens_total: int = 0
    snapshots: list[float] = dataclasses.field(default_factory=list)


def run_key(cfg: TrainConfig, spec: ModelSpec, data_hash: str, world: int, teacher: str) -> str:
    """What a checkpoint must match to be resumed: settings (less bookkeeping), model, data, processes, teacher.

    Args:
        cfg: the run's settings.
        spec: the student model.
        data_hash: :meth:`pd.train.methods.TrainingData.content_hash`.
        world: number of processes.
        teacher: the teacher's description (model, cache key).

    Returns:
        A hex digest.
    """
    settings = {k: v for k, v in cfg.as_dict().items() if k not in BOOKKEEPING}
    return stable_hash({"settings": settings, "model": dataclasses.asdict(spec), "data": data_hash, "world": world,
                        "teacher": teacher})


def checkpoints(work: Path) -> list[Path]:
    """The checkpoints of a run.

    Args:
        work: the run's work folder.

    Returns:
        Its checkpoint folders, oldest step first (empty when there are none).
    """
    folder = work / "checkpoints"
    return sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if folder.is_dir() else []


def save_checkpoint(work: Path, progress: Progress, key: str, adapter: dict[str, torch.Tensor],
                    optimizer_state: dict, scheduler, keep_old: bool = False) -> Path:
    """Write the checkpoint of step ``progress.step`` atomically (main process only).

    Args:
        work: the run's work folder.
        progress: the loop's state after the step.
        key: the :func:`run_key`.
        adapter: the full LoRA tensors (peft's names, :func:`pd.train.lora.adapter_state`).
        optimizer_state: the optimizer's full state dict.
        scheduler: the learning-rate scheduler.
        keep_old: keep earlier checkpoints (default: remove them).

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    target = work / "checkpoints" / f"step-{progress.step:08d}"
    state = {"format": CHECKPOINT_FORMAT, "progress": dataclasses.asdict(progress), "run_key": key,
             "scheduler": scheduler.state_dict(), "rng": rng_state()}
    with atomic_path(target) as tmp:
        tmp.mkdir()
        save_file(adapter, str(tmp / "adapter.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(state, tmp / "state.pt")
    if not keep_old:
        for old in checkpoints(work):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(folder: Path, key: str, scheduler) -> tuple[Progress, dict[str, torch.Tensor], dict]:
    """Read a checkpoint; restores the scheduler and the random generators in place.

    Args:
        folder: the checkpoint folder.
        key: this run's :func:`run_key`.
        scheduler: the learning-rate scheduler to restore.

    Returns:
        (the loop's progress, the full adapter tensors on the CPU, the optimizer's full
        state dict); the caller loads the last two into its (possibly sharded) model.

    Raises:
        CheckpointError: a file is not a checkpoint pd can load safely.
        ConfigError: the checkpoint belongs to a run with other settings, model or data.
    """
    from safetensors.torch import load_file

    state = _load_tensors(folder / "state.pt", folder)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{folder} was written by another version of pd; delete {folder.parent.parent} "
                              "to train from the start")
    if state.get("run_key") != key:
        raise ConfigError(f"{folder} is a checkpoint of a different run (other settings, model or data); "
                          f"delete {folder.parent.parent} to train from the start")
    optimizer_state = _load_tensors(folder / "optimizer.pt", folder)
    adapter = load_file(str(folder / "adapter.safetensors"))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return Progress(**state["progress"]), adapter, optimizer_state


def _load_tensors(path: Path, folder: Path):
    """``torch.load`` restricted to tensors and plain values; anything else is refused."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # a refused object, a damaged or missing file: the checkpoint is unusable
        raise CheckpointError(f"{path} is not a checkpoint file pd can load safely ({type(err).__name__}: it holds "
                              f"objects other than tensors and plain values, or is damaged); delete "
                              f"{folder.parent.parent} to train from the start") from None


def rng_state() -> dict:
    """The random generators' states, in a form ``torch.load(weights_only=True)`` reads back.

    Returns:
        ``{"python": {...}, "numpy": {...}, "torch": uint8 tensor, "cuda": [uint8 tensors]}``
        (CUDA only when available): the generators' words as int64 tensors, the rest plain values.
    """
    version, words, gauss_next = random.getstate()
    key, mt, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next},
             "numpy": {"key": key, "state": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the random generators.

    Args:
        state: what :func:`rng_state` returned (possibly after a save and load).
    """
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    np.random.set_state((npy["key"], npy["state"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- snapshots


def snapshot_name(seconds: float) -> str:
    """The folder name of a snapshot.

    Args:
        seconds: the snapshot time, seconds of training wall clock.

    Returns:
        ``t<seconds rounded to a whole number>``.
    """
    return f"t{int(round(seconds))}"


def save_snapshot(model, work: Path, seconds: float, step: int, elapsed: float,
                  gathered: dict[str, torch.Tensor] | None = None) -> None:
    """Write the adapter as a snapshot folder for time ``seconds`` (main process only).

    Args:
        model: the trained model.
        work: the run's work folder.
        seconds: the requested snapshot time.
        step: optimizer steps taken; elapsed: training seconds so far.
        gathered: the full LoRA tensors of a sharded model (None: read them from ``model``).
    """
    target = work / "snapshots" / snapshot_name(seconds)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        save_adapter(model, tmp, gathered)
        write_json(tmp / META_FILE, {"snapshot_seconds": seconds, "elapsed": elapsed, "step": step})


def snapshot_folder(adapter_dir: str | os.PathLike, seconds: float) -> Path:
    """The adapter as it was ``seconds`` into training.

    Args:
        adapter_dir: a final adapter folder.
        seconds: a time the run was asked to snapshot (``training.snapshot_seconds``).

    Returns:
        The snapshot folder when one was taken; the final adapter when the run ended
        before that time (it did not change afterwards).

    Raises:
        DataError: neither applies; the message names the snapshots that exist.
    """
    adapter_dir = Path(adapter_dir)
    snap = adapter_dir / "snapshots" / snapshot_name(seconds)
    if (snap / "adapter_config.json").is_file():
        return snap
    meta_path = adapter_dir / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("stopped_by") == "steps" and float(meta.get("wall_clock_s", float("inf"))) <= float(seconds):
            return adapter_dir
    have = (sorted(p.name for p in (adapter_dir / "snapshots").glob("t*")) if (adapter_dir / "snapshots").is_dir()
            else [])
    raise DataError(f"{adapter_dir} has no snapshot at {seconds} s (have: {have or 'none'}); train with "
                    f"training.snapshot_seconds including {seconds}")
