"""Setting up a training run: data, models, optimizer, schedule, teacher cache, resume.

:func:`setup_run` builds a :class:`TrainingRun` (everything the loop in
:mod:`pd.train.loop` needs) in an order that fixes every random draw, so a run and its
resumed continuation start from the same state; :func:`resume_run` then loads the work
folder's latest checkpoint into it (:mod:`pd.train.checkpoint`).
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pd.adapters import portable_base_name
from pd.errors import ConfigError, DataError
from pd.models import ModelSpec, check_same_vocabulary, load_model, load_tokenizer
from pd.train.buckets import sort_length
from pd.train.cache_builder import build_teacher_cache
from pd.train.checkpoint import Progress, checkpoints, load_checkpoint, run_key
from pd.train.fit import Fit, gpu_memory_gb, resolve_layout, row_tokens
from pd.train.lora import attach_lora
from pd.train.methods import TrainingData, build_training_data
from pd.train.parallel import Processes
from pd.train.schedule import Schedule, lr_factor
from pd.train.sequences import Tokens
from pd.train.settings import TrainConfig
from pd.train.steps import check_min_steps, describe_count, run_steps
from pd.train.teacher import check_teacher, head_vocab, unwrap
from pd.train.teacher_cache import TeacherCache, load_teacher_cache

log = logging.getLogger("pd.train")


@dataclass
class TrainingRun:
    """Everything set up for one training run."""

    cfg: TrainConfig
    spec: ModelSpec
    procs: Processes
    fit: Fit
    work: Path
    tokens: Tokens
    data: TrainingData
    data_hash: str
    model: torch.nn.Module
    teacher_model: torch.nn.Module | None
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: Schedule
    caches: list[TeacherCache]
    teacher_name: str
    key: str


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy and torch (CPU and CUDA).

    Args:
        seed: the run's seed (numpy gets it modulo 2**32).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_teacher_inputs(cfg: TrainConfig, teacher_spec: ModelSpec | None, teacher_cache) -> None:
    if cfg.uses_kl and teacher_cache is not None and teacher_spec is not None:
        raise ConfigError("give either a teacher model or a teacher cache, not both")
    if not cfg.uses_kl and (teacher_spec is not None or teacher_cache is not None):
        raise ConfigError(f"method {cfg.method} trains on answer tokens and uses no teacher")


def _check_sharded_teacher(cfg: TrainConfig, procs: Processes, teacher_cache) -> None:
    if procs.sharded and cfg.uses_kl and cfg.teacher_topk > 0 and teacher_cache is None:
        raise ConfigError("training.parallel: fsdp cannot build the teacher cache inside the run (that pass runs on "
                          "one process); build it first (the workflow's teacher job, or "
                          "pd.train.cache_builder.build_teacher_cache) and pass it as teacher_cache, or use "
                          "training.teacher_topk: 0")


def fit_run(cfg: TrainConfig, spec: ModelSpec, procs: Processes, data: TrainingData, *,
            teacher_spec: ModelSpec | None, teacher_cache, gpu_gb: float | None = None) -> Fit:
    """How this run's processes share its global batch (:func:`pd.train.fit.resolve_layout`), from its rows.

    Args:
        cfg: the run's settings.
        spec: the student model.
        procs: the processes (their number and device).
        data: the training data (its longest and mean rows size the micro-batch).
        teacher_spec: a separate teacher model, or None.
        teacher_cache: the teacher cache given, or None.
        gpu_gb: one GPU's memory in GB (default: the smallest over the processes' devices on a GPU; None on
            a CPU).

    Returns:
        The :class:`~pd.train.fit.Fit`.

    Raises:
        ConfigError: ``batch_size`` does not divide among the processes and micro-batches.
    """
    if gpu_gb is None and procs.device.type == "cuda":
        gpu_gb = procs.smallest(gpu_memory_gb(procs.device))  # every process must choose alike
    longest, mean = row_tokens(data.examples + data.reg)
    live = cfg.uses_kl and teacher_cache is None and cfg.teacher_topk == 0
    fit = resolve_layout(cfg, spec, procs.world, procs.device, tokens=longest, mean_tokens=mean, live_teacher=live,
                         teacher=teacher_spec, gpu_gb=gpu_gb)
    log.info("training layout: %s", fit.describe())
    return fit


def enable_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant), under transformers' current name
    for it (``activation_checkpointing_enable``; the older ``gradient_checkpointing_enable`` warns in 5.2x).

    Args:
        model: a transformers model, before the LoRA wrapper is attached.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def setup_run(cfg: TrainConfig, spec: ModelSpec, procs: Processes, work: Path, *, rows, dataset, instruction_pairs,
              teacher_spec: ModelSpec | None, teacher_cache, min_steps: int = 0) -> TrainingRun:
    """Data, layout, models, optimizer, schedule and teacher cache, in the order that fixes the random draws.

    Args:
        cfg: the run's settings.
        spec: the student model.
        procs: the processes (:func:`pd.train.parallel.start_processes`); the run holds them as the
            resolved ``parallel`` wants them (:meth:`~pd.train.parallel.Processes.with_parallel`).
        work: the run's work folder (an in-run teacher cache is built there).
        rows, dataset, instruction_pairs: the training inputs (see :func:`pd.train.loop.train`).
        teacher_spec: a separate teacher model, or None (the adapter-off student).
        teacher_cache: a :class:`~pd.train.teacher_cache.TeacherCache` or its path, or None.
        min_steps: refuse a run of fewer optimizer steps (counted from the real examples, before any model is
            loaded); 0: no minimum.

    Returns:
        The set-up :class:`TrainingRun` (the model prepared for the processes, in train mode).

    Raises:
        ConfigError: contradictory teacher inputs; a global batch that does not divide among the processes
            and micro-batches; fewer steps than ``min_steps``.
        DataError: no usable training data, or a teacher cache built for another model.
        VocabularyMismatchError: the teacher's vocabulary differs from the student's.
    """
    _check_teacher_inputs(cfg, teacher_spec, teacher_cache)
    seed_everything(cfg.seed)
    tok = load_tokenizer(spec)
    tokens = Tokens(tok, spec)
    data = build_training_data(cfg, tokens, rows=rows, dataset=dataset, instruction_pairs=instruction_pairs)
    n = len(data.examples)
    check_min_steps(run_steps(cfg, n)[1], min_steps, f"{cfg.method} on {dataset.name} (seed {cfg.seed})",
                    describe_count(cfg, n), "its training settings (training, methods.<method>.training or "
                    "experiments.<name>.methods.<method>.training)")
    fit = fit_run(cfg, spec, procs, data, teacher_spec=teacher_spec, teacher_cache=teacher_cache)
    procs = procs.with_parallel(fit.parallel)
    _check_sharded_teacher(cfg, procs, teacher_cache)
    model, teacher_model = _models(cfg, spec, teacher_spec, tok, procs, checkpointing=fit.checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = Schedule(cfg, len(data.examples), len(data.reg), procs.world, procs.rank,
                        lengths=[sort_length(e) for e in data.examples], micro=fit.micro_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, schedule.warmup, schedule.total, cfg.warmup_from_zero))
    model, optimizer = procs.prepare(model, optimizer)
    caches = _teacher_caches(cfg, model, data, tokens, teacher_model, teacher_cache, work, procs)
    teacher_name = _teacher_label(cfg, teacher_spec, caches)
    data_hash = data.content_hash()
    key = run_key(cfg, spec, data_hash, procs.world, teacher_name)
    return TrainingRun(cfg, spec, procs, fit, work, tokens, data, data_hash, model, teacher_model, params, optimizer,
                       scheduler, schedule, caches, teacher_name, key)


def _models(cfg: TrainConfig, spec: ModelSpec, teacher_spec: ModelSpec | None, tok, procs: Processes, *,
            checkpointing: bool) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The student with a fresh adapter and the separate teacher (or None), placed on the processes."""
    model = load_model(spec, device=str(procs.device))
    teacher_model = None
    if teacher_spec is not None:
        teacher_tok = load_tokenizer(teacher_spec)
        check_same_vocabulary(tok, teacher_tok, spec.name, teacher_spec.name)
        teacher_model = load_model(teacher_spec, device=str(procs.device))
        teacher_model.requires_grad_(False)
        check_teacher(model, teacher_model, student_tokenizer=tok, teacher_tokenizer=teacher_tok,
                      student_name=spec.name, teacher_name=teacher_spec.name)
    if checkpointing:
        enable_checkpointing(model)
    model = attach_lora(model, rank=cfg.rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        target_modules=cfg.target_modules, seed=cfg.seed, base_model=portable_base_name(spec))
    model.train()
    model = procs.place(model)  # before the optimizer exists: it must hold the placed parameters
    if teacher_model is not None:
        teacher_model = procs.place(teacher_model)
    return model, teacher_model


def _teacher_caches(cfg: TrainConfig, model, data: TrainingData, tokens: Tokens, teacher_model, given,
                    work: Path, procs: Processes) -> list[TeacherCache]:
    """The cache passed in (object or path), or one built now when ``teacher_topk`` asks for it."""
    if given is not None:
        cache = given if isinstance(given, TeacherCache) else load_teacher_cache(given)
        if cache.targets.vocab_size != head_vocab(model):
            raise DataError(f"teacher cache {cache.meta.get('key')} holds targets over {cache.targets.vocab_size} "
                            f"tokens, the student has {head_vocab(model)}: it was built for another model; rebuild it")
        return [cache]
    if not cfg.uses_kl or cfg.teacher_topk < 1:
        return []
    path = work / "teacher_cache.safetensors"
    if procs.is_main:
        work.mkdir(parents=True, exist_ok=True)
        # pd_reg's instruction rows are cached too when their teacher, the adapter-off model, is the passages' teacher.
        examples = data.examples + (data.reg if teacher_model is None else [])
        build_teacher_cache(model, examples, tokens.pad_id, k=cfg.teacher_topk, temperature=cfg.kd_temperature,
                            teacher=teacher_model, out=path, chunk_size=cfg.chunk_size,
                            logprob_dtype=cfg.teacher_logprob_dtype, work=work / "teacher_cache.chunks")
    procs.barrier()
    cache = load_teacher_cache(path)
    log.info("teacher cache: top-%d, covered teacher mass %.4f at T=%g", cache.k, cache.meta["covered_mass"],
             cfg.kd_temperature)
    return [cache]


def _teacher_label(cfg: TrainConfig, teacher_spec: ModelSpec | None, caches: list[TeacherCache]) -> str:
    if not cfg.uses_kl:
        return "none"
    who = teacher_spec.name if teacher_spec is not None else "self (adapter off)"
    if caches:
        return f"{who}, cached top-{caches[0].k} (key {caches[0].meta.get('key')})"
    return who


def resume_run(run: TrainingRun, resume: bool) -> tuple[Progress, int | None]:
    """Load the work folder's latest checkpoint into the run, or start at step 0.

    Args:
        run: the set-up run (its model, optimizer, scheduler and the generators are restored).
        resume: False: ignore and remove existing checkpoints.

    Returns:
        (the progress to start from, the step resumed from or None).

    Raises:
        CheckpointError: the checkpoint cannot be loaded safely.
        ConfigError: the checkpoint belongs to another run.
    """
    found = checkpoints(run.work) if resume else []
    if found:
        progress, adapter, optimizer_state = load_checkpoint(found[-1], run.key, run.scheduler)
        device = next(p for p in unwrap(run.model).parameters() if p.requires_grad).device
        run.procs.load_adapter(run.model, {k: v.to(device) for k, v in adapter.items()})
        run.procs.load_optimizer(run.optimizer, optimizer_state)
        log.info("resumed from %s (step %d of %d)", found[-1], progress.step, run.schedule.total)
    elif run.procs.is_main and run.work.exists() and not resume:
        shutil.rmtree(run.work / "checkpoints", ignore_errors=True)
    run.procs.barrier()
    return (progress, progress.step) if found else (Progress(), None)
