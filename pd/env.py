"""Where this machine keeps what the harness builds once and reuses: converted models,
the generation cache, the precision probe. One setting, ``$PD_CACHE_DIR``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted and generated models, generations and probes live: $PD_CACHE_DIR, else ~/.cache/pd.

    Returns:
        The folder (not created here).
    """
    return Path(os.environ.get("PD_CACHE_DIR") or Path.home() / ".cache" / "pd")
