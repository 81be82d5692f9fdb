"""SmolLM2-135M-Instruct on the first 100 NYT items: closed-book, oracle passage, BM25 (k=7).

Answers at T=0.25, capped at --max-tokens new tokens (default 64; the paper's 500 is too
slow on 2 CPU cores);
graded by substring match (word and plain) and by SmolLM2 itself as a stand-in judge
(greedy, --judge-tokens new tokens (default 48), reply prefilled with "<reasoning>"). Generation goes through the
disk cache in chunks, so a restarted run resumes where it stopped. Writes eval and grade
JSONL plus summary.json under the output folder.

    python bench/nyt100_smollm2.py [out_dir] [--judge-limit N] [--max-tokens N] [--judge-tokens N] [--chunk N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pd.data import Dataset, load_squadshifts
from pd.evaluation.evaluate import evaluate
from pd.evaluation.grade import grade_judge_rows, grade_substring_rows, judge_params, summarise
from pd.evaluation.retrieve import retrieve_for_items
from pd.generate import SamplingParams, make_generator
from pd.io import write_json, write_jsonl

CHUNK = 4  # default items per batch; --chunk N changes it (the generation cache is per prompt)


def _opt(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def main() -> None:
    args = [a for a in sys.argv[1:2] if not a.startswith("--")]
    out = Path(args[0] if args else "/tmp/h4_nyt100")
    judge_limit, max_tokens, judge_tokens, chunk = (
        _opt(name, default) for name, default in
        (("--judge-limit", 100), ("--max-tokens", 64), ("--judge-tokens", 48), ("--chunk", CHUNK)))
    out.mkdir(parents=True, exist_ok=True)
    ds = load_squadshifts("nyt").head(100)
    full = load_squadshifts("nyt")  # BM25 searches the subset's whole corpus (188 passages)
    gen = make_generator("smollm2-135m-instruct", cache_dir=out / "gencache", progress=False, batch_size=chunk)
    params = SamplingParams(temperature=0.25, max_new_tokens=max_tokens, seed=0)
    settings = {
        "closed_book": None,
        "oracle": retrieve_for_items(ds, "oracle", 7),
        "bm25": retrieve_for_items(full, "bm25", 7, items=ds.items),
    }
    summary: dict = {"items": len(ds.items), "answer_params": params.as_dict(), "judge_prefill": "<reasoning>",
                     "judge_max_new_tokens": judge_tokens}
    evals: dict[str, list[dict]] = {name: [] for name in settings}
    judged: dict[str, list[dict]] = {name: [] for name in settings}
    seconds = {name: [0.0, 0.0] for name in settings}
    # Round-robin over chunks of items, so that whatever has finished when the run is
    # stopped covers the same items in every setting, for both graders.
    for i in range(0, len(ds.items), chunk):
        part = Dataset(ds.name, full.documents, ds.items[i : i + chunk])
        for name, retrieved in settings.items():
            t0 = time.time()
            sub = None if retrieved is None else {it.id: retrieved[it.id] for it in part.items}
            rows, _ = evaluate(part, gen, sub, params, model="smollm2-135m-instruct")
            evals[name].extend(rows)
            t1 = time.time()
            if i < judge_limit:
                judged[name].extend(grade_judge_rows(rows, ds, gen, params=judge_params(judge_tokens),
                                                     prefill="<reasoning>", batch_size=chunk))
            seconds[name][0] += t1 - t0
            seconds[name][1] += time.time() - t1
            write_jsonl(out / f"eval.{name}.jsonl", evals[name])
            write_jsonl(out / f"grades.{name}.judge.jsonl", judged[name])
            subs = {m: summarise(grade_substring_rows(evals[name], ds, m)) for m in ("word", "plain")}
            j = summarise(judged[name])
            summary[name] = {"n": len(evals[name]), "substring_word": subs["word"]["accuracy"],
                             "substring_plain": subs["plain"]["accuracy"],
                             "cut_at_max_tokens": sum(r["finish_reason"] == "length" for r in evals[name]),
                             "judge_n": j["n"], "judge_accuracy": j["accuracy"],
                             "judge_accuracy_valid": j["accuracy_valid"],
                             "judge_validity": j["validity_rate"], "judge_invalid_reasons": j["invalid_reasons"],
                             "answer_seconds": round(seconds[name][0], 1), "judge_seconds": round(seconds[name][1], 1)}
            write_json(out / "summary.json", summary)
        print(i + chunk, {n: (summary[n]["n"], summary[n]["substring_word"], summary[n]["judge_validity"])
                          for n in settings}, flush=True)


if __name__ == "__main__":
    main()
