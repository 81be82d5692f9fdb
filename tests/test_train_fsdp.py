"""Sharded training (training.parallel: fsdp) on CPU: two gloo processes under FSDP2 equal one unsharded process.

One launch of tests/fsdp_worker.py runs every two-process job (process start-up dominates the
cost): PD with the adapter-off teacher and the chunked loss on a tiny-llama whose lm_head is
tied to its input embedding (as SmolLM2's is), the same under DDP, SFT with gradient
accumulation on the untied tiny-llama, the PD run interrupted after 2 steps and resumed from
its checkpoint, and a run FSDP must refuse.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pd.data import Dataset, Document
from pd.errors import ConfigError
from pd.models import ModelSpec, load_model
from pd.train.loop import train
from pd.train.settings import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_train import PASSAGES, ROWS  # noqa: E402
from test_train_ddp import _free_port  # noqa: E402

WORKER = Path(__file__).parent / "fsdp_worker.py"
# chunk_size 8: several loss chunks per batch, each recomputed in backward with the lm_head outside the forward.
COMMON = dict(rank=8, lr=5e-3, epochs=2, warmup_epochs=0, progress=False, seed=0, chunk_size=8)


@pytest.fixture(scope="module")
def tied_spec(tiny_llama, tmp_path_factory) -> ModelSpec:
    """tiny-llama's config and tokenizer with ``tie_word_embeddings``: lm_head and embedding share one tensor."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tied")
    cfg = tiny_llama.model().config
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    spec = ModelSpec("tiny-llama-tied", "local", "tiny-llama", path=str(folder),
                     chat_template=tiny_llama.spec.chat_template, dtype="float32")
    model = load_model(spec, device="cpu")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return spec


@pytest.fixture(scope="module")
def fsdp_runs(tied_spec, tiny_llama, tmp_path_factory):
    """The FSDP jobs, run once by two processes; returns their folder."""
    root = tmp_path_factory.mktemp("fsdp")
    pd_cfg = dict(COMMON, method="pd", batch_size=4, parallel="fsdp")
    # Activation checkpointing and a snapshot at the first step ride along: neither changes the numbers.
    sft_cfg = dict(COMMON, method="sft", batch_size=4, micro_batch_size=1, parallel="fsdp", gradient_checkpointing=True,
                   snapshot_seconds=[0.001])
    data = {"passages": PASSAGES, "rows": ROWS}
    jobs = [
        {"out": str(root / "pd"), "model": vars(tied_spec), "config": pd_cfg, **data},
        {"out": str(root / "sft"), "model": vars(tiny_llama.spec), "config": sft_cfg, **data},
        {"out": str(root / "resumed"), "model": vars(tied_spec), "config": pd_cfg, "stop_after": 2, **data},
        {"out": str(root / "resumed"), "model": vars(tied_spec), "config": pd_cfg, **data},
        {"out": str(root / "ddp"), "model": vars(tied_spec), "config": dict(pd_cfg, parallel="ddp"), **data},
        {"out": str(root / "topk"), "model": vars(tied_spec), "config": dict(pd_cfg, teacher_topk=16), **data,
         "expect_error": True},
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), str(WORKER), json.dumps(jobs)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


def _log(folder: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (folder / "train_log.jsonl").read_text().splitlines()]


def _same_as_one_process(fsdp_dir: Path, spec: ModelSpec, cfg: dict, tmp_path: Path) -> dict:
    """Train unsharded on one process with the global batch; compare adapters and loss curves."""
    ds = Dataset("toy", {k: Document(k, v) for k, v in PASSAGES.items()}, [])
    single = train(TrainConfig(**cfg), spec, tmp_path / "one", rows=ROWS, dataset=ds, device="cpu")
    meta = json.loads((fsdp_dir / "pd_meta.json").read_text())
    assert meta["world_size"] == 2 and meta["sharded"] and not single.meta["sharded"]
    assert meta["steps"] == single.steps == 4  # 8 rows / 4 per optimizer step x 2 epochs
    a = load_file(str(fsdp_dir / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    assert max(float(v.abs().max()) for k, v in b.items() if "lora_B" in k) > 1e-3  # B moved off its zero init
    # Same data and gradients; only the float summation order differs (two rows per process, averaged by the
    # reduce-scatter, vs. four rows in one batch padded to another length): ~1e-7 relative in a gradient, but
    # Adam divides by sqrt(v), so an entry whose gradient is a near-cancelling sum moves by a relative error
    # of up to ~1e-3 of its step (lr 5e-3): measured 2e-6 at most. 1e-5 stays far below one Adam step, which is
    # what a wrongly reduced or lost gradient costs (a run without gradient sync misses by 1e-2).
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    la, lb = _log(fsdp_dir), _log(tmp_path / "one")
    assert len(la) == len(lb) == 4
    assert la == pytest.approx(lb, rel=1e-3, abs=1e-9)  # losses ~1e-4..1; float32 noise ~1e-8 absolute
    return a


def _check_sharded(out: Path, full: dict) -> None:
    """Each rank holds half of every parameter; its LoRA slices are its rows of the saved full adapter."""
    shares = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    for s in shares:
        assert s["end"]["held"] * 2 == s["end"]["total"]  # tiny-llama's dims are even: exact halves
        during = s["during"][0]  # at the last decoder layer's forward in step 1
        assert during["first_layer_dtensors"] and during["first_layer_held"] * 2 == during["first_layer_total"]
        assert during["held"] < during["total"]
    slices = [load_file(f"{out}.rank{r}.safetensors") for r in (0, 1)]
    for name, local0 in slices[0].items():
        saved = name.replace(".default.", ".")
        torch.testing.assert_close(torch.cat([local0, slices[1][name]]), full[saved], atol=0, rtol=0)
        assert local0.shape[0] * 2 == full[saved].shape[0]


@pytest.mark.slow
def test_fsdp_pd_with_tied_head_equals_one_process(fsdp_runs, tied_spec, tmp_path, one_thread):
    full = _same_as_one_process(fsdp_runs / "pd", tied_spec, dict(COMMON, method="pd", batch_size=4), tmp_path)
    _check_sharded(fsdp_runs / "pd", full)
    # Against DDP on the same two processes nothing differs but where the sum of two gradients is taken
    # (reduce-scatter vs all-reduce; a + b is exact and commutative): the adapters are bit-identical.
    ddp = load_file(str(fsdp_runs / "ddp" / "adapter_model.safetensors"))
    assert not json.loads((fsdp_runs / "ddp" / "pd_meta.json").read_text())["sharded"]
    for k in full:
        torch.testing.assert_close(full[k], ddp[k], atol=0, rtol=0)
    assert _log(fsdp_runs / "pd") == _log(fsdp_runs / "ddp")


@pytest.mark.slow
def test_fsdp_sft_with_accumulation_equals_one_process(fsdp_runs, tiny_llama, tmp_path, one_thread):
    full = _same_as_one_process(fsdp_runs / "sft", tiny_llama.spec, dict(COMMON, method="sft", batch_size=4), tmp_path)
    _check_sharded(fsdp_runs / "sft", full)
    snap = load_file(str(fsdp_runs / "sft" / "snapshots" / "t0" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in snap.items()} == {k: v.shape for k, v in full.items()}  # gathered, not a shard
    assert json.loads((fsdp_runs / "sft" / "snapshots" / "t0" / "pd_meta.json").read_text())["step"] == 1


@pytest.mark.slow
def test_fsdp_resume_and_peft_load(fsdp_runs, tied_spec):
    from peft import PeftModel

    resumed = json.loads((fsdp_runs / "resumed" / "pd_meta.json").read_text())
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 4
    a = load_file(str(fsdp_runs / "resumed" / "adapter_model.safetensors"))
    b = load_file(str(fsdp_runs / "pd" / "adapter_model.safetensors"))
    for k in b:  # the checkpoint holds the gathered adapter and optimizer: resuming is exact
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert _log(fsdp_runs / "resumed") == _log(fsdp_runs / "pd")

    base = load_model(tied_spec, device="cpu")
    model = PeftModel.from_pretrained(base, str(fsdp_runs / "pd"))
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(b)
    for name, p in loaded.items():
        torch.testing.assert_close(p.detach(), b[name.replace(".default.", ".")], atol=0, rtol=0)


@pytest.mark.slow
def test_fsdp_refuses_to_build_a_teacher_cache_in_the_run(fsdp_runs):
    msg = Path(f"{fsdp_runs / 'topk'}.error.txt").read_text()
    assert "teacher_cache" in msg and "teacher_topk: 0" in msg


def test_fsdp_setting_is_validated():
    with pytest.raises(ConfigError, match="allowed"):
        TrainConfig(parallel="zero3")
