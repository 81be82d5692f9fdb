"""Gold-answer scoring inside the generation's prefill against a pass of its own.

The demo's evaluation setting on SmolLM2-135M-Instruct (its `auto` precision on this
machine): the 37 demo-nyt test questions with k=2 passages in the prompt (as the BM25
cells: here the oracle passage and the next one), T=0.25, 40 new tokens; each item's gold
aliases are scored. Both modes run in this process, alternately, and the ratio of their
wall-clock times is printed, with the largest difference of their log-likelihoods.

    python bench/eval_scoring.py [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from pd.data import load_squadshifts  # noqa: E402
from pd.evaluation.evaluate import eval_conversation  # noqa: E402
from pd.generate.base import SamplingParams  # noqa: E402
from pd.generate.loglik import alias_tokens, gold_loglik  # noqa: E402
from pd.generate.transformers_backend import TransformersGenerator  # noqa: E402
from pd.models import get_spec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = get_spec("smollm2-135m-instruct")
    gen = TransformersGenerator(spec, progress=False, batch_size=8)
    print(f"precision {next(gen.model.parameters()).dtype} (dtype auto: pd.precision)")
    ds = load_squadshifts("nyt").select_passages(4)
    ids = list(ds.documents)
    convs = []
    for it in ds.items:
        shown = list(it.doc_ids[:1]) + [d for d in ids if d not in it.doc_ids][:1]
        convs.append(eval_conversation(it.closed_book_question, [ds.documents[d].text for d in shown]))
    gold = [it.answers for it in ds.items]
    params = SamplingParams(temperature=0.25, max_new_tokens=40, seed=0)
    aliases = alias_tokens(gen.tokenizer, gold)
    conts = [[t for _, t in a] for a in aliases]
    times = {"two passes": [], "in prefill": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        gen.generate(convs, params)
        sep = gold_loglik(gen.model, gen.tokenizer, [gen.prompt(c) for c in convs], gold)
        times["two passes"].append(time.perf_counter() - t)
        t = time.perf_counter()
        _, lps = gen.generate_scored(convs, params, conts)
        times["in prefill"].append(time.perf_counter() - t)
    best = [max(float(x.sum()) for x in lp) if lp else None for lp in lps]
    diff = max(abs(a - b.total) for a, b in zip(best, sep) if b is not None)
    two, one = min(times["two passes"]), min(times["in prefill"])
    print(f"{len(convs)} items, {sum(map(len, conts))} aliases; best of {args.repeats}: "
          f"generate + separate scoring {two:.1f} s, generate_scored {one:.1f} s, ratio {two / one:.2f}x; "
          f"max |difference| of the best total log-likelihood {diff:.2e} nats")


if __name__ == "__main__":
    main()
