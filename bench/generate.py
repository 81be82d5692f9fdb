"""Tokens/s of batched against one-at-a-time generation with the transformers backend.

Both runs use the same loaded model in the same process (pd.generate's
TransformersGenerator with batch_size N and with batch_size 1), greedy decoding, a fixed
number of new tokens, and real prompts: the questions of a pipeline's answers JSONL (or
built-in ones). Rows that stop early are counted with the tokens they produced. Reported:
generated tokens/s of each, the ratio, and how many greedy outputs are identical (batching
changes float rounding, so a near tie can flip; see pd/generate/transformers_backend.py).

    python bench/generate.py --model smollm2-135m-instruct --prompts 32 --new-tokens 48 --dtypes float32,bfloat16

On a GPU (and only there) --llama3 8b measures the backend's own batch size (``batch_size:
auto``, from the free GPU memory: pd.generate.sizing) against a fixed batch of 8 on a
random-weight Llama-3-8B-shaped model in bfloat16 (random weights rarely stop, so every row
decodes --gpu-new-tokens tokens): generated tokens/s of each and the ratio (target: 5x).

    python bench/generate.py --llama3 8b --out bench/gpu_generate.json      # GPU only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

QUESTIONS = [
    "Who was the first person to walk on the Moon?", "What is the capital of Australia?",
    "Why do leaves change colour in autumn?", "How does a refrigerator keep food cold?",
    "Name three rivers in Europe.", "What did the Treaty of Versailles end?",
    "Explain in one sentence what a prime number is.", "Which planet has the most moons?",
]


def prompts(path: str | None, n: int) -> list[list[dict]]:
    """``n`` single-question conversations: questions from an answers/questions JSONL, else built-in."""
    qs: list[str] = []
    if path:
        from pd.io import read_jsonl

        qs = [r["question"] for r in read_jsonl(path) if r.get("question")]
    qs = qs or QUESTIONS
    return [[{"role": "user", "content": qs[i % len(qs)]}] for i in range(n)]


def timed(gen, convs, params) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = gen.generate(convs, params)
    return time.perf_counter() - t0, [c[0] for c in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--questions", help="answers or questions JSONL whose 'question' fields are the prompts")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--llama3", default="", help="GPU only: 8b (or 1b): auto batch size against batch 8")
    ap.add_argument("--gpu-prompts", type=int, default=1024, help="prompts of the auto-batch run (batch 8: 1/16)")
    ap.add_argument("--gpu-new-tokens", type=int, default=128)
    ap.add_argument("--llama3-layers", type=int, default=None, help=argparse.SUPPRESS)  # smoke-testing the code path
    ap.add_argument("--force-llama3-on-cpu", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llama3:
        report = auto_batch_rows(args)
        if args.out:
            from pd.io import write_json

            write_json(args.out, report)
        return

    import torch

    from pd.generate.base import SamplingParams
    from pd.generate.transformers_backend import TransformersGenerator
    from pd.models import get_spec, load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    spec = get_spec(args.model)
    tok = load_tokenizer(spec)
    convs = prompts(args.questions, args.prompts)
    params = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"command": " ".join([Path(sys.executable).name] + sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device,
              "threads": args.threads, "results": []}
    try:
        import vllm  # noqa: F401

        report["vllm"] = "installed: not benchmarked by this script"
    except ImportError:
        report["vllm"] = "vLLM not installed: skipped"
    print(report["vllm"], flush=True)
    for dtype_name in [d for d in args.dtypes.split(",") if d]:
        model = load_model(spec, device=device, dtype=getattr(torch, dtype_name))
        name = f"bench:{args.model}:{dtype_name}"
        batched = TransformersGenerator(spec, loaded_model=model, tokenizer=tok, name=name, progress=False,
                                        batch_size=args.batch_size)
        single = TransformersGenerator(spec, loaded_model=model, tokenizer=tok, name=name, progress=False,
                                       batch_size=1)
        timed(batched, convs[:2], SamplingParams(temperature=0.0, max_new_tokens=4))  # warm-up
        t_single, out_single = timed(single, convs, params)
        t_batched, out_batched = timed(batched, convs, params)
        n_single = sum(c.n_tokens for c in out_single)
        n_batched = sum(c.n_tokens for c in out_batched)
        row = {"model": args.model, "dtype": dtype_name, "prompts": len(convs), "new_tokens": args.new_tokens,
               "batch_size": args.batch_size, "single_s": round(t_single, 2), "batched_s": round(t_batched, 2),
               "single_tok_s": round(n_single / t_single, 1), "batched_tok_s": round(n_batched / t_batched, 1),
               "ratio": round((n_batched / t_batched) / (n_single / t_single), 2),
               "identical_outputs": sum(a.token_ids == b.token_ids for a, b in zip(out_single, out_batched))}
        report["results"].append(row)
        print(json.dumps(row), flush=True)
        del batched, single, model
    if args.out:
        from pd.io import write_json

        write_json(args.out, report)


def auto_batch_rows(args) -> dict:
    """The GPU rows: ``batch_size: auto`` against batch 8 on random-weight Llama-3 shapes (bfloat16)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bench.train_step import LLAMA3, NO_GPU
    from pd.generate.base import SamplingParams
    from pd.generate.transformers_backend import TransformersGenerator
    from pd.models import get_spec, load_tokenizer

    report = {"command": " ".join([Path(sys.executable).name] + sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": []}
    cuda = torch.cuda.is_available()
    if not cuda and not args.force_llama3_on_cpu:
        print(f"llama3 {args.llama3} generation, auto batch against batch 8: {NO_GPU}", flush=True)
        report["llama3"] = NO_GPU
        return report
    device = "cuda" if cuda else "cpu"
    report["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
    spec = get_spec("smollm2-135m-instruct")  # its tokenizer and chat template; ids fit Llama-3's vocabulary
    tok = load_tokenizer(spec)
    params = SamplingParams(temperature=0.0, max_new_tokens=args.gpu_new_tokens)
    for size in [s for s in args.llama3.split(",") if s]:
        shape = dict(LLAMA3[size])
        if args.llama3_layers:
            shape["num_hidden_layers"] = args.llama3_layers
        cfg = LlamaConfig(vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                          **shape)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
        name = f"bench:llama3-{size}:random"
        row = {"model": f"llama3-{size} (random weights)", "dtype": "bfloat16", "new_tokens": args.gpu_new_tokens}
        for label, batch, n in (("auto", "auto", args.gpu_prompts), ("batch8", 8, max(16, args.gpu_prompts // 16))):
            gen = TransformersGenerator(spec, loaded_model=model, tokenizer=tok, name=name, progress=False,
                                        batch_size=batch)
            convs = prompts(None, n)
            timed(gen, convs[:2], SamplingParams(temperature=0.0, max_new_tokens=2))  # warm-up
            if cuda:
                torch.cuda.synchronize()
            seconds, out = timed(gen, convs, params)
            if cuda:
                torch.cuda.synchronize()
            longest = max(len(tok.encode(gen.prompt(c), add_special_tokens=False)) for c in convs)
            row[f"{label}_batch"] = gen.batch_rows(longest, args.gpu_new_tokens)
            row[f"{label}_prompts"] = n
            row[f"{label}_tok_s"] = round(sum(c.n_tokens for c in out) / seconds, 1)
        row["ratio"] = round(row["auto_tok_s"] / row["batch8_tok_s"], 2)
        row["target"] = ">= 5x (issue 13)"
        report["results"].append(row)
        print(json.dumps(row), flush=True)
        del model
    return report


if __name__ == "__main__":
    main()
