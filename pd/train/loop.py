"""The training loop: LoRA + AdamW + warmup/decay, with checkpoints, exact resume and snapshots.

:func:`train` runs in four parts, each a function of its own:

* setup (:mod:`pd.train.setup`): training sequences, the student with a fresh adapter,
  an optional separate teacher, the optimizer, the schedule (:mod:`pd.train.schedule`)
  and the teacher cache; then resume from the work folder's latest checkpoint;
* one optimizer step (:func:`_optimizer_step`): the step's micro-batches, gradient
  accumulation, clipping and the update;
* after each step (:func:`_after_step`): the log line, due snapshots and checkpoints
  (:mod:`pd.train.checkpoint`): every ``checkpoint_every`` steps, every ``checkpoint_minutes``
  and, on SIGTERM, one at the end of the current step before the run stops
  (:mod:`pd.train.interrupt`);
* finish (:func:`_finish`): the adapter folder with ``pd_meta.json``, the step log and
  the snapshots.

With ``training.log_with`` every step-log line also goes to the trackers
(:mod:`pd.train.trackers`).

How the processes cooperate (one process, DDP or FSDP) is the business of one
:class:`~pd.train.parallel.Processes` object; the loop is the same for all three.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pd.data import Dataset
from pd.models import ModelSpec
from pd.train.checkpoint import Progress, save_checkpoint, save_snapshot, snapshot_name
from pd.train.interrupt import CheckpointClock, StopSignal
from pd.train.lora import adapter_state, write_adapter_folder
from pd.train.methods import batch_loss
from pd.train.parallel import start_processes
from pd.train.sequences import Example, collate, count_tokens
from pd.train.settings import TrainConfig
from pd.train.setup import TrainingRun, resume_run, setup_run
from pd.train.teacher import unwrap
from pd.train.trackers import Trackers, check_trackers, clear_work, tracker_dir

log = logging.getLogger("pd.train")

LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``adapter_dir``: the adapter folder (None when the run stopped at ``stop_after``, a
    simulated interruption); ``steps``: optimizer steps taken; ``meta``: the contents of
    ``pd_meta.json``; ``model``: the trained PeftModel (unwrapped), for evaluation right
    after training.
    """

    adapter_dir: Path | None
    steps: int
    meta: dict
    model: object = None


def train(cfg: TrainConfig, spec: ModelSpec, out_dir: str | os.PathLike, *, rows: Sequence[dict] | None = None,
          dataset: Dataset | None = None, instruction_pairs: Sequence[dict] | None = None,
          work_dir: str | os.PathLike | None = None, teacher_spec: ModelSpec | None = None, teacher_cache=None,
          resume: bool = True, stop_after: int | None = None, device: str | None = None,
          min_steps: int = 0) -> TrainResult:
    """Train an adapter for ``cfg.method`` and write it to ``out_dir`` (atomically).

    Args:
        cfg: the training settings.
        spec: the student model.
        out_dir: the adapter folder to write.
        rows: answer rows from the generation step (all methods but uft).
        dataset: the passages.
        instruction_pairs: pd_reg's instruction data (default: loaded from ``cfg.reg_data``).
        work_dir: checkpoints, snapshots and the step log while training (default
            ``<out_dir>.work``); a run finds its latest checkpoint there and resumes from it.
        teacher_spec: a different teacher network (same vocabulary, checked).
        teacher_cache: a :class:`~pd.train.teacher_cache.TeacherCache` or its path (built by
            the workflow); without one, ``cfg.teacher_topk > 0`` builds it in the work
            folder before the first step.
        resume: resume from the latest checkpoint (False: start over, removing checkpoints).
        stop_after: save a checkpoint after that many steps and return (a simulated interruption).
        device: "cpu" to train on the CPU; None: a GPU when there is one.
        min_steps: refuse, before any model is loaded, a run of fewer optimizer steps than this, counted from
            the real examples (the adapter job passes ``training.min_steps``; 0: no minimum). ``pd_meta.json``
            records it, and a report marks an adapter that took fewer.

    Returns:
        The :class:`TrainResult`.

    Raises:
        ConfigError: contradictory teacher inputs, a checkpoint of another run, or fewer steps than ``min_steps``.
        CheckpointError: a checkpoint file that cannot be loaded safely.
        TrainingInterrupted: SIGTERM arrived while training; a checkpoint of the step it ended was saved.
        DataError: no usable training data.
        VocabularyMismatchError: the teacher's vocabulary differs from the student's.
    """
    from pd.progress import bar as progress_bar
    from pd.progress import job_label

    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".work")
    check_trackers(cfg.log_with)
    procs = start_processes(device, log_with=cfg.log_with, project_dir=tracker_dir(work) if cfg.log_with else None)
    run = setup_run(cfg, spec, procs, work, rows=rows, dataset=dataset, instruction_pairs=instruction_pairs,
                    teacher_spec=teacher_spec, teacher_cache=teacher_cache, min_steps=min_steps)
    procs = run.procs  # as the resolved layout shares the model (ddp or fsdp)
    progress, resumed_from = resume_run(run, resume)
    if procs.is_main:
        work.mkdir(parents=True, exist_ok=True)
        _trim_log(work / LOG_FILE, progress.step)
    recent: list[dict] = []  # the last epoch's log rows, for the final metrics
    bar = progress_bar(run.schedule.total, "train", initial=progress.step, enabled=procs.is_main and cfg.progress,
                       label=job_label(f"{cfg.method} seed {cfg.seed} ({out_dir.name})"))
    trackers = Trackers(procs.accelerator, cfg.log_with, out_dir.name, cfg.as_dict())
    t0, elapsed0 = time.monotonic(), progress.elapsed
    stopped_by = "steps"
    # --- checkpoints by wall clock and on SIGTERM (pd.train.interrupt)
    clock, stop = CheckpointClock(cfg.checkpoint_minutes), StopSignal().install()
    try:
        while progress.step < run.schedule.total:
            t_step = time.monotonic()
            result = _optimizer_step(run, progress.step)
            progress.step += 1
            progress.tokens_total += result["tokens"]
            progress.elapsed = procs.agree(elapsed0 + (time.monotonic() - t0))
            row = _log_row(run, progress, result, time.monotonic() - t_step)
            recent = (recent + [row])[-run.schedule.steps_per_epoch:]
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            timed, signalled = procs.agree_any(clock.due(), stop.received is not None)
            if _after_step(run, progress, row, stop_after, trackers,
                           save=signalled or (timed and progress.step < run.schedule.total)):
                return TrainResult(None, progress.step, {"stopped_at": progress.step}, unwrap(run.model))
            if signalled:
                raise stop.interrupted(progress.step, run.schedule.total, run.work)
            if timed:
                clock.reset()
            if cfg.max_seconds is not None and progress.elapsed >= cfg.max_seconds:
                stopped_by = "max_seconds"
                break
    finally:
        stop.restore()
        bar.close()
        trackers.finish()
    meta = _meta(run, progress, recent, stopped_by=stopped_by, resumed_from=resumed_from,
                 elapsed=elapsed0 + (time.monotonic() - t0), min_steps=min_steps)
    return _finish(run, out_dir, meta, progress.step)


# --------------------------------------------------------------------------- one step


def _optimizer_step(run: TrainingRun, step: int) -> dict:
    """Forward and backward over the step's micro-batches, clip, update.

    Each micro-batch's loss (a mean over its rows) is weighted by its share of the process's rows in the
    step, so the accumulated gradient is the gradient of the mean over all of them: the same as one
    micro-batch of the whole share, and, averaged over the processes (each holds the same number of rows),
    as one batch of the global batch.

    Returns:
        ``{"metrics", "tokens", "answer_tokens"}`` reduced over processes
        (:meth:`~pd.train.parallel.Processes.reduce_metrics`), plus the step's ``lr`` and
        ``grad_norm`` (before clipping).
    """
    cfg, procs = run.cfg, run.procs
    micro = [[run.data.examples[i] for i in idx] + [run.data.reg[i] for i in reg_idx]
             for idx, reg_idx in run.schedule.micro_batches(step)]
    n_rows = sum(_trained_rows(examples) for examples in micro)
    live_teacher = cfg.uses_kl and not run.caches
    name = "kl" if cfg.uses_kl else "ce"
    # Every process sums the same metrics (a collective reduces them): per kind of row when the data mixes kinds.
    kinds = run.data.kinds if len(run.data.kinds) > 1 else []
    keys = ["loss", name] + [f"{name}_{k}" for k in kinds]
    totals, counts = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0.0)
    tokens = answer_tokens = 0
    for m, examples in enumerate(micro):
        batch = _to_device(collate(examples, run.tokens.pad_id), procs.device)
        n = _trained_rows(examples)
        with procs.micro_batch(run.model, last=m == len(micro) - 1):
            loss, metrics = batch_loss(cfg, run.model, batch, teacher_model=run.teacher_model, caches=run.caches)
            procs.backward(loss * (n / n_rows))
        _add(totals, counts, "loss", float(loss.detach()), n)
        _add(totals, counts, name, metrics[name], n)
        if kinds:
            per_kind = Counter(e.kind for e in examples if e.answer_ids)
            for kind, k_rows in per_kind.items():  # a micro-batch of one kind: its metric is the kind's
                _add(totals, counts, f"{name}_{kind}", metrics.get(f"{name}_{kind}", metrics[name]), k_rows)
        tokens += _tokens_in(batch, live_teacher)
        answer_tokens += int(batch["answer_mask"].sum())
    grad_norm = procs.clip_grad_norm(run.params, cfg.max_grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {**procs.reduce_metrics(totals, counts, tokens, answer_tokens), "lr": lr, "grad_norm": grad_norm}


def _trained_rows(examples: list[Example]) -> int:
    """Rows with an answer token: those the loss averages over (:func:`pd.train.methods.batch_loss`)."""
    return sum(1 for e in examples if e.answer_ids)


def _add(totals: dict[str, float], counts: dict[str, float], key: str, mean: float, rows: int) -> None:
    """Add a micro-batch's metric (its mean over ``rows`` rows) to the step's sums."""
    totals[key] += mean * rows
    counts[key] += rows


def _log_row(run: TrainingRun, progress: Progress, result: dict, seconds: float) -> dict:
    """The step's line of the step log (``train_log.jsonl``)."""
    return {"step": progress.step, "epoch": round(progress.step / run.schedule.steps_per_epoch, 4),
            **result["metrics"], "lr": result["lr"], "grad_norm": float(result["grad_norm"]),
            "tokens": result["tokens"], "answer_tokens": result["answer_tokens"],
            "tokens_total": progress.tokens_total, "elapsed": round(progress.elapsed, 3),
            "tokens_per_s": round(result["tokens"] / max(seconds, 1e-9), 1)}


def _after_step(run: TrainingRun, progress: Progress, row: dict, stop_after: int | None,
                trackers: Trackers, save: bool = False) -> bool:
    """Log line (to the step log and the trackers), due snapshots and checkpoint after a step (``save``: a
    checkpoint whatever the step); True when the run is to stop here (``stop_after``)."""
    cfg, procs, step, total = run.cfg, run.procs, progress.step, run.schedule.total
    if step % cfg.log_every == 0 or step == total:
        if procs.is_main:
            with open(run.work / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        trackers.log(row)  # accelerate logs on the main process only
    for t in _snapshots_due(cfg, progress):
        gathered = procs.gather_adapter(run.model)
        if procs.is_main:
            save_snapshot(run.model, run.work, t, step, progress.elapsed, gathered)
        progress.snapshots.append(t)
    interrupted = stop_after is not None and step >= stop_after and step < total
    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total) or interrupted or save:
        adapter, optimizer_state = procs.gather_adapter(run.model), procs.gather_optimizer(run.optimizer)
        if procs.is_main:
            save_checkpoint(run.work, progress, run.key, adapter_state(run.model, adapter), optimizer_state,
                            run.scheduler, keep_old=cfg.keep_checkpoints)
        procs.barrier()
    return interrupted


def _snapshots_due(cfg: TrainConfig, progress: Progress) -> list[float]:
    """Snapshot times passed by now and not yet taken, in order."""
    taken, elapsed = progress.snapshots, progress.elapsed
    due = [t for t in sorted(set(float(s) for s in cfg.snapshot_seconds)) if t <= elapsed and t not in taken]
    if cfg.snapshot_interval > 0:
        k = int(elapsed // cfg.snapshot_interval)
        due += [i * cfg.snapshot_interval for i in range(1, k + 1) if i * cfg.snapshot_interval not in taken]
    return sorted(set(due))


# --------------------------------------------------------------------------- finish


def _meta(run: TrainingRun, progress: Progress, recent: list[dict], *, stopped_by: str, resumed_from: int | None,
          elapsed: float, min_steps: int) -> dict:
    """The contents of ``pd_meta.json`` (``min_steps``: the minimum the run was held to)."""
    cfg, spec, data, schedule, step = run.cfg, run.spec, run.data, run.schedule, progress.step
    final = {k: float(np.mean([r[k] for r in recent if k in r])) for k in recent[0]
             if k in ("loss", "kl", "ce") or k.startswith(("kl_", "ce_"))} if recent else {}
    cache_meta = run.caches[0].meta if run.caches else None
    return {
        "method": cfg.method, "model": spec.name, "model_spec": dataclasses.asdict(spec), "teacher": run.teacher_name,
        "config": cfg.as_dict(), "kl_direction": cfg.direction if cfg.uses_kl else None,
        "data_hash": run.data_hash, "examples": len(data.examples), "instruction_examples": len(data.reg),
        "sequence_stats": [s.as_dict() for s in data.stats], "sequence_tokens": count_tokens(data.examples),
        "steps": step, "min_steps": min_steps, "total_steps": schedule.total,
        "steps_per_epoch": schedule.steps_per_epoch,
        "warmup_steps": schedule.warmup, "epochs_done": round(step / schedule.steps_per_epoch, 4),
        "stopped_by": stopped_by, "tokens": progress.tokens_total, "wall_clock_s": round(elapsed, 3),
        "final": final, "final_step": recent[-1] if recent else None, "resumed_from_step": resumed_from,
        "world_size": run.procs.world, "sharded": run.procs.sharded, "device": str(run.procs.device),
        "layout": run.fit.as_dict(),
        "dtype": str(next(unwrap(run.model).parameters()).dtype).replace("torch.", ""),
        "snapshots": {snapshot_name(t): t for t in progress.snapshots},
        "teacher_cache": ({k: cache_meta.get(k) for k in ("key", "k", "temperature", "covered_mass", "covered_mass_t1",
                                                          "answer_tokens", "logprob_dtype")} if cache_meta else None),
        "versions": _versions(),
    }


def _finish(run: TrainingRun, out_dir: Path, meta: dict, steps: int) -> TrainResult:
    """Write the adapter folder (main process), remove the work folder unless kept."""
    gathered = run.procs.gather_adapter(run.model)
    adapter_dir = None
    if run.procs.is_main:
        adapter_dir = write_adapter_folder(run.model, out_dir, meta, extra_files={LOG_FILE: run.work / LOG_FILE},
                                           extra_dirs={"snapshots": run.work / "snapshots"}, state_dict=gathered)
        if not run.cfg.keep_checkpoints:
            clear_work(run.work, keep_trackers=bool(run.cfg.log_with))
    run.procs.barrier()
    return TrainResult(adapter_dir or out_dir, steps, meta, unwrap(run.model))


def _to_device(batch: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _tokens_in(batch: dict, live_teacher: bool) -> int:
    """Tokens run through the models for this batch: the student view, plus the teacher view when it runs live."""
    n = int(batch["student_attention_mask"].sum())
    if live_teacher and "teacher_attention_mask" in batch:
        n += int(batch["teacher_attention_mask"].sum())
    return n


def _trim_log(path: Path, step: int) -> None:
    """Keep only the log lines up to ``step`` (a resumed run rewrites what came after)."""
    if not path.is_file():
        return
    if step == 0:
        path.unlink()
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
