"""Building the teacher cache: one teacher pass over all training sequences.

:func:`build_teacher_cache` is the one way to build a cache (the workflow's teacher job,
a training run that builds its own, the benchmarks and the tests all call it). It
batches the examples itself (:data:`CACHE_BATCH` sequences per forward pass), runs the
teacher once per batch without gradient, and projects the answer positions' hidden
states onto the vocabulary :data:`CACHE_CHUNK` tokens at a time, keeping per answer token
the top-k log-probabilities (:class:`~pd.train.targets.TopKTargets`). The result is
stored in the format of :mod:`pd.train.teacher_cache` under a content key; a file with
that key already in place is read back instead of recomputed.

The same pass writes, per training example, the teacher's mean entropy and the initial
KL(teacher || student) over its answer tokens, the student being the base model without
the passage (the adapter off, on the student view): the quantities whose quintiles the
paper's Tables 15-16 compare.

The pass runs :data:`CHUNK_BATCHES` batches at a time; given a work folder it keeps each finished
chunk there (:mod:`pd.train.cache_chunks`), so a build killed part way (a job's time limit) resumes
on its rerun from the chunks done and ends with the cache an uninterrupted build gives.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from pd.errors import ConfigError, DataError
from pd.io import write_jsonl
from pd.train.batch import validate_batch
from pd.train.cache_chunks import CachePart, ChunkFolder, chunk_key
from pd.train.sequences import Example, collate
from pd.train.targets import TopKTargets, cat_targets, topk_targets
from pd.train.teacher import (
    adapter_disabled,
    answer_hidden,
    check_teacher,
    head_vocab,
    model_identity,
    output_head,
    teacher_hidden,
    unwrap,
)
from pd.train.teacher_cache import (
    CACHE_FORMAT,
    LOGPROB_DTYPES,
    TeacherCache,
    cache_key,
    load_teacher_cache,
    sequences_hash,
    sidecar_path,
)
from pd.train.token_losses import token_entropy, token_kl

log = logging.getLogger(__name__)

CACHE_BATCH = 8  # sequences per teacher forward pass
CACHE_CHUNK = 256  # answer tokens per vocabulary projection
CHUNK_BATCHES = 32  # batches per chunk of the pass kept in the work folder (what a killed build keeps)
# Per answer token: teacher entropy, KL(teacher || base student), covered top-k mass; at T = 1 and at T.
_TOKEN_VALUES = ("ent1", "ent_t", "kl1", "kl_t", "cov1", "cov_t")


def build_teacher_cache(model: torch.nn.Module, examples: Sequence[Example], pad_id: int, *, k: int,
                        temperature: float, teacher: torch.nn.Module | None = None,
                        out: str | os.PathLike | None = None, stats_path: str | os.PathLike | None = None,
                        identity: str | None = None, logprob_dtype: str = "float16", chunk_size: int | None = None,
                        batch_size: int = CACHE_BATCH, student_tokenizer=None, teacher_tokenizer=None,
                        student_name: str = "student", teacher_name: str = "teacher",
                        device: torch.device | str | None = None, work: str | os.PathLike | None = None,
                        chunk_batches: int = CHUNK_BATCHES,
                        on_chunk: Callable[[int, int], None] | None = None) -> TeacherCache:
    """Top-k teacher targets and per-example statistics for ``examples``, from one teacher pass.

    The teacher is ``model`` with its adapter off unless ``teacher`` is given; the base
    student of the initial KL is always ``model`` with the adapter off (student view).

    Args:
        model: the student (a PeftModel, possibly wrapped; a plain model is its own base).
        examples: the sequences to cover, each with a teacher view; ids must be unique.
        pad_id: the tokenizer's padding id (for collation).
        k: top-k ids kept per answer token (capped at the vocabulary size).
        temperature: distillation temperature T of the targets (> 0).
        teacher: a separate teacher of the same vocabulary (checked), or None.
        out: the cache file to write; an existing cache there with the same key is
            loaded instead of recomputed.
        stats_path: a JSONL file for the per-example rows (written when missing or rebuilt).
        identity: names the teacher's weights (default :func:`~pd.train.teacher.model_identity`).
        logprob_dtype: float16 (default), bfloat16 or float32 (exact) storage.
        chunk_size: answer tokens per vocabulary projection (None: :data:`CACHE_CHUNK`).
        batch_size: sequences per forward pass (:data:`CACHE_BATCH`).
        student_tokenizer, teacher_tokenizer, student_name, teacher_name: for the
            vocabulary check of a separate teacher.
        device: where the passes run (default: the model's device).
        work: a folder for the finished chunks of the pass: a rerun with the same inputs resumes
            after them; removed once the cache (and ``out``, ``stats_path``) is written. None: none kept.
        chunk_batches: batches per chunk (:data:`CHUNK_BATCHES`).
        on_chunk: called as ``on_chunk(chunks_done, chunks_total)`` after each chunk the pass computes
            (and keeps in ``work``); what it raises ends the build, keeping the chunks done.

    Returns:
        The cache: targets [N, k] over the N answer tokens, on the CPU.

    Raises:
        ConfigError: k < 1, temperature <= 0 or an unknown ``logprob_dtype``.
        VocabularyMismatchError: the separate teacher's vocabulary differs.
        DataError: an example lacks a teacher view, ids repeat, or there are no answer tokens.
    """
    _check_settings(k, temperature, logprob_dtype)
    if teacher is not None:
        check_teacher(model, teacher, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                      student_name=student_name, teacher_name=teacher_name)
    dup = sorted(i for i, n in Counter(str(e.id) for e in examples).items() if n > 1)
    if dup:
        raise DataError(f"example id(s) {dup[:5]} occur twice in the training examples; ids must be unique")
    batches = [collate(examples[i:i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]
    for batch in batches:
        validate_batch(batch, need_teacher=True)
    identity = identity or model_identity(teacher if teacher is not None else model)
    key = cache_key(identity, sequences_hash(batches), k, temperature, logprob_dtype)
    cache = _up_to_date(out, key, stats_path)
    if cache is not None:
        return cache
    chunk_size = chunk_size or CACHE_CHUNK
    if chunk_batches < 1:
        raise ConfigError(f"teacher cache chunk_batches must be >= 1, got {chunk_batches}")
    chunks = ChunkFolder(work, chunk_key(key, batch_size, chunk_batches, chunk_size)) if work is not None else None
    cache = _teacher_pass(model, teacher, batches, k=k, temperature=temperature, logprob_dtype=logprob_dtype,
                          chunk_size=chunk_size, device=device, key=key, identity=identity, chunks=chunks,
                          chunk_batches=chunk_batches, on_chunk=on_chunk)
    log.info("teacher cache: %d examples, %d answer tokens, k=%d; covered teacher mass %.4f at T=1, %.4f at T=%g",
             len(cache.example_ids), cache.meta["answer_tokens"], cache.k, cache.meta["covered_mass_t1"],
             cache.meta["covered_mass"], temperature)
    if out is not None:
        cache.save(out)
    if stats_path is not None:
        write_jsonl(stats_path, cache.stats)
    if chunks is not None:
        chunks.remove()
    return cache


def _check_settings(k: int, temperature: float, logprob_dtype: str) -> None:
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ConfigError(f"teacher cache logprob_dtype {logprob_dtype!r}; allowed: {list(LOGPROB_DTYPES)}")
    if k < 1:
        raise ConfigError(f"teacher cache top-k must be >= 1, got {k}")
    if not temperature > 0:
        raise ConfigError(f"teacher cache temperature must be > 0, got {temperature}")


def _up_to_date(out: str | os.PathLike | None, key: str, stats_path: str | os.PathLike | None) -> TeacherCache | None:
    """The cache at ``out`` when it exists with ``key`` (its stats written to ``stats_path`` if missing)."""
    if out is None or not Path(out).is_file() or not sidecar_path(out).is_file():
        return None
    try:
        cached = load_teacher_cache(out)
    except DataError as err:
        log.warning("teacher cache %s unreadable (%s): rebuilding", out, err)
        return None
    if cached.meta.get("key") != key:
        log.info("teacher cache %s has key %s, need %s: rebuilding", out, cached.meta.get("key"), key)
        return None
    log.info("teacher cache %s is up to date (key %s)", out, key)
    if stats_path is not None and not Path(stats_path).is_file():
        write_jsonl(stats_path, cached.stats)
    return cached


def _flat(values: Tensor, mask: Tensor) -> Tensor:
    """[B, A, ...] values at the answer tokens of ``mask`` [B, A] -> [n, ...] (row-major order)."""
    return values.reshape(-1, *values.shape[2:])[mask.reshape(-1).to(values.device)]


def _teacher_pass(model, teacher, batches: list[dict], *, k: int, temperature: float, logprob_dtype: str,
                  chunk_size: int, device, key: str, identity: str, chunks: ChunkFolder | None, chunk_batches: int,
                  on_chunk: Callable[[int, int], None] | None) -> TeacherCache:
    """Run the pass over ``batches`` (validated, unique ids), ``chunk_batches`` at a time after the chunks
    ``chunks`` holds already, and assemble the cache."""
    vocab = head_vocab(model)
    k_eff = min(k, vocab)
    dev = device or next(unwrap(model).parameters()).device
    n_chunks = -(-len(batches) // chunk_batches)
    done = chunks.finished() if chunks is not None else []
    models = [m for m in (model, teacher) if m is not None]
    was_training = [unwrap(m).training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            for c in range(len(done), n_chunks):
                part = _pass_part(model, teacher, batches[c * chunk_batches:(c + 1) * chunk_batches], dev=dev,
                                  vocab=vocab, k=k_eff, temperature=temperature, dtype=LOGPROB_DTYPES[logprob_dtype],
                                  chunk_size=chunk_size)
                if chunks is not None:
                    chunks.save(c, part)
                done.append(part)
                if on_chunk is not None:
                    on_chunk(c + 1, n_chunks)
    finally:
        for m, flag in zip(models, was_training):
            m.train(flag)
    targets = [p.targets for p in done if p.targets is not None]
    if not targets:
        raise DataError("no answer tokens in the training batches: nothing to cache")
    example_ids = [e for p in done for e in p.example_ids]
    counts = [n for p in done for n in p.counts]
    covered = covered_t = 0.0
    tokens = 0
    for cov, cov_t, n in (s for p in done for s in p.sums):  # batch by batch, in order: the same sums on a rerun
        covered += cov
        covered_t += cov_t
        tokens += int(n)
    offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(counts, dtype=torch.int64), 0)
    n_tok = max(tokens, 1)
    meta = {"format": CACHE_FORMAT, "key": key, "k": k_eff, "temperature": float(temperature),
            "logprob_dtype": logprob_dtype, "teacher": identity, "vocab_size": vocab,
            "separate_teacher": teacher is not None, "examples": len(example_ids), "answer_tokens": tokens,
            "covered_mass_t1": covered / n_tok, "covered_mass": covered_t / n_tok}
    return TeacherCache(example_ids, offsets, cat_targets(targets), meta, [r for p in done for r in p.stats])


def _pass_part(model, teacher, batches: list[dict], *, dev, vocab: int, k: int, temperature: float,
               dtype: torch.dtype, chunk_size: int) -> CachePart:
    """The teacher pass over some batches (no grad, models in eval mode): one :class:`CachePart`."""
    example_ids: list[str] = []
    counts: list[int] = []
    parts: list[TopKTargets] = []
    stats: list[dict] = []
    sums: list[list[float]] = []
    for batch in batches:
        batch_ids = [str(e) for e in batch["example_ids"]]
        on = {key: (v.to(dev) if isinstance(v, Tensor) else v) for key, v in batch.items()}
        vals = _batch_values(model, teacher, on, batch["answer_mask"], parts, vocab=vocab, k=k,
                             temperature=temperature, dtype=dtype, chunk_size=chunk_size)
        stats += _example_rows(batch_ids, batch["answer_mask"], vals, temperature)
        example_ids += batch_ids
        counts += [int(n) for n in batch["answer_mask"].sum(1)]
        sums.append([float(vals["cov1"].sum()), float(vals["cov_t"].sum()), int(vals["cov1"].numel())])
    return CachePart(example_ids, counts, stats, sums, cat_targets(parts) if parts else None)


def _batch_values(model, teacher, batch: dict, mask: Tensor, parts: list[TopKTargets], *, vocab: int, k: int,
                  temperature: float, dtype: torch.dtype, chunk_size: int) -> dict[str, Tensor]:
    """One batch: appends its top-k targets (CPU) to ``parts``; returns the per-token values [n] (float64, CPU)."""
    t_hidden, t_head = teacher_hidden(model, teacher, batch)
    with adapter_disabled(model) as base:
        s_hidden = answer_hidden(base, batch["student_input_ids"], batch["student_attention_mask"],
                                 batch["student_answer_positions"])
    s_head = output_head(model)
    t_flat, s_flat = _flat(t_hidden, mask), _flat(s_hidden, mask)
    per_tok: dict[str, list[Tensor]] = {n: [] for n in _TOKEN_VALUES}
    for lo in range(0, t_flat.shape[0], chunk_size):
        tl = t_head(t_flat[lo:lo + chunk_size]).float()[:, :vocab]
        sl = s_head(s_flat[lo:lo + chunk_size]).float()
        tg = topk_targets(tl, k, temperature, logprob_dtype=dtype)
        parts.append(tg.map(lambda t: t.cpu()))
        per_tok["ent1"].append(token_entropy(tl, 1.0))
        per_tok["ent_t"].append(token_entropy(tl, temperature))
        per_tok["kl1"].append(token_kl(sl, tl, 1.0, "forward"))
        per_tok["kl_t"].append(token_kl(sl, tl, temperature, "forward"))
        per_tok["cov1"].append(-torch.expm1(tg.log_rest))
        per_tok["cov_t"].append(-torch.expm1(tg.log_rest_t))
    return {n: (torch.cat(v).double().cpu() if v else torch.zeros(0, dtype=torch.float64)) for n, v in per_tok.items()}


def _example_rows(example_ids: list[str], mask: Tensor, vals: dict[str, Tensor], temperature: float) -> list[dict]:
    """Per-example means of the per-token values: the rows of the stats file."""
    rows, start = [], 0
    for b, ex in enumerate(example_ids):
        n = int(mask[b].sum())
        part = slice(start, start + n)
        start += n
        mean = {name: (float(v[part].mean()) if n else None) for name, v in vals.items()}
        rows.append({"example_id": ex, "answer_tokens": n, "temperature": float(temperature),
                     "teacher_entropy": mean["ent_t"], "teacher_entropy_t1": mean["ent1"],
                     "initial_kl": mean["kl_t"], "initial_kl_t1": mean["kl1"],
                     "covered_mass": mean["cov_t"], "covered_mass_t1": mean["cov1"]})
    return rows
