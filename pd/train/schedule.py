"""What every optimizer step does: the learning-rate schedule and the data order.

Data order is a pure function of (seed, step): epoch e visits the examples in the order
of a permutation drawn from a generator seeded with (seed, e), regrouped into batches of
similar length (:mod:`pd.train.buckets`, ``bucket_batches``, in buckets of at most half an
epoch, so that which examples share a batch changes with the seed and the epoch) by a
generator seeded the same way, and optimizer step s takes the s-th slice of it. A checkpoint therefore needs
only the step number as its data position.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from pd.io import stable_hash
from pd.train.buckets import bucketed_order
from pd.train.settings import TrainConfig
from pd.train.steps import run_steps


def lr_factor(step: int, warmup: int, total: int, from_zero: bool = True) -> float:
    """The learning-rate multiplier at an optimizer step.

    Linear warmup over ``warmup`` steps, then linear decay to 0 at ``total``. From zero (transformers'
    schedule, the paper's) the first step runs at 0: on a 3-step run with 2 warmup steps, a third of the run
    changes nothing. Otherwise step k of the warmup runs at (k+1)/(warmup+1), so every step trains.

    Args:
        step: optimizer steps taken so far (0-based).
        warmup: warmup steps.
        total: steps of the whole run.
        from_zero: the warmup starts at 0 (``training.warmup_from_zero``).

    Returns:
        A factor in [0, 1] for the base learning rate.
    """
    if step < warmup:
        return step / max(1, warmup) if from_zero else (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


class Schedule:
    """Which example indices every process uses at every optimizer step, and the step counts.

    An optimizer step takes ``batch_size`` rows over all processes (the global batch): ``global_rows``
    passage rows, the next slice of the epoch's order, and (pd_reg) ``reg_rows`` instruction rows, the next
    ones of the instruction stream. Its rows are dealt out in ``world x accum`` micro-batches of ``micro``
    rows, micro-batch m of process r taking slot ``m x world + r``; the instruction rows are spread evenly
    over the slots (a slot's instruction rows: those of its positions in the step, at ``reg_rows`` in
    ``batch_size``). Which rows form the step does not depend on ``micro`` or ``world``: only how they
    are dealt out does.

    Args:
        cfg: the run's settings (the global batch, epochs, seed, pd_reg's rows).
        n_examples: passage (training) examples.
        n_reg: pd_reg's instruction examples (0 for other methods).
        world: processes; rank: this process's index.
        lengths: per example, the length that length bucketing sorts by (None: plain shuffle).
        micro: rows per micro-batch and process (None: the process's whole share, ``batch_size / world``).

    Raises:
        ValueError: ``lengths`` does not have one entry per example, or ``world x micro`` does not divide
            ``batch_size`` (a bug of the caller: :func:`pd.train.fit.resolve_layout` checks the settings).

    Attributes: ``micro`` rows per micro-batch, ``accum`` micro-batches per step and process,
    ``global_rows`` passage rows per optimizer step over all processes, ``steps_per_epoch``, ``total``
    steps (:func:`pd.train.steps.run_steps`), ``warmup`` steps and ``bucket_batches``, the batches per length
    bucket (``training.bucket_batches``, at most half the epoch's batches; 1 or less: a plain shuffle).
    """

    def __init__(self, cfg: TrainConfig, n_examples: int, n_reg: int, world: int, rank: int,
                 lengths: Sequence[int] | None = None, micro: int | None = None):
        self.cfg, self.n, self.n_reg, self.world, self.rank = cfg, n_examples, n_reg, world, rank
        if lengths is not None and len(lengths) != n_examples:
            raise ValueError(f"Schedule: {len(lengths)} lengths for {n_examples} examples")
        self.micro = micro or max(1, cfg.batch_size // world)
        if cfg.batch_size % (world * self.micro):
            raise ValueError(f"Schedule: batch_size {cfg.batch_size} is not {world} processes x micro-batches "
                             f"of {self.micro}")
        self.accum = cfg.batch_size // (world * self.micro)
        self.lengths = lengths
        self._epoch_order: tuple[int, list[int]] | None = None
        self.global_rows = cfg.batch_size - cfg.reg_rows  # passage rows per optimizer step
        self.steps_per_epoch, self.total = run_steps(cfg, n_examples)
        self.warmup = min(self.total, cfg.warmup_steps + round(cfg.warmup_epochs * self.steps_per_epoch))
        # Length buckets of at most half an epoch: one bucket holding the whole epoch would sort it, and every
        # seed and epoch would put the same examples together (a run of a few batches, UFT's, above all).
        self.bucket_batches = min(cfg.bucket_batches, self.steps_per_epoch // 2)

    def _gen(self, tag: str, k: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(stable_hash([tag, self.cfg.seed, k], 15), 16))

    def _perm(self, tag: str, k: int, n: int) -> list[int]:
        return torch.randperm(n, generator=self._gen(tag, k)).tolist()

    def epoch_order(self, epoch: int) -> list[int]:
        """The order in which an epoch visits the examples.

        Args:
            epoch: the epoch (0-based).

        Returns:
            All example indices, the global batches of the epoch back to back.
        """
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            perm = self._perm("epoch", epoch, self.n)
            if self.lengths is not None and self.bucket_batches > 1:
                perm = bucketed_order(perm, self.lengths, self.global_rows, self.bucket_batches,
                                      self._gen("buckets", epoch))
            self._epoch_order = (epoch, perm)
        return self._epoch_order[1]

    def micro_batches(self, step: int) -> list[tuple[list[int], list[int]]]:
        """This process's micro-batches at optimizer step ``step``.

        Args:
            step: the optimizer step (0-based; epochs follow each other).

        Returns:
            Up to ``accum`` pairs (passage example indices, instruction example indices); a micro-batch
            left without rows (the short last step of an epoch) is left out.
        """
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self.epoch_order(epoch)
        idx = perm[k * self.global_rows:(k + 1) * self.global_rows]
        if self.world > 1 and len(idx) < self.global_rows:  # every process needs rows: wrap around
            idx = (idx + perm * math.ceil(self.global_rows / self.n))[: self.global_rows]
        batch, reg_rows = self.cfg.batch_size, self.cfg.reg_rows
        out = []
        for m in range(self.accum):
            slot = m * self.world + self.rank
            lo, hi = slot * self.micro, (slot + 1) * self.micro  # the slot's positions in the step
            reg_lo, reg_hi = lo * reg_rows // batch, hi * reg_rows // batch  # instruction rows before lo, hi
            rows = idx[lo - reg_lo:hi - reg_hi]
            reg = [self._reg_index(step * reg_rows + i) for i in range(reg_lo, reg_hi)]
            if rows or reg:
                out.append((rows, reg))
        return out

    def _reg_index(self, i: int) -> int:
        """The i-th instruction example of the stream: the instruction data in a fresh order every cycle."""
        cycle, j = divmod(i, self.n_reg)
        return self._perm("reg", cycle, self.n_reg)[j]
