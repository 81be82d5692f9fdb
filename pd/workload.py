"""How much work each planned job does, relative to the paper-size job the runtime constants assume.

:data:`pd.resources.BASE_RUNTIME` gives minutes for a job at the paper's data size
(:data:`REFERENCE`: a dataset of 1,000 test items, 30 training questions per item written
five per call in at most 512 tokens, answers of up to 512 tokens, 10 epochs, evaluation
answers of up to 500 tokens). A job's ``work`` is its own count of the same quantity over
the reference's, so the runtime a job asks for follows its real size:

* questions: calls x ``max_new_tokens`` x rounds, calls = test items (or passages, for
  per-passage targets) x ``per_item`` / questions per call; rounds: the first makes every
  call, later ones only the shortfall, counted as ``min(max_rounds, 2)``;
* answers: questions x ``max_new_tokens``; teacher: questions x ``max_answer_tokens``
  (a forward pass over each answer);
* adapter: epochs x training questions (a quintile ``subset``: a fifth; UFT: passages,
  as test items x 30);
* evaluate: test items x ``max_new_tokens`` x samples (one per item); grade with a
  judge: test items x the judge's ``max_new_tokens`` (substring grades load no model);
* capability: MMLU-Pro questions scored (``limit``) over the reference's;
* retrieval, manifest, report: 1.

The teacher cache an adapter job reads is held in host memory: k x (4 + 2) bytes (an
int32 token id and a float16 log-probability) per answer token, answer tokens estimated
as questions x the answers' ``max_new_tokens`` (at most ``max_answer_tokens``; :func:`teacher_cache_gb`).
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from pd.errors import PDError

if TYPE_CHECKING:
    from pd.plan import Artifact, Plan

REFERENCE = {"items": 1000, "per_item": 30, "per_call": 5, "rounds": 2, "question_tokens": 512,
             "answer_tokens": 512, "epochs": 10, "eval_tokens": 500, "judge_tokens": 512, "mmlu_questions": 12032}
HOTPOTQA_ITEMS = 7405  # the distractor setting's validation questions
HOTPOTQA_PASSAGES_PER_ITEM = 10  # two gold paragraphs and eight distractors
CACHE_BYTES_PER_ENTRY = 4 + 2  # int32 token id + float16 log-probability, per kept token of k
ANSWER_TOKENS_DEFAULT = 256  # pd.jobs.Sampling.params's default when the config sets none
JUDGE_TOKENS_DEFAULT = 512  # pd.grade.judge_params's default


@functools.lru_cache(maxsize=64)
def _dataset_size(cfg_json: str) -> tuple[int, int]:
    from pd.data import load_dataset

    cfg = json.loads(cfg_json)
    if cfg.get("loader") == "hotpotqa":  # a hub dataset: sized from its settings, never downloaded here
        items = int(cfg.get("limit") or HOTPOTQA_ITEMS)
        return items * HOTPOTQA_PASSAGES_PER_ITEM, items
    try:
        ds = load_dataset(cfg.get("name", "dataset"), cfg)
    except PDError:  # files not here (yet): assume the paper's size
        return REFERENCE["items"] // 5, REFERENCE["items"]
    return len(ds.documents), len(ds.items)


def dataset_size(dataset_cfg: dict) -> tuple[int, int]:
    """Passages and test items of a dataset entry (local files read once per process).

    Args:
        dataset_cfg: the config's entry (``loader`` and its settings).

    Returns:
        ``(passages, items)``; HotpotQA from its ``limit`` (no download), a dataset whose
        files are missing as the paper's size (200, 1000).
    """
    return _dataset_size(json.dumps(dataset_cfg, sort_keys=True, default=str))


def question_count(spec) -> int:
    """Questions a questions job writes (held-out ones included).

    Args:
        spec: a :class:`pd.jobs.QuestionsSpec`.

    Returns:
        ``per_item`` x test items, or x passages for per-passage targets.
    """
    passages, items = dataset_size(spec.dataset_cfg)
    return spec.per_item * (passages if spec.per_passage else items)


def _question_tokens(spec) -> tuple[int, int]:
    """(questions per call, new tokens per call) of a questions job."""
    from pd.questions import MODE_DEFAULTS, PER_CALL

    tokens = spec.sampling.max_new_tokens or MODE_DEFAULTS[spec.mode]["max_new_tokens"]
    return PER_CALL[spec.mode], tokens


def _questions_of(art: Artifact, plan: Plan) -> int:
    """Questions behind an answers, teacher or adapter artifact (through the plan's chain)."""
    spec = art.spec
    if art.kind == "adapter":
        if spec.teacher:
            return _questions_of(plan.get(spec.teacher), plan)
        if spec.answers:
            return _questions_of(plan.get(spec.answers), plan)
        return 0
    if art.kind == "teacher":
        return _questions_of(plan.get(spec.answers), plan)
    if art.kind == "answers":
        return question_count(plan.get(spec.questions).spec)
    raise ValueError(f"a {art.kind} artifact has no questions")


def job_work(art: Artifact, plan: Plan) -> float:
    """A job's work over the paper-size reference's (see the module docstring); the runtime scales with it.

    Args:
        art: a planned artifact.
        plan: the plan that holds it (and the artifacts it reads).

    Returns:
        A positive number (1: the paper's size).
    """
    ref = REFERENCE
    spec = art.spec
    kind = art.kind
    if kind == "questions":
        per_call, tokens = _question_tokens(spec)
        rounds = min(spec.max_rounds, ref["rounds"])
        work = question_count(spec) / per_call * tokens * rounds
        base = ref["items"] * ref["per_item"] / ref["per_call"] * ref["question_tokens"] * ref["rounds"]
    elif kind == "answers":
        work = _questions_of(art, plan) * (spec.sampling.max_new_tokens or ANSWER_TOKENS_DEFAULT)
        base = ref["items"] * ref["per_item"] * ref["answer_tokens"]
    elif kind == "teacher":
        work = _questions_of(art, plan) * spec.max_answer_tokens
        base = ref["items"] * ref["per_item"] * ref["answer_tokens"]
    elif kind == "adapter":
        epochs = float(spec.training.get("epochs", ref["epochs"]))
        questions = _questions_of(art, plan) or dataset_size(spec.dataset_cfg)[1] * ref["per_item"]
        share = 0.2 if spec.subset != "all" else 1.0
        work = epochs * questions * share
        base = ref["epochs"] * ref["items"] * ref["per_item"]
    elif kind in ("evaluate", "grade"):
        items = dataset_size(spec.dataset_cfg)[1]
        if kind == "evaluate":
            tokens = spec.sampling.max_new_tokens or ref["eval_tokens"]
            base_tokens = ref["eval_tokens"]
        else:
            tokens = spec.max_new_tokens or JUDGE_TOKENS_DEFAULT
            base_tokens = ref["judge_tokens"]
        work, base = items * tokens, ref["items"] * base_tokens
    elif kind == "capability":
        work, base = spec.limit or ref["mmlu_questions"], ref["mmlu_questions"]
    else:
        return 1.0
    return max(work, 1.0) / base


def teacher_cache_gb(art: Artifact, plan: Plan) -> float:
    """Host memory (GB) the top-k teacher cache of an adapter job takes; 0 for other jobs or without one.

    Args:
        art: a planned artifact.
        plan: its plan.

    Returns:
        k x 6 bytes x questions x tokens per answer (the answers' ``max_new_tokens``, at most
        the teacher's ``max_answer_tokens``), in GB (1e9 bytes).
    """
    if art.kind != "adapter" or not art.spec.teacher:
        return 0.0
    teacher = plan.get(art.spec.teacher)
    k = int(teacher.spec.topk)
    if k <= 0:
        return 0.0
    answers = plan.get(teacher.spec.answers).spec
    per_answer = min(answers.sampling.max_new_tokens or ANSWER_TOKENS_DEFAULT, teacher.spec.max_answer_tokens)
    return k * CACHE_BYTES_PER_ENTRY * _questions_of(art, plan) * per_answer / 1e9


def artifact_resources(art: Artifact, plan: Plan, params_b: float, attempt: int = 1, device: str | None = None,
                       site: Any = None) -> dict[str, Any]:
    """The resources the job that makes ``art`` asks for (:func:`pd.resources.job_resources` with its work and cache).

    Args:
        art: a planned artifact.
        plan: its plan.
        params_b: the size of the job's model, billions of parameters (0 for none).
        attempt: 1 on the first try.
        device: ``cpu`` or ``gpu`` (default: the site's).
        site: a :class:`pd.site.Site` or None.

    Returns:
        Snakemake resources (``mem_mb``, ``runtime``, ``cpus_per_task``, ``gpus``, SLURM keys).
    """
    from pd.resources import job_resources

    rank = art.spec.training.get("rank") if art.kind == "adapter" else None
    return job_resources(art.kind, params_b, attempt, device, site, lora_rank=rank, work=job_work(art, plan),
                         cache_gb=teacher_cache_gb(art, plan), extra_params_b=inprocess_teacher_b(art, plan))


def inprocess_teacher_b(art: Artifact, plan: Plan) -> float:
    """Billions of parameters of a teacher that runs inside an adapter job (another model, no teacher job).

    Args:
        art: a planned artifact.
        plan: its plan.

    Returns:
        The teacher's size, or 0 (not an adapter, no teacher, the student itself, or a teacher job's cache).
    """
    spec = art.spec
    if art.kind != "adapter" or not spec.teacher_model or spec.teacher_model == spec.model or spec.teacher:
        return 0.0
    from pd.models import get_spec

    return get_spec(spec.teacher_model, plan.cfg.get("models")).params_b


def resource_table(plan: Plan, registry: dict, site: Any = None, device: str | None = None) -> list[dict[str, Any]]:
    """What the plan's jobs ask for, per job kind and model size: GPUs, memory and time, min-max over the jobs.

    Args:
        plan: a plan (all its artifacts count).
        registry: the model registry (:func:`pd.models.registry`), for the models' sizes.
        site: a :class:`pd.site.Site` or None (local: CPU).
        device: ``cpu`` or ``gpu`` (default: the site's, else ``cpu``).

    Returns:
        Rows in job-kind order, then by size: ``kind``, ``params_b``, ``models`` (names),
        ``jobs`` and ``(min, max)`` pairs ``gpus``, ``mem_mb``, ``runtime`` (minutes).
    """
    from pd.paths import KINDS

    groups: dict[tuple[str, float], dict[str, Any]] = {}
    for art in plan.artifacts.values():
        size = registry[art.model].params_b if art.model else 0.0
        res = artifact_resources(art, plan, size, 1, device, site)
        row = groups.setdefault((art.kind, size), {"kind": art.kind, "params_b": size, "models": set(), "jobs": 0,
                                                   "gpus": [], "mem_mb": [], "runtime": []})
        row["jobs"] += 1
        if art.model:
            row["models"].add(art.model)
        for key in ("gpus", "mem_mb", "runtime"):
            row[key].append(res[key])
    rows = []
    for (kind, size), row in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
        row["models"] = sorted(row["models"])
        for key in ("gpus", "mem_mb", "runtime"):
            row[key] = (min(row[key]), max(row[key]))
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """The lines of :func:`resource_table`'s rows as ``pd validate`` prints them (memory in GB, time in hours)."""
    def span(pair, fmt=str):
        lo, hi = pair
        return fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}"

    lines = [f"{'kind':<11} {'model':<44} {'jobs':>5} {'GPUs':>6} {'memory GB':>11} {'time h':>11}"]
    for r in rows:
        model = f"{', '.join(r['models'])} ({r['params_b']:g}B)" if r["models"] else "-"
        lines.append(f"{r['kind']:<11} {model:<44} {r['jobs']:>5} {span(r['gpus']):>6} "
                     f"{span(r['mem_mb'], lambda m: f'{m / 1000:g}'):>11} "
                     f"{span(r['runtime'], lambda t: f'{t / 60:.1f}'):>11}")
    return lines
