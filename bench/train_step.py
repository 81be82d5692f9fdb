"""Time, tokens/s and peak memory of one optimiser step: SFT against the PD variants.

Every variant runs the training code itself: a batch collated by pd.train.sequences,
pd.train.methods.batch_loss (the loss the loop uses), LoRA from pd.train.lora, AdamW and
gradient clipping, on random token sequences of a fixed shape. Variants:

  sft          cross-entropy on the answer tokens (student view only)
  pd_live      PD, teacher (adapter off) forward pass every step, KL over all answer tokens at once
  pd_chunked   PD, teacher forward every step, KL in chunks of --chunk answer tokens (recomputed in backward)
  pd_cached    PD, top-k teacher targets from pd.train.cache_builder.build_teacher_cache, chunked KL
  pd_cached_autograd  pd_cached with the top-k KL through plain autograd (bench/topk_kl.py), as before
               pd.train.losses wrote its gradient out: the before/after of that change
  pd_naive     the plain two-forward-pass PD: full [B, L, V] logits of teacher and student, KL on them
               (the reference that the GPU target compares against; not what pd.train runs)

Timing: the variants take turns step by step (round-robin) in one process, so load from
other jobs on a shared machine hits them alike; after --warmup rounds, the median of
--steps rounds is reported with the ratio to the SFT step of the same shape and dtype.
Memory: on CPU each variant runs in a fresh process (glibc told to return freed blocks,
peak RSS reset through /proc/self/clear_refs); reported is the peak resident memory of one
step (after a warm-up step) above the resident memory before it. On a GPU:
torch.cuda.max_memory_allocated above the memory allocated before the step.

On a GPU (and only there) --llama3 1b,8b adds random-weight Llama-3-shaped models (batch 4,
student 256 tokens, teacher 768, LoRA ranks --gpu-ranks, bf16) and the model FLOPs
utilisation against a measured bf16 matrix-product peak.

    python bench/train_step.py --models tiny-llama,smollm2-135m-instruct --dtypes float32,bfloat16
    python bench/train_step.py --llama3 1b,8b --gpu-ranks 64,1024          # GPU only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

VARIANTS = ("sft", "pd_live", "pd_chunked", "pd_cached", "pd_naive")
EXTRA_VARIANTS = ("pd_cached_autograd",)
LLAMA3 = {  # Llama-3.2-1B and Llama-3-8B shapes (random weights)
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
}
NO_GPU = "not measured: no GPU lent"


@dataclass
class Shape:
    batch: int
    student: int  # tokens per student sequence (prompt + answer)
    teacher: int  # tokens per teacher sequence (prompt with passage + answer)
    answer: int

    def check(self) -> None:
        if not 0 < self.answer < min(self.student, self.teacher):
            raise SystemExit(f"--answer {self.answer} must be positive and shorter than --student {self.student} "
                             f"and --teacher {self.teacher} (each view needs at least one prompt token)")


# --------------------------------------------------------------------------- set-up


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines()
                  if ln.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} CPUs"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def load(name: str, dtype, device: str, rank: int, layers: int | None = None):
    """(LoRA model, vocabulary size): a registry model, or ``llama3-1b``/``llama3-8b`` random weights."""
    import torch

    from pd.train.lora import attach_lora

    if name.startswith("llama3-"):
        from transformers import AutoModelForCausalLM, LlamaConfig

        shape = dict(LLAMA3[name.split("-", 1)[1]])
        if layers:
            shape["num_hidden_layers"] = layers
        cfg = LlamaConfig(vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                          **shape)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    else:
        from pd.models import get_spec, load_model

        model = load_model(get_spec(name), device=device, dtype=dtype)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    model = attach_lora(model, rank=rank, alpha=2.0 * rank)
    model.train()
    return model, vocab


def examples(shape: Shape, vocab: int, seed: int = 0) -> tuple[list, list]:
    """(PD examples, SFT examples) of random tokens (pd.train.sequences.Example)."""
    import torch

    from pd.train.sequences import Example

    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=g).tolist()

    pd_rows, sft_rows = [], []
    for b in range(shape.batch):
        student, answer = ids(shape.student - shape.answer), ids(shape.answer)
        teacher = ids(shape.teacher - shape.answer)
        pd_rows.append(Example(f"ex{b}", "pd", student, answer, teacher))
        sft_rows.append(Example(f"ex{b}", "sft", student, answer, None))
    return pd_rows, sft_rows


def batches(shape: Shape, vocab: int, seed: int = 0) -> tuple[dict, dict]:
    """(PD batch, SFT batch) of :func:`examples`, collated by pd.train.sequences.collate."""
    from pd.train.sequences import collate

    pd_rows, sft_rows = examples(shape, vocab, seed)
    return collate(pd_rows, 0), collate(sft_rows, 0)


def _to(batch: dict, device: str) -> dict:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def naive_pd_loss(cfg, model, batch: dict):
    """The plain implementation: two full forward passes with [B, L, V] logits, then the KL."""
    import torch

    from pd.train.batch import gather_answers
    from pd.train.losses import kl_divergence
    from pd.train.teacher import adapter_disabled

    with torch.no_grad(), adapter_disabled(model) as base:
        t_logits = base(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                        use_cache=False).logits
    s_logits = model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"],
                     use_cache=False).logits
    return kl_divergence(gather_answers(s_logits, batch["student_answer_positions"]),
                         gather_answers(t_logits, batch["teacher_answer_positions"]), batch["answer_mask"],
                         temperature=cfg.kd_temperature, direction=cfg.direction)


class Stepper:
    """One optimiser step of a variant on a fixed batch, as the training loop does it."""

    def __init__(self, variant: str, model, shape: Shape, vocab: int, device: str, chunk: int, topk: int):
        import torch

        from pd.train.cache_builder import build_teacher_cache
        from pd.train.settings import TrainConfig

        self.variant, self.model = variant, model
        pd_batch, sft_batch = batches(shape, vocab)
        self.batch = _to(sft_batch if variant == "sft" else pd_batch, device)
        chunk_size = None if variant == "pd_live" else chunk
        cached = variant.startswith("pd_cached")
        self.cfg = TrainConfig(method="sft" if variant == "sft" else "pd", chunk_size=chunk_size, progress=False,
                               teacher_topk=topk if cached else 0)
        self.caches = []
        self.cache_build_s = None
        if cached:
            t0 = time.perf_counter()
            self.caches = [build_teacher_cache(model, examples(shape, vocab)[0], 0, k=topk,
                                               temperature=self.cfg.kd_temperature, chunk_size=chunk,
                                               batch_size=shape.batch, device=device)]
            self.cache_build_s = time.perf_counter() - t0
            model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-5, weight_decay=0.1)

    def _loss_backward(self):
        from pd.train.methods import batch_loss

        if self.variant == "pd_naive":
            loss = naive_pd_loss(self.cfg, self.model, self.batch)
        else:
            loss, _ = batch_loss(self.cfg, self.model, self.batch, caches=self.caches)
        loss.backward()
        return loss

    def step(self) -> float:
        import torch

        if self.variant == "pd_cached_autograd":
            from topk_kl import kl_topk_autograd

            from pd.train import losses

            fast, losses.token_kl_topk = losses.token_kl_topk, kl_topk_autograd  # the backward recomputes it too
            try:
                loss = self._loss_backward()
            finally:
                losses.token_kl_topk = fast
        else:
            loss = self._loss_backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


# --------------------------------------------------------------------------- measurement


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_variants(model_name: str, dtype_name: str, shape: Shape, variants: list[str], *, device: str, rank: int,
                  chunk: int, topk: int, warmup: int, steps: int, layers: int | None = None) -> dict:
    """Round-robin timing of ``variants`` on one model (and GPU peak memory) in this process."""
    import torch

    dtype = getattr(torch, dtype_name)
    model, vocab = load(model_name, dtype, device, rank, layers)
    steppers = {v: Stepper(v, model, shape, vocab, device, chunk, topk) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    gpu_peak: dict[str, float] = {}
    for r in range(warmup + steps):
        for v, s in steppers.items():
            if device.startswith("cuda") and r == warmup:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            _sync(device)
            t0 = time.perf_counter()
            s.step()
            _sync(device)
            if r >= warmup:
                times[v].append(time.perf_counter() - t0)
            if device.startswith("cuda") and r == warmup:
                gpu_peak[v] = (torch.cuda.max_memory_allocated() - before) / 2**20
    student_tokens = shape.batch * shape.student
    base = statistics.median(times["sft"]) if "sft" in times else None
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        row = {"model": model_name, "dtype": dtype_name, "variant": v, "rank": rank, "median_s": round(med, 4),
               "min_s": round(min(times[v]), 4), "student_tok_s": round(student_tokens / med, 1),
               "ratio_vs_sft": round(med / base, 3) if base else None}
        if steppers[v].cache_build_s is not None:
            row["cache_build_s"] = round(steppers[v].cache_build_s, 3)
        if v in gpu_peak:
            row["peak_mib"] = round(gpu_peak[v], 1)
        rows.append(row)
    embeddings = {id(w): w.numel() for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return {"model": model_name, "dtype": dtype_name, "vocab": vocab, "rows": rows,
            "lora_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "body_params": base - sum(embeddings.values())}  # without input/output embeddings (tied: once)


def _vm(field: str) -> float:
    """A /proc/self/status memory field in MiB."""
    for line in _read("/proc/self/status").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_one(model_name: str, dtype_name: str, shape: Shape, variant: str, *, rank: int, chunk: int,
               topk: int) -> dict:
    """CPU peak resident memory of one step (run in a fresh process, see --one)."""
    import torch

    model, vocab = load(model_name, getattr(torch, dtype_name), "cpu", rank)
    stepper = Stepper(variant, model, shape, vocab, "cpu", chunk, topk)
    stepper.step()  # optimizer state and lazy buffers exist from here on
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    before = _vm("VmRSS")
    stepper.step()
    return {"variant": variant, "peak_rise_mib": round(_vm("VmHWM") - before, 1)}


def cpu_memory(model_name: str, dtype_name: str, shape: Shape, variants: list[str], args) -> dict[str, float]:
    out = {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads))
    for v in variants:
        cmd = [sys.executable, __file__, "--one", f"{model_name}|{dtype_name}|{v}", "--batch", str(shape.batch),
               "--student", str(shape.student), "--teacher", str(shape.teacher), "--answer", str(shape.answer),
               "--rank", str(args.rank), "--chunk", str(args.chunk), "--topk", str(args.topk)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SystemExit(f"memory run {v} failed:\n{res.stderr[-2000:]}")
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])["peak_rise_mib"]
    return out


def matmul_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 matrix-product throughput on the GPU (TFLOP/s)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def model_flops(result: dict, shape: Shape, variant: str, hidden: int) -> float:
    """FLOPs one step needs (attention score terms left out, a few % at these lengths).

    Student: forward 2 N T and a backward through frozen weights 2 N T (activation
    gradients), LoRA 6 N_lora T, the head on answer tokens only 6 H V A. Teacher (live
    variants): forward 2 N T_teacher + 2 H V A. N = base parameters without embeddings.
    """
    v, b, n = result["vocab"], shape.batch, result["body_params"]
    flops = b * (4 * n * shape.student + 6 * result["lora_params"] * shape.student + 6 * hidden * v * shape.answer)
    if variant in ("pd_live", "pd_chunked", "pd_naive"):
        flops += b * (2 * n * shape.teacher + 2 * hidden * v * shape.answer)
    return flops


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny-llama,smollm2-135m-instruct")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--student", type=int, default=96, help="student tokens per row (prompt + answer)")
    ap.add_argument("--teacher", type=int, default=288, help="teacher tokens per row (prompt with passage + answer)")
    ap.add_argument("--answer", type=int, default=48, help="answer tokens per row")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--topk", type=int, default=1024, help="cached teacher top-k (capped at the vocabulary)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant CPU memory processes")
    ap.add_argument("--llama3", default="", help="GPU only: comma-separated of 1b,8b")
    ap.add_argument("--gpu-ranks", default="64,1024")
    ap.add_argument("--llama3-layers", type=int, default=None, help=argparse.SUPPRESS)  # smoke-testing the code path
    ap.add_argument("--force-llama3-on-cpu", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    shape = Shape(args.batch, args.student, args.teacher, args.answer)
    shape.check()
    if args.one:
        model_name, dtype_name, variant = args.one.split("|")
        print(json.dumps(memory_one(model_name, dtype_name, shape, variant, rank=args.rank, chunk=args.chunk,
                                    topk=args.topk)))
        return

    variants = [v for v in args.variants.split(",") if v]
    bad = sorted(set(variants) - set(VARIANTS) - set(EXTRA_VARIANTS))
    if bad or "sft" not in variants:
        raise SystemExit(f"--variants: unknown {bad}; allowed {list(VARIANTS + EXTRA_VARIANTS)}, "
                         "and sft (the baseline) must be one")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    report = {"command": " ".join([Path(sys.executable).name] + sys.argv), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
              "threads": args.threads if not cuda else None, "shape": shape.__dict__, "results": []}
    print(f"# {report['machine']}; torch {torch.__version__}; shape {shape.__dict__}", flush=True)
    for model_name in [m for m in args.models.split(",") if m]:
        for dtype_name in [d for d in args.dtypes.split(",") if d]:
            res = time_variants(model_name, dtype_name, shape, variants, device=device, rank=args.rank,
                                chunk=args.chunk, topk=args.topk, warmup=args.warmup, steps=args.steps)
            if not cuda and not args.no_memory:
                mem = cpu_memory(model_name, dtype_name, shape, variants, args)
                for row in res["rows"]:
                    row["peak_mib"] = mem[row["variant"]]
            report["results"].append(res)
            for row in res["rows"]:
                print(json.dumps(row), flush=True)

    if args.llama3:
        gpu_shape = Shape(4, 256, 768, 192)
        if not cuda and not args.force_llama3_on_cpu:
            print(f"llama3 {args.llama3} (batch 4, student 256, teacher 768, ranks {args.gpu_ranks}, bf16): {NO_GPU}",
                  flush=True)
            report["llama3"] = NO_GPU
        else:
            peak = matmul_peak_tflops() if cuda else None
            report["bf16_matmul_peak_tflops"] = round(peak, 1) if peak else None
            print(f"# measured bf16 matmul peak: {report['bf16_matmul_peak_tflops']} TFLOP/s", flush=True)
            gpu_variants = ["sft", "pd_naive", "pd_chunked", "pd_cached"]
            for size in [s for s in args.llama3.split(",") if s]:
                for rank in [int(r) for r in args.gpu_ranks.split(",") if r]:
                    name = f"llama3-{size}"
                    try:
                        res = time_variants(name, "bfloat16", gpu_shape, gpu_variants, device=device, rank=rank,
                                            chunk=args.chunk, topk=args.topk, warmup=args.warmup, steps=args.steps,
                                            layers=args.llama3_layers)
                    except torch.OutOfMemoryError as err:
                        print(json.dumps({"model": name, "rank": rank, "error": f"out of memory: {err}"[:300]}))
                        torch.cuda.empty_cache()
                        continue
                    hidden = (LLAMA3[size]["hidden_size"])
                    naive = next(r for r in res["rows"] if r["variant"] == "pd_naive")["median_s"]
                    for row in res["rows"]:
                        flops = model_flops(res, gpu_shape, row["variant"], hidden)
                        row["tflops"] = round(flops / row["median_s"] / 1e12, 2)
                        row["mfu"] = round(flops / row["median_s"] / 1e12 / peak, 3) if peak else None
                        row["speedup_vs_naive"] = round(naive / row["median_s"], 2)
                        print(json.dumps(row), flush=True)
                    report["results"].append(res)
                    del res
                    if cuda:
                        torch.cuda.empty_cache()
    if args.out:
        from pd.io import write_json

        write_json(args.out, report)


if __name__ == "__main__":
    main()
