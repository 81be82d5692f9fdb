"""Loss-only cost: cross-entropy against the top-k (cached teacher) KL, from hidden states, forward + backward.

Three losses on the same hidden states and lm_head, chunked and recomputed as in training
(pd.train.losses.*_from_hidden), measured round-robin in one process:

  ce          cross_entropy_from_hidden (the SFT loss)
  kl_topk     kl_from_hidden with TopKTargets (pd.train.token_losses.token_kl_topk, gradient written out)
  kl_autograd the same bucketed KL through plain autograd (two log-sum-exps over the vocabulary and a
              scattered copy): the formula pd.train used before the written-out gradient

    python bench/topk_kl.py --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kl_topk_autograd(student_logits, targets, temperature: float, direction: str):
    """The bucketed KL written as plain tensor operations (autograd makes the gradient)."""
    import torch

    from pd.train.token_losses import kl_terms

    z = student_logits.float() / temperature
    lse = torch.logsumexp(z, -1, keepdim=True)
    ids = targets.ids.long()
    logq = z.gather(-1, ids) - lse
    logp, logp_rest = targets.log_probs_at(temperature)
    if targets.k < z.shape[-1]:
        logq_rest = torch.logsumexp(z.scatter(-1, ids, float("-inf")), -1, keepdim=True) - lse
        logq = torch.cat([logq, logq_rest], -1)
        logp = torch.cat([logp, logp_rest.unsqueeze(-1)], -1)
    logp = logp - torch.logsumexp(logp, -1, keepdim=True)
    return kl_terms(logq, logp, direction)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=192, help="answer tokens (B x A)")
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--topk", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from pd.train import losses
    from pd.train.targets import topk_targets

    torch.set_num_threads(args.threads)
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(0)
        head = torch.nn.Linear(args.hidden, args.vocab, bias=False).to(dtype).requires_grad_(False)
        h = torch.randn(1, args.tokens, args.hidden, dtype=dtype, requires_grad=True)
        mask = torch.ones(1, args.tokens, dtype=torch.bool)
        labels = torch.randint(0, args.vocab, (1, args.tokens))
        targets = topk_targets(torch.randn(1, args.tokens, args.vocab) * 3, args.topk, 2.0)

        def kl(fn):
            def per_token(rows, idx):
                return fn(head(rows), losses._rows(targets, idx), 2.0, "forward")

            return losses._chunked(h.reshape(-1, args.hidden), mask, args.chunk, per_token, "mean", recompute=True)

        fns = {"ce": lambda: losses.cross_entropy_from_hidden(h, head, labels, mask, chunk_size=args.chunk),
               "kl_topk": lambda: kl(losses.token_kl_topk), "kl_autograd": lambda: kl(kl_topk_autograd)}
        times = {n: [] for n in fns}
        grads = {}
        for r in range(args.rounds + 2):
            for n, f in fns.items():
                h.grad = None
                t0 = time.perf_counter()
                f().backward()
                if r >= 2:
                    times[n].append(time.perf_counter() - t0)
                grads[n] = h.grad.float().clone()
        ce = statistics.median(times["ce"])
        row = {"dtype": dtype_name, **{f"{n}_median_s": round(statistics.median(t), 4) for n, t in times.items()},
               **{f"{n}_over_ce": round(statistics.median(t) / ce, 3) for n, t in times.items() if n != "ce"},
               "max_grad_diff_topk_vs_autograd": float((grads["kl_topk"] - grads["kl_autograd"]).abs().max())}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
