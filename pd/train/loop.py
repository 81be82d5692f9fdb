"""The training loop: LoRA + AdamW + warmup/decay, checkpoints with exact resume, snapshots.

Data order is a pure function of (seed, step): epoch e visits the examples in the order
of a permutation drawn from a generator seeded with (seed, e), regrouped into batches of
similar length (:mod:`pd.train.buckets`, ``bucket_batches``) by a generator seeded the
same way, and optimizer step s takes the s-th slice of it. A checkpoint therefore needs
only the step number as its data position; together with the adapter, the optimizer, the
scheduler and the RNG states it makes a resumed run bit-identical to an uninterrupted one
(on CPU).

Data parallelism goes through ``accelerate`` (DDP when launched on several processes):
each process takes its own rows of the global batch; ``batch_size`` is per process.
With ``parallel: fsdp`` the processes shard the model instead of replicating it
(:mod:`pd.train.fsdp`); the data split, the loss and the saved files are the same.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pd.data import Dataset
from pd.errors import ConfigError, DataError
from pd.io import atomic_path, stable_hash
from pd.models import ModelSpec, check_same_vocabulary, load_model, load_tokenizer
from pd.train.buckets import bucketed_order, sort_length
from pd.train import fsdp as sharding
from pd.train.lora import META_FILE, adapter_state, attach_lora, load_adapter_state, save_adapter, write_adapter_folder
from pd.train.methods import TrainingData, batch_loss, build_cache, build_training_data
from pd.train.sequences import Example, Tokens, collate, count_tokens
from pd.train.settings import TrainConfig
from pd.train.teacher import TeacherCache, check_teacher, load_teacher_cache, unwrap

log = logging.getLogger("pd.train")

LOG_FILE = "train_log.jsonl"
# Settings that do not change what is computed: a checkpoint stays valid when only these differ.
_BOOKKEEPING = ("checkpoint_every", "snapshot_seconds", "snapshot_interval", "log_every", "progress",
                "keep_checkpoints", "max_steps", "max_seconds")


@dataclass
class TrainResult:
    adapter_dir: Path | None  # None when the run stopped at ``stop_after`` (a simulated interruption)
    steps: int
    meta: dict
    model: object = None  # the trained PeftModel (unwrapped), for evaluation right after training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def snapshot_name(seconds: float) -> str:
    """Folder name of the adapter snapshot taken at ``seconds`` of training wall-clock."""
    return f"t{int(round(seconds))}"


def snapshot_folder(adapter_dir: str | os.PathLike, seconds: float) -> Path:
    """The adapter as it was ``seconds`` into training.

    A snapshot folder when one was taken; the final adapter when the run ended before
    that time (it did not change afterwards); otherwise a DataError naming what exists.
    """
    adapter_dir = Path(adapter_dir)
    snap = adapter_dir / "snapshots" / snapshot_name(seconds)
    if (snap / "adapter_config.json").is_file():
        return snap
    meta_path = adapter_dir / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("stopped_by") == "steps" and float(meta.get("wall_clock_s", float("inf"))) <= float(seconds):
            return adapter_dir
    have = sorted(p.name for p in (adapter_dir / "snapshots").glob("t*")) if (adapter_dir / "snapshots").is_dir() else []
    raise DataError(f"{adapter_dir} has no snapshot at {seconds} s (have: {have or 'none'}); train with "
                    f"training.snapshot_seconds including {seconds}")


# --------------------------------------------------------------------------- schedule and data order


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup from 0 over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


class Plan:
    """Which example indices every process uses at every optimizer step."""

    def __init__(self, cfg: TrainConfig, n_examples: int, n_reg: int, world: int, rank: int,
                 lengths: Sequence[int] | None = None):
        self.cfg, self.n, self.n_reg, self.world, self.rank = cfg, n_examples, n_reg, world, rank
        if lengths is not None and len(lengths) != n_examples:
            raise DataError(f"Plan: {len(lengths)} lengths for {n_examples} examples")
        self.lengths = lengths  # per example, for length bucketing (None: plain shuffle)
        self._epoch_order: tuple[int, list[int]] | None = None
        self.rows = cfg.batch_size - cfg.reg_rows  # passage rows per micro-batch
        self.global_rows = self.rows * cfg.grad_accum * world
        self.steps_per_epoch = math.ceil(n_examples / self.global_rows)
        epoch_steps = math.ceil(cfg.epochs * self.steps_per_epoch)
        self.total = cfg.max_steps if cfg.max_steps is not None else epoch_steps
        self.warmup = min(self.total, cfg.warmup_steps + round(cfg.warmup_epochs * self.steps_per_epoch))

    def _gen(self, tag: str, k: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(stable_hash([tag, self.cfg.seed, k], 15), 16))

    def _perm(self, tag: str, k: int, n: int) -> list[int]:
        return torch.randperm(n, generator=self._gen(tag, k)).tolist()

    def epoch_order(self, epoch: int) -> list[int]:
        """All example indices in the order epoch ``epoch`` visits them (global batches back to back)."""
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            perm = self._perm("epoch", epoch, self.n)
            if self.lengths is not None and self.cfg.bucket_batches > 1:
                perm = bucketed_order(perm, self.lengths, self.global_rows, self.cfg.bucket_batches,
                                      self._gen("buckets", epoch))
            self._epoch_order = (epoch, perm)
        return self._epoch_order[1]

    def micro_batches(self, step: int) -> list[tuple[list[int], list[int]]]:
        """This process's micro-batches at ``step``: (passage example indices, instruction indices)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self.epoch_order(epoch)
        idx = perm[k * self.global_rows:(k + 1) * self.global_rows]
        if self.world > 1 and len(idx) < self.global_rows:  # every process needs rows: wrap around
            idx = (idx + perm * math.ceil(self.global_rows / self.n))[: self.global_rows]
        out = []
        reg_rows = self.cfg.reg_rows
        for m in range(self.cfg.grad_accum):
            slot = m * self.world + self.rank
            rows = idx[slot * self.rows:(slot + 1) * self.rows]
            if not rows:
                continue
            reg = []
            if reg_rows:
                start = ((step * self.cfg.grad_accum + m) * self.world + self.rank) * reg_rows
                for i in range(start, start + reg_rows):
                    cycle, j = divmod(i, self.n_reg)
                    reg.append(self._perm("reg", cycle, self.n_reg)[j])
            out.append((rows, reg))
        return out


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _run_key(cfg: TrainConfig, spec: ModelSpec, data_hash: str, world: int, teacher: str) -> str:
    settings = {k: v for k, v in cfg.as_dict().items() if k not in _BOOKKEEPING}
    return stable_hash({"settings": settings, "model": dataclasses.asdict(spec), "data": data_hash, "world": world,
                        "teacher": teacher})


def _checkpoints(work: Path) -> list[Path]:
    folder = work / "checkpoints"
    return sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if folder.is_dir() else []


def _save_checkpoint(work: Path, model, optimizer, scheduler, state: dict, keep_old: bool = False,
                     gathered: tuple[dict, dict] | None = None) -> Path:
    """``gathered``: (LoRA state dict, optimizer state dict) already gathered from a sharded model."""
    from safetensors.torch import save_file

    target = work / "checkpoints" / f"step-{state['step']:08d}"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        save_file(adapter_state(model, gathered and gathered[0]), str(tmp / "adapter.safetensors"))
        torch.save(gathered[1] if gathered else optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({**state, "scheduler": scheduler.state_dict(), "rng": _rng_state()}, tmp / "state.pt")
    if not keep_old:
        for old in _checkpoints(work):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    return target


def _load_checkpoint(folder: Path, model, optimizer, scheduler, run_key: str, sharded: bool = False) -> dict:
    from safetensors.torch import load_file

    state = torch.load(folder / "state.pt", weights_only=False)
    if state.get("run_key") != run_key:
        raise ConfigError(f"{folder} is a checkpoint of a different run (other settings, model or data); "
                          "delete the work folder or train with resume=False")
    device = next(p for p in unwrap(model).parameters() if p.requires_grad).device
    adapter = {k: v.to(device) for k, v in load_file(str(folder / "adapter.safetensors")).items()}
    optim_state = torch.load(folder / "optimizer.pt", weights_only=False)
    if sharded:  # every rank reads the full tensors and keeps its slice
        sharding.load_full_adapter_state(model, adapter)
        sharding.load_full_optimizer_state(optimizer, optim_state)
    else:
        load_adapter_state(model, adapter)
        optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state


# --------------------------------------------------------------------------- the loop


def _teacher_label(cfg: TrainConfig, teacher_spec: ModelSpec | None, caches: list[TeacherCache]) -> str:
    if not cfg.uses_kl:
        return "none"
    who = teacher_spec.name if teacher_spec is not None else "self (adapter off)"
    if caches:
        return f"{who}, cached top-{caches[0].k} (key {caches[0].meta.get('key')})"
    return who


def _teacher_caches(cfg: TrainConfig, model, data: TrainingData, tokens: Tokens, teacher_model, given,
                    work: Path, accelerator) -> list[TeacherCache]:
    """The cache passed in (object or path), or one built now when ``teacher_topk`` asks for it."""
    if given is not None:
        return [given if isinstance(given, TeacherCache) else load_teacher_cache(given)]
    if not cfg.uses_kl or cfg.teacher_topk < 1:
        return []
    path = work / "teacher_cache.safetensors"
    if accelerator.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        build_cache(cfg, model, data, tokens, teacher_model=teacher_model, out=path)
    accelerator.wait_for_everyone()
    cache = load_teacher_cache(path)
    log.info("teacher cache: top-%d, covered teacher mass %.4f at T=%g", cache.k, cache.meta["covered_mass"],
             cfg.kd_temperature)
    return [cache]


def _tokens_in(batch: dict, live_teacher: bool) -> int:
    n = int(batch["student_attention_mask"].sum())
    if live_teacher and "teacher_attention_mask" in batch:
        n += int(batch["teacher_attention_mask"].sum())
    return n


def train(cfg: TrainConfig, spec: ModelSpec, out_dir: str | os.PathLike, *, rows: Sequence[dict] | None = None,
          dataset: Dataset | None = None, instruction_pairs: Sequence[dict] | None = None,
          work_dir: str | os.PathLike | None = None, teacher_spec: ModelSpec | None = None, teacher_cache=None,
          resume: bool = True, stop_after: int | None = None, device: str | None = None) -> TrainResult:
    """Train an adapter for ``cfg.method`` and write it to ``out_dir`` (atomically).

    ``rows``: answer rows from the generation step; ``dataset``: the passages;
    ``instruction_pairs``: pd_reg's instruction data (else loaded from ``cfg.reg_data``).
    ``work_dir`` (default ``<out_dir>.work``) holds checkpoints, snapshots and the step
    log while training; a run finds its latest checkpoint there and resumes from it.
    ``teacher_spec``: a different teacher network (same vocabulary, checked);
    ``teacher_cache``: a :class:`TeacherCache` or its path (built by the workflow); without
    one, ``cfg.teacher_topk > 0`` builds it in the work folder before the first step.
    ``stop_after``: save a checkpoint after that many steps and return (tests use it
    to interrupt a run).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".work")
    # On a machine without GPUs, accelerate only sets up multi-process (gloo) DDP when told cpu=True.
    accelerator = Accelerator(cpu=device == "cpu" or (device is None and not torch.cuda.is_available()))
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    dev = accelerator.device
    sharded = cfg.parallel == "fsdp" and world > 1
    if cfg.parallel == "fsdp" and world == 1:
        log.warning("training.parallel: fsdp with one process: nothing to shard, training unsharded")
    if sharded and cfg.uses_kl and cfg.teacher_topk > 0 and teacher_cache is None:
        raise ConfigError("training.parallel: fsdp cannot build the teacher cache inside the run (that pass runs on "
                          "one process); build it first (the workflow's teacher job, or pd.train.methods.build_cache) "
                          "and pass it as teacher_cache, or use training.teacher_topk: 0")
    if cfg.uses_kl and teacher_cache is not None and teacher_spec is not None:
        raise ConfigError("give either a teacher model or a teacher cache, not both")
    if not cfg.uses_kl and (teacher_spec is not None or teacher_cache is not None):
        raise ConfigError(f"method {cfg.method} trains on answer tokens and uses no teacher")

    seed_everything(cfg.seed)
    tok = load_tokenizer(spec)
    tokens = Tokens(tok, spec)
    data: TrainingData = build_training_data(cfg, tokens, rows=rows, dataset=dataset,
                                             instruction_pairs=instruction_pairs)
    data_hash = data.content_hash()

    model = load_model(spec, device=str(dev))
    teacher_model = None
    if teacher_spec is not None:
        teacher_tok = load_tokenizer(teacher_spec)
        check_same_vocabulary(tok, teacher_tok, spec.name, teacher_spec.name)
        teacher_model = load_model(teacher_spec, device=str(dev))
        teacher_model.requires_grad_(False)
        check_teacher(model, teacher_model, student_tokenizer=tok, teacher_tokenizer=teacher_tok,
                      student_name=spec.name, teacher_name=teacher_spec.name)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = attach_lora(model, rank=cfg.rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        target_modules=cfg.target_modules, seed=cfg.seed)
    model.train()
    if sharded:  # before the optimizer exists: it must hold the sharded parameters
        model = sharding.shard_model(model, dev)
        if teacher_model is not None:
            teacher_model = sharding.shard_model(teacher_model, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    plan = Plan(cfg, len(data.examples), len(data.reg), world, rank, lengths=[sort_length(e) for e in data.examples])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, plan.warmup, plan.total))
    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)

    caches = _teacher_caches(cfg, model, data, tokens, teacher_model, teacher_cache, work, accelerator)
    teacher_name = _teacher_label(cfg, teacher_spec, caches)
    run_key = _run_key(cfg, spec, data_hash, world, teacher_name)
    start, elapsed0, tokens_total, taken, resumed_from = 0, 0.0, 0, [], None
    found = _checkpoints(work) if resume else []
    if found:
        state = _load_checkpoint(found[-1], model, optimizer, scheduler, run_key, sharded)
        start, elapsed0, tokens_total, taken = state["step"], state["elapsed"], state["tokens_total"], state["snapshots"]
        resumed_from = start
        log.info("resumed from %s (step %d of %d)", found[-1], start, plan.total)
    elif main and work.exists() and not resume:
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()

    log_path = work / LOG_FILE
    if main:
        work.mkdir(parents=True, exist_ok=True)
        _trim_log(log_path, start)
    thresholds = sorted(set(float(s) for s in cfg.snapshot_seconds))
    live_teacher = cfg.uses_kl and not caches
    last_metrics: list[dict] = []
    bar = tqdm(total=plan.total, initial=start, disable=not (main and cfg.progress), desc=f"{cfg.method}",
               dynamic_ncols=True)
    t0 = time.monotonic()
    stopped_by = "steps"
    step = start
    try:
        while step < plan.total:
            t_step = time.monotonic()
            micro = plan.micro_batches(step)
            n_rows = sum(len(r) + len(g) for r, g in micro)
            sums: dict[str, float] = {}
            step_tokens = answer_tokens = 0
            for m, (idx, reg_idx) in enumerate(micro):
                examples: list[Example] = [data.examples[i] for i in idx] + [data.reg[i] for i in reg_idx]
                batch = _to_device(collate(examples, tokens.pad_id), dev)
                sync = m == len(micro) - 1
                if sharded:
                    sharding.gradient_sync(model, sync)
                ctx = accelerator.no_sync(model) if (not sync and world > 1 and not sharded) else _nullcontext()
                with ctx:
                    loss, metrics = batch_loss(cfg, model, batch, teacher_model=teacher_model, caches=caches)
                    weight = len(examples) / n_rows
                    accelerator.backward(loss * weight)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v * weight
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * weight
                step_tokens += _tokens_in(batch, live_teacher)
                answer_tokens += int(batch["answer_mask"].sum())
            if sharded:
                grad_norm = sharding.clip_grad_norm(params, cfg.max_grad_norm)
            else:
                grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            reduced = _reduce(accelerator, sums, step_tokens, answer_tokens)
            tokens_total += reduced["tokens"]
            elapsed = elapsed0 + (time.monotonic() - t0)
            if sharded:  # timed snapshots and the time budget gather collectively: all ranks must agree
                elapsed = sharding.agree(elapsed, dev)
            row = {"step": step, "epoch": round(step / plan.steps_per_epoch, 4), **reduced["metrics"], "lr": lr,
                   "grad_norm": float(grad_norm), "tokens": reduced["tokens"], "answer_tokens": reduced["answer_tokens"],
                   "tokens_total": tokens_total, "elapsed": round(elapsed, 3),
                   "tokens_per_s": round(reduced["tokens"] / max(time.monotonic() - t_step, 1e-9), 1)}
            last_metrics.append(row)
            last_metrics = last_metrics[-plan.steps_per_epoch:]
            if main and (step % cfg.log_every == 0 or step == plan.total):
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")

            due = [t for t in thresholds if t <= elapsed and t not in taken]
            if cfg.snapshot_interval > 0:
                k = int(elapsed // cfg.snapshot_interval)
                due += [i * cfg.snapshot_interval for i in range(1, k + 1) if i * cfg.snapshot_interval not in taken]
            for t in sorted(set(due)):
                gathered = sharding.full_adapter_state(model) if sharded else None
                if main:
                    _snapshot(model, work, t, step, elapsed, gathered)
                taken.append(t)

            state = {"step": step, "elapsed": elapsed, "tokens_total": tokens_total, "snapshots": taken,
                     "run_key": run_key}
            interrupted = stop_after is not None and step >= stop_after and step < plan.total
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < plan.total) or interrupted:
                gathered = ((sharding.full_adapter_state(model), sharding.full_optimizer_state(optimizer))
                            if sharded else None)
                if main:
                    _save_checkpoint(work, model, optimizer, scheduler, state, keep_old=cfg.keep_checkpoints,
                                     gathered=gathered)
                accelerator.wait_for_everyone()
            if interrupted:
                bar.close()
                return TrainResult(None, step, {"stopped_at": step}, unwrap(model))
            if cfg.max_seconds is not None and elapsed >= cfg.max_seconds:
                stopped_by = "max_seconds"
                break
    finally:
        bar.close()

    elapsed = elapsed0 + (time.monotonic() - t0)
    final = {k: float(np.mean([r[k] for r in last_metrics if k in r])) for k in last_metrics[0]
             if k in ("loss", "kl", "ce") or k.startswith(("kl_", "ce_"))} if last_metrics else {}
    meta = {
        "method": cfg.method, "model": spec.name, "model_spec": dataclasses.asdict(spec), "teacher": teacher_name,
        "config": cfg.as_dict(), "kl_direction": cfg.direction if cfg.uses_kl else None,
        "data_hash": data_hash, "examples": len(data.examples), "instruction_examples": len(data.reg),
        "sequence_stats": [s.as_dict() for s in data.stats], "sequence_tokens": count_tokens(data.examples),
        "steps": step, "total_steps": plan.total, "steps_per_epoch": plan.steps_per_epoch, "warmup_steps": plan.warmup,
        "epochs_done": round(step / plan.steps_per_epoch, 4), "stopped_by": stopped_by, "tokens": tokens_total,
        "wall_clock_s": round(elapsed, 3), "final": final, "final_step": last_metrics[-1] if last_metrics else None,
        "resumed_from_step": resumed_from, "world_size": world, "sharded": sharded, "device": str(dev),
        "dtype": str(next(unwrap(model).parameters()).dtype).replace("torch.", ""),
        "snapshots": {snapshot_name(t): t for t in taken},
        "teacher_cache": ({k: caches[0].meta.get(k) for k in ("key", "k", "temperature", "covered_mass", "covered_mass_t1",
                                                               "answer_tokens", "logprob_dtype")} if caches else None),
        "versions": _versions(),
    }
    adapter_dir = None
    gathered = sharding.full_adapter_state(model) if sharded else None
    if main:
        adapter_dir = write_adapter_folder(model, out_dir, meta, extra_files={LOG_FILE: log_path},
                                           extra_dirs={"snapshots": work / "snapshots"}, state_dict=gathered)
        if not cfg.keep_checkpoints:
            shutil.rmtree(work, ignore_errors=True)
    accelerator.wait_for_everyone()
    return TrainResult(adapter_dir or out_dir, step, meta, unwrap(model))


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _to_device(batch: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _reduce(accelerator, sums: dict, tokens: int, answer_tokens: int) -> dict:
    """Metrics averaged and token counts summed over processes."""
    if accelerator.num_processes == 1:
        return {"metrics": sums, "tokens": tokens, "answer_tokens": answer_tokens}
    keys = sorted(sums)
    vals = torch.tensor([sums[k] for k in keys] + [float(tokens), float(answer_tokens)], device=accelerator.device,
                        dtype=torch.float64)
    vals = accelerator.reduce(vals, reduction="sum")
    n = accelerator.num_processes
    return {"metrics": {k: float(vals[i]) / n for i, k in enumerate(keys)}, "tokens": int(vals[-2]),
            "answer_tokens": int(vals[-1])}


def _trim_log(path: Path, step: int) -> None:
    """Keep only the log lines up to ``step`` (a resumed run rewrites what came after)."""
    if not path.is_file():
        return
    if step == 0:
        path.unlink()
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _snapshot(model, work: Path, seconds: float, step: int, elapsed: float, gathered: dict | None = None) -> None:
    from pd.io import write_json

    target = work / "snapshots" / snapshot_name(seconds)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        save_adapter(model, tmp, gathered)
        write_json(tmp / "pd_meta.json", {"snapshot_seconds": seconds, "elapsed": elapsed, "step": step})


def _versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
