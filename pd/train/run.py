"""Workflow entry points for training jobs: the teacher statistics and the adapter.

These read a job's typed specification (:mod:`pd.jobs`, built by :mod:`pd.plan`; run by
:mod:`pd.stages`, which this package never imports), pick the training rows, run
:func:`pd.train.loop.train`, and measure the judge-free quantity every trained cell
reports: KL(teacher || student) on held-out question-answer pairs about the same
passages, before and after training.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from pd.data import Dataset
from pd.errors import DataError
from pd.io import atomic_path, read_json, read_jsonl, write_json
from pd.models import get_spec, load_model, load_tokenizer
from pd.train.teacher_cache import load_teacher_cache

if TYPE_CHECKING:
    from pd.jobs import AdapterSpec, TeacherSpec

log = logging.getLogger(__name__)

STATS_FILE = "stats.jsonl"
HELDOUT_FILE = "heldout.json"


def split_heldout(rows: Sequence[dict], heldout_fraction: float, minimum: int = 1) -> tuple[list[dict], list[dict]]:
    """Hold out whole questions, chosen by a hash of their id: the training and held-out rows.

    ``heldout_fraction`` has the config's meaning: held-out questions per training question
    (the questions were generated with that many extra, :func:`pd.config.heldout_extra`), so
    ``heldout_fraction / (1 + heldout_fraction)`` of all questions are held out (at least
    ``minimum``, never all). A hash, not a random draw: the same question is held out in
    every cell and seed that uses the same data, so before/after numbers compare like with like.

    Args:
        rows: answer rows with ``question_id`` (or ``id``).
        heldout_fraction: held-out questions relative to training questions (0: none).
        minimum: the fewest questions held out when any are.

    Returns:
        ``(train rows, held-out rows)``, each in the order of ``rows``.
    """
    if heldout_fraction <= 0 or not rows:
        return list(rows), []
    fraction = heldout_fraction / (1 + heldout_fraction)

    def score(r: dict) -> str:
        return hashlib.sha256(str(r.get("question_id", r["id"])).encode()).hexdigest()

    qids = sorted({str(r.get("question_id", r["id"])) for r in rows}, key=lambda q: score({"id": q}))
    n = max(minimum, round(fraction * len(qids)))
    if n >= len(qids):
        return list(rows), []
    held = set(qids[:n])
    train = [r for r in rows if str(r.get("question_id", r["id"])) not in held]
    heldout = [r for r in rows if str(r.get("question_id", r["id"])) in held]
    return train, heldout


def quintile_rows(rows: Sequence[dict], stats: Sequence[dict], subset: str) -> list[dict]:
    """The rows in one quintile of teacher entropy or initial KL (the paper's Tables 15-16).

    ``subset`` is ``entropy_q1`` ... ``kl_q5``; q1 holds the lowest fifth.
    """
    measure, q = subset.split("_q")
    key = {"entropy": "teacher_entropy", "kl": "initial_kl"}[measure]
    by_id = {str(s["example_id"]): float(s[key]) for s in stats}
    ranked = sorted((r for r in rows if str(r["id"]) in by_id), key=lambda r: (by_id[str(r["id"])], str(r["id"])))
    if len(ranked) < 5:
        raise DataError(f"{len(ranked)} examples have teacher statistics; quintiles need at least 5")
    i = int(q) - 1
    lo, hi = round(i * len(ranked) / 5), round((i + 1) * len(ranked) / 5)
    return ranked[lo:hi]


def _examples(rows: Sequence[dict], ds: Dataset) -> list[dict]:
    return [{"id": r["id"], "question": r["question"], "answer": r["answer"], "passage": ds.documents[r["doc_id"]].text}
            for r in rows]


def run_teacher(spec: TeacherSpec, out: str) -> None:
    """Per-example teacher entropy and initial KL (and, with topk > 0, the top-k targets).

    Args:
        spec: the teacher job's specification.
        out: the output folder (``stats.jsonl``, ``topk.safetensors`` when ``topk > 0``, ``build.json``).

    Raises:
        DataError: the answers file is missing or malformed.
    """
    from pd.train.cache_builder import build_teacher_cache
    from pd.train.sequences import Limits, Tokens, pd_examples

    ds = spec.load_dataset()
    rows = read_jsonl(spec.answers)
    extra = spec.models_extra
    student = get_spec(spec.student, extra)
    tok = load_tokenizer(student)
    tokens = Tokens(tok, student)
    examples, build = pd_examples(rows, ds, tokens, Limits(spec.max_answer_tokens, spec.max_teacher_tokens))
    model = load_model(student)
    from pd.train.lora import attach_lora

    model = attach_lora(model, rank=1, alpha=2.0)  # a zero-initialised adapter: student == base at step 0
    teacher = None
    if spec.teacher != spec.student:
        teacher = load_model(get_spec(spec.teacher, extra))
    with atomic_path(out) as tmp:
        tmp.mkdir()
        build_teacher_cache(model, examples, tokens.pad_id, k=max(1, spec.topk), temperature=spec.kd_temperature,
                            teacher=teacher, logprob_dtype=spec.logprob_dtype, chunk_size=spec.chunk_size,
                            out=tmp / "topk.safetensors" if spec.topk > 0 else None, stats_path=tmp / STATS_FILE,
                            student_tokenizer=tok, teacher_tokenizer=load_tokenizer(get_spec(spec.teacher, extra)),
                            student_name=spec.student, teacher_name=spec.teacher)
        write_json(tmp / "build.json", {"spec": spec.as_dict(), "sequences": build.as_dict()})


def run_adapter(spec: AdapterSpec, out: str) -> None:
    """Train one adapter; write it with pd_meta.json and the held-out KL before and after.

    Inside a launch of several processes (:mod:`pd.train.launch`) every rank trains and
    measures on its own device; only rank 0 writes.

    Args:
        spec: the adapter job's specification.
        out: the adapter folder (PEFT files, ``pd_meta.json``, ``heldout.json``, ``train_log.jsonl``).

    Raises:
        DataError: no training rows are left (an empty answers file), or too few for a quintile.
        ConfigError: invalid training settings.
    """
    from pd.train.heldout import heldout_kl
    from pd.train.loop import train
    from pd.train.ranks import is_main_rank, local_device

    ds = spec.load_dataset()
    device = local_device()  # a launched rank measures on its own device; one process: the default
    cfg = spec.train_config()
    model_spec = get_spec(spec.model, spec.models_extra)
    rows, heldout = _training_rows(spec)
    teacher_name = spec.teacher_model
    teacher_spec = get_spec(teacher_name, spec.models_extra) if teacher_name and teacher_name != spec.model else None

    tok = load_tokenizer(model_spec)
    cache = None
    if cfg.uses_kl and cfg.teacher_topk > 0 and spec.teacher:
        # Built once by the teacher job, shared by cells; read once here for training and the held-out KL.
        cache = load_teacher_cache(Path(spec.teacher) / "topk.safetensors")
    # Another teacher never runs in the student's job: its cached targets stand in for it here too.
    measure = {"limits": cfg.limits()}
    if teacher_spec is not None and cache is not None:
        measure["teacher_cache"] = cache
    before = None
    if heldout:
        # Every rank measures (the same numbers): ranks reach training together, and a sharded
        # model's "after" pass is collective.
        base = load_model(model_spec, device=device)
        teacher_model = load_model(teacher_spec, device=device) if teacher_spec and cache is None else None
        before = heldout_kl(base, tok, model_spec, _examples(heldout, ds), cfg.kd_temperature,
                            teacher_model=teacher_model, **measure)
        del base
    result = train(cfg, model_spec, out, rows=rows, dataset=ds, teacher_spec=None if cache else teacher_spec,
                   teacher_cache=cache)
    record = {"n_heldout": len(heldout), "temperature": cfg.kd_temperature, "before": before, "after": None,
              "closed_fraction": None, "teacher": teacher_name or spec.model,
              "teacher_targets": f"top-{cfg.teacher_topk} cache" if "teacher_cache" in measure else "full"}
    if heldout and result.model is not None:
        teacher_model = load_model(teacher_spec, device=device) if teacher_spec and cache is None else None
        after = heldout_kl(result.model, tok, model_spec, _examples(heldout, ds), cfg.kd_temperature,
                           teacher_model=teacher_model, **measure)
        record.update(after=after, closed_fraction=(1 - after / before) if before else None)
        log.info("held-out KL(teacher || student) at T=%g: %.4f -> %.4f (%d pairs)", cfg.kd_temperature, before, after,
                 len(heldout))
    if not is_main_rank():
        return
    # The adapter folder is complete; add the held-out measurement beside pd_meta.json.
    write_json(Path(out) / HELDOUT_FILE, record)
    meta_path = Path(out) / "pd_meta.json"
    if meta_path.is_file():
        meta = read_json(meta_path)
        meta["heldout_kl"] = record
        meta["workflow_spec"] = spec.as_dict()
        write_json(meta_path, meta)


def _training_rows(spec: AdapterSpec) -> tuple[list[dict] | None, list[dict]]:
    """The rows trained on (None for UFT, which trains on the passages) and the held-out rows."""
    if not spec.answers:
        return None, []
    rows, heldout = split_heldout(read_jsonl(spec.answers), spec.heldout_fraction)
    if spec.subset != "all":
        rows = quintile_rows(rows, read_jsonl(Path(spec.teacher) / STATS_FILE), spec.subset)
    if not rows:
        raise DataError(f"no training rows left for {spec.method} on {spec.dataset} (check the answers file)")
    return rows, heldout
