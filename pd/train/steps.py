"""How long a training run is: its optimizer steps from its example count, and the minimum it must reach.

One arithmetic for the plan, before the data exists, and for the loop, once it does:

* :func:`run_steps`: steps per epoch and in all (``ceil(examples / passage rows per step)`` per epoch, times
  ``epochs``, or ``max_steps``), what :class:`pd.train.schedule.Schedule` runs;
* :func:`uft_chunk_starts`: where UFT's overlapping windows start in a passage of n tokens, what
  :func:`pd.train.sequences.uft_examples` cuts and the plan counts;
* :func:`check_min_steps`: a run shorter than ``training.min_steps`` is refused, by the plan
  (:mod:`pd.pipeline.plan`, from its estimate) and by the adapter job before it trains (from the real count).

A run of three optimizer steps, one of them at learning rate 0, is an untrained adapter whatever its
label says; a comparison against it misleads its readers.

This module imports no torch, so the plan can read it cheaply.
"""

from __future__ import annotations

import math

from pd.errors import ConfigError


def run_steps(cfg, n_examples: int) -> tuple[int, int]:
    """Optimizer steps per epoch and of the whole run of ``n_examples`` passage examples.

    Args:
        cfg: a :class:`~pd.train.settings.TrainConfig` (``batch_size``, its instruction rows ``reg_rows``,
            ``epochs``, ``max_steps``).
        n_examples: passage (training) examples; 0 counts as 1 (a run that trains nothing is refused elsewhere).

    Returns:
        ``(steps_per_epoch, total)``: ``ceil(n / (batch_size - reg_rows))`` and ``ceil(epochs x steps_per_epoch)``,
        or ``max_steps`` when set.
    """
    per_epoch = math.ceil(max(1, n_examples) / (cfg.batch_size - cfg.reg_rows))
    total = cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * per_epoch)
    return per_epoch, total


def uft_chunk_starts(n_tokens: int, window: int, overlap: int) -> range:
    """Where UFT's windows start in a passage of ``n_tokens`` tokens: every ``window - overlap`` tokens, until
    what is left after a start is overlap only (one window at 0 for a short passage).

    Args:
        n_tokens: the passage's tokens (without the tokenizer's leading special tokens).
        window: passage tokens per window (``uft_chunk_tokens`` less those special tokens).
        overlap: tokens shared by consecutive windows (``uft_overlap``).

    Returns:
        The start offsets.

    Raises:
        ConfigError: ``window - overlap < 1`` (no stride).
    """
    stride = window - overlap
    if stride < 1:
        raise ConfigError(f"training.uft_chunk_tokens: a window of {window} passage tokens with uft_overlap={overlap} "
                          "has no stride; use uft_overlap < uft_chunk_tokens - 1")
    return range(0, max(n_tokens - overlap, 1), stride)


def check_min_steps(steps: int, minimum: int, where: str, counted: str, fix: str) -> None:
    """Refuse a run of fewer optimizer steps than ``minimum``.

    Args:
        steps: the run's optimizer steps (estimated or real).
        minimum: ``training.min_steps`` (0: no minimum).
        where: which run, e.g. ``experiment study, cell demo-nyt/uft/smollm2-135m-instruct/s0/none``.
        counted: how the steps were counted, e.g. ``4 examples / batch 8 x 3 epochs``.
        fix: where to set more steps, e.g. ``experiments.study.methods.uft.training``.

    Raises:
        ConfigError: one line with the run, its steps, the minimum and what to set.
    """
    if steps < minimum:
        raise ConfigError(f"{where}: {steps} optimizer steps ({counted}), fewer than training.min_steps={minimum}: "
                          f"an adapter this short is barely trained; set epochs, a smaller batch_size or max_steps "
                          f"in {fix} (or lower training.min_steps, 0: no minimum)")


def describe_count(cfg, n_examples: int) -> str:
    """How :func:`run_steps` counted, for messages: ``135 examples / batch 8 x 3 epochs`` (or ``max_steps 30``).

    Args:
        cfg: the run's :class:`~pd.train.settings.TrainConfig`.
        n_examples: its passage examples.

    Returns:
        The phrase.
    """
    if cfg.max_steps is not None:
        return f"max_steps {cfg.max_steps}"
    rows = cfg.batch_size - cfg.reg_rows
    return f"{n_examples} examples / {rows} per step x {cfg.epochs:g} epochs"
