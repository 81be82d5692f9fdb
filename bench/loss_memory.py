"""Peak memory of the chunked KL (kl_from_hidden) against plain float32 logits, on CPU.

Each variant runs forward + backward in a fresh process; the number reported is the rise
of the process's peak resident memory (ru_maxrss) over what the inputs already hold
(hidden states, lm_head, teacher logits in bfloat16 or top-k targets). Run a single
variant by hand with MALLOC_MMAP_THRESHOLD_=65536 in the environment for comparable numbers.

    python bench/loss_memory.py --vocab 128256 --tokens 1024 --hidden 1024 --chunk 128
    python bench/loss_memory.py --tokens 8192 --modes chunked   # unchunked would need ~31 GiB
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(mode: str, vocab: int, tokens: int, hidden: int, chunk: int, teacher_kind: str, train_head: bool) -> dict:
    import torch

    from pd.train.losses import kl_divergence, kl_from_hidden
    from pd.train.targets import TopKTargets, topk_targets

    torch.manual_seed(0)
    torch.set_num_threads(1)
    h = torch.randn(1, tokens, hidden, requires_grad=True)
    head = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(train_head)  # LoRA leaves lm_head frozen
    mask = torch.ones(1, tokens, dtype=torch.bool)
    teacher = torch.randn(1, tokens, vocab, dtype=torch.bfloat16)
    if teacher_kind == "topk":
        parts = [topk_targets(teacher[:, i:i + 64], 64, 2.0) for i in range(0, tokens, 64)]
        teacher = TopKTargets(**{n: torch.cat([getattr(p, n) for p in parts], 1) for n in TopKTargets.TENSORS},
                              temperature=2.0, vocab_size=vocab)
    before = rss_peak_mib()
    t0 = time.perf_counter()
    if mode == "chunked":
        loss = kl_from_hidden(h, head, teacher, mask, temperature=2.0, chunk_size=chunk)
    else:
        logits = head(h).float()
        loss = kl_divergence(logits, teacher, mask, temperature=2.0)
    loss.backward()
    return {"mode": mode, "teacher": teacher_kind, "train_head": train_head,
            "peak_rise_mib": round(rss_peak_mib() - before, 1), "seconds": round(time.perf_counter() - t0, 2),
            "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--tokens", type=int, default=1024, help="B x A answer tokens")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--teacher", choices=["full", "topk"], default="full")
    ap.add_argument("--train-head", action="store_true", help="also a gradient for lm_head (LoRA keeps it frozen)")
    ap.add_argument("--modes", default="unchunked,chunked",
                    help="comma-separated subset of unchunked,chunked (unchunked at 8192 x 128256 needs ~31 GiB)")
    ap.add_argument("--one", choices=["chunked", "unchunked"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.vocab, args.tokens, args.hidden, args.chunk, args.teacher,
                                 args.train_head)))
        return
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"unchunked", "chunked"}:
        ap.error(f"--modes {args.modes!r}: allowed values are unchunked, chunked (comma-separated)")
    rows = []
    for mode in modes:
        cmd = [sys.executable, __file__, "--one", mode] + [f"--{k}={v}" for k, v in
                                                           (("vocab", args.vocab), ("tokens", args.tokens),
                                                            ("hidden", args.hidden), ("chunk", args.chunk),
                                                            ("teacher", args.teacher))]
        cmd += ["--train-head"] if args.train_head else []
        # Large blocks through mmap so that freed memory leaves the process: without this, glibc's heap
        # fragmentation inflates the peak RSS of the many chunk-sized allocations (measured: 983 vs 527 MiB).
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        rows.append(json.loads(out.splitlines()[-1]))
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    summary = {"vocab": args.vocab, "tokens": args.tokens, "hidden": args.hidden, "chunk": args.chunk,
               "one_fp32_logits_mib": round(logits_mib, 1), "runs": rows}
    by = {r["mode"]: r for r in rows}
    if "chunked" in by:
        # The unchunked computation holds at least one [tokens x vocab] float32 logits tensor.
        summary["chunked_over_one_fp32_logits"] = round(by["chunked"]["peak_rise_mib"] / logits_mib, 3)
    if len(by) == 2:
        summary["ratio_unchunked_over_chunked"] = round(by["unchunked"]["peak_rise_mib"]
                                                        / max(by["chunked"]["peak_rise_mib"], 1e-9), 1)
        summary["same_loss"] = abs(by["unchunked"]["loss"] - by["chunked"]["loss"]) < 1e-5
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
