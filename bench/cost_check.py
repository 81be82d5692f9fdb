"""The cost model (pd.cost) against this GPU: peak memory and step time of the paper's training cells as the plan
runs them, and decode ms per call at batch 8 / 64 / auto, each next to the model's prediction.

Training: the ``main`` experiment's PD adapters of Llama-3-8B at rank 1024 and Qwen2.5-14B at rank 512, laid out by
the plan for this GPU (:func:`pd.pipeline.costs.job_cost` on a site of this GPU: processes, micro-batch,
checkpointing). One GPU runs one process's micro-batch of the plan's longest rows: random-weight models of the real
shapes (no download), the project's own step (``pd.train.lora.attach_lora``, ``pd.train.sequences.collate``,
``pd.train.methods.batch_loss`` with the live teacher, clipping and AdamW as ``pd.train.loop`` does them), with the
run's TrainConfig from the plan. A plan that shards (FSDP) has no share one GPU can run: the cell is then measured
in the layout :func:`pd.cost.training.training_layout` gives one process on this GPU, if one fits. Measured:
``torch.cuda.max_memory_allocated`` over the steps (GB = 10^9 bytes) and the median seconds of a step after a
warm-up one.

Decoding: the 8B shape through ``TransformersGenerator`` (sampled, every row runs to its token limit) at batch 8,
64 and ``auto`` (:func:`pd.generate.sizing.batch_for_memory` on the free memory): ms per forward call of a whole
``generate`` (prefill included), as ``calibration.yaml``'s decoding rows count them.

The JSON (``--out``) holds, like ``calibration.yaml``, ``training: {rows: [...]}`` and ``decoding: {rows: [...]}``
with the same fields, plus each row's ``predicted`` and ``error`` (predicted / measured - 1) per measured field,
the GPU (``name``, ``memory_gb``, ``tflops``, ``bandwidth_gbs``) and the plan of each cell. Refit the constants
from it: ``python bench/calibrate.py <json>``.

    python bench/cost_check.py --out bench/cost_check.json        # a CUDA GPU (make gpu-check): ~2-4 minutes
    python bench/cost_check.py --tiny --out /tmp/cost_check.json  # the same code path on the CPU, tiny shapes

``--tiny``: the catalogue's tiny-llama / tiny-qwen2 stand in for the 8B / 14B shapes (bfloat16 with a float32 LoRA
as on the GPU), LoRA rank 8, rows of a few dozen tokens, on the CPU; times from ``perf_counter``, memory not
measured (null); predictions for the calibration's GPU. It tests the code path, not the model. Exit status 1 if a
measurement failed (out of memory: the plan is wrong), else 0; rows outside +-15 % are printed as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TOLERANCE = 0.15  # tests/test_cost.py's


@dataclass(frozen=True)
class Cell:
    """A training cell of the plan and the random-weight model that stands in for it."""

    label: str
    model: str  # registry name in the plan
    arch: str  # transformers model type of the random-weight stand-in
    method: str
    rank: int
    tiny: str  # catalogue model standing in with --tiny


CELLS = (Cell("8B r1024 PD", "llama3-8b-instruct", "llama", "pd", 1024, "tiny-llama"),
         Cell("14B r512 PD", "qwen2.5-14b-instruct", "qwen2", "pd", 512, "tiny-qwen2"))
DECODE_BATCHES = (8, 64, "auto")
SAMPLING = dict(temperature=1.5, top_k=0, top_p=1.0)  # the answers' temperature; the decoding rows' settings
FULL = dict(prompt=300, new=48, rank=None)  # as the calibration's measured decoding rows
TINY = dict(prompt=80, new=4, rank=8, tokens=(24, 40, 12))


# --------------------------------------------------------------------------- the machine


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    import torch

    if device == "cuda":  # a CPU run has nothing to hand back (and a collection takes a while)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def this_gpu(device: str) -> tuple[dict, object]:
    """(the JSON's ``gpu`` block, the cost model's GPU for predictions and the plan)."""
    import platform

    import torch

    from pd.cost.calibration import gpu_named, reference_gpu

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 1e9
        gpu, known = gpu_named(name, memory)
        block = {"name": name, "memory_gb": round(memory, 2), "tflops": gpu.tflops, "bandwidth_gbs": gpu.bandwidth_gbs}
        if not known:
            block["note"] = "peak and bandwidth not known for this name: an H100 SXM's assumed"
        return block, gpu
    ref = reference_gpu()
    return ({"name": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)", "memory_gb": None,
             "tflops": None, "bandwidth_gbs": None,
             "predicted_for": f"the calibration's GPU ({ref.tflops:g} TFLOP/s, {ref.bandwidth_gbs:g} GB/s)"}, ref)


# --------------------------------------------------------------------------- the plan


def load_plan(config: str) -> tuple:
    """(the plan of every experiment of ``config``, the model registry it uses)."""
    from pd.config import load_config
    from pd.models import registry as model_registry
    from pd.pipeline.plan import build_plan

    cfg = load_config(config)
    return build_plan(cfg, list(cfg["experiments"])), model_registry(cfg.get("models"))


def planned(cell: Cell, gpu, plan, models: dict, experiment: str) -> dict:
    """The cell's adapter in ``experiment``'s plan and how the plan runs it on GPUs like this one.

    Returns:
        ``{"artifact", "train_config", "tokens", "layout" (the plan's: processes, micro_batch, grad_accum,
        checkpointing, parallel), "run" (what one GPU runs: micro_batch (None: nothing), checkpointing, why),
        "peak_gb" (the plan's prediction per GPU)}``.

    Raises:
        ConfigError: the experiment or the cell is not in the plan; the plan fits the cell on no number of these GPUs.
    """
    from pd.cost.shapes import shape_of
    from pd.cost.training import training_layout
    from pd.errors import ConfigError
    from pd.pipeline.costs import job_cost
    from pd.pipeline.registry import get_kind
    from pd.site import Site

    if experiment not in plan.cells:
        raise ConfigError(f"no experiment {experiment!r}; allowed: {sorted(plan.cells)}")
    kind = get_kind("adapter")
    found = []
    for path in plan.upstream(plan.manifest_path(experiment)):
        art = plan.artifacts[path]
        if art.kind != "adapter" or art.model != cell.model or art.spec.method != cell.method:
            continue
        if art.spec.train_config().rank != cell.rank:
            continue
        work = kind.workload(art, plan)
        found.append((work.tokens.student + work.tokens.teacher, path, art, work))
    if not found:
        raise ConfigError(f"experiment {experiment!r} has no {cell.method} adapter of {cell.model} at rank "
                          f"{cell.rank}")
    _, path, art, work = max(found, key=lambda f: (f[0], f[1]))  # its longest rows: the memory's worst case
    site = Site(gpu_mem_gb=gpu.memory_gb * 1e9 / 2**30, gpu_tflops=gpu.tflops, gpu_bandwidth_gbs=gpu.bandwidth_gbs)
    cost = job_cost(art, plan, site, models)
    d = cost.detail
    layout = {k: d[k] for k in ("processes", "micro_batch", "grad_accum", "checkpointing", "parallel")}
    run = {"micro_batch": d["micro_batch"], "checkpointing": d["checkpointing"],
           "why": "one process of the plan's layout (each holds the whole model)"}
    if d["parallel"] == "fsdp" and d["processes"] > 1:
        why = f"the plan shards over {d['processes']} GPUs (FSDP), whose share one GPU cannot run"
        try:
            one = training_layout(shape_of(models[cell.model]), work.rank, work.global_batch // d["processes"],
                                  work.tokens, world=1, gpu_gb=gpu.memory_gb, live_teacher=work.live_teacher,
                                  mean_tokens=work.mean_tokens, gpu=gpu)
        except ConfigError as err:
            run = {"micro_batch": None, "checkpointing": None, "why": f"nothing: {why}, and unsharded {err}"}
        else:
            run = {"micro_batch": one.micro_batch, "checkpointing": one.checkpointing,
                   "why": f"one unsharded process (training_layout, world=1): {why}"}
    return {"artifact": path, "train_config": art.spec.train_config(), "tokens": work.tokens, "layout": layout,
            "run": run, "peak_gb": cost.memory_gb}


# --------------------------------------------------------------------------- models and rows


def random_model(shape, arch: str, dtype, device: str):
    """A random-weight causal LM of ``shape`` (no download): transformers' ``from_config`` on the device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(arch, max_position_embeddings=4096, **vars(shape.config()))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def row_name(model: str) -> str:
    """A model's name as ``calibration.yaml``'s rows write it (its ``-instruct`` dropped)."""
    return model.removesuffix("-instruct")


def predicted_row(section: str, row: dict, gpu) -> dict:
    """``row`` with the cost model's ``predicted`` values and their ``error`` (:mod:`pd.cost.rows`)."""
    from pd.cost.rows import errors, predict

    p = predict(section, row, gpu)
    return {**row, "predicted": {k: float(f"{v:.5g}") for k, v in p.items()},  # significant digits: tiny rows
            "error": {k: (None if v is None else round(v, 4)) for k, v in errors(section, row, p).items()}}


def pd_batches(vocab: int, micro: int, tokens, n: int = 2) -> list[dict]:
    """``n`` collated PD batches (pd.train.sequences) of ``micro`` random rows of exactly ``tokens`` lengths."""
    import torch

    from pd.train.sequences import Example, collate

    g = torch.Generator().manual_seed(0)

    def ids(k: int) -> list[int]:
        return torch.randint(5, vocab, (k,), generator=g).tolist()

    out = []
    for b in range(n):
        rows = []
        for r in range(micro):
            answer = ids(tokens.answer)
            rows.append(Example(f"cost{b}-{r}", "pd", ids(tokens.student - tokens.answer), answer,
                                ids(tokens.teacher - tokens.answer)))
        out.append(collate(rows, 0))
    return out


def train_steps(model, cfg, batches: list[dict], device: str, steps: int, warmup: int) -> dict:
    """pd.train.loop's step on each batch in turn: batch_loss (live teacher), backward, clipping, AdamW.

    Returns:
        ``{"peak_gb"`` (CUDA: the most allocated since the optimizer's creation; CPU: None), ``"step_s"`` (median
        after ``warmup`` steps)}.
    """
    import torch

    from pd.train.methods import batch_loss

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    _free(device)
    times = []
    for i in range(warmup + steps):
        batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batches[i % len(batches)].items()}
        _sync(device)
        t0 = time.perf_counter()
        loss, _ = batch_loss(cfg, model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = round(torch.cuda.max_memory_allocated() / 1e9, 2) if device == "cuda" else None
    del opt
    return {"peak_gb": peak, "step_s": round(statistics.median(times), 4)}


def training_row(cell: Cell, plan: dict, args, gpu, device: str, model=None) -> dict:
    """One cell's measured row (calibration.yaml's training fields, ``predicted``, ``error``)."""
    import torch

    from pd.cost.shapes import Tokens, shape_of
    from pd.models import BUILTIN
    from pd.train.lora import attach_lora
    from pd.train.setup import enable_checkpointing

    cfg = plan["train_config"]
    if cfg.teacher_topk:  # the rows measure (and the model predicts) the teacher's forward in every step
        cfg = dataclasses.replace(cfg, teacher_topk=0)
    tokens = plan["tokens"]
    if args.tiny:
        cfg = dataclasses.replace(cfg, rank=TINY["rank"])
        tokens = Tokens(*(min(t, cap) for t, cap in zip((tokens.student, tokens.teacher, tokens.answer),
                                                         TINY["tokens"])))
    name = cell.tiny if args.tiny else cell.model
    shape = shape_of(BUILTIN[name])
    micro, ck = plan["run"]["micro_batch"], plan["run"]["checkpointing"]
    row = {"model": row_name(name), "rank": cfg.rank, "micro": micro,
           "tokens": [tokens.student, tokens.teacher, tokens.answer], "checkpointing": ck,
           "source": f"cost_check {cell.label}: {plan['artifact']}; plan {plan['layout']['processes']} x "
                     f"{plan['layout']['micro_batch']} x {plan['layout']['grad_accum']} "
                     f"{plan['layout']['parallel']}{' ckpt' if plan['layout']['checkpointing'] else ''}; "
                     f"one GPU runs {plan['run']['why']}"}
    if model is None:
        model = random_model(shape, BUILTIN[cell.tiny].architecture if args.tiny else cell.arch,
                             torch.bfloat16, device)
    try:
        if ck:  # as pd.train.setup: on the base model, before the adapter
            enable_checkpointing(model)
        model = attach_lora(model, rank=cfg.rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            target_modules=cfg.target_modules, seed=cfg.seed)
        model.train()
        row.update(train_steps(model, cfg, pd_batches(shape.vocab, micro, tokens), device, args.steps, args.warmup))
    except torch.cuda.OutOfMemoryError as err:
        row.update(peak_gb=None, step_s=None, failed=f"out of memory: {str(err).splitlines()[0][:200]}")
    finally:
        del model
        _free(device)
    return predicted_row("training", row, gpu)


def conversations(tok, spec, n: int, prompt_tokens: int) -> tuple[list, int]:
    """``n`` distinct single-turn conversations whose chat prompts are about ``prompt_tokens`` long, and the
    longest prompt's tokens (left padding makes every row of a batch that long)."""
    from pd.generate.transformers_backend import render_prompt

    sentence = "The river flows through the valley past the old mill. "

    def conv(i: int, k: int) -> list[dict]:
        return [{"role": "user", "content": f"Passage {i}: {sentence * k}Question {i}: where does the river flow?"}]

    def length(c) -> int:
        return len(tok.encode(render_prompt(tok, c, spec.system_prompt), add_special_tokens=False))

    k = 1
    while length(conv(0, k + 1)) <= prompt_tokens:
        k += 1
    convs = [conv(i, k) for i in range(n)]
    return convs, max(length(c) for c in convs)


def decoding_rows(cell: Cell, args, gpu, device: str, model) -> list[dict]:
    """ms per forward call of ``TransformersGenerator.generate`` at each of :data:`DECODE_BATCHES`."""
    import torch

    from pd.cost.generation import decode_batch
    from pd.cost.shapes import Shape
    from pd.generate.base import SamplingParams
    from pd.generate.sizing import MAX_BATCH
    from pd.generate.transformers_backend import TransformersGenerator
    from pd.models import get_spec, load_tokenizer

    sizes = TINY if args.tiny else FULL
    spec = get_spec(cell.tiny)  # its tokenizer and chat template (ids < every vocabulary here): no download
    tok = load_tokenizer(spec)
    convs, prompt = conversations(tok, spec, MAX_BATCH, sizes["prompt"])
    shape = Shape.from_config(model.config)
    params = SamplingParams(max_new_tokens=sizes["new"], seed=0, **SAMPLING)
    rows = []
    for batch in DECODE_BATCHES:
        gen = TransformersGenerator(spec, loaded_model=model, tokenizer=tok, name=f"cost-check:{cell.model}",
                                    batch_size=batch, progress=False)
        gen.stop_ids = [-1]  # random weights: every row decodes max_new_tokens
        rows_n = gen.batch_rows(prompt, sizes["new"])
        row = {"model": row_name(cell.tiny if args.tiny else cell.model), "batch": rows_n, "prompt": prompt,
               "new": sizes["new"], "sampled": True,
               "source": f"cost_check decode batch {batch}" + (" (batch_for_memory)" if batch == "auto" else "")}
        try:
            gen.generate(convs[:rows_n], params)  # warm-up: the same shapes
            _sync(device)
            t0, calls = time.perf_counter(), gen.calls
            gen.generate(convs[:rows_n], params)
            _sync(device)
            row["call_ms"] = round(1000 * (time.perf_counter() - t0) / (gen.calls - calls), 3)
        except torch.cuda.OutOfMemoryError as err:
            row.update(call_ms=None, failed=f"out of memory: {str(err).splitlines()[0][:200]}")
        row = predicted_row("decoding", row, gpu)
        if batch == "auto":
            row["predicted"]["batch"] = decode_batch(shape, "auto", prompt, sizes["new"], gpu=gpu)
        rows.append(row)
        del gen
        _free(device)
    return rows


# --------------------------------------------------------------------------- report


def _pct(e) -> str:
    return "n/a" if e is None else f"{100 * e:+.1f}%"


def print_row(section: str, row: dict, tiny: bool) -> None:
    from pd.cost.rows import MEASURED

    if section == "training":
        what = (f"train {row['model']} r{row['rank']} micro {row['micro']} x {'/'.join(map(str, row['tokens']))} "
                f"tokens{' ckpt' if row['checkpointing'] else ''}")
    else:
        what = f"decode {row['model']} batch {row['batch']} (prompt {row['prompt']}, {row['new']} new, sampled)"
    parts = []
    for f in MEASURED[section]:
        m = row.get(f)
        parts.append(f"{f} {'-' if m is None else m} (model {row['predicted'][f]:.4g}, {_pct(row['error'][f])})")
    flag = ""
    if not tiny and any(e is not None and abs(e) > TOLERANCE for e in row["error"].values()):
        flag = "  OUTSIDE +-15%"
    print(f"{what}: {'; '.join(parts)}{flag}" + (f"  FAILED: {row['failed']}" if row.get("failed") else ""),
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/cost_check.json", help="the JSON written (default: %(default)s)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: the code path, not the model")
    ap.add_argument("--config", default="config.yaml", help="the plan's config (default: %(default)s)")
    ap.add_argument("--experiment", default="main", help="the experiment whose cells are measured")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per cell (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    import torch

    from pd.io import write_json

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    report: dict = {"command": " ".join([Path(sys.executable).name] + sys.argv),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tiny": args.tiny,
                    "versions": {"torch": torch.__version__}, "plan": [], "training": {"rows": []},
                    "decoding": {"rows": []}}
    for mod in ("transformers", "peft"):
        report["versions"][mod] = __import__(mod).__version__
    if device == "cpu" and not args.tiny:
        print("cost check: not measured: no CUDA GPU (use --tiny to run the code path on the CPU)", flush=True)
        report["not_measured"] = "no CUDA GPU"
        write_json(args.out, report)
        return 0
    report["gpu"], gpu = this_gpu(device)
    g = report["gpu"]
    print(f"cost check on {g['name']}" + (f" ({g['memory_gb']} GB, {g['tflops']:g} TFLOP/s, {g['bandwidth_gbs']:g} "
                                          "GB/s)" if g["memory_gb"] else f"; predictions for {g['predicted_for']}"),
          flush=True)
    failed = False
    t_start = time.perf_counter()
    try:
        the_plan, models = load_plan(args.config)
    except Exception as err:  # noqa: BLE001 - the JSON says why nothing was measured
        report["errors"] = [{"cell": "plan", "error": f"{type(err).__name__}: {err}"[:500],
                             "trace": traceback.format_exc()[-2000:]}]
        print(f"cost check: the plan of {args.config} failed: {type(err).__name__}: {err}", flush=True)
        write_json(args.out, report)
        return 1
    for i, cell in enumerate(CELLS):
        try:
            plan = planned(cell, gpu, the_plan, models, args.experiment)
            report["plan"].append({"cell": cell.label, "artifact": plan["artifact"], "layout": plan["layout"],
                                   "run_on_one_gpu": plan["run"], "plan_peak_gb": plan["peak_gb"],
                                   "tokens": list(dataclasses.astuple(plan["tokens"]))})
            lay = plan["layout"]
            print(f"{cell.label}: plan {lay['processes']} x {lay['micro_batch']} x {lay['grad_accum']} "
                  f"{lay['parallel']}{' ckpt' if lay['checkpointing'] else ''} ({plan['peak_gb']} GB per GPU); "
                  f"one GPU runs {plan['run']['why']}", flush=True)
            model = None
            if i == 0:  # the 8B's decode rows first, on the same weights the training row then adapts
                from pd.cost.shapes import shape_of
                from pd.models import BUILTIN

                name = cell.tiny if args.tiny else cell.model
                model = random_model(shape_of(BUILTIN[name]), BUILTIN[name].architecture or cell.arch,
                                     torch.bfloat16, device)
                for row in decoding_rows(cell, args, gpu, device, model):
                    report["decoding"]["rows"].append(row)
                    print_row("decoding", row, args.tiny)
                    failed |= bool(row.get("failed"))
                write_json(args.out, report)
            if plan["run"]["micro_batch"] is None:
                report["plan"][-1]["skipped"] = plan["run"]["why"]
            else:
                row = training_row(cell, plan, args, gpu, device, model)
                report["training"]["rows"].append(row)
                print_row("training", row, args.tiny)
                failed |= bool(row.get("failed"))
            del model
        except Exception as err:  # noqa: BLE001 - record it, go on with the next cell, fail at the end
            failed = True
            report.setdefault("errors", []).append({"cell": cell.label, "error": f"{type(err).__name__}: {err}"[:500],
                                                    "trace": traceback.format_exc()[-2000:]})
            print(f"{cell.label}: FAILED {type(err).__name__}: {err}", flush=True)
        _free(device)
        write_json(args.out, report)
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    errs = [abs(e) for s in ("training", "decoding") for r in report[s]["rows"] for e in r["error"].values()
            if e is not None]
    if errs and args.tiny:
        print("(--tiny: the predictions are for a GPU, the times this CPU's: no errors to judge)", flush=True)
    elif errs:
        print(f"largest error {100 * max(errs):.1f}% ({'within' if max(errs) <= TOLERANCE else 'OUTSIDE'} the "
              f"model's +-15%); refit: python bench/calibrate.py {args.out}", flush=True)
    write_json(args.out, report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
