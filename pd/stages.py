"""Run one job of the workflow: turn a plan artifact's specification into its output.

Each function here reads its inputs, calls the pd module that does the work and writes
its output atomically (with a ``.stats.json``/``.summary.json`` beside it where the
module reports yields). The Snakemake rules call :func:`run_job` and nothing else, so a
job can also be run by hand: ``pd stage <kind> <output path>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pd import prompts
from pd.data import Dataset, load_dataset
from pd.io import read_jsonl, write_json, write_jsonl

log = logging.getLogger("pd")


def spec_dataset(spec: dict) -> Dataset:
    """The dataset a job specification names, as its config entry describes it."""
    return load_dataset(spec["dataset"], spec["dataset_cfg"])


def _generation_cache() -> Path:
    from pd.models import cache_dir

    return cache_dir() / "generations"


def _generator(model: str, spec: dict, adapter: str | None = None, **options):
    from pd.generate import make_generator

    backend = spec.get("backend", "transformers")
    if backend == "transformers":
        options.setdefault("batch_size", spec.get("batch_size", 8))
    if backend == "openai" and spec.get("base_url"):
        options.setdefault("base_url", spec["base_url"])
    return make_generator(model, backend, adapter=adapter, cache_dir=_generation_cache(),
                          models_extra=spec.get("models_extra"), **options)


def _provenance(spec: dict) -> dict:
    """Where and from what a file was made: its specification, host and SLURM job."""
    return {"spec": spec, "host": os.uname().nodename, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _install_prompts(spec: dict) -> None:
    prompts.set_overrides({k: v["path"] for k, v in (spec.get("prompts") or {}).items()})


# --------------------------------------------------------------------------- data


def questions(spec: dict, out: str) -> None:
    from pd.io import write_with_stats
    from pd.questions import QGenConfig, generate_questions

    ds = spec_dataset(spec)
    s = spec["sampling"]
    cfg = QGenConfig(mode=spec["mode"], per_item=spec["per_item"], seed=spec["seed"], max_rounds=spec["max_rounds"],
                     temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"], max_new_tokens=s["max_new_tokens"])
    rows, stats = generate_questions(ds, _generator(spec["generator"], spec), cfg)
    write_with_stats(out, rows, stats | _provenance(spec))


def answers(spec: dict, out: str) -> None:
    from pd.answers import generate_answers, generate_cot_answers
    from pd.generate import SamplingParams
    from pd.io import write_with_stats

    ds = spec_dataset(spec)
    rows = read_jsonl(spec["questions"])
    s = spec["sampling"]
    params = SamplingParams(temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"],
                            max_new_tokens=s["max_new_tokens"], seed=spec["seed"])
    gen = _generator(spec["expert"], spec)
    if spec["kind"] == "cot":
        d = spec["distractors"]
        out_rows, stats = generate_cot_answers(rows, ds, gen, params, spec["expert"], seed=spec["seed"],
                                               distractors=d["count"], gold_drop_prob=d["gold_drop_prob"])
    else:
        out_rows, stats = generate_answers(rows, ds, gen, params, spec["expert"])
    write_with_stats(out, out_rows, stats | _provenance(spec))


# --------------------------------------------------------------------------- evaluation


def retrieval(spec: dict, out: str) -> None:
    from pd.retrieve import recall_at_k, retrieve_for_items

    ds = spec_dataset(spec)
    opts: dict[str, Any] = {}
    if spec["retriever"] == "dense":
        opts["model"] = spec["dense_model"]
    if spec["retriever"] == "openai":
        opts["model"] = spec["embedding_model"]
    ranked = retrieve_for_items(ds, spec["retriever"], spec["k"], **opts)
    write_jsonl(out, ({"item_id": it.id, "retrieved": ranked[it.id], "gold": list(it.doc_ids)} for it in ds.items))
    write_json(Path(out).with_suffix(".stats.json"),
               {**_provenance(spec), **{f"recall@{k}": recall_at_k(ds, ranked, k) for k in sorted({1, spec["k"]})}})


def _adapter_folder(spec: dict) -> str | None:
    if not spec["adapter"]:
        return None
    if spec["snapshot"] is None:
        return spec["adapter"]
    from pd.train.checkpoint import snapshot_folder

    return str(snapshot_folder(spec["adapter"], spec["snapshot"]))


def evaluation(spec: dict, out: str) -> None:
    from pd.evaluate import evaluate
    from pd.generate import SamplingParams
    from pd.io import write_with_stats

    ds = spec_dataset(spec)
    retrieved = None
    if spec["retrieval"]:
        retrieved = {r["item_id"]: r["retrieved"] for r in read_jsonl(spec["retrieval"])}
    s = spec["sampling"]
    params = SamplingParams(temperature=s.get("temperature", 0.25), top_k=s.get("top_k", 0), top_p=s.get("top_p", 1.0),
                            max_new_tokens=s.get("max_new_tokens", 500), seed=spec["seed"])
    adapter = _adapter_folder(spec)
    rows, stats = evaluate(ds, _generator(spec["model"], spec, adapter), retrieved, params, model=spec["model"],
                           adapter=adapter)
    write_with_stats(out, rows, stats | _provenance(spec))


def grade(spec: dict, out: str) -> None:
    from pd.grade import grade_file, judge_params

    ds = spec_dataset(spec)
    if spec["grader"] == "judge":
        template = "judge_hotpotqa" if spec["dataset_cfg"]["loader"] == "hotpotqa" else "judge_squadshifts"
        grade_file(spec["eval"], ds, out, "judge", generator=_generator(spec["judge"], spec), template=template,
                   params=judge_params(spec["max_new_tokens"]))
    else:
        grade_file(spec["eval"], ds, out, "substring", mode=spec["mode"])


def capability(spec: dict, out: str) -> None:
    from pd.mmlu import run_mmlu

    run_mmlu(spec["model"], spec["path"], out, adapter=spec["adapter"], limit=spec["limit"],
             models_extra=spec.get("models_extra"))


def manifest(spec: dict, out: str) -> None:
    write_json(out, spec)


def report(spec: dict, out: str) -> None:
    from pd.report import render_reports

    result = render_reports(spec["manifests"], spec["out_dir"])
    if str(result.index) != out and Path(out).resolve() != Path(result.index).resolve():
        raise RuntimeError(f"the report was written to {result.index}, expected {out}")


STAGES: dict[str, Callable[[dict, str], None]] = {
    "questions": questions, "answers": answers, "retrieval": retrieval, "evaluate": evaluation, "grade": grade,
    "capability": capability, "manifest": manifest, "report": report,
}


def _register_training() -> None:
    from pd.train.run import run_adapter, run_teacher

    STAGES["adapter"] = run_adapter
    STAGES["teacher"] = run_teacher


@contextlib.contextmanager
def _job_log(path: str | None):
    """Send pd's log records (and warnings) to the job's log file as well as stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w", encoding="utf-8"))
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    root = logging.getLogger()
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()


def run_job(rule: str, spec: dict, outputs: list[str], logs: list[str], threads: int = 1) -> None:
    if rule in ("adapter", "teacher") and rule not in STAGES:
        _register_training()
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
        _install_prompts(spec)
        t = time.time()
        STAGES[rule](spec, outputs[0])
        log.info("%s %s done in %.1f s", rule, outputs[0], time.time() - t)
