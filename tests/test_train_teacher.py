"""The teacher (adapter off / separate model) and its top-k cache, on real PEFT models."""

import math
import os

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from pd.errors import DataError, VocabularyMismatchError
from pd.io import read_jsonl
from pd.train.batch import gather_answers
from pd.train.cache_builder import build_teacher_cache
from pd.train.losses import kl_divergence, kl_from_hidden
from pd.train.sequences import Example, Tokens, collate, passage_question
from pd.train.teacher import adapter_disabled, answer_hidden, model_identity, output_head, teacher_answer_logits
from pd.train.teacher_cache import load_teacher_cache

PASSAGE = ("Don Mattingly played first base for the New York Yankees. In 1991 the team's management fined and "
           "benched him for not getting a haircut. Back trouble ended his career at the age of 34.")
QA = [
    ("Which team did Don Mattingly play for?", "He played for the New York Yankees."),
    ("Why was Mattingly benched in 1991?", "He was benched because he did not get a haircut, which broke the rules."),
    ("How old was Mattingly when he retired?", "34."),
    ("What position did Mattingly play?", "First base."),
]


def make_examples(tok, qa=QA, passage=PASSAGE, prefix="ex"):
    tokens = Tokens(tok)
    out = []
    for i, (q, a) in enumerate(qa):
        answer = tokens.encode(a) + [tokens.eot_id]
        out.append(Example(id=f"{prefix}{i}", kind="pd", student_prompt_ids=tokens.chat_prompt(q), answer_ids=answer,
                           teacher_prompt_ids=tokens.chat_prompt(passage_question(passage, q))))
    return out, tokens.pad_id


def batches_of(tok, size=2, **kw):
    examples, pad = make_examples(tok, **kw)
    return [collate(examples[i:i + size], pad) for i in range(0, len(examples), size)]


def lora(model, r=8):
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", lora_dropout=0.1)
    return get_peft_model(model, cfg)


def base_answer_logits(base, batch, side="teacher"):
    """The plain base model's logits at the answer positions, via its full forward pass."""
    with torch.no_grad():
        logits = base(input_ids=batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"]).logits
    return gather_answers(logits, batch[f"{side}_answer_positions"])


def run_identity_checks(loaded, steps=3, lr=1e-2):
    """Adapter-off == base bit for bit before and after training; KL 0 at step 0; only LoRA trains."""
    base = loaded.model()
    student = lora(loaded.model())
    student.train()
    batch = batches_of(loaded.tokenizer, size=4)[0]
    ids, att = batch["teacher_input_ids"], batch["teacher_attention_mask"]
    mask = batch["answer_mask"]

    def check_teacher_is_base():
        with torch.no_grad(), adapter_disabled(student) as off:
            full_off = off(input_ids=ids, attention_mask=att).logits
        assert torch.equal(full_off, base(input_ids=ids, attention_mask=att).logits)
        with torch.no_grad():
            base_h = answer_hidden(base, ids, att, batch["teacher_answer_positions"])
            assert torch.equal(teacher_answer_logits(student, batch), base.lm_head(base_h))

    check_teacher_is_base()
    # step 0: the student (adapter on, train mode, dropout active) equals the teacher on the same input
    with torch.no_grad():
        same_input = gather_answers(student(input_ids=ids, attention_mask=att).logits,
                                    batch["teacher_answer_positions"])
    teacher = teacher_answer_logits(student, batch)
    assert kl_divergence(same_input, teacher, mask, temperature=2.0).item() == 0.0
    assert kl_divergence(same_input, teacher, mask, temperature=2.0, direction="reverse").item() == 0.0

    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        hidden = answer_hidden(student, batch["student_input_ids"], batch["student_attention_mask"],
                               batch["student_answer_positions"])
        loss = kl_from_hidden(hidden, output_head(student), teacher, mask, temperature=2.0, chunk_size=7)
        loss.backward()
        with_grad = [n for n, p in student.named_parameters() if p.grad is not None]
        assert with_grad and all("lora_" in n for n in with_grad), with_grad
        assert any(p.grad.abs().sum() > 0 for n, p in student.named_parameters() if "lora_B" in n)
        opt.step()
        losses.append(loss.item())
    check_teacher_is_base()
    with torch.no_grad():
        moved = student(input_ids=ids, attention_mask=att).logits
    assert (moved - base(input_ids=ids, attention_mask=att).logits).abs().max() > 1e-4  # the adapter did train
    return losses


def test_teacher_is_base_model_bit_for_bit(tiny_llama):
    torch.manual_seed(0)
    losses = run_identity_checks(tiny_llama)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_teacher_is_base_model_bit_for_bit_smollm2(smollm2):
    torch.manual_seed(0)
    losses = run_identity_checks(smollm2, steps=2, lr=1e-3)
    assert losses[-1] < losses[0]


def test_teacher_under_ddp_wrapper(tiny_llama, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        base = tiny_llama.model()
        torch.manual_seed(1)
        student = lora(tiny_llama.model())
        with torch.no_grad():  # a trained-looking adapter: B != 0
            for n, p in student.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        wrapped = DDP(student)
        batch = batches_of(tiny_llama.tokenizer, size=4)[0]
        expect = base_answer_logits(base, batch)
        assert torch.allclose(teacher_answer_logits(wrapped, batch), expect, atol=1e-5)
        with torch.no_grad():
            on = gather_answers(wrapped(input_ids=batch["teacher_input_ids"],
                                        attention_mask=batch["teacher_attention_mask"]).logits,
                                batch["teacher_answer_positions"])
        assert (on - expect).abs().max() > 1e-3
        cache = build_teacher_cache(wrapped, *make_examples(tiny_llama.tokenizer), k=16, temperature=2.0)
        assert cache.meta["examples"] == 4
    finally:
        dist.destroy_process_group()


def _softmax64(z, T):
    z = np.asarray(z, dtype=np.float64) / T
    e = np.exp(z - z.max())
    return e / e.sum()


def test_cache_full_k_equals_full_loss_and_stats(tiny_llama, tmp_path):
    torch.manual_seed(2)
    base = tiny_llama.model()
    student = lora(tiny_llama.model())
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    batches = batches_of(tiny_llama.tokenizer, size=2)
    V = base.config.vocab_size
    out, stats_path = tmp_path / "teacher_k512.safetensors", tmp_path / "stats.jsonl"
    examples, pad = make_examples(tiny_llama.tokenizer)
    cache = build_teacher_cache(student, examples, pad, k=V, temperature=2.0, out=out, stats_path=stats_path,
                                logprob_dtype="float32")
    assert cache.k == V and abs(cache.meta["covered_mass"] - 1.0) < 1e-6

    # Loss and gradient from the cache equal those from full teacher logits, for a shuffled batch order.
    batch = collate([examples[3], examples[0], examples[2]], pad)
    mask = batch["answer_mask"]
    full_teacher = base_answer_logits(base, batch)
    targets = cache.targets_for(batch["example_ids"], mask)

    def loss_and_grad(teacher):
        student.zero_grad()
        torch.manual_seed(3)  # a PeftModel is in train mode: the same LoRA dropout masks for both runs
        h = answer_hidden(student, batch["student_input_ids"], batch["student_attention_mask"],
                          batch["student_answer_positions"])
        loss = kl_from_hidden(h, output_head(student), teacher, mask, temperature=2.0, chunk_size=5)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}

    l_full, g_full = loss_and_grad(full_teacher)
    l_cache, g_cache = loss_and_grad(targets)
    assert abs(l_full - l_cache) < 1e-6
    assert g_full.keys() == g_cache.keys()
    for n in g_full:
        assert (g_full[n] - g_cache[n]).abs().max() < 1e-6, n

    # Per-example statistics against a float64 reference from the separately loaded base model.
    rows = {r["example_id"]: r for r in read_jsonl(stats_path)}
    assert set(rows) == {f"ex{i}" for i in range(len(QA))}
    for b_ in batches:
        t_logits = base_answer_logits(base, b_, "teacher")
        s_logits = base_answer_logits(base, b_, "student")
        for i, ex in enumerate(b_["example_ids"]):
            n = int(b_["answer_mask"][i].sum())
            ent, ent1, kl, kl1 = [], [], [], []
            for j in range(n):
                for T, e_acc, k_acc in ((2.0, ent, kl), (1.0, ent1, kl1)):
                    p, q = _softmax64(t_logits[i, j], T), _softmax64(s_logits[i, j], T)
                    e_acc.append(-(p * np.log(p)).sum())
                    k_acc.append((p * np.log(p / q)).sum())
            row = rows[ex]
            assert row["answer_tokens"] == n
            assert abs(row["teacher_entropy"] - np.mean(ent)) < 1e-5
            assert abs(row["teacher_entropy_t1"] - np.mean(ent1)) < 1e-5
            assert abs(row["initial_kl"] - np.mean(kl)) < 1e-5
            assert abs(row["initial_kl_t1"] - np.mean(kl1)) < 1e-5
            assert row["initial_kl"] > 0  # the passage changes the teacher's view

    # Round trip and reuse by key; a different k is a different cache.
    again = load_teacher_cache(out)
    assert again.meta["key"] == cache.meta["key"] and again.example_ids == cache.example_ids
    assert torch.equal(again.targets_for(batch["example_ids"], mask).logprobs, targets.logprobs)
    stamp = os.stat(out).st_mtime_ns
    reused = build_teacher_cache(student, examples, pad, k=V, temperature=2.0, out=out, logprob_dtype="float32")
    assert os.stat(out).st_mtime_ns == stamp and reused.meta["key"] == cache.meta["key"]
    other = build_teacher_cache(student, examples, pad, k=8, temperature=2.0, out=out)
    assert other.meta["key"] != cache.meta["key"] and load_teacher_cache(out).k == 8

    with pytest.raises(DataError, match="no targets"):
        cache.targets_for(["unknown"], mask[:1])


def test_cache_topk_covered_mass(tiny_llama):
    base = tiny_llama.model()
    batches = batches_of(tiny_llama.tokenizer, size=4)
    k = 20
    # a plain model is its own teacher
    cache = build_teacher_cache(base, *make_examples(tiny_llama.tokenizer), k=k, temperature=2.0)
    t_logits = base_answer_logits(base, batches[0])
    mask = batches[0]["answer_mask"]
    cov = {1.0: [], 2.0: []}
    for b in range(mask.shape[0]):
        for j in range(int(mask[b].sum())):
            for T in cov:
                cov[T].append(np.sort(_softmax64(t_logits[b, j], T))[::-1][:k].sum())
    assert abs(cache.meta["covered_mass_t1"] - np.mean(cov[1.0])) < 1e-5
    assert abs(cache.meta["covered_mass"] - np.mean(cov[2.0])) < 1e-5
    assert 0 < cache.meta["covered_mass"] < cache.meta["covered_mass_t1"] < 1
    # at step 0 with the model as its own teacher and the same view, the cached KL is exactly the bucket KL > 0
    targets = cache.targets_for(batches[0]["example_ids"], mask)
    assert math.isfinite(kl_divergence(base_answer_logits(base, batches[0], "student"), targets, mask).item())


def test_teacher_with_other_vocabulary_refused(tiny_llama, tiny_qwen2):
    student = lora(tiny_llama.model())
    qwen = tiny_qwen2.model()
    examples, pad = make_examples(tiny_llama.tokenizer)
    with pytest.raises(VocabularyMismatchError, match="tiny-qwen2"):
        build_teacher_cache(student, examples, pad, k=8, temperature=2.0, teacher=qwen,
                            student_tokenizer=tiny_llama.tokenizer, teacher_tokenizer=tiny_qwen2.tokenizer,
                            student_name="tiny-llama", teacher_name="tiny-qwen2")
    with pytest.raises(VocabularyMismatchError, match="640"):
        build_teacher_cache(student, examples, pad, k=8, temperature=2.0, teacher=qwen)


def test_separate_teacher_same_vocabulary(tiny_llama):
    from tests.conftest import Loaded

    large = Loaded("tiny-llama-large")
    student = lora(tiny_llama.model())
    teacher = large.model()
    batches = batches_of(tiny_llama.tokenizer, size=4)
    got = teacher_answer_logits(student, batches[0], teacher=teacher)
    assert torch.equal(got, teacher.lm_head(answer_hidden(teacher, batches[0]["teacher_input_ids"],
                                                          batches[0]["teacher_attention_mask"],
                                                          batches[0]["teacher_answer_positions"])))
    examples, pad = make_examples(tiny_llama.tokenizer)
    own = build_teacher_cache(student, examples, pad, k=8, temperature=2.0)
    sep = build_teacher_cache(student, examples, pad, k=8, temperature=2.0, teacher=teacher,
                              student_tokenizer=tiny_llama.tokenizer, teacher_tokenizer=large.tokenizer)
    assert sep.meta["key"] != own.meta["key"] and sep.meta["separate_teacher"]
    # the fingerprint sees the base weights only: a LoRA-wrapped model is its base, another network is not
    assert model_identity(student) == model_identity(tiny_llama.model()) != model_identity(teacher)
    # the initial KL's student is the base student either way; only the teacher side changed
    assert [r["initial_kl"] for r in sep.stats] != [r["initial_kl"] for r in own.stats]


def test_a_run_builds_the_same_cache_as_the_teacher_job(tiny_llama, tmp_path):
    """One way to build the cache: the one a run builds for itself equals a direct build, key and targets."""
    import sys
    from pathlib import Path

    from pd.data import Dataset, Document
    from pd.train.loop import train
    from pd.train.lora import attach_lora
    from pd.train.sequences import pd_examples
    from pd.train.settings import TrainConfig

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import PASSAGES, ROWS

    ds = Dataset("toy", {k: Document(k, v) for k, v in PASSAGES.items()}, [])
    cfg = TrainConfig(method="pd", rank=8, epochs=2, batch_size=3, teacher_topk=8, progress=False, seed=0)
    train(cfg, tiny_llama.spec, tmp_path / "a", rows=ROWS, dataset=ds, device="cpu", stop_after=1)
    in_run = load_teacher_cache(tmp_path / "a.work" / "teacher_cache.safetensors")
    tokens = Tokens(tiny_llama.tokenizer, tiny_llama.spec)
    examples, _ = pd_examples(ROWS, ds, tokens, cfg.limits())
    model = attach_lora(tiny_llama.model(), rank=1, alpha=2.0)  # as the workflow's teacher job does
    direct = build_teacher_cache(model, examples, tokens.pad_id, k=8, temperature=cfg.kd_temperature)
    assert in_run.meta["key"] == direct.meta["key"] and in_run.example_ids == direct.example_ids
    for name in ("ids", "logprobs"):
        assert torch.equal(getattr(in_run.targets, name), getattr(direct.targets, name)), name
    # log_rest (float32) is a sum over the vocabulary: with several threads its reduction order follows the batch's
    # shape, so it may differ in the last bit (4.8e-7 seen on 2 cores); one thread gives it bit for bit
    assert torch.allclose(in_run.targets.log_rest, direct.targets.log_rest, rtol=0, atol=2e-6)
    assert len(in_run.stats) == len(direct.stats)
    for a, b in zip(in_run.stats, direct.stats):  # the same statistics, to the reductions' last bits
        assert a.keys() == b.keys(), (a, b)
        for k in a:
            same = a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-9) if isinstance(a[k], float) else a[k] == b[k]
            assert same, (k, a, b)
