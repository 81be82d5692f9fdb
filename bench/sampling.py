"""Per-row sampling of one decode step: a ``torch.multinomial`` per row (before) against one batched inverse
transform draw (``TransformersGenerator._choose``), same process, same logits.

    python bench/sampling.py [--rows 256] [--vocab 128256] [--device cpu|cuda] [--repeats 20]
    python bench/sampling.py --model smollm2-135m-instruct --rows 40 --new 64   # whole generate() calls

Prints milliseconds per step for each and their ratio. On a GPU the per-row draw pays kernel launches and a
host synchronisation per row; on a CPU it pays Python and dispatch per row.
"""

from __future__ import annotations

import argparse
import time

import torch

from pd.generate.base import SamplingParams
from pd.generate.transformers_backend import TransformersGenerator


def per_row(probs: torch.Tensor, gens: list) -> torch.Tensor:
    """The previous draw: one multinomial per row, each from its row's generator (on the probs' device)."""
    return torch.stack([torch.multinomial(probs[r], 1, generator=g)[0] for r, g in enumerate(gens)])


class PerRowGenerator(TransformersGenerator):
    """The generator with the previous per-row draw, for the end-to-end comparison."""

    @staticmethod
    def _choose(logits, gens, params):
        x = logits / params.temperature
        dev = [torch.Generator(device=logits.device).manual_seed(int(g.initial_seed())) for g in gens]
        return per_row(torch.softmax(x, dim=-1), dev)


def end_to_end(model: str, rows: int, new: int, repeats: int) -> None:
    """Whole sampled ``generate`` calls of ``model`` at batch ``rows``, both draws, interleaved."""
    convs = [[{"role": "user", "content": f"Write a sentence about river number {i}."}] for i in range(rows)]
    params = SamplingParams(temperature=1.0, max_new_tokens=new, seed=0)
    gens = {"per-row multinomial": PerRowGenerator(model, batch_size=rows, progress=False),
            "batched inverse transform": TransformersGenerator(model, batch_size=rows, progress=False)}
    times: dict[str, list[float]] = {k: [] for k in gens}
    for _ in range(repeats):
        for name, g in gens.items():
            t = time.perf_counter()
            out = g.generate(convs, params)
            times[name].append((time.perf_counter() - t) / max(1, max(c[0].n_tokens for c in out)))
    best = {k: min(v) * 1e3 for k, v in times.items()}
    a, b = best.values()
    print(f"{model} batch {rows}, up to {new} new tokens, best of {repeats}: "
          + ", ".join(f"{k} {v:.1f} ms/step" for k, v in best.items()) + f"; ratio {a / b:.2f}x")


def _time(fn, repeats: int, device: str) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--model", help="also time whole generate() calls of this registry model")
    ap.add_argument("--new", type=int, default=64, help="new tokens per row (with --model)")
    a = ap.parse_args()
    if a.model:
        end_to_end(a.model, a.rows, a.new, a.repeats)
        return
    logits = torch.randn(a.rows, a.vocab, device=a.device) * 3
    params = SamplingParams(temperature=1.5, max_new_tokens=1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    dev_gens = [torch.Generator(device=a.device).manual_seed(r) for r in range(a.rows)]
    cpu_gens = [torch.Generator().manual_seed(r) for r in range(a.rows)]
    before = _time(lambda: per_row(probs, dev_gens), a.repeats, a.device)
    after = _time(lambda: TransformersGenerator._choose(logits, cpu_gens, params), a.repeats, a.device)
    print(f"{a.device} rows {a.rows} vocab {a.vocab}: per-row multinomial {before:.2f} ms/step, "
          f"batched inverse transform {after:.2f} ms/step (softmax included), ratio {before / after:.1f}x")


if __name__ == "__main__":
    main()
