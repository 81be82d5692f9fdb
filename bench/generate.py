"""Tokens/s of batched against one-at-a-time generation with the transformers backend.

Both runs use the same loaded model in the same process (pd.generate's
TransformersGenerator with batch_size N and with batch_size 1), greedy decoding, a fixed
number of new tokens, and real prompts: the questions of a pipeline's answers JSONL (or
built-in ones). Rows that stop early are counted with the tokens they produced. Reported:
generated tokens/s of each, the ratio, and how many greedy outputs are identical (batching
changes float rounding, so a near tie can flip; see pd/generate/transformers_backend.py).

    python bench/generate.py --model smollm2-135m-instruct --prompts 32 --new-tokens 48 --dtypes float32,bfloat16
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
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
