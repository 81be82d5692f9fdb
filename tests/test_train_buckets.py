"""Length-bucketed batch order (pd.train.buckets) and its use in the training loop's Schedule."""

from __future__ import annotations

import pytest
import torch

from pd.errors import ConfigError
from pd.train.buckets import bucketed_order, padding_fraction
from pd.train.schedule import Schedule
from pd.train.settings import TrainConfig


def _plan(n, lengths, seed=0, micro=None, **kw) -> Schedule:
    cfg = TrainConfig(method="sft", seed=seed, progress=False, **kw)
    return Schedule(cfg, n, 0, world=1, rank=0, lengths=lengths, micro=micro)


def _epoch_batches(plan: Schedule, epoch: int) -> list[list[int]]:
    s0 = epoch * plan.steps_per_epoch
    return [rows for s in range(s0, s0 + plan.steps_per_epoch) for rows, _ in plan.micro_batches(s)]


def test_every_example_exactly_once_per_epoch_with_grad_accum():
    lengths = [(7 * i) % 31 + 1 for i in range(23)]
    plan = _plan(23, lengths, batch_size=6, micro=3, bucket_batches=3)
    assert plan.accum == 2
    assert plan.steps_per_epoch == 4  # ceil(23 / 6)
    for epoch in range(3):
        seen = [i for b in _epoch_batches(plan, epoch) for i in b]
        assert sorted(seen) == list(range(23))


def test_buckets_reduce_padding_on_a_hand_made_list():
    lengths = [10, 200, 12, 190, 11, 205, 9, 198]
    plain = [[0, 1], [2, 3], [4, 5], [6, 7]]
    # By hand: pads 190 + 178 + 194 + 189 = 751 of 2 * (200 + 190 + 205 + 198) = 1586 tokens.
    assert padding_fraction(plain, lengths) == pytest.approx(751 / 1586, abs=1e-12)
    order = bucketed_order(range(8), lengths, batch_rows=2, group_batches=4, generator=torch.Generator().manual_seed(3))
    batches = [order[i:i + 2] for i in range(0, 8, 2)]
    # One group holds all: sorted 9,10 | 11,12 | 190,198 | 200,205 -> pads 1 + 1 + 8 + 5 of 850.
    assert sorted(map(sorted, batches)) == [[0, 6], [1, 5], [2, 4], [3, 7]]
    assert padding_fraction(batches, lengths) == pytest.approx(15 / 850, abs=1e-12)


def test_plan_on_real_shaped_lengths_pads_less_than_a_plain_shuffle():
    g = torch.Generator().manual_seed(0)
    lengths = (torch.randint(20, 400, (200,), generator=g)).tolist()
    bucketed = _plan(200, lengths, batch_size=8, bucket_batches=8)
    plain = _plan(200, lengths, batch_size=8, bucket_batches=1)
    for epoch in range(2):
        assert padding_fraction(_epoch_batches(bucketed, epoch), lengths) < \
            0.5 * padding_fraction(_epoch_batches(plain, epoch), lengths)


def test_order_is_reproducible_from_the_seed_and_varies_by_epoch():
    lengths = [(13 * i) % 97 for i in range(64)]
    a, b = _plan(64, lengths, seed=5, batch_size=4), _plan(64, lengths, seed=5, batch_size=4)
    assert [_epoch_batches(a, e) for e in range(3)] == [_epoch_batches(b, e) for e in range(3)]
    other = _plan(64, lengths, seed=6, batch_size=4)
    assert _epoch_batches(other, 0) != _epoch_batches(a, 0)
    # Groups are drawn afresh each epoch: which examples share a batch changes.
    e0 = {frozenset(x) for x in _epoch_batches(a, 0)}
    e1 = {frozenset(x) for x in _epoch_batches(a, 1)}
    assert e0 != e1
    # A fresh Schedule (a resumed run) asked for a later step first gives the same batches.
    late = _plan(64, lengths, seed=5, batch_size=4)
    assert late.micro_batches(20) == a.micro_batches(20)


def test_bucket_batches_one_is_the_plain_shuffle_and_the_short_batch_stays_last():
    lengths = list(range(10, 0, -1))
    off = _plan(10, lengths, batch_size=3, bucket_batches=1)
    none = _plan(10, None, batch_size=3)
    assert _epoch_batches(off, 0) == _epoch_batches(none, 0)
    on = _plan(10, lengths, batch_size=3, bucket_batches=4)
    assert [len(b) for b in _epoch_batches(on, 0)] == [3, 3, 3, 1]


def test_bad_settings_are_errors():
    with pytest.raises(ConfigError, match="bucket_batches"):
        TrainConfig(bucket_batches=0)
    with pytest.raises(ValueError, match="lengths"):  # the loop computes the lengths: a mismatch is a bug
        _plan(5, [1, 2, 3])
    with pytest.raises(ConfigError, match="batch_rows"):
        bucketed_order([0, 1], [1, 2], 0, 2, torch.Generator())
