"""Run by tests/test_train_fsdp.py under ``torch.distributed.run`` (2 gloo processes): FSDP training jobs.

argv: a JSON list of jobs ``{"out", "model", "config", "passages", "rows", "stop_after"?, "expect_error"?}``
("model" is a ModelSpec dict; a job with ``expect_error`` writes the ConfigError it gets to
``<out>.error.txt``). Besides the adapter each job leaves, per rank,
``<out>.rank<r>.safetensors``: the rank's local slices of the LoRA weights after training,
and ``<out>.rank<r>.json``: how many parameter elements the rank held at the end and in the
middle of a forward pass during training.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from pd.data import Dataset, Document
from pd.errors import ConfigError
from pd.models import ModelSpec
from pd.train import fsdp
from pd.train.fsdp import decoder_layers, local_share
from pd.train.loop import train
from pd.train.settings import TrainConfig

SHARD = fsdp.shard_model


def _watch_layers(seen: list) -> object:
    """shard_model, plus a hook that records at each forward of the last decoder layer what the rank holds."""

    def shard_and_watch(model, device):
        model = SHARD(model, device)
        first, last = decoder_layers(model)[0], decoder_layers(model)[-1]

        def hook(_module, _args):
            w = list(first.parameters())
            held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in w)
            seen.append({"first_layer_dtensors": all(isinstance(p, DTensor) for p in w), "first_layer_held": held,
                         "first_layer_total": sum(p.numel() for p in w), **local_share(model)})

        last.register_forward_pre_hook(hook)
        return model

    return shard_and_watch


def main(jobs_json: str) -> None:
    for job in json.loads(jobs_json):
        seen: list = []
        fsdp.shard_model = _watch_layers(seen)
        ds = Dataset("toy", {k: Document(k, v) for k, v in job["passages"].items()}, [])
        try:
            result = train(TrainConfig(**job["config"]), ModelSpec(**job["model"]), job["out"], rows=job["rows"],
                           dataset=ds, stop_after=job.get("stop_after"))
        except ConfigError as err:
            if not job.get("expect_error"):
                raise
            Path(f"{job['out']}.error.txt").write_text(str(err))
            continue
        rank = torch.distributed.get_rank()
        lora = {n: (p.to_local() if isinstance(p, DTensor) else p).detach().clone()
                for n, p in result.model.named_parameters() if "lora_" in n}
        save_file(lora, f"{job['out']}.rank{rank}.safetensors")
        with open(f"{job['out']}.rank{rank}.json", "w") as f:
            json.dump({"end": local_share(result.model), "during": seen[:3], "steps": result.steps}, f)


if __name__ == "__main__":
    main(sys.argv[1])
