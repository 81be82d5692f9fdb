"""Where this process stands in a launch of several training processes (``torchrun`` sets RANK,
LOCAL_RANK and WORLD_SIZE): read by the launcher (:mod:`pd.train.launch`) and by the adapter
job each rank runs (:mod:`pd.pipeline.kinds.adapter`)."""

from __future__ import annotations

import os


def in_launch() -> bool:
    """Whether this process is one rank of a distributed launch (``WORLD_SIZE`` is set)."""
    return "WORLD_SIZE" in os.environ


def local_device() -> str | None:
    """The device of this rank inside a launch: ``cuda:<LOCAL_RANK>`` with GPUs, else None (the default)."""
    if not in_launch():
        return None
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def is_main_rank() -> bool:
    """Whether this process writes the job's files: rank 0 of a launch, or a process that is none."""
    return int(os.environ.get("RANK", "0")) == 0
