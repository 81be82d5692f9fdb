"""The teacher cache's format: top-k teacher targets per answer token, on disk and in memory.

A cache is one safetensors file and a JSON sidecar beside it (same name, suffix
``.json``). The safetensors file holds the :class:`~pd.train.targets.TopKTargets` tensors
flattened over all answer tokens ([N, k] and [N]) plus ``offsets`` [E + 1] (int64):
example i owns rows ``offsets[i]:offsets[i+1]``; its metadata carries the cache ``key`` and
``format``. The sidecar holds the build's metadata (key, k, temperature, teacher identity,
covered mass...), ``example_ids`` (in offset order) and ``stats`` (one row per example:
teacher entropy, initial KL, covered mass). The key is a content hash of (format,
teacher identity, token sequences, k, temperature, storage dtype): two builds with the
same key hold the same targets, so later epochs and other cells read one cache by
example id. :mod:`pd.train.cache_builder` writes caches; this module reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from pd.errors import DataError
from pd.io import atomic_path, read_json, write_json
from pd.train.targets import TopKTargets

CACHE_FORMAT = 1
LOGPROB_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def sequences_hash(batches: Iterable[dict]) -> str:
    """A content hash of the teacher and student token sequences and answer positions.

    Args:
        batches: collated batches (:mod:`pd.train.batch`) with both views; how the
            examples are split into batches does not change the hash.

    Returns:
        16 hex digits.
    """
    h = hashlib.sha256()
    for batch in batches:
        mask = batch["answer_mask"]
        for b, ex_id in enumerate(batch["example_ids"]):
            h.update(str(ex_id).encode() + b"\0")
            n = int(mask[b].sum())
            h.update(batch["answer_ids"][b, :n].to(torch.int64).cpu().numpy().tobytes())
            for side in ("teacher", "student"):
                att = batch[f"{side}_attention_mask"][b].bool()
                h.update(batch[f"{side}_input_ids"][b][att].to(torch.int64).cpu().numpy().tobytes())
                h.update(batch[f"{side}_answer_positions"][b, :n].to(torch.int64).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(identity: str, seq_hash: str, k: int, temperature: float, logprob_dtype: str) -> str:
    """The cache's content key.

    Args:
        identity: the teacher's weights (:func:`pd.train.teacher.model_identity`).
        seq_hash: :func:`sequences_hash` of the training sequences.
        k: top-k ids kept per answer token.
        temperature: the distillation temperature T the targets are for.
        logprob_dtype: storage dtype name of the log-probabilities (a key of :data:`LOGPROB_DTYPES`).

    Returns:
        16 hex digits.
    """
    blob = json.dumps({"format": CACHE_FORMAT, "teacher": identity, "sequences": seq_hash, "k": int(k),
                       "temperature": float(temperature), "logprob_dtype": logprob_dtype}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TeacherCache:
    """Top-k teacher targets for every answer token of every training example.

    ``targets`` is flat [N, k] over all N cached answer tokens; example i owns rows
    ``offsets[i]:offsets[i+1]`` (``offsets`` [E + 1] int64, its answer tokens in order).
    ``meta`` holds the key, k, temperature, teacher identity and the covered-mass summary;
    ``stats`` the per-example rows (entropy, initial KL, in nats).
    """

    example_ids: list[str]
    offsets: Tensor
    targets: TopKTargets
    meta: dict
    stats: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.index = {ex: i for i, ex in enumerate(self.example_ids)}

    @property
    def k(self) -> int:
        return self.targets.k

    @property
    def temperature(self) -> float:
        return self.targets.temperature

    def __contains__(self, example_id: str) -> bool:
        return example_id in self.index

    def targets_for(self, example_ids: list[str], mask: Tensor,
                    device: torch.device | str | None = None) -> TopKTargets:
        """The cached targets of a batch's rows, in the batch's order (any order, e.g. shuffled).

        Args:
            example_ids: B example ids, one per batch row.
            mask: [B, A] bool answer mask of the batch.
            device: where to put the result (default: stay on the CPU).

        Returns:
            :class:`TopKTargets` with tensors [B, A, k] and [B, A], aligned with ``mask``
            (padded entries hold row 0's values and are masked out by the losses).

        Raises:
            DataError: an example is not in the cache, or its answer length differs from
                the cached one (the cache belongs to other sequences).
        """
        missing = [e for e in example_ids if e not in self.index]
        if missing:
            raise DataError(f"teacher cache {self.meta.get('key')} has no targets for example(s) {missing[:5]}"
                            f"{' ...' if len(missing) > 5 else ''}: it was built for other sequences; rebuild it")
        b, a = mask.shape
        rows = torch.zeros((b, a), dtype=torch.long)
        for i, ex in enumerate(example_ids):
            lo, hi = int(self.offsets[self.index[ex]]), int(self.offsets[self.index[ex] + 1])
            n = int(mask[i].sum())
            if n != hi - lo or (n and not bool(mask[i, :n].all())):
                raise DataError(f"example {ex}: the batch has {n} answer tokens, the teacher cache {hi - lo}; "
                                "the cache belongs to other sequences (rebuild it)")
            rows[i, :n] = torch.arange(lo, hi)
        out = self.targets.map(lambda t: t[rows])
        return out.map(lambda t: t.to(device)) if device is not None else out

    def save(self, path: str | os.PathLike) -> None:
        """Write ``path`` (safetensors) and its sidecar (:func:`sidecar_path`), each atomically.

        Args:
            path: the safetensors file to write.
        """
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {name: getattr(self.targets, name).contiguous() for name in TopKTargets.TENSORS}
        tensors["offsets"] = self.offsets.to(torch.int64).contiguous()
        sidecar = dict(self.meta, example_ids=self.example_ids, stats=self.stats)
        write_json(sidecar_path(path), sidecar)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"key": str(self.meta["key"]), "format": str(CACHE_FORMAT)})


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where a cache file's JSON sidecar lives.

    Args:
        path: the cache's safetensors file.

    Returns:
        The same name with suffix ``.json``.
    """
    return Path(path).with_suffix(".json")


def load_teacher_cache(path: str | os.PathLike) -> TeacherCache:
    """Read a cache written by :meth:`TeacherCache.save`.

    Args:
        path: the cache's safetensors file (its sidecar must sit beside it).

    Returns:
        The cache, its targets on the CPU.

    Raises:
        DataError: a file is missing, or the file's key differs from its sidecar's.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        raise DataError(f"teacher cache {path} (with {side.name}) not found; build it with build_teacher_cache")
    with safe_open(str(path), framework="pt") as f:
        file_meta = f.metadata() or {}
    meta = read_json(side)
    if file_meta.get("key") != meta.get("key"):
        raise DataError(f"teacher cache {path}: key {file_meta.get('key')} does not match its sidecar "
                        f"{side.name} ({meta.get('key')}); the pair is from different builds, rebuild it")
    tensors = load_file(str(path))
    targets = TopKTargets(**{n: tensors[n] for n in TopKTargets.TENSORS}, temperature=float(meta["temperature"]),
                          vocab_size=int(meta["vocab_size"]))
    example_ids = meta.pop("example_ids")
    stats = meta.pop("stats", [])
    return TeacherCache(example_ids, tensors["offsets"], targets, meta, stats)
