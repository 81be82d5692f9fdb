"""Measure how much teacher probability a top-k cache keeps, on SmolLM2's own answers.

SmolLM2-135M-Instruct answers questions about one SQuADShifts NYT passage with the passage
in its prompt (greedy, and sampled at T = 1.5 as PD's answers are); the teacher (the same
model, passage in the prompt) is then cached with top-k, and the mean covered mass over
answer tokens is printed at T = 1 and at the distillation temperature.

    python bench/teacher_coverage.py [--k 64] [--questions 6] [--temperature 2.0]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from pd.chat import prompt_text  # noqa: E402
from pd.data import load_squadshifts  # noqa: E402
from pd.models import get_spec, load_model, load_tokenizer  # noqa: E402
from pd.train.cache_builder import build_teacher_cache  # noqa: E402
from pd.train.sequences import Example, Tokens, passage_question  # noqa: E402


def answers(model, tok, spec, passage, questions, sample_t, max_new, seed):
    out = []
    for i, q in enumerate(questions):
        ids = tok(prompt_text(tok, passage_question(passage, q), spec), add_special_tokens=False,
                  return_tensors="pt").input_ids
        torch.manual_seed(seed + i)
        kw = dict(do_sample=True, temperature=sample_t, top_k=0, top_p=1.0) if sample_t else dict(do_sample=False)
        gen = model.generate(ids, max_new_tokens=max_new, pad_token_id=tok.pad_token_id, **kw)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[64], help="one or more k (one pass with the largest)")
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--passage", default="nyt-p0000")
    args = ap.parse_args()

    spec = get_spec("smollm2-135m-instruct")
    tok, model = load_tokenizer(spec), load_model(spec, device="cpu")
    data = load_squadshifts("nyt")
    passage = data.documents[args.passage].text
    questions = [it.closed_book_question for it in data.items if args.passage in it.doc_ids][: args.questions]
    tokens = Tokens(tok, spec)
    kmax = max(args.k)
    result = {"model": spec.name, "passage": args.passage, "k": args.k, "temperature": args.temperature,
              "questions": len(questions)}
    for label, sample_t in (("greedy", 0.0), ("sampled_t1.5", 1.5)):
        texts = answers(model, tok, spec, passage, questions, sample_t, args.max_new, seed=0)
        exs = [Example(id=f"q{i}", kind="pd", student_prompt_ids=tokens.chat_prompt(q),
                       answer_ids=tokens.encode(a) + [tokens.eot_id],
                       teacher_prompt_ids=tokens.chat_prompt(passage_question(passage, q)))
               for i, (q, a) in enumerate(zip(questions, texts))]
        cache = build_teacher_cache(model, exs, tokens.pad_id, k=kmax, temperature=args.temperature,
                                    logprob_dtype="float32")
        stats = cache.stats
        tg = cache.targets
        covered = {}
        for k in sorted(args.k):  # the top-k ids are sorted, so a prefix is the top-k' for k' <= k
            logp_t, _ = tg.map(lambda t: t[:, :k] if t.dim() == 2 else t).log_probs_at(args.temperature)
            cov_t = logp_t.exp().sum(-1)
            cov_1 = tg.logprobs[:, :k].float().exp().sum(-1)
            covered[f"k{k}"] = {"t1": round(float(cov_1.mean()), 4),
                                f"t{args.temperature:g}": round(float(cov_t.mean()), 4),
                                f"t{args.temperature:g}_min_token": round(float(cov_t.min()), 4)}
        result[label] = {
            "answer_tokens": cache.meta["answer_tokens"],
            "covered_mass": covered,
            "mean_teacher_entropy_t1": round(sum(r["teacher_entropy_t1"] for r in stats) / len(stats), 4),
            "mean_initial_kl": round(sum(r["initial_kl"] for r in stats) / len(stats), 4),
            "example_answer": texts[0],
        }
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
