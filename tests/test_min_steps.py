"""Training that trains: the minimum number of optimizer steps (plan, `pd validate` and the adapter job),
a data order that follows the seed for every method (UFT's few chunks included), and a warmup without a
step at learning rate 0. Real tiny models, real plans, real training."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from pd.cli import main
from pd.config import DEFAULT_CONFIG, load_config
from pd.data import Dataset, Document
from pd.errors import ConfigError
from pd.pipeline.plan import build_plan
from pd.pipeline.registry import get_kind
from pd.pipeline.run import run_spec
from pd.report.aggregate import CellRecord, Group
from pd.report.tables import MARK_SHORT, TableCell
from pd.train.loop import train
from pd.train.schedule import Schedule, lr_factor
from pd.train.settings import TrainConfig
from pd.train.steps import check_min_steps, run_steps

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ROOT / "tests" / "configs" / "tiny-train.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")

# The demo's training settings on UFT: 4 passages make 4 chunks, one batch of 8 per epoch, 3 steps.
UFT_X = {"grid": {"model": ["smollm2-135m-instruct"], "method": ["uft"], "dataset": ["demo-nyt"], "seed": [0]},
         "graders": ["substring"], "training": {"rank": 64, "epochs": 3, "batch_size": 8, "warmup_epochs": 0}}


def _plan(experiment: dict, **top):
    return build_plan(load_config(DEFAULT_CONFIG, {"experiments": {"x": experiment}, **top}), ["x"])


def test_the_plan_refuses_a_three_step_run_naming_cell_steps_minimum_and_key():
    with pytest.raises(ConfigError) as err:
        _plan(UFT_X)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("experiment x, cell demo-nyt/uft/smollm2-135m-instruct/s0/none", "3 optimizer steps",
                 "4 examples / 8 per step x 3 epochs", "training.min_steps=20", "experiments.x.methods.uft.training"):
        assert part in msg, (part, msg)
    # The per-experiment, per-method override gives UFT its own steps; only UFT's settings change.
    plan = _plan({**UFT_X, "methods": {"uft": {"training": {"batch_size": 2, "max_steps": 30}}}})
    (art,) = plan.of_kind("adapter")
    assert art.spec.training["batch_size"] == 2 and art.spec.training["epochs"] == 3
    assert get_kind("adapter").workload(art, plan).steps == 30
    # A lower minimum (0: none) lets the short run through.
    assert _plan(UFT_X, training={"min_steps": 3}).of_kind("adapter")
    with pytest.raises(ConfigError, match="3 optimizer steps"):
        _plan(UFT_X, training={"min_steps": 4})


def test_pd_validate_refuses_it_with_exit_2(tmp_path, capsys):
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg["experiments"]["x"] = UFT_X
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "validate"]) == 2
    err = capsys.readouterr().err
    assert "cell demo-nyt/uft/smollm2-135m-instruct/s0/none: 3 optimizer steps" in err and "min_steps=20" in err


def test_the_plans_estimates_are_the_loops_counts():
    """The study's adapters: UFT 4-5 chunks from the passages' characters, 30 steps with its override; PD and
    SFT from the training questions less the held-out ones (the demo's 135 examples: 17 steps x 3 epochs)."""
    plan = build_plan(load_config(DEFAULT_CONFIG), ["study"])
    kind = get_kind("adapter")
    steps = {(a.spec.dataset, a.spec.method): (kind.planned_examples(a, plan), kind.workload(a, plan).steps)
             for a in plan.of_kind("adapter")}
    assert steps[("demo-nyt", "pd")] == steps[("demo-nyt", "sft")] == (135, 51)
    assert {k: v for k, v in steps.items() if k[1] == "uft"} == {
        ("demo-nyt", "uft"): (4, 30), ("study-amazon", "uft"): (4, 30), ("study-new_wiki", "uft"): (5, 30),
        ("study-reddit", "uft"): (5, 30)}
    assert min(s for _, s in steps.values()) >= TrainConfig().min_steps
    cfg = TrainConfig(method="uft", batch_size=8, epochs=3)
    assert run_steps(cfg, 4) == (1, 3) and run_steps(TrainConfig(method="sft", batch_size=8, epochs=3), 135) == (17, 51)
    with pytest.raises(ConfigError, match="3 optimizer steps"):
        check_min_steps(3, 20, "here", "counted", "there")
    check_min_steps(3, 0, "here", "counted", "there")  # 0: no minimum


def _uft_adapter(tmp_path):
    """The UFT adapter job of tests/configs/tiny-train.yaml (tiny-llama, 2 NYT passages), results under tmp_path."""
    raw = yaml.safe_load(TINY_TRAIN.read_text())
    plan = build_plan(load_config(raw, {"results_dir": str(tmp_path / "results")}))
    return next(a for a in plan.of_kind("adapter") if a.spec.method == "uft")


def test_the_adapter_job_refuses_before_training_and_records_the_minimum(tmp_path):
    art = _uft_adapter(tmp_path)
    assert art.spec.training["min_steps"] == 0  # the config's tiny runs
    short = dataclasses.replace(art.spec, training={**art.spec.training, "min_steps": 20})
    # The real count (tiny-llama's tokenizer cuts these passages into 16 chunks; the plan estimated 8 from their
    # characters), before any model is loaded.
    with pytest.raises(ConfigError, match=r"uft on tiny-nyt \(seed 0\): 16 optimizer steps \(16 examples / 2 per "
                                          r"step x 2 epochs\), fewer than training.min_steps=20"):
        run_spec(short, str(tmp_path / "short"))
    assert not (tmp_path / "short").exists() and not (tmp_path / "short.work").exists()  # nothing trained
    run_spec(art.spec, art.path)
    meta = json.loads((Path(art.path) / "pd_meta.json").read_text())
    assert (meta["steps"], meta["min_steps"]) == (16, 0)
    # The report marks a cell whose adapter took fewer steps than its minimum (and only such a cell).
    record = CellRecord("x", "c", {"method": "uft", "seed": 0}, "substring", "g.jsonl", meta={"adapter": meta})
    assert record.short_training() is None
    marked = CellRecord("x", "c", {"method": "uft", "seed": 0}, "substring", "g.jsonl",
                        meta={"adapter": {**meta, "min_steps": 20}})
    assert marked.short_training() == (16, 20)
    old = CellRecord("x", "c", {"method": "uft", "seed": 0}, "substring", "g.jsonl",
                     meta={"adapter": {k: v for k, v in meta.items() if k != "min_steps"}})
    assert old.short_training() == (16, TrainConfig().min_steps)  # trained before the minimum was recorded


def test_a_short_cell_carries_the_mark():
    class Graded:
        n, accuracy = 10, 0.5

    short = CellRecord("x", "c", {"method": "uft", "seed": 0}, "substring", "g",
                       meta={"adapter": {"steps": 3, "min_steps": 20}})
    fine = CellRecord("x", "c", {"method": "uft", "seed": 0}, "substring", "g",
                      meta={"adapter": {"steps": 30, "min_steps": 20}})
    assert MARK_SHORT in TableCell(Group({"method": "uft"}, [short], [Graded()]), None).marks()
    assert MARK_SHORT not in TableCell(Group({"method": "uft"}, [fine], [Graded()]), None).marks()


# --------------------------------------------------------------------------- data order and warmup

# Six short passages of distinct lengths: one UFT chunk each, so a batch's answer tokens name its chunks.
PASSAGES = {f"d{i}": " ".join(["The harbour of Velmora was built in 1822 by Odric Thale."] * (i + 1)) for i in range(6)}


def _uft_run(tiny_llama, tmp_path, seed: int, **kw):
    ds = Dataset("six", {k: Document(k, v) for k, v in PASSAGES.items()}, [])
    cfg = TrainConfig(method="uft", rank=4, lr=1e-3, batch_size=2, epochs=2, warmup_epochs=0, progress=False,
                      seed=seed, **kw)
    res = train(cfg, tiny_llama.spec, tmp_path / f"uft_s{seed}", dataset=ds, device="cpu")
    return [json.loads(line) for line in (tmp_path / f"uft_s{seed}" / "train_log.jsonl").read_text().splitlines()], res


def test_uft_with_two_seeds_puts_other_chunks_together_and_wastes_no_warmup_step(tiny_llama, tmp_path):
    runs = {s: _uft_run(tiny_llama, tmp_path, s, warmup_steps=2, warmup_from_zero=False) for s in (0, 1)}
    for log, res in runs.values():
        assert res.meta["steps"] == 6 and res.meta["steps_per_epoch"] == 3
        assert [round(r["lr"] / 1e-3, 6) for r in log[:3]] == [round(1 / 3, 6), round(2 / 3, 6), 1.0]  # no lr 0
    # Each step logs its batch's answer tokens; the chunks' lengths differ, so an epoch's sorted list of them
    # says which chunks shared a batch. One length bucket held the whole epoch before: the same for every seed.
    epoch = {s: [sorted(r["answer_tokens"] for r in log[e * 3:(e + 1) * 3]) for e in (0, 1)]
             for s, (log, _) in runs.items()}
    assert epoch[0] != epoch[1]
    assert epoch[0][0] != epoch[0][1] or epoch[1][0] != epoch[1][1]  # and from epoch to epoch
    # The default warmup (transformers', the paper's) starts at 0: the first step changes nothing.
    log, _ = _uft_run(tiny_llama, tmp_path / "default", 0, warmup_steps=2)
    assert log[0]["lr"] == 0.0 and log[1]["lr"] == pytest.approx(5e-4)


def test_lr_factor_without_a_zero_step_and_buckets_of_half_an_epoch():
    assert [lr_factor(s, 2, 5) for s in range(5)] == [0.0, 0.5, 1.0, 2 / 3, 1 / 3]
    assert [lr_factor(s, 2, 5, from_zero=False) for s in range(5)] == [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]
    assert all(lr_factor(s, 3, 3, from_zero=False) > 0 for s in range(3))  # a run that is all warmup
    cfg = TrainConfig(method="sft", batch_size=8, progress=False)
    assert Schedule(cfg, 135, 0, 1, 0, lengths=list(range(135))).bucket_batches == 8  # the demo's: unchanged
    assert Schedule(cfg, 62, 0, 1, 0, lengths=list(range(62))).bucket_batches == 4
    assert Schedule(cfg, 5, 0, 1, 0, lengths=list(range(5))).bucket_batches == 0  # a plain shuffle
