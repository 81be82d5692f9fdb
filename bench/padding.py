"""Padding fraction of training batches on real generated data, plain shuffle against length buckets.

Builds the training sequences the loop would build (pd.train.methods.build_training_data)
from a pipeline's answers JSONL and its dataset, then walks the loop's own batch order
(pd.train.schedule.Schedule) for every epoch and counts pad tokens / all tokens of each view as
pd.train.sequences.collate pads them (each batch to its longest row).

    python bench/padding.py ANSWERS.jsonl --dataset demo-nyt --model smollm2-135m-instruct --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def fractions(data, cfg) -> dict:
    """Padding fraction of the student and teacher views over ``cfg.epochs`` epochs of the loop's order."""
    from pd.train.buckets import padding_fraction, sort_length
    from pd.train.schedule import Schedule

    ex = data.examples
    plan = Schedule(cfg, len(ex), 0, world=1, rank=0, lengths=[sort_length(e) for e in ex])
    batches = [rows for s in range(plan.total) for rows, _ in plan.micro_batches(s)]
    out = {"student": round(padding_fraction(batches, [e.student_len for e in ex]), 4)}
    if all(e.teacher_prompt_ids is not None for e in ex):
        out["teacher"] = round(padding_fraction(batches, [e.teacher_len for e in ex]), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("answers", nargs="+", help="answers JSONL file(s) written by the pipeline")
    ap.add_argument("--dataset", default="demo-nyt", help="a dataset name of config.yaml")
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--methods", default="pd,sft")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--buckets", default="1,4,8,16", help="bucket_batches values to compare (1: plain shuffle)")
    args = ap.parse_args()

    import yaml

    from pd.data import load_dataset
    from pd.io import read_jsonl
    from pd.models import get_spec, load_tokenizer
    from pd.train.methods import build_training_data
    from pd.train.sequences import Tokens
    from pd.train.settings import TrainConfig

    datasets = yaml.safe_load(Path(args.config).read_text())["datasets"]
    dataset = load_dataset(args.dataset, datasets[args.dataset])
    spec = get_spec(args.model)
    tokens = Tokens(load_tokenizer(spec), spec)
    for path in args.answers:
        rows = read_jsonl(path)
        for method in args.methods.split(","):
            base = TrainConfig(method=method, batch_size=args.batch_size, epochs=args.epochs, progress=False)
            data = build_training_data(base, tokens, rows=rows, dataset=dataset)
            result = {"answers": Path(path).name, "method": method, "examples": len(data.examples),
                      "batch_size": args.batch_size, "epochs": args.epochs}
            for b in [int(x) for x in args.buckets.split(",")]:
                cfg = TrainConfig(method=method, batch_size=args.batch_size, epochs=args.epochs, bucket_batches=b,
                                  progress=False)
                result[f"bucket_batches={b}"] = fractions(data, cfg)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
