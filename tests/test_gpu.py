"""GPU acceptance: the CUDA paths against the CPU on tiny models in float32 (`make gpu-check`).

Skipped where no CUDA device is visible (CI, laptops). On a GPU machine each test runs
the same computation on the CPU and on CUDA and compares: the losses and their
gradients, the top-k teacher cache, greedy generation, a merged adapter, a training
run; plus one bfloat16 training step. TF32 is switched off so float32 means float32.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

# The device compared with the CPU. PD_GPU_CHECK_DEVICE=cpu runs every comparison CPU against
# CPU: a check of the code paths on a machine without a GPU, not of CUDA.
GPU = os.environ.get("PD_GPU_CHECK_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(GPU == "cuda" and not torch.cuda.is_available(), reason="no CUDA device visible")]


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_device_and_precision():
    """What the check ran on, for its log: the device, and what `dtype: auto` resolves to there."""
    from pd.precision import resolve_precision

    name = torch.cuda.get_device_name(0) if GPU == "cuda" else "cpu"
    chosen = resolve_precision("auto", GPU)
    print(json.dumps({"device": name, "auto_precision": chosen, "torch": torch.__version__}))
    assert chosen in ("bfloat16", "float16", "float32")


def _both(fn):
    """fn(device) on the CPU and on CUDA, results moved to the CPU."""
    def to_cpu(x):
        return x.detach().cpu() if isinstance(x, torch.Tensor) else x
    return [tuple(map(to_cpu, fn(d))) for d in ("cpu", GPU)]


def test_kl_cross_entropy_and_topk_losses_with_gradients():
    from pd.train.losses import cross_entropy, kl_divergence
    from pd.train.targets import topk_targets

    gen = torch.Generator().manual_seed(0)
    s0, t0 = torch.randn(3, 7, 512, generator=gen), torch.randn(3, 7, 512, generator=gen)
    labels = torch.randint(0, 512, (3, 7), generator=gen)
    mask = torch.rand(3, 7, generator=gen) > 0.2

    def run(device):
        s = s0.to(device).requires_grad_(True)
        t, m = t0.to(device), mask.to(device)
        kl = kl_divergence(s, t, m, temperature=2.0, chunk_size=3)
        top = kl_divergence(s, topk_targets(t, 64, temperature=2.0), m, temperature=2.0)
        ce = cross_entropy(s, labels.to(device), m)
        (g,) = torch.autograd.grad(kl + top + ce, s)
        return kl, top, ce, g

    cpu, cuda = _both(run)
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_teacher_cache_and_greedy_generation(tiny_llama):
    from pd.generate.base import SamplingParams
    from pd.generate.transformers_backend import TransformersGenerator
    from pd.models import load_model
    from pd.train.cache_builder import build_teacher_cache
    from pd.train.sequences import Example

    conv = [[{"role": "user", "content": "Where does the new bridge cross the river?"}]]
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    texts = [TransformersGenerator(tiny_llama.spec, device=d, progress=False).generate(conv, params)[0][0].token_ids
             for d in ("cpu", GPU)]
    assert texts[0] == texts[1] and texts[0]

    tok = tiny_llama.tokenizer
    examples = [Example(id=f"e{i}", kind="pd", student_prompt_ids=tok.encode(f"question {i}")[:6],
                        teacher_prompt_ids=tok.encode(f"the passage {i} and question {i}")[:9],
                        answer_ids=tok.encode(f"answer number {i}")[:5]) for i in range(4)]
    caches = [build_teacher_cache(load_model(tiny_llama.spec, device=d), examples, tok.pad_token_id, k=32,
                                  temperature=1.0, logprob_dtype="float32", device=d) for d in ("cpu", GPU)]
    a, b = caches[0].targets, caches[1].targets
    torch.testing.assert_close(b.logprobs.float().cpu(), a.logprobs.float().cpu(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.log_rest.float().cpu(), a.log_rest.float().cpu(), rtol=1e-4, atol=1e-5)


def test_merged_adapter_on_cuda(tiny_llama, tmp_path, monkeypatch):
    from pd.merge import merged_model
    from pd.models import load_model
    from pd.train.lora import attach_lora

    monkeypatch.setenv("PD_CACHE_DIR", str(tmp_path / "cache"))
    model = attach_lora(load_model(tiny_llama.spec, device="cpu"), rank=8, alpha=16.0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "a")
    ids = torch.tensor([tiny_llama.tokenizer.encode("The bridge opened in March.")])
    want = model.eval()(input_ids=ids).logits
    merged = load_model(merged_model(tiny_llama.spec, tmp_path / "a", dtype="float32"), device=GPU)
    with torch.no_grad():
        got = merged(input_ids=ids.to(GPU)).logits.cpu()
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-4)


def test_training_on_cuda_matches_the_cpu_and_bfloat16_steps(tiny_llama, tmp_path):
    from pd.data import Dataset, Document
    from pd.train.loop import train
    from pd.train.settings import TrainConfig

    ds = Dataset("toy", {"d": Document("d", "A small bakery in Queens sells rye bread every Saturday.")}, [])
    rows = [{"id": f"q{i}", "doc_id": "d", "question": q, "answer": a, "finish_reason": "stop"}
            for i, (q, a) in enumerate([("Where is the bakery?", "In Queens."), ("What does it sell?", "Rye bread."),
                                        ("When?", "Every Saturday."), ("How big is it?", "Small.")])]
    cfg = TrainConfig(method="pd", rank=8, lr=5e-3, epochs=2, warmup_epochs=0, batch_size=2, progress=False)
    losses = {}
    for i, device in enumerate(("cpu", GPU)):
        out = tmp_path / f"run{i}"
        train(cfg, tiny_llama.spec, out, rows=rows, dataset=ds, device=device)
        losses[i] = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()
                     if "loss" in json.loads(line)]
    assert len(losses[0]) >= 4 and losses[1] == pytest.approx(losses[0], rel=1e-3)
    bf16 = dataclasses.replace(tiny_llama.spec, dtype="bfloat16")
    res = train(dataclasses.replace(cfg, epochs=4), bf16, tmp_path / "bf16", rows=rows, dataset=ds, device=GPU)
    assert res.meta["dtype"] == "bfloat16" and torch.isfinite(torch.tensor(res.meta["final"]["loss"]))
