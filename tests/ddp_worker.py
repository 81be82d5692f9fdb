"""Run by tests/test_train_ddp.py under ``accelerate launch --num_processes 2 --cpu``: a tiny PD run."""

import json
import sys

from pd.data import Dataset, Document
from pd.models import get_spec
from pd.train.loop import train
from pd.train.settings import TrainConfig


def main(out: str, spec_json: str) -> None:
    spec = json.loads(spec_json)
    ds = Dataset("toy", {k: Document(k, v) for k, v in spec["passages"].items()}, [])
    cfg = TrainConfig(**spec["config"])
    train(cfg, get_spec("tiny-llama"), out, rows=spec["rows"], dataset=ds, instruction_pairs=spec.get("pairs"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
