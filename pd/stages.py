"""The only executor of jobs: turn a typed job specification into its output.

One function per job kind (:data:`STAGES`, keyed by the kind's name, which is also its
Snakemake rule's). Each reads its inputs, calls the pd module that does the work and
writes its output atomically (with a ``.stats.json``/``.summary.json`` beside it where the
module reports yields). The Snakemake rules call :func:`run_job` through
``workflow/scripts/stage.py``; ``pd inject`` calls :func:`run_spec` in-process on the
jobs of its plan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from pd import config as pdc
from pd import jobs, prompts
from pd.io import read_jsonl, write_json, write_jsonl
from pd.redact import RedactingFilter, redact

log = logging.getLogger("pd")


def generation_cache() -> Path:
    """The disk cache of completions that every generating job shares."""
    from pd.models import cache_dir

    return cache_dir() / "generations"


def make_job_generator(model: str, *, backend: str = "transformers", batch_size: int | None = 8,
                       base_url: str | None = None, models_extra: dict | None = None, adapter: str | None = None,
                       cache_tag: str | None = None,
                       **options):
    """The generator a job uses: ``model`` on ``backend``, through the shared completion cache.

    Args:
        model: a registry name (for ``openai``, the server's model name).
        backend: ``transformers``, ``vllm`` or ``openai``.
        batch_size: prompts per forward pass (transformers only).
        base_url: the server of the ``openai`` backend.
        cache_tag: names the weights behind the ``openai`` server's model in the cache (replaces its probe).
        models_extra: the config's own model entries (``models:``).
        adapter: a PEFT adapter folder to load on top of the model.
        **options: further backend options (e.g. ``progress``).

    Returns:
        A :class:`pd.generate.Generator`.

    Raises:
        ConfigError: an unknown model or backend.
    """
    from pd.generate import make_generator

    if backend == "transformers":
        options.setdefault("batch_size", batch_size or 8)
    if backend == "vllm":  # tensor parallelism over every GPU the job was granted (pd.resources sized it)
        from pd.resources import job_gpus

        options.setdefault("gpus", job_gpus())
    if backend == "openai" and base_url:
        options.setdefault("base_url", base_url)
    if backend == "openai" and cache_tag:
        options.setdefault("cache_tag", cache_tag)
    return make_generator(model, backend, adapter=adapter, cache_dir=generation_cache(), models_extra=models_extra,
                          **options)


def _generator(spec: Any, model: str, adapter: str | None = None):
    return make_job_generator(model, backend=spec.backend or "transformers", batch_size=spec.batch_size,
                              base_url=spec.base_url, models_extra=spec.models_extra, adapter=adapter,
                              cache_tag=getattr(spec, "cache_tag", None))


def provenance(spec: jobs.JobSpec) -> dict:
    """Where and from what a file was made: its specification (credentials removed), host, SLURM job and time."""
    return {"spec": redact(spec.as_dict()), "host": os.uname().nodename, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# --------------------------------------------------------------------------- data


def questions(spec: jobs.QuestionsSpec, out: str) -> None:
    """Questions about each passage: ``per_item`` per test question citing it, or per passage when
    ``per_passage`` (held-out ones included).

    Args:
        spec: the questions job.
        out: the JSONL of question rows; yields go to ``<out stem>.stats.json``.

    Raises:
        DataError: the dataset's files are missing; ConfigError: an unknown generator.
    """
    from pd.context import check_dataset_fits
    from pd.io import write_with_stats
    from pd.questions import QGenConfig, generate_questions

    s = spec.sampling
    per_doc = spec.per_item if spec.per_passage else None
    cfg = QGenConfig(mode=spec.mode, per_item=spec.per_item, per_doc=per_doc, seed=spec.seed,
                     max_rounds=spec.max_rounds, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                     max_new_tokens=s.max_new_tokens)
    ds, gen = spec.load_dataset(), _generator(spec, spec.generator)
    check_dataset_fits(gen, ds, s.max_new_tokens or 512)  # a document the model cannot read fails here, by name
    rows, stats = generate_questions(ds, gen, cfg)
    write_with_stats(out, rows, stats | provenance(spec))


def answers(spec: jobs.AnswersSpec, out: str) -> None:
    """The expert's answers, with the passage in its prompt, to each question of ``spec.questions``.

    Args:
        spec: the answers job (``kind`` cot: chain-of-thought answers with distractor passages).
        out: the JSONL of answer rows; yields go to ``<out stem>.stats.json``.

    Raises:
        DataError: a missing or malformed questions file.
    """
    from pd.answers import generate_answers, generate_cot_answers
    from pd.io import write_with_stats

    ds = spec.load_dataset()
    rows = read_jsonl(spec.questions)
    params = spec.sampling.params(spec.seed)
    gen = _generator(spec, spec.expert)
    if spec.kind == "cot":
        d = spec.distractors
        out_rows, stats = generate_cot_answers(rows, ds, gen, params, spec.expert, seed=spec.seed,
                                               distractors=d.count, gold_drop_prob=d.gold_drop_prob)
    else:
        out_rows, stats = generate_answers(rows, ds, gen, params, spec.expert)
    write_with_stats(out, out_rows, stats | provenance(spec))


# --------------------------------------------------------------------------- evaluation


def retrieval(spec: jobs.RetrievalSpec, out: str) -> None:
    """The top-``k`` passages of each test question.

    Args:
        spec: the retrieval job.
        out: the JSONL of ``{item_id, retrieved, gold}`` rows; recall@1 and @k go to ``.stats.json``.

    Raises:
        DataError: the dataset's files are missing; ConfigError: an unknown retriever.
    """
    from pd.retrieve import recall_at_k, retrieve_for_items

    ds = spec.load_dataset()
    opts = {"model": spec.retriever_model} if spec.retriever_model else {}
    ranked = retrieve_for_items(ds, spec.retriever, spec.k, **opts)
    write_jsonl(out, ({"item_id": it.id, "retrieved": ranked[it.id], "gold": list(it.doc_ids)} for it in ds.items))
    write_json(Path(out).with_suffix(".stats.json"),
               {**provenance(spec), **{f"recall@{k}": recall_at_k(ds, ranked, k) for k in sorted({1, spec.k})}})


def _adapter_folder(spec: jobs.EvaluateSpec) -> str | None:
    if not spec.adapter:
        return None
    if spec.snapshot is None:
        return spec.adapter
    from pd.train.checkpoint import snapshot_folder

    return str(snapshot_folder(spec.adapter, spec.snapshot))


def evaluation(spec: jobs.EvaluateSpec, out: str) -> None:
    """The model's answers (with its adapter or a snapshot of it) to the test questions, closed-book or RAG,
    each row with the gold answer's log-likelihood under its prompt (``spec.metrics``; transformers backend).

    Args:
        spec: the evaluate job.
        out: the JSONL of per-question answers; counts go to ``.stats.json``.

    Raises:
        DataError: a missing adapter, snapshot or retrieval file.
    """
    from pd.context import check_dataset_fits
    from pd.evaluate import evaluate
    from pd.io import write_with_stats

    ds = spec.load_dataset()
    retrieved = {r["item_id"]: r["retrieved"] for r in read_jsonl(spec.retrieval)} if spec.retrieval else None
    params = spec.sampling.params(spec.seed, **pdc.EVAL_SAMPLING)
    adapter = _adapter_folder(spec)
    gen = _generator(spec, spec.model, adapter)
    check_dataset_fits(gen, ds, params.max_new_tokens)  # a question the model cannot read fails here, by name
    rows, stats = evaluate(ds, gen, retrieved, params, model=spec.model, adapter=adapter,
                           gold_logprob="gold_logprob" in spec.metrics)
    write_with_stats(out, rows, stats | provenance(spec))


def grade(spec: jobs.GradeSpec, out: str) -> None:
    """Per-answer grades of the evaluation ``spec.eval``: substring match or an LLM judge.

    Args:
        spec: the grade job.
        out: the JSONL of per-answer grades; accuracy goes to ``.summary.json``.

    Raises:
        DataError: a missing or malformed evaluation file.
    """
    from pd.grade import grade_file, judge_params

    ds = spec.load_dataset()
    if spec.grader == "judge":
        grade_file(spec.eval, ds, out, "judge", generator=_generator(spec, spec.judge), template=spec.judge_template,
                   params=judge_params(spec.max_new_tokens))
    else:
        grade_file(spec.eval, ds, out, "substring", mode=spec.mode)


def capability(spec: jobs.CapabilitySpec, out: str) -> None:
    """MMLU-Pro rows of the model (with its adapter): the forgetting check.

    Args:
        spec: the capability job.
        out: the JSONL of per-question rows; accuracy goes to ``.summary.json``.

    Raises:
        DataError: the MMLU-Pro file is missing.
    """
    from pd.mmlu import run_mmlu

    run_mmlu(spec.model, spec.path, out, adapter=spec.adapter, limit=spec.limit, models_extra=spec.models_extra)


def manifest(spec: jobs.ManifestSpec, out: str) -> None:
    """The experiment's manifest: its specification, records included.

    Args:
        spec: the manifest job.
        out: the JSON file.
    """
    write_json(out, spec.as_dict())


def report(spec: jobs.ReportSpec, out: str) -> None:
    """The HTML report and tables of the manifests.

    Args:
        spec: the report job.
        out: ``index.html`` in the reports folder.

    Raises:
        RuntimeError: the report was written somewhere else than ``out`` (a bug).
    """
    from pd.report import render_reports

    result = render_reports(spec.manifests, spec.out_dir)
    if str(result.index) != out and Path(out).resolve() != Path(result.index).resolve():
        raise RuntimeError(f"the report was written to {result.index}, expected {out}")


def teacher(spec: jobs.TeacherSpec, out: str) -> None:
    """Teacher statistics and top-k targets: :func:`pd.train.run.run_teacher` (same Args, Raises)."""
    from pd.train.run import run_teacher

    run_teacher(spec, out)


def adapter(spec: jobs.AdapterSpec, out: str) -> None:
    """One trained adapter with its held-out KL: :func:`pd.train.run.run_adapter` (same Args, Raises).

    With ``training.processes`` above one (resolved in the job: ``auto`` is its GPUs) and
    outside a distributed launch, the job launches that many training processes
    (:func:`pd.train.launch.launch_adapter`); rank 0 writes the adapter.
    """
    from pd.train.launch import launch_adapter, resolve_processes
    from pd.train.ranks import in_launch
    from pd.train.run import run_adapter

    processes = resolve_processes(spec.train_config().processes)
    if processes > 1 and not in_launch():
        launch_adapter(spec, out, processes)
    else:
        run_adapter(spec, out)


STAGES: dict[str, Callable[[Any, str], None]] = {
    "questions": questions, "answers": answers, "teacher": teacher, "adapter": adapter, "retrieval": retrieval,
    "evaluate": evaluation, "grade": grade, "capability": capability, "manifest": manifest, "report": report,
}


@contextlib.contextmanager
def _job_log(path: str | None):
    """Send pd's log records (and warnings) to the job's log file as well as stderr.

    The file is emptied, then appended to (``O_APPEND``), and named in ``PD_JOB_LOG`` while the
    job runs: the processes of a launched training job append their lines to it too.
    """
    from pd.train.launch import JOB_LOG_ENV

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    before = os.environ.get(JOB_LOG_ENV)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("", encoding="utf-8")
        handlers.append(logging.FileHandler(path, mode="a", encoding="utf-8"))
        os.environ[JOB_LOG_ENV] = str(Path(path).resolve())
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    root = logging.getLogger()
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(RedactingFilter())  # URLs lose their user-info, keys their values
        root.addHandler(h)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        if path and before is None:
            os.environ.pop(JOB_LOG_ENV, None)
        elif path:
            os.environ[JOB_LOG_ENV] = before


def run_spec(spec: jobs.JobSpec, out: str) -> None:
    """Run one job in this process: install its prompt overrides, then its stage.

    Args:
        spec: the job's typed specification (its class names the stage).
        out: the output path (a file, or a folder for adapters and teacher caches).

    Raises:
        PDError: a user mistake the stage finds (missing data, a bad model name).
    """
    prompts.set_overrides(spec.prompt_paths)
    t = time.time()
    STAGES[spec.KIND](spec, out)
    log.info("%s %s done in %.1f s", spec.KIND, out, time.time() - t)


def run_job(rule: str, spec: Mapping[str, Any], outputs: list[str], logs: list[str], threads: int = 1) -> None:
    """Run the job of a Snakemake rule (``workflow/scripts/stage.py``).

    Args:
        rule: the rule's name, which is its job kind.
        spec: the job's specification in dictionary form (``params.spec``).
        outputs: the rule's outputs; the first is the job's.
        logs: the rule's log files; pd's log records go to the first as well as stderr.
        threads: the job's CPU threads; torch's thread count is set to it.

    Raises:
        KeyError: no stage for ``rule``.
    """
    if rule not in STAGES:
        raise KeyError(f"no stage for rule {rule!r}; known: {', '.join(sorted(STAGES))}")
    if threads and threads > 0:
        # torch would take every core, whatever other jobs run beside it. It reads the variable when
        # it is imported (jobs that never load a model never import it); if it already is, tell it.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    with _job_log(logs[0] if logs else None):
        if os.environ.get("SLURM_JOB_ID"):
            log.info("SLURM job %s on %s", os.environ["SLURM_JOB_ID"], os.uname().nodename)
        run_spec(jobs.from_dict(rule, spec), outputs[0])
