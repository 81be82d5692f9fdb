"""The training loop on tiny-llama: every method lowers its loss, exact resume, schedule, output folder."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pd.data import Dataset, Document
from pd.errors import ConfigError, DataError
from pd.train.checkpoint import snapshot_folder, snapshot_name
from pd.train.loop import train
from pd.train.lora import attach_lora
from pd.train.methods import batch_loss, build_training_data, load_instruction_pairs
from pd.train.schedule import Schedule, lr_factor
from pd.train.sequences import Tokens, collate
from pd.train.settings import METHODS, TrainConfig

PASSAGES = {
    "d0": "Mattingly arrived in 1982 and retired in 1995, a year before the Yankees returned to the World Series.",
    "d1": "The new bridge over the river opened in March after four years of construction and cost 80 million.",
    "d2": "A small bakery in Queens sells about three hundred loaves of rye bread every Saturday morning.",
    "d3": "The museum's winter exhibition shows paintings by two Dutch artists who shared one studio.",
}
QA = [
    ("d0", "When did Mattingly retire?", "He retired in 1995."),
    ("d0", "When did Mattingly arrive?", "He arrived in 1982."),
    ("d1", "When did the bridge open?", "The bridge opened in March."),
    ("d1", "How much did the bridge cost?", "It cost 80 million."),
    ("d2", "Where is the bakery?", "The bakery is in Queens."),
    ("d2", "What bread does the bakery sell?", "It sells rye bread, about three hundred loaves."),
    ("d3", "Whose paintings does the museum show?", "Paintings by two Dutch artists."),
    ("d3", "What did the two artists share?", "They shared one studio."),
]
ROWS = [{"id": f"q{i}", "doc_id": d, "question": q, "answer": a, "finish_reason": "stop"}
        for i, (d, q, a) in enumerate(QA)]
PAIRS = [
    {"id": "i0", "instruction": "Name a primary colour.", "response": "Red is a primary colour."},
    {"id": "i1", "instruction": "What is two plus two?", "response": "Two plus two is four."},
    {"id": "i2", "instruction": "Say hello in French.", "response": "Bonjour."},
    {"id": "i3", "instruction": "Give an antonym of hot.", "response": "Cold."},
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset():
    return Dataset("toy", {k: Document(k, v) for k, v in PASSAGES.items()}, [])


def _cfg(method="pd", **kw):
    base = dict(method=method, rank=8, lr=5e-3, epochs=3, warmup_epochs=0, batch_size=4, progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def reference_loss(model, batch, kl: bool, temperature=2.0, direction="forward") -> float:
    """The method's loss from full logits in float64, written independently of pd.train.losses."""
    was = model.training
    model.eval()
    with torch.no_grad():
        s_all = model(input_ids=batch["student_input_ids"],
                      attention_mask=batch["student_attention_mask"]).logits.double()
        if kl:
            if hasattr(model, "disable_adapter"):
                with model.disable_adapter():
                    t_all = model(input_ids=batch["teacher_input_ids"],
                                  attention_mask=batch["teacher_attention_mask"]).logits.double()
            else:
                t_all = model(input_ids=batch["teacher_input_ids"],
                              attention_mask=batch["teacher_attention_mask"]).logits.double()
    model.train(was)
    per_sample = []
    for b in range(s_all.shape[0]):
        n = int(batch["answer_mask"][b].sum())
        s = s_all[b, batch["student_answer_positions"][b, :n]]
        if kl:
            t = t_all[b, batch["teacher_answer_positions"][b, :n]]
            logq, logp = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
            if direction == "forward":
                per_tok = (logp.exp() * (logp - logq)).sum(-1)
            else:
                per_tok = (logq.exp() * (logq - logp)).sum(-1)
        else:
            per_tok = -F.log_softmax(s, -1)[torch.arange(n), batch["answer_ids"][b, :n]]
        per_sample.append(per_tok.mean())
    return float(torch.stack(per_sample).mean())


def _all_batch(cfg, tiny_llama, dataset):
    tokens = Tokens(tiny_llama.tokenizer, tiny_llama.spec)
    data = build_training_data(cfg, tokens, rows=ROWS, dataset=dataset, instruction_pairs=PAIRS)
    return collate(data.examples + data.reg, tokens.pad_id)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_lowers_its_loss(method, tiny_llama, dataset, tmp_path):
    from peft import PeftModel

    cfg = _cfg(method, lr=2e-2 if method in ("sft", "sft_distractors", "uft") else 5e-3)
    res = train(cfg, tiny_llama.spec, tmp_path / "adapter", rows=ROWS, dataset=dataset, instruction_pairs=PAIRS,
                device="cpu")
    folder = res.adapter_dir
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    meta = json.loads((folder / "pd_meta.json").read_text())
    assert meta["method"] == method and meta["steps"] == res.steps > 0 and meta["config"]["rank"] == 8
    log_rows = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_rows] == list(range(1, res.steps + 1))
    assert not (tmp_path / "adapter.work").exists()  # the work folder is cleaned after success

    batch = _all_batch(cfg, tiny_llama, dataset)
    kl = cfg.uses_kl
    before = reference_loss(tiny_llama.model(), batch, kl, direction=cfg.direction)
    trained = PeftModel.from_pretrained(tiny_llama.model(), str(folder))
    after = reference_loss(trained, batch, kl, direction=cfg.direction)
    assert after < 0.8 * before if kl else after < before - 0.05, (before, after)
    # The loop's loss (hidden states + chunked head) is the method's definition.
    trained.eval()
    with torch.no_grad():
        code, _ = batch_loss(cfg, trained, batch)
    assert abs(float(code) - after) <= 1e-5 * max(1.0, after) + 1e-9


def test_adapter_folder_gives_the_trained_logits(tiny_llama, dataset, tmp_path):
    from peft import PeftModel

    res = train(_cfg("pd", epochs=1), tiny_llama.spec, tmp_path / "a", rows=ROWS, dataset=dataset, device="cpu")
    batch = _all_batch(_cfg("pd"), tiny_llama, dataset)
    loaded = PeftModel.from_pretrained(tiny_llama.model(), str(res.adapter_dir)).eval()
    res.model.eval()
    args = dict(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"])
    with torch.no_grad():
        a, b, base = res.model(**args).logits, loaded(**args).logits, tiny_llama.model()(**args).logits
    assert torch.equal(a, b)
    assert (a - base).abs().max() > 1e-4  # training changed the function
    cfg = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                             "v_proj"]
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16


@pytest.mark.parametrize("method,extra", [("pd", {}), ("pd_reg", {"teacher_topk": 16})])
def test_resume_is_bit_identical(method, extra, tiny_llama, dataset, tmp_path):
    # Dropout, accumulation and warmup make RNG, optimizer and scheduler state all matter;
    # pd_reg adds the instruction stream and a teacher cache kept in the work folder.
    cfg = _cfg(method, batch_size=4, micro_batch_size=2, lora_dropout=0.1, warmup_steps=2, epochs=3, **extra)
    kw = dict(rows=ROWS, dataset=dataset, device="cpu", instruction_pairs=PAIRS)
    full = train(cfg, tiny_llama.spec, tmp_path / "full", **kw)
    n = full.steps
    assert n == (6 if method == "pd" else 12)
    part = train(cfg, tiny_llama.spec, tmp_path / "cut", stop_after=n // 2, **kw)
    assert part.adapter_dir is None and not (tmp_path / "cut").exists()
    assert (tmp_path / "cut.work" / "checkpoints" / f"step-{n // 2:08d}").is_dir()
    resumed = train(cfg, tiny_llama.spec, tmp_path / "cut", **kw)
    assert resumed.meta["resumed_from_step"] == n // 2 and resumed.steps == n
    a = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b] and len(log_b) == n


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_llama, dataset, tmp_path):
    train(_cfg("pd", epochs=2), tiny_llama.spec, tmp_path / "x", rows=ROWS, dataset=dataset, device="cpu", stop_after=1)
    with pytest.raises(ConfigError, match="different run"):
        train(_cfg("pd", epochs=2, lr=1e-3), tiny_llama.spec, tmp_path / "x", rows=ROWS, dataset=dataset, device="cpu")


def test_schedule_warmup_then_linear_decay(tiny_llama, dataset, tmp_path):
    # 8 rows, batch 4 -> 2 steps per epoch; 3 epochs = 6 steps; warmup 1 epoch = 2 steps.
    res = train(_cfg("sft", warmup_epochs=1, lr=1e-3), tiny_llama.spec, tmp_path / "s", rows=ROWS, dataset=dataset,
                device="cpu")
    lrs = [json.loads(x)["lr"] for x in (res.adapter_dir / "train_log.jsonl").read_text().splitlines()]
    expected = [0.0, 0.5e-3, 1e-3, 0.75e-3, 0.5e-3, 0.25e-3]  # by hand: s/2 in warmup, then (6-s)/4
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert [lr_factor(s, 0, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert res.meta["warmup_steps"] == 2 and res.meta["total_steps"] == 6


def test_schedule_visits_every_example_once_per_epoch():
    cfg = _cfg("pd", batch_size=3)
    plan = Schedule(cfg, 10, 0, world=1, rank=0)
    assert plan.steps_per_epoch == 4
    for epoch in range(2):
        seen = [i for s in range(epoch * 4, epoch * 4 + 4) for rows, _ in plan.micro_batches(s) for i in rows]
        assert sorted(seen) == list(range(10))
    # Two processes split each global batch without overlap; the union is what one process would take.
    single = Schedule(_cfg("pd", batch_size=4), 10, 0, world=1, rank=0)
    ranks = [Schedule(_cfg("pd", batch_size=4), 10, 0, world=2, rank=r) for r in range(2)]
    for s in range(2):
        parts = [rows for p in ranks for rows, _ in p.micro_batches(s)]
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == sorted(single.micro_batches(s)[0][0])
    # pd_reg: half of each batch comes from the instruction stream, which cycles through all of it.
    reg_plan = Schedule(_cfg("pd_reg", batch_size=4), 10, 3, world=1, rank=0)
    mb = [reg_plan.micro_batches(s)[0] for s in range(3)]
    assert all(len(rows) == 2 and len(reg) == 2 for rows, reg in mb)
    stream = [i for _, reg in mb for i in reg]
    assert sorted(stream[:3]) == [0, 1, 2] and sorted(stream[3:6]) == [0, 1, 2]


def test_regulariser_is_exactly_zero_at_step_0(tiny_llama):
    """Eq. 2 compares the adapter-off and adapter-on model on one sequence: identical at init."""
    from pd.train.sequences import reg_examples

    tokens = Tokens(tiny_llama.tokenizer, tiny_llama.spec)
    reg, _ = reg_examples(PAIRS, tokens)
    batch = collate(reg, tokens.pad_id)
    model = attach_lora(tiny_llama.model(), rank=4, alpha=8, seed=0)
    loss, metrics = batch_loss(_cfg("pd_reg"), model, batch)
    assert float(loss) == 0.0
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_snapshots_by_elapsed_seconds(tiny_llama, dataset, tmp_path):
    from peft import PeftModel

    res = train(_cfg("pd", epochs=2, snapshot_seconds=[0, 10**6]), tiny_llama.spec, tmp_path / "w", rows=ROWS,
                dataset=dataset, device="cpu")
    snap = res.adapter_dir / "snapshots" / snapshot_name(0)
    assert snap.is_dir() and not (res.adapter_dir / "snapshots" / snapshot_name(10**6)).exists()
    assert json.loads((snap / "pd_meta.json").read_text())["step"] == 1
    assert res.meta["snapshots"] == {"t0": 0.0}
    first = load_file(str(snap / "adapter_model.safetensors"))
    final = load_file(str(res.adapter_dir / "adapter_model.safetensors"))
    assert any(not torch.equal(first[k], final[k]) for k in first)
    PeftModel.from_pretrained(tiny_llama.model(), str(snap))
    assert snapshot_folder(res.adapter_dir, 0) == snap
    assert snapshot_folder(res.adapter_dir, 10**6) == res.adapter_dir  # the run ended earlier: the final adapter
    (res.adapter_dir / "pd_meta.json").write_text(json.dumps({"stopped_by": "max_seconds", "wall_clock_s": 5}))
    with pytest.raises(DataError, match="no snapshot at 1000000"):
        snapshot_folder(res.adapter_dir, 10**6)


def test_settings_and_inputs_are_checked(tiny_llama, dataset, tmp_path):
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_dict({"lr": 1e-5, "learning_rate": 1e-5})
    with pytest.raises(ConfigError, match="allowed"):
        TrainConfig(method="dpo")
    with pytest.raises(ConfigError, match="at least one instruction row"):
        TrainConfig(method="pd_reg", batch_size=1)
    with pytest.raises(ConfigError, match="reg_data"):
        load_instruction_pairs(None)
    with pytest.raises(DataError, match="does not exist"):
        load_instruction_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="tulu-3-sft-mixture"):  # offline: no hub, or no `datasets` package
        load_instruction_pairs("tulu3")
    with pytest.raises(DataError, match="training rows"):
        train(_cfg("pd"), tiny_llama.spec, tmp_path / "z", rows=[], dataset=dataset, device="cpu")
    assert TrainConfig.from_dict({"method": "pd_reverse"}).direction == "reverse"


def test_instruction_pairs_from_jsonl_and_messages(tmp_path):
    p = tmp_path / "inst.jsonl"
    rows = [{"instruction": "a?", "response": "b."},
            {"id": "m1", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "only a question"}]}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_instruction_pairs(p)
    assert pairs == [{"instruction": "a?", "response": "b.", "id": "reg000000"},
                     {"instruction": "hi", "response": "hello", "id": "m1"}]


def test_cached_teacher_matches_live_teacher(tiny_llama, dataset, tmp_path):
    """k = V top-k targets carry the full distribution: training follows the live-teacher run.

    A separate, bigger teacher makes the KL large (so a relative tolerance means something);
    with pd_reg the passage rows come from the cache and the instruction rows stay live.
    """
    from pd.models import get_spec

    big = get_spec("tiny-llama-large")
    live = train(_cfg("pd_reg", epochs=2), tiny_llama.spec, tmp_path / "live", rows=ROWS, dataset=dataset,
                 instruction_pairs=PAIRS, device="cpu", teacher_spec=big)
    cached = train(_cfg("pd_reg", epochs=2, teacher_topk=512, teacher_logprob_dtype="float32"), tiny_llama.spec,
                   tmp_path / "cached", rows=ROWS, dataset=dataset, instruction_pairs=PAIRS, device="cpu",
                   teacher_spec=big)
    la = [json.loads(x) for x in (live.adapter_dir / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (cached.adapter_dir / "train_log.jsonl").read_text().splitlines()]
    assert la[0]["kl_pd"] > 3e-3  # the big teacher disagrees (the adapter-off self: ~1e-4)
    assert [r["kl_pd"] for r in lb] == pytest.approx([r["kl_pd"] for r in la], rel=1e-4)
    assert [r["kl_reg"] for r in lb] == pytest.approx([r["kl_reg"] for r in la], rel=1e-3, abs=1e-7)
    assert cached.meta["teacher_cache"]["k"] == 512
    assert cached.meta["teacher_cache"]["covered_mass"] == pytest.approx(1.0)
    small = train(_cfg("pd", epochs=1, teacher_topk=8), tiny_llama.spec, tmp_path / "k8", rows=ROWS, dataset=dataset,
                  device="cpu")
    assert 0.0 < small.meta["teacher_cache"]["covered_mass"] < 1.0


def test_separate_teacher_same_vocabulary_only(tiny_llama, dataset, tmp_path):
    from pd.errors import VocabularyMismatchError
    from pd.models import get_spec

    res = train(_cfg("pd", epochs=1), tiny_llama.spec, tmp_path / "big", rows=ROWS, dataset=dataset, device="cpu",
                teacher_spec=get_spec("tiny-llama-large"))
    assert res.meta["teacher"] == "tiny-llama-large"
    # A bigger random teacher disagrees with the student far more than the adapter-off self.
    assert res.meta["final"]["kl"] > 3e-3
    with pytest.raises(VocabularyMismatchError):
        train(_cfg("pd", epochs=1), tiny_llama.spec, tmp_path / "qwen", rows=ROWS, dataset=dataset, device="cpu",
              teacher_spec=get_spec("tiny-qwen2"))


def test_gradient_checkpointing_and_time_budget(tiny_llama, dataset, tmp_path):
    plain = train(_cfg("pd", epochs=1), tiny_llama.spec, tmp_path / "p", rows=ROWS, dataset=dataset, device="cpu")
    ckpt = train(_cfg("pd", epochs=1, gradient_checkpointing=True), tiny_llama.spec, tmp_path / "c", rows=ROWS,
                 dataset=dataset, device="cpu")
    a = load_file(str(plain.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(ckpt.adapter_dir / "adapter_model.safetensors"))
    for k in a:  # recomputing activations in the backward pass changes nothing but memory
        torch.testing.assert_close(a[k], b[k], atol=1e-7, rtol=1e-5)
    short = train(_cfg("pd", epochs=5, max_seconds=0), tiny_llama.spec, tmp_path / "t", rows=ROWS, dataset=dataset,
                  device="cpu")
    assert short.steps == 1 and short.meta["stopped_by"] == "max_seconds" and short.meta["total_steps"] == 10
