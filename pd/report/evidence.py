"""The judge-free evidence beside accuracy: gold-answer log-likelihood and held-out KL closure.

Both are read from files the workflow already writes, named by each manifest record:

* the evaluation file (``record.extra["evaluate"]``): each row's ``gold_logprob_per_token``
  (:mod:`pd.generate.loglik`; null for backends without a teacher-forced pass, absent in rows
  written before the field existed: such a file contributes nothing);
* the adapter folder (``record.extra["adapter"]``): ``heldout.json`` with the held-out
  KL(teacher || student) ``before`` and ``after`` training (:mod:`pd.pipeline.kinds.adapter`), and
  ``train_log.jsonl``, the loss per step.

Per seed the log-likelihood is the mean over questions of the per-token value (nats per
answer token); the fraction of the held-out KL closed is ``1 - after / before``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pd.io import read_json, read_jsonl
from pd.report.aggregate import CellRecord, Group
from pd.report.stats import MeanSE

HELDOUT_FILE = "heldout.json"
TRAIN_LOG = "train_log.jsonl"


@dataclass(frozen=True)
class GoldScores:
    """One evaluation file's per-question gold log-likelihood (nats per token), aligned by item."""

    item_ids: list[str]
    per_token: np.ndarray  # float64 [n_items]

    @property
    def mean(self) -> float:
        return float(self.per_token.mean())


@dataclass(frozen=True)
class HeldoutKL:
    """An adapter's held-out KL(teacher || student) before and after training (nats per answer token)."""

    before: float
    after: float
    n_heldout: int

    @property
    def closed(self) -> float:
        """The fraction of the before-training KL that training closed: ``1 - after / before``."""
        return 1.0 - self.after / self.before


def load_gold_scores(path: str | None) -> GoldScores | None:
    """Per-question ``gold_logprob_per_token`` of an evaluation file (first sample of each item).

    Args:
        path: the evaluation JSONL (None or a missing file: no scores).

    Returns:
        The scores of the items that have a finite one (NaN or infinite: missing, like null), or
        None when none has (an old file, or one written by a backend that cannot score).
    """
    if not path or not Path(path).is_file():
        return None
    seen: dict[str, float] = {}
    for row in read_jsonl(path):
        value = row.get("gold_logprob_per_token")
        item = str(row.get("item_id"))
        if value is not None and item not in seen and math.isfinite(float(value)):  # NaN/inf: missing
            seen[item] = float(value)
    if not seen:
        return None
    return GoldScores(list(seen), np.asarray(list(seen.values()), dtype=np.float64))


def load_heldout(adapter: str | None) -> HeldoutKL | None:
    """The adapter folder's ``heldout.json``, when it measured both before and after (and before > 0)."""
    if not adapter or not (Path(adapter) / HELDOUT_FILE).is_file():
        return None
    rec = read_json(Path(adapter) / HELDOUT_FILE)
    if rec.get("before") is None or rec.get("after") is None or not rec["before"] > 0:
        return None
    return HeldoutKL(float(rec["before"]), float(rec["after"]), int(rec.get("n_heldout") or 0))


def load_train_log(adapter: str | None) -> list[dict]:
    """The adapter's step log (``train_log.jsonl``), empty when it has none."""
    if not adapter or not (Path(adapter) / TRAIN_LOG).is_file():
        return []
    return read_jsonl(Path(adapter) / TRAIN_LOG)


def seeds_mean_se(values: Sequence[float], one_seed_values: Sequence[float] | None = None) -> MeanSE:
    """Mean over seeds with +- SE over seeds (sample std, ddof=1, / sqrt(seeds)).

    With one seed the SE is over ``one_seed_values`` (that seed's per-question values:
    sample std / sqrt(n), kind ``questions``), else NaN (kind ``none``).

    Raises:
        ValueError: no values.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("seeds_mean_se needs at least one value")
    if v.size > 1:
        return MeanSE(float(v.mean()), float(np.std(v, ddof=1) / math.sqrt(v.size)), "seeds", int(v.size))
    q = np.asarray(one_seed_values if one_seed_values is not None else [], dtype=np.float64)
    if q.size > 1:
        return MeanSE(float(v[0]), float(np.std(q, ddof=1) / math.sqrt(q.size)), "questions", 1)
    return MeanSE(float(v[0]), float("nan"), "none", 1)


class Evidence:
    """Reads each record's files once and summarises a group's seeds."""

    def __init__(self) -> None:
        self._gold: dict[Any, GoldScores | None] = {}
        self._kl: dict[Any, HeldoutKL | None] = {}

    def gold(self, rec: CellRecord) -> GoldScores | None:
        path = rec.extra.get("evaluate")
        if path not in self._gold:
            self._gold[path] = load_gold_scores(path)
        return self._gold[path]

    def heldout(self, rec: CellRecord) -> HeldoutKL | None:
        """The record's adapter's held-out KL; None for a snapshot's cell (it was measured on the final adapter)."""
        if rec.axes.get("snapshot") is not None:
            return None
        adapter = rec.extra.get("adapter")
        if adapter not in self._kl:
            self._kl[adapter] = load_heldout(adapter)
        return self._kl[adapter]

    def gold_per_seed(self, g: Group) -> dict[Any, GoldScores]:
        """Seed -> the seed's gold scores, for the seeds that have them."""
        return {r.seed: s for r in g.records if (s := self.gold(r)) is not None}

    def gold_per_seed_items(self, g: Group) -> dict[Any, dict[str, float]]:
        """Seed -> question id -> its per-token gold log-likelihood, for the seeds that scored any."""
        return {seed: dict(zip(s.item_ids, map(float, s.per_token))) for seed, s in self.gold_per_seed(g).items()}

    def gold_summary(self, g: Group) -> MeanSE | None:
        per_seed = list(self.gold_per_seed(g).values())
        if not per_seed:
            return None
        return seeds_mean_se([s.mean for s in per_seed], per_seed[0].per_token if len(per_seed) == 1 else None)

    def kl_per_seed(self, g: Group) -> dict[Any, HeldoutKL]:
        """Seed -> the held-out KL of the seed's adapter, for the seeds that measured it."""
        return {r.seed: k for r in g.records if (k := self.heldout(r)) is not None}

    def kl_summary(self, g: Group) -> tuple[MeanSE, float, float] | None:
        """The fraction closed (mean +- SE over seeds) and the mean KL before and after; None: not measured."""
        per_seed = list(self.kl_per_seed(g).values())
        if not per_seed:
            return None
        return (seeds_mean_se([k.closed for k in per_seed]), float(np.mean([k.before for k in per_seed])),
                float(np.mean([k.after for k in per_seed])))
