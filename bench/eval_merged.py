"""Evaluating through a merged adapter against the separate LoRA layers.

The demo's closed-book evaluation on SmolLM2-135M-Instruct (its `auto` precision on this
machine): the 37 demo-nyt test questions, T=0.25, 40 new tokens, batch 8, through a LoRA of
the demo's shape (rank 64, alpha 128, every linear layer; its B matrices drawn at random, since
the cost does not depend on the values). Both generators run in this process, alternately; the
ratio of their wall-clock times is printed, with how many completions are token for token equal
(merging rounds W + (alpha / r) B A once to the model's precision, so sampled text can differ at
near ties), and how many of each equal those of the same LoRA on the model in float32.

    python bench/eval_merged.py [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from pd.data import load_squadshifts  # noqa: E402
from pd.evaluation.evaluate import eval_conversation  # noqa: E402
from pd.generate.base import SamplingParams  # noqa: E402
from pd.generate.transformers_backend import TransformersGenerator  # noqa: E402
from pd.models import get_spec, load_model  # noqa: E402


def save_adapter(spec, folder: str) -> None:
    """A rank-64 all-linear LoRA on ``spec`` with B ~ N(0, 0.01): the demo adapters' shape."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(spec, device="cpu"), LoraConfig(r=64, lora_alpha=128,
                                                                       target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    model.save_pretrained(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = get_spec("smollm2-135m-instruct")
    ds = load_squadshifts("nyt").select_passages(4)
    convs = [eval_conversation(it.closed_book_question, []) for it in ds.items]
    params = SamplingParams(temperature=0.25, max_new_tokens=40, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(spec, tmp)
        gens = {"separate LoRA": TransformersGenerator(spec, tmp, progress=False, merge_adapter=False),
                "merged": TransformersGenerator(spec, tmp, progress=False)}
        print(f"precision {next(gens['merged'].model.parameters()).dtype} (dtype auto: pd.precision)")
        times: dict[str, list[float]] = {k: [] for k in gens}
        out = {}
        for _ in range(args.repeats):
            for k, gen in gens.items():
                t = time.perf_counter()
                out[k] = gen.generate(convs, params)
                times[k].append(time.perf_counter() - t)
        # Which is nearer exact arithmetic: both against the separate LoRA on the float32 model.
        ref = TransformersGenerator(dataclasses.replace(spec, dtype="float32"), tmp, progress=False,
                                    merge_adapter=False).generate(convs, params)

    def equal(x, y) -> int:
        return sum(a[0].token_ids == b[0].token_ids for a, b in zip(x, y))

    same = equal(out["separate LoRA"], out["merged"])
    sep, mer = min(times["separate LoRA"]), min(times["merged"])
    print(f"{len(convs)} items; best of {args.repeats}: separate LoRA {sep:.1f} s, merged {mer:.1f} s, "
          f"ratio {sep / mer:.2f}x; {same} of {len(convs)} completions token for token equal; equal to the "
          f"float32 model's: separate {equal(out['separate LoRA'], ref)}, merged {equal(out['merged'], ref)}")


if __name__ == "__main__":
    main()
