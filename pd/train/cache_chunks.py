"""The teacher pass in chunks: each finished chunk is kept in a work folder, so a killed build resumes.

:func:`pd.train.cache_builder.build_teacher_cache` runs the teacher over its batches
``chunk_batches`` at a time; with a work folder each chunk's results (:class:`CachePart`) are written
there as a folder ``chunk-<index>`` (atomically: complete or absent) holding ``targets.safetensors``
and ``part.json``. A rerun with the same inputs reads the finished chunks and runs the teacher on the
rest only; the cache it assembles is the uninterrupted build's bit for bit (tensors as stored, numbers
through JSON, which round-trips Python floats exactly). Every chunk carries the build's chunk key (the
cache key, the batching and the projection chunk): chunks of another build are removed, not used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pd.errors import DataError
from pd.io import atomic_path, read_json, stable_hash, write_text
from pd.train.targets import TopKTargets

log = logging.getLogger(__name__)

PART_FILE = "part.json"
TARGETS_FILE = "targets.safetensors"


@dataclass
class CachePart:
    """The teacher pass over consecutive batches: what the cache is assembled from.

    ``example_ids``, ``counts`` (answer tokens) and ``stats`` (rows of the stats file): one entry per
    example, in order; ``sums``: per batch, the covered teacher mass summed over its answer tokens at
    T = 1 and at T, and its answer tokens; ``targets``: flat [n, k] over the part's answer tokens
    (None when it has none).
    """

    example_ids: list[str]
    counts: list[int]
    stats: list[dict]
    sums: list[list[float]]
    targets: TopKTargets | None


def chunk_key(cache_key: str, batch_size: int, chunk_batches: int, chunk_size: int) -> str:
    """What a finished chunk must match to be reused.

    Args:
        cache_key: the cache's content key (:func:`pd.train.teacher_cache.cache_key`).
        batch_size: sequences per teacher forward pass.
        chunk_batches: batches per chunk.
        chunk_size: answer tokens per vocabulary projection.

    Returns:
        16 hex digits.
    """
    return stable_hash({"cache": cache_key, "batch_size": batch_size, "chunk_batches": chunk_batches,
                        "chunk_size": chunk_size})


class ChunkFolder:
    """The finished chunks of one build in a work folder.

    Args:
        folder: the work folder (created when the first chunk is saved).
        key: the build's :func:`chunk_key`.
    """

    def __init__(self, folder: str | os.PathLike, key: str):
        self.folder = Path(folder)
        self.key = key

    def _path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:06d}"

    def finished(self) -> list[CachePart]:
        """The chunks of this build finished so far, from the first on, up to the first missing one.

        Chunks of another build (another key) are removed, and so is everything after a gap.

        Returns:
            The parts, in order (empty when there are none).
        """
        found = sorted(self.folder.glob("chunk-*")) if self.folder.is_dir() else []
        parts: list[CachePart] = []
        for path in found:
            part = self._read(path) if path == self._path(len(parts)) else None
            if part is None:
                shutil.rmtree(path, ignore_errors=True)
                continue
            parts.append(part)
        if parts:
            log.info("teacher cache: resuming after %d finished chunk(s) in %s", len(parts), self.folder)
        return parts

    def _read(self, path: Path) -> CachePart | None:
        from safetensors.torch import load_file

        try:
            meta = read_json(path / PART_FILE)
        except (OSError, DataError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != self.key:
            log.info("teacher cache: %s belongs to another build: removed", path)
            return None
        targets = None
        if meta["targets"] is not None:
            tensors = load_file(str(path / TARGETS_FILE))
            targets = TopKTargets(**{n: tensors[n] for n in TopKTargets.TENSORS}, **meta["targets"])
        return CachePart(meta["example_ids"], meta["counts"], meta["stats"], meta["sums"], targets)

    def save(self, index: int, part: CachePart) -> None:
        """Write chunk ``index`` (atomically: a rerun sees it whole or not at all).

        Args:
            index: the chunk's position (0 first).
            part: its results.
        """
        from safetensors.torch import save_file

        t = part.targets
        meta = {"key": self.key, "example_ids": part.example_ids, "counts": part.counts, "stats": part.stats,
                "sums": part.sums,
                "targets": None if t is None else {"temperature": t.temperature, "vocab_size": t.vocab_size}}
        with atomic_path(self._path(index)) as tmp:
            tmp.mkdir()
            if t is not None:
                save_file({n: getattr(t, n).contiguous() for n in TopKTargets.TENSORS}, str(tmp / TARGETS_FILE))
            write_text(tmp / PART_FILE, json.dumps(meta))  # keys in their order: the stats rows' stay as built

    def remove(self) -> None:
        """Remove the work folder (the cache is complete)."""
        shutil.rmtree(self.folder, ignore_errors=True)
