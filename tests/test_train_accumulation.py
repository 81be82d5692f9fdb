"""training.batch_size is the global batch: micro-batches with gradient accumulation give the full batch's
adapter (to float rounding), and pd.train.fit chooses the micro-batch, checkpointing and sharding."""

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pd.config import load_config
from pd.cost.calibration import calibration
from pd.cost.shapes import Tokens, shape_of
from pd.cost.training import train_peak_gb
from pd.errors import ConfigError
from pd.models import get_spec
from pd.train.fit import fixed_layout, resolve_layout
from pd.train.loop import train
from pd.train.schedule import Schedule
from pd.train.settings import TrainConfig, spec_defaults

sys.path.insert(0, str(Path(__file__).parent))
from test_train import PAIRS, ROWS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dict(rank=8, lr=5e-3, epochs=3, warmup_epochs=0, progress=False, seed=0, lora_dropout=0.0)


@pytest.fixture(scope="module")
def dataset():
    from test_train import PASSAGES

    from pd.data import Dataset, Document

    return Dataset("toy", {k: Document(k, v) for k, v in PASSAGES.items()}, [])


def _train(tiny_llama, dataset, folder: Path, method: str, **kw) -> tuple[dict, list[dict], dict]:
    cfg = TrainConfig(method=method, **{**BASE, **kw})
    res = train(cfg, tiny_llama.spec, folder, rows=ROWS, dataset=dataset, instruction_pairs=PAIRS, device="cpu")
    log = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    return load_file(str(folder / "adapter_model.safetensors")), log, res.meta


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# Same rows in every step; only how they are cut into forward passes differs (padding to another length,
# another summation order): ~1e-7 relative in a gradient, which Adam (dividing by sqrt(v)) can blow up to
# ~1e-3 of one step (lr 5e-3) for a near-cancelling entry. A lost or mis-weighted micro-batch, or another batch,
# moves the weights by a whole step or more (checked below against batch 4).
ATOL = 1e-5


@pytest.mark.parametrize("method", ["pd", "sft", "pd_reg"])
def test_accumulated_micro_batches_equal_the_full_batch(method, tiny_llama, dataset, tmp_path):
    full, log_full, meta = _train(tiny_llama, dataset, tmp_path / "m8", method, batch_size=8, micro_batch_size=8)
    assert meta["layout"]["micro_batch"] == 8 and meta["layout"]["grad_accum"] == 1
    assert max(float(v.abs().max()) for k, v in full.items() if "lora_B" in k) > 1e-3  # B moved off zero
    for micro in (2, 1):
        acc, log_acc, meta_acc = _train(tiny_llama, dataset, tmp_path / f"m{micro}", method, batch_size=8,
                                        micro_batch_size=micro)
        assert (meta_acc["layout"]["micro_batch"], meta_acc["layout"]["grad_accum"]) == (micro, 8 // micro)
        assert meta_acc["steps"] == meta["steps"]
        assert _max_diff(full, acc) < ATOL, (micro, _max_diff(full, acc))
        for k in full:
            assert torch.allclose(full[k], acc[k], atol=ATOL, rtol=0)
        keys = [k for k in log_full[0] if k == "loss" or k.startswith(("kl", "ce"))]
        if method == "pd_reg":
            assert {"kl_pd", "kl_reg"} <= set(keys)  # per kind, exact over micro-batches of one kind too
        for a, b in zip(log_full, log_acc):
            assert [b[k] for k in keys] == pytest.approx([a[k] for k in keys], rel=1e-4, abs=1e-7)
            # The accumulated gradient itself, before clipping (Adam alone would hide a wrong scale).
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
            assert (a["tokens"], a["answer_tokens"]) != (0, 0) and a["answer_tokens"] == b["answer_tokens"]
    # The test can fail: half the batch is another run, far outside the tolerance.
    half, _, _ = _train(tiny_llama, dataset, tmp_path / "b4", method, batch_size=4, micro_batch_size=4)
    assert _max_diff(full, half) > 50 * ATOL


def test_a_short_last_step_with_instruction_rows_equals_the_full_batch(tiny_llama, dataset, tmp_path):
    # pd_reg at batch 6: 3 passage and 3 instruction rows per step; 8 passages make a last step of 2, whose
    # third micro-batch of 2 holds an instruction row only.
    full, _, meta = _train(tiny_llama, dataset, tmp_path / "m6", "pd_reg", batch_size=6, micro_batch_size=6,
                           epochs=1)
    acc, _, _ = _train(tiny_llama, dataset, tmp_path / "m2", "pd_reg", batch_size=6, micro_batch_size=2, epochs=1)
    assert meta["steps"] == 3
    assert _max_diff(full, acc) < ATOL, _max_diff(full, acc)


def test_schedule_deals_the_same_rows_whatever_the_micro_batch():
    cfg = TrainConfig(method="pd_reg", batch_size=6, progress=False)
    whole = Schedule(cfg, 8, 5, world=1, rank=0)
    assert whole.global_rows == 3 and whole.steps_per_epoch == 3
    for world, micro in ((1, 2), (1, 1), (3, 2), (2, 3), (3, 1)):
        parts = [Schedule(cfg, 8, 5, world=world, rank=r, micro=micro) for r in range(world)]
        assert parts[0].accum * world * micro == 6
        for step in range(6):
            rows = [i for p in parts for mb in p.micro_batches(step) for i in mb[0]]
            reg = [i for p in parts for mb in p.micro_batches(step) for i in mb[1]]
            assert all(len(r) + len(g) <= micro for p in parts for r, g in p.micro_batches(step))
            if world == 1 or step % 3 != 2:  # several processes wrap the short last step around
                assert sorted(rows) == sorted(whole.micro_batches(step)[0][0])
            else:
                assert len(rows) == 3 and set(whole.micro_batches(step)[0][0]) <= set(rows)
            assert sorted(reg) == sorted(whole.micro_batches(step)[0][1]) and len(reg) == 3
    with pytest.raises(ValueError, match="not 4 processes"):
        Schedule(cfg, 8, 5, world=4, rank=0, micro=1)


def test_a_batch_that_does_not_divide_is_refused(tiny_llama, dataset, tmp_path):
    # Fixed numbers are checked with the settings; the processes a job gets (auto), when it starts.
    with pytest.raises(ConfigError, match=r"batch_size 8 is not divisible by 1 process\(es\) x micro_batch_size 3"):
        TrainConfig(method="pd", batch_size=8, micro_batch_size=3)
    with pytest.raises(ConfigError, match="batch_size 8 .* not divisible by the 3 training processes"):
        TrainConfig(method="pd", batch_size=8, processes=3)
    cfg = TrainConfig(method="pd", batch_size=8, micro_batch_size=3, processes="auto", progress=False)
    with pytest.raises(ConfigError, match=r"batch_size 8 is not divisible by 1 process\(es\) x micro_batch_size 3"):
        resolve_layout(cfg, tiny_llama.spec, 1, "cpu")
    with pytest.raises(ConfigError, match="batch_size 8 .* not divisible by the 3 training processes"):
        resolve_layout(TrainConfig(method="pd", batch_size=8, progress=False), tiny_llama.spec, 3, "cpu")
    wide = TrainConfig(method="pd", batch_size=12, micro_batch_size=4, progress=False)  # 12 = 3 x 4 on one process
    with pytest.raises(ConfigError, match=r"batch_size 12 is not divisible by 2 process\(es\) x micro_batch_size 4"):
        resolve_layout(wide, tiny_llama.spec, 2, "cpu", gpu_gb=80.0)  # the cost model's path checks it too
    with pytest.raises(ConfigError, match="micro_batch_size 3"):
        train(cfg, tiny_llama.spec, tmp_path / "x", rows=ROWS, dataset=dataset, device="cpu")


def test_removed_grad_accum_is_refused_with_what_to_set():
    msg = "training.grad_accum was removed: batch_size is the global batch; set micro_batch_size"
    with pytest.raises(ConfigError, match=msg):
        TrainConfig.from_dict({"grad_accum": 2})
    with pytest.raises(ConfigError, match=msg):
        load_config(overrides={"training": {"grad_accum": 2}})
    with pytest.raises(ConfigError, match="per_model.llama3-8b-instruct.grad_accum was removed"):
        load_config(overrides={"per_model": {"llama3-8b-instruct": {"grad_accum": 2}}})
    assert "grad_accum" not in spec_defaults() and "micro_batch_size" not in spec_defaults()
    assert load_config(overrides={"training": {"micro_batch_size": 2, "gradient_checkpointing": "auto",
                                               "parallel": "auto"}})["training"]["micro_batch_size"] == 2
    with pytest.raises(ConfigError, match="micro_batch_size"):
        TrainConfig(micro_batch_size=0)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        TrainConfig(gradient_checkpointing="sometimes")


def test_resolve_layout_on_a_cpu(tiny_llama):
    def fit(world=1, **kw):
        return resolve_layout(TrainConfig(method="pd", progress=False, **kw), tiny_llama.spec, world, "cpu")

    f = fit(batch_size=8)
    assert (f.processes, f.micro_batch, f.grad_accum, f.checkpointing, f.parallel, f.source) == \
        (1, 8, 1, False, "ddp", "cpu")
    f = fit(world=2, batch_size=8)
    assert (f.micro_batch, f.grad_accum) == (4, 1)
    f = fit(world=2, batch_size=8, micro_batch_size=2, gradient_checkpointing=True, parallel="fsdp")
    assert (f.micro_batch, f.grad_accum, f.checkpointing, f.parallel) == (2, 2, True, "fsdp")
    assert f.peak_gb is None and "micro-batch 2 x 2 accumulated" in f.describe()
    assert fixed_layout(TrainConfig()) == {"checkpointing": None, "parallel": None, "micro_batch": None}


# The paper's 8B PD cell: rank 1024, global batch 4, the worst length bucket measured (545 student / 735 teacher).
LLAMA8B = get_spec("llama3-8b-instruct")
ROW = Tokens(545, 735, 512)


def _pd8b(**kw) -> TrainConfig:
    return TrainConfig(method="pd", rank=1024, batch_size=4, progress=False, **kw)


def _usable(gpu_gb: float) -> float:
    return calibration()["multi_gpu"]["headroom"] * gpu_gb


def _gpu_for(peak: float) -> float:
    """A GPU whose usable memory is just above ``peak``."""
    return peak / calibration()["multi_gpu"]["headroom"] + 0.01


def test_resolve_layout_follows_the_cost_model_on_a_gpu():
    shape = shape_of(LLAMA8B)

    def peak(micro, ck, shards=1, rank=1024, row=ROW):
        return train_peak_gb(shape, rank, micro, row, checkpointing=ck, shards=shards)

    def fit(gpu_gb, cfg=None, world=1, row=ROW):
        return resolve_layout(cfg or _pd8b(), LLAMA8B, world, "cpu", tokens=row, gpu_gb=gpu_gb)

    # A GPU that holds the whole batch: one micro-batch, no checkpointing (an H200: the measured 71 GB fit).
    f = fit(141.0)
    assert (f.micro_batch, f.grad_accum, f.checkpointing, f.parallel, f.source) == (4, 1, False, "ddp", "cost model")
    assert f.peak_gb == pytest.approx(peak(4, False), abs=0.01) and f.gpu_gb == 141.0
    # Just too small for micro 4 without checkpointing: whichever fitting layout is fastest, it fits.
    g = _gpu_for(peak(4, False)) - 0.5
    f = fit(g)
    assert (f.micro_batch, f.checkpointing) != (4, False)
    assert peak(f.micro_batch, f.checkpointing) <= _usable(g) and f.micro_batch * f.grad_accum == 4
    # No micro-batch fits without checkpointing, the whole batch fits with it (the 8B's activations are small
    # beside its 43 GB of LoRA state once each block keeps only its input).
    assert peak(4, True) < peak(1, False)
    f = fit((_gpu_for(peak(4, True)) + _gpu_for(peak(1, False))) / 2)
    assert (f.micro_batch, f.grad_accum, f.checkpointing) == (4, 1, True)
    # Room for one row with checkpointing, not two: micro-batch 1, accumulated 4 times.
    assert peak(1, True) < peak(2, True)
    f = fit((_gpu_for(peak(1, True)) + _gpu_for(peak(2, True))) / 2)
    assert (f.micro_batch, f.grad_accum, f.checkpointing) == (1, 4, True)
    # An explicit micro-batch wins, and fixed choices are kept.
    f = fit(141.0, _pd8b(micro_batch_size=2, gradient_checkpointing=True))
    assert (f.micro_batch, f.grad_accum, f.checkpointing) == (2, 2, True)
    # Two processes: unsharded when the model fits one GPU, sharded (fsdp) when only a shard fits.
    f = fit(141.0, world=2)
    assert (f.processes, f.micro_batch, f.grad_accum, f.parallel) == (2, 2, 1, "ddp")
    g = (_gpu_for(peak(1, True, shards=2)) + _gpu_for(peak(1, True))) / 2
    f = fit(g, world=2)
    assert f.parallel == "fsdp" and peak(f.micro_batch, f.checkpointing, shards=2) <= _usable(g)


def test_nothing_fits_trains_with_the_smallest_layout(caplog):
    with caplog.at_level(logging.WARNING, logger="pd.train"):
        f = resolve_layout(_pd8b(), LLAMA8B, 2, "cpu", tokens=ROW, gpu_gb=10.0)
    assert (f.micro_batch, f.grad_accum, f.checkpointing, f.parallel) == (1, 2, True, "fsdp")
    assert f.source == "cost model: nothing fits" and "does not fit" in caplog.text


def test_the_14b_cell_fits_eight_h100s_at_four_per_gpu():
    """config.yaml's 14B cell: rank 512, global batch 32 on 8 processes; an 80 GB H100 holds 85.5 GB (10^9)."""
    cfg = TrainConfig(method="pd", rank=512, batch_size=32, progress=False)
    f = resolve_layout(cfg, get_spec("qwen2.5-14b-instruct"), 8, "cpu", tokens=Tokens(400, 560, 300), gpu_gb=85.5)
    assert f.processes * f.micro_batch * f.grad_accum == 32 and f.peak_gb <= _usable(85.5)
