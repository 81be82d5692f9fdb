"""The teacher: the student's own network with the LoRA adapter off, or a separate model.

Two ways to use it during training:

* every step: :func:`teacher_answer_logits` runs the teacher on the batch's teacher view
  (no grad) and returns its logits at the answer positions;
* once: :func:`build_teacher_cache` runs that pass over all training sequences, keeps the
  top-k log-probabilities per answer position (:class:`~pd.train.targets.TopKTargets`),
  stores them (safetensors + a JSON sidecar) under a content hash of (teacher, sequences,
  k, temperature), and later epochs and other cells read them back by example id.

The same pass writes, per training example, the teacher's mean entropy and the initial
KL(teacher || student) over its answer tokens, the student being the base model without
the passage (the adapter off, on the student view): the quantities whose quintiles the
paper's Tables 15-16 compare.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor

from pd.errors import ConfigError, DataError, VocabularyMismatchError
from pd.io import atomic_path, read_json, write_json, write_jsonl
from pd.models import check_same_vocabulary
from pd.train.batch import TEACHER_KEYS, gather_answers, validate_batch
from pd.train.losses import token_entropy, token_kl
from pd.train.targets import TopKTargets, cat_targets, topk_targets

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
LOGPROB_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

# --------------------------------------------------------------------------- model plumbing


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside accelerate / DDP / FSDP / torch.compile wrappers (a PeftModel stays one)."""
    try:
        from accelerate.utils import extract_model_from_parallel

        model = extract_model_from_parallel(model, keep_torch_compile=False)
    except ImportError:  # pragma: no cover - accelerate is a dependency
        pass
    while True:
        inner = getattr(model, "_orig_mod", None) or (model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else None)
        if inner is None:
            return model
        model = inner


@contextlib.contextmanager
def adapter_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model`` (wrapped or not) as its base network: the PEFT adapter switched off.

    Forward calls should still go through the wrapper (DDP/FSDP need their own forward);
    the switch acts on the LoRA layers inside it. A model without an adapter is its own base.
    """
    inner = unwrap(model)
    if hasattr(inner, "disable_adapter") and hasattr(inner, "peft_config"):
        with inner.disable_adapter():
            yield model
    else:
        yield model


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The lm_head (output embedding) of a possibly wrapped causal LM."""
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(unwrap(model)).__name__} has no output embedding (lm_head): not a causal LM")
    return head


def answer_hidden(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
    """The final (post-norm) hidden states at ``positions`` [B, A] -> [B, A, H].

    Calls the model's own forward (so wrappers do their work) and asks for a single
    position's logits, so no [B, L, V] logits are made.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                logits_to_keep=1, use_cache=False)
    return gather_answers(out.hidden_states[-1], positions)


def head_vocab(model: torch.nn.Module) -> int:
    return int(output_head(model).weight.shape[0])


def check_teacher(model: torch.nn.Module, teacher: torch.nn.Module, *, student_tokenizer=None, teacher_tokenizer=None,
                  student_name: str = "student", teacher_name: str = "teacher") -> None:
    """Refuse a separate teacher whose token ids mean other things than the student's.

    With both tokenizers the vocabularies are compared entry by entry; a larger teacher
    head is then allowed (padded rows past the tokenizer are cut). Without tokenizers the
    head sizes must be equal.
    """
    sv, tv = head_vocab(model), head_vocab(teacher)
    if student_tokenizer is not None and teacher_tokenizer is not None:
        check_same_vocabulary(student_tokenizer, teacher_tokenizer, student_name, teacher_name)
        if tv < sv or len(student_tokenizer) > sv:
            raise VocabularyMismatchError(f"teacher {teacher_name} has {tv} output rows, student {student_name} {sv}, "
                                          f"tokenizer {len(student_tokenizer)}: the teacher cannot cover the student's ids")
    elif sv != tv:
        raise VocabularyMismatchError(
            f"teacher {teacher_name} outputs {tv} tokens, student {student_name} {sv}: distillation compares "
            "distributions token by token; use a teacher of the same family (pass both tokenizers to compare them)")


def _teacher_hidden(model, teacher, batch) -> tuple[Tensor, torch.nn.Module]:
    ids, att, pos = (batch[k] for k in TEACHER_KEYS)
    if teacher is None:
        with adapter_disabled(model) as base:
            return answer_hidden(base, ids, att, pos), output_head(model)
    return answer_hidden(teacher, ids, att, pos), output_head(teacher)


def teacher_answer_logits(model: torch.nn.Module, batch: dict, *, teacher: torch.nn.Module | None = None) -> Tensor:
    """Teacher logits at the answer positions [B, A, V] (no grad, the model's dtype).

    ``teacher=None``: ``model`` with its adapter off. A separate teacher's extra padded
    vocabulary rows are cut to the student's size (:func:`check_teacher` first).
    """
    with torch.no_grad():
        hidden, head = _teacher_hidden(model, teacher, batch)
        logits = head(hidden)
    return logits[..., : head_vocab(model)] if teacher is not None else logits


# --------------------------------------------------------------------------- identity and keys


def model_identity(model: torch.nn.Module) -> str:
    """A fingerprint of the base network (LoRA weights excluded: the teacher runs without them).

    Config plus, per base parameter, its name, shape and a hash of a strided sample of
    values: cheap for large models, and different weights give a different fingerprint.
    """
    inner = unwrap(model)
    h = hashlib.sha256()
    cfg = getattr(inner, "config", None)
    if cfg is not None:
        d = cfg.to_dict()
        d.pop("_name_or_path", None)
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    for name, p in inner.named_parameters():
        if "lora_" in name:
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].float().cpu()
        h.update(f"{name.replace('base_model.model.', '').replace('.base_layer', '')}:{tuple(p.shape)}".encode())
        h.update(sample.numpy().tobytes())
    name = getattr(cfg, "_name_or_path", "") if cfg is not None else ""
    return f"{Path(str(name)).name or type(inner).__name__}:{h.hexdigest()[:16]}"


def sequences_hash(batches: Iterable[dict]) -> str:
    """A content hash of the teacher and student token sequences and answer positions."""
    h = hashlib.sha256()
    for batch in batches:
        mask = batch["answer_mask"]
        for b, ex_id in enumerate(batch["example_ids"]):
            h.update(str(ex_id).encode() + b"\0")
            n = int(mask[b].sum())
            h.update(batch["answer_ids"][b, :n].to(torch.int64).cpu().numpy().tobytes())
            for side in ("teacher", "student"):
                att = batch[f"{side}_attention_mask"][b].bool()
                h.update(batch[f"{side}_input_ids"][b][att].to(torch.int64).cpu().numpy().tobytes())
                h.update(batch[f"{side}_answer_positions"][b, :n].to(torch.int64).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(identity: str, seq_hash: str, k: int, temperature: float, logprob_dtype: str) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "teacher": identity, "sequences": seq_hash, "k": int(k),
                       "temperature": float(temperature), "logprob_dtype": logprob_dtype}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the cache


@dataclass
class TeacherCache:
    """Top-k teacher targets for every answer token of every training example.

    ``targets`` is flat [N, k]; example i owns rows ``offsets[i]:offsets[i+1]`` (its answer
    tokens in order). ``meta`` holds the key, k, temperature, teacher identity and the
    covered-mass summary; ``stats`` the per-example rows (entropy, initial KL).
    """

    example_ids: list[str]
    offsets: Tensor
    targets: TopKTargets
    meta: dict
    stats: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.index = {ex: i for i, ex in enumerate(self.example_ids)}

    @property
    def k(self) -> int:
        return self.targets.k

    @property
    def temperature(self) -> float:
        return self.targets.temperature

    def __contains__(self, example_id: str) -> bool:
        return example_id in self.index

    def targets_for(self, example_ids: list[str], mask: Tensor, device: torch.device | str | None = None) -> TopKTargets:
        """Targets [B, A, k] for a batch (any order, e.g. a shuffled loader), aligned with ``mask``."""
        missing = [e for e in example_ids if e not in self.index]
        if missing:
            raise DataError(f"teacher cache {self.meta.get('key')} has no targets for example(s) {missing[:5]}"
                            f"{' ...' if len(missing) > 5 else ''}: it was built for other sequences; rebuild it")
        b, a = mask.shape
        rows = torch.zeros((b, a), dtype=torch.long)
        for i, ex in enumerate(example_ids):
            lo, hi = int(self.offsets[self.index[ex]]), int(self.offsets[self.index[ex] + 1])
            n = int(mask[i].sum())
            if n != hi - lo or (n and not bool(mask[i, :n].all())):
                raise DataError(f"example {ex}: the batch has {n} answer tokens, the teacher cache {hi - lo}; "
                                "the cache belongs to other sequences (rebuild it)")
            rows[i, :n] = torch.arange(lo, hi)
        out = self.targets.map(lambda t: t[rows])
        return out.map(lambda t: t.to(device)) if device is not None else out

    def save(self, path: str | os.PathLike) -> None:
        """Write ``path`` (safetensors) and ``path`` with suffix .json (sidecar), atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {name: getattr(self.targets, name).contiguous() for name in TopKTargets.TENSORS}
        tensors["offsets"] = self.offsets.to(torch.int64).contiguous()
        sidecar = dict(self.meta, example_ids=self.example_ids, stats=self.stats)
        write_json(sidecar_path(path), sidecar)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"key": str(self.meta["key"]), "format": str(CACHE_FORMAT)})


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def load_teacher_cache(path: str | os.PathLike) -> TeacherCache:
    """Read a cache written by :meth:`TeacherCache.save`; refuses a mismatched sidecar."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        raise DataError(f"teacher cache {path} (with {side.name}) not found; build it with build_teacher_cache")
    with safe_open(str(path), framework="pt") as f:
        file_meta = f.metadata() or {}
    meta = read_json(side)
    if file_meta.get("key") != meta.get("key"):
        raise DataError(f"teacher cache {path}: key {file_meta.get('key')} does not match its sidecar "
                        f"{side.name} ({meta.get('key')}); the pair is from different builds, rebuild it")
    tensors = load_file(str(path))
    targets = TopKTargets(**{n: tensors[n] for n in TopKTargets.TENSORS}, temperature=float(meta["temperature"]),
                          vocab_size=int(meta["vocab_size"]))
    example_ids = meta.pop("example_ids")
    stats = meta.pop("stats", [])
    return TeacherCache(example_ids, tensors["offsets"], targets, meta, stats)


def _flat(values: Tensor, mask: Tensor) -> Tensor:
    return values.reshape(-1, *values.shape[2:])[mask.reshape(-1).to(values.device)]


def build_teacher_cache(model: torch.nn.Module, batches: Iterable[dict], *, k: int, temperature: float,
                        teacher: torch.nn.Module | None = None, out: str | os.PathLike | None = None,
                        stats_path: str | os.PathLike | None = None, identity: str | None = None,
                        logprob_dtype: str = "float16", chunk_size: int = 256, student_tokenizer=None,
                        teacher_tokenizer=None, student_name: str = "student", teacher_name: str = "teacher",
                        device: torch.device | str | None = None) -> TeacherCache:
    """One pass over the training batches: top-k teacher targets and per-example statistics.

    ``model`` is the student (a PeftModel, possibly wrapped); the teacher is ``model`` with
    the adapter off unless ``teacher`` is given (same vocabulary, checked). The base student
    for the initial KL is always ``model`` with the adapter off. With ``out`` an existing
    cache of the same key is loaded instead of recomputed. ``identity`` names the teacher's
    weights (default: :func:`model_identity`). ``logprob_dtype``: float16 (default),
    bfloat16 or float32 (exact).
    """
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ConfigError(f"teacher cache logprob_dtype {logprob_dtype!r}; allowed: {list(LOGPROB_DTYPES)}")
    if k < 1:
        raise ConfigError(f"teacher cache top-k must be >= 1, got {k}")
    if not temperature > 0:
        raise ConfigError(f"teacher cache temperature must be > 0, got {temperature}")
    if teacher is not None:
        check_teacher(model, teacher, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                      student_name=student_name, teacher_name=teacher_name)
    batches = list(batches)
    for batch in batches:
        validate_batch(batch, need_teacher=True)
    identity = identity or model_identity(teacher if teacher is not None else model)
    key = cache_key(identity, sequences_hash(batches), k, temperature, logprob_dtype)
    if out is not None and Path(out).is_file() and sidecar_path(out).is_file():
        try:
            cached = load_teacher_cache(out)
            if cached.meta.get("key") == key:
                log.info("teacher cache %s is up to date (key %s)", out, key)
                if stats_path is not None and not Path(stats_path).is_file():
                    write_jsonl(stats_path, cached.stats)
                return cached
            log.info("teacher cache %s has key %s, need %s: rebuilding", out, cached.meta.get("key"), key)
        except DataError as err:
            log.warning("teacher cache %s unreadable (%s): rebuilding", out, err)

    vocab = head_vocab(model)
    k_eff = min(k, vocab)
    dev = device or next(unwrap(model).parameters()).device
    models = [m for m in (model, teacher) if m is not None]
    was_training = [unwrap(m).training for m in models]
    for m in models:
        m.eval()
    ids_seen: set[str] = set()
    example_ids: list[str] = []
    counts: list[int] = []
    parts: list[TopKTargets] = []
    stats: list[dict] = []
    sums = {"covered": 0.0, "covered_t": 0.0, "tokens": 0}
    try:
        with torch.no_grad():
            for batch in batches:
                batch_ids = [str(e) for e in batch["example_ids"]]
                dup = [e for e in batch_ids if e in ids_seen]
                if dup:
                    raise DataError(f"example id(s) {dup[:5]} occur twice in the training batches; ids must be unique")
                ids_seen.update(batch_ids)
                mask = batch["answer_mask"]
                on = {key_: (v.to(dev) if isinstance(v, Tensor) else v) for key_, v in batch.items()}
                t_hidden, t_head = _teacher_hidden(model, teacher, on)
                with adapter_disabled(model) as base:
                    s_hidden = answer_hidden(base, on["student_input_ids"], on["student_attention_mask"],
                                             on["student_answer_positions"])
                s_head = output_head(model)
                t_flat, s_flat = _flat(t_hidden, mask), _flat(s_hidden, mask)
                per_tok = {n: [] for n in ("ent1", "ent_t", "kl1", "kl_t", "cov1", "cov_t")}
                for lo in range(0, t_flat.shape[0], chunk_size):
                    tl = t_head(t_flat[lo:lo + chunk_size]).float()[:, :vocab]
                    sl = s_head(s_flat[lo:lo + chunk_size]).float()
                    tg = topk_targets(tl, k_eff, temperature, logprob_dtype=LOGPROB_DTYPES[logprob_dtype])
                    parts.append(tg.map(lambda t: t.cpu()))
                    per_tok["ent1"].append(token_entropy(tl, 1.0))
                    per_tok["ent_t"].append(token_entropy(tl, temperature))
                    per_tok["kl1"].append(token_kl(sl, tl, 1.0, "forward"))
                    per_tok["kl_t"].append(token_kl(sl, tl, temperature, "forward"))
                    per_tok["cov1"].append(-torch.expm1(tg.log_rest))
                    per_tok["cov_t"].append(-torch.expm1(tg.log_rest_t))
                vals = {n: (torch.cat(v).double().cpu() if v else torch.zeros(0, dtype=torch.float64))
                        for n, v in per_tok.items()}
                start = 0
                for b, ex in enumerate(batch_ids):
                    n = int(mask[b].sum())
                    sl_ = slice(start, start + n)
                    start += n
                    example_ids.append(ex)
                    counts.append(n)
                    mean = {name: (float(v[sl_].mean()) if n else None) for name, v in vals.items()}
                    stats.append({"example_id": ex, "answer_tokens": n, "temperature": float(temperature),
                                  "teacher_entropy": mean["ent_t"], "teacher_entropy_t1": mean["ent1"],
                                  "initial_kl": mean["kl_t"], "initial_kl_t1": mean["kl1"],
                                  "covered_mass": mean["cov_t"], "covered_mass_t1": mean["cov1"]})
                sums["covered"] += float(vals["cov1"].sum())
                sums["covered_t"] += float(vals["cov_t"].sum())
                sums["tokens"] += int(vals["cov1"].numel())
    finally:
        for m, flag in zip(models, was_training):
            m.train(flag)

    if not parts:
        raise DataError("no answer tokens in the training batches: nothing to cache")
    targets = cat_targets(parts)
    offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(counts, dtype=torch.int64), 0)
    n_tok = max(sums["tokens"], 1)
    meta = {"format": CACHE_FORMAT, "key": key, "k": k_eff, "temperature": float(temperature),
            "logprob_dtype": logprob_dtype, "teacher": identity, "vocab_size": vocab,
            "separate_teacher": teacher is not None, "examples": len(example_ids), "answer_tokens": sums["tokens"],
            "covered_mass_t1": sums["covered"] / n_tok, "covered_mass": sums["covered_t"] / n_tok}
    cache = TeacherCache(example_ids, offsets, targets, meta, stats)
    log.info("teacher cache: %d examples, %d answer tokens, k=%d; covered teacher mass %.4f at T=1, %.4f at T=%g",
             len(example_ids), sums["tokens"], k_eff, meta["covered_mass_t1"], meta["covered_mass"], temperature)
    if out is not None:
        cache.save(out)
    if stats_path is not None:
        write_jsonl(stats_path, stats)
    return cache
