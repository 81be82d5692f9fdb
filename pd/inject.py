"""``pd inject``: put a folder of your own documents into a model's weights.

``inject`` runs the workflow's own jobs on a folder instead of a benchmark: a plan
(:func:`pd.pipeline.plan.build_adapter_plan`) over a ``folder`` dataset, with one PD cell whose
question writer, expert and adapter-off teacher are the model itself, run in this
process by :mod:`pd.pipeline.run`: questions per document, the expert's answers with the
document in its prompt, prompt distillation (which holds out some questions and measures
KL(teacher || student) on them before and after). The output folder is a PEFT adapter
plus a model card (README.md), the training data (``data/``), ``inject.json`` (settings,
command, wall-clock) and the jobs' outputs under ``results/``, named as the workflow names
them.

Resuming: a rerun builds the same plan and reuses every job whose output exists under
``<out>/results`` (a changed setting changes the identity of exactly the jobs that
depend on it); generation goes through the disk cache, so an interrupted job redoes only
the completions it had not written. ``pd ask`` (:mod:`pd.ask`) uses the adapter.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from pd.config import heldout_extra
from pd.config_checks import load_yaml
from pd.data import load_folder
from pd.errors import ConfigError, DataError
from pd.io import atomic_path, read_json, read_jsonl, write_json, write_jsonl, write_text
from pd.recall import ANSWERS_FILE as RECALL_ANSWERS
from pd.recall import RECALL_FILE

log = logging.getLogger("pd.inject")

# The one place for inject's defaults (command-line flags and --set override them). Chosen for smollm2-135m-instruct on
# a CPU; `questions` is per document. Measured on the three invented-fact documents of tests/test_inject.py (6
# questions): these settings gave 1/6 right closed-book (base 0/6) and held-out KL 0.82 -> 0.17; 12 questions/document
# at distillation temperature 2 and 3 epochs, or 9 questions at T=2 and 8 epochs, gave 0/6.
DEFAULTS: dict[str, Any] = {
    "questions": 20,
    "heldout_fraction": 0.1,  # this many extra questions are generated and held out for the KL measurement
    "qgen_mode": "sentence",  # small models fail at the five-question prompt; this asks about each sentence
    "qgen_temperature": 0.6,  # None: the mode's default (pd.questions.MODE_DEFAULTS, 0.8); lower keeps SmolLM2 on topic
    "max_rounds": 6,
    "answer_temperature": 0.25,
    "answer_max_tokens": 48,
    "epochs": 4,
    "lr": 1e-3,
    "rank": 64,
    # the paper's 2 spreads the loss over the vocabulary; 1 did better for SmolLM2 (config.yaml, tune-demo)
    "kd_temperature": 1.0,
    "batch_size": 8,
    "warmup_epochs": 0,
    "warmup_steps": 2,
    "seed": 0,
    "generation_batch_size": 40,
}
INJECT_KEYS = ("questions", "heldout_fraction", "qgen_mode", "qgen_temperature", "max_rounds", "answer_temperature",
               "answer_max_tokens", "seed", "generation_batch_size")
META_FILE = "pd_meta.json"
RECORD_FILE = "inject.json"
DATA_DIR = "data"
PASSAGES_FILE = "passages.jsonl"  # under DATA_DIR: the passages trained on (id, source, offset, text); pd ask --check
RECALL_TEMPERATURE = 0.0  # the recall's answers are greedy: the model's most likely answer, the same on a rerun
RESULTS_DIR = "results"  # the jobs' outputs, as the workflow names them
DATASET = "documents"  # the folder's name as a dataset of inject's config
EXPERIMENT = "inject"


# --------------------------------------------------------------------------- settings


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings to a dict; values are read as YAML scalars (``1e-3``, ``true``, ``[1, 2]``).

    Raises:
        ConfigError: a pair without ``=`` or a key, or a value that is not YAML (one line naming the pair).
    """
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {p!r}: expected key=value")
        v = load_yaml(value, f"--set {p!r}")
        if isinstance(v, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                pass
        out[key.strip()] = v
    return out


def resolve_settings(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inject settings, training settings) from :data:`DEFAULTS` and the caller's overrides.

    Allowed keys are inject's own (:data:`INJECT_KEYS`) and every field of
    :class:`pd.train.settings.TrainConfig` except ``method``; training settings are
    validated here, so a bad value fails before any model is loaded.
    """
    from pd.questions import MODES
    from pd.train.settings import TrainConfig, check_settings

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"method", "seed"}
    allowed = set(INJECT_KEYS) | train_fields
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(f"unknown inject setting(s) {unknown}; allowed: {sorted(allowed)}")
    s = {**DEFAULTS, **overrides}
    ints = {k: s[k] for k in ("questions", "max_rounds", "answer_max_tokens", "generation_batch_size")}
    bad = {k: v for k, v in ints.items() if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1)}
    if bad:
        raise ConfigError(f"these inject settings must be positive integers: {bad}")
    check_settings({"heldout_fraction": s["heldout_fraction"]})  # the config schema's range
    if (extra := heldout_extra(s["questions"], s["heldout_fraction"])) / s["questions"] > 0.5:  # inject_config's ratio
        raise ConfigError(f"questions={s['questions']} with heldout_fraction={s['heldout_fraction']} holds out {extra} "
                          f"of every {s['questions'] + extra}; use --questions 2 or more, or heldout_fraction=0")
    if s["qgen_mode"] not in MODES:
        raise ConfigError(f"qgen_mode {s['qgen_mode']!r}; allowed: {', '.join(MODES)}")
    qt = s["qgen_temperature"]
    if qt is not None and (not isinstance(qt, (int, float)) or qt < 0):
        raise ConfigError(f"qgen_temperature must be >= 0 or null, got {s['qgen_temperature']!r}")
    if not isinstance(s["answer_temperature"], (int, float)) or s["answer_temperature"] < 0:
        raise ConfigError(f"answer_temperature must be >= 0, got {s['answer_temperature']!r}")
    inject = {k: s[k] for k in INJECT_KEYS}
    training = {k: v for k, v in s.items() if k in train_fields}
    TrainConfig.from_dict(training, method="pd", seed=inject["seed"])  # validates
    return inject, training


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class InjectResult:
    out: Path
    reused: list[str]  # job kinds whose output an earlier run had made
    record: dict


STEP_TIMES = {"questions": "questions_s", "answers": "answers_s", "adapter": "training_s"}


def project_config(path: str | None) -> dict:
    """The project config when one is given (model registry, prompt overrides, generation backend)."""
    if path is None:
        return {}
    from pd import prompts
    from pd.config import load_config

    cfg = load_config(path)
    prompts.set_overrides(dict(cfg.get("prompts") or {}))
    return cfg


def inject_config(docs: Path, model: str, out: Path, settings: dict[str, Any], training: dict[str, Any],
                  project: dict, passage_chars: int | None = None) -> dict:
    """The config of inject's one-cell experiment: PD of ``model`` on the folder ``docs``.

    Args:
        docs: the documents folder (the ``documents`` dataset).
        model: the student, which is also question writer, expert and teacher.
        out: the output folder; the jobs' results go to ``<out>/results``.
        settings: inject's own settings (:func:`resolve_settings`).
        training: the training settings given (the rest are the workflow's defaults).
        project: the project config (models, prompts, generation backend), or {}.
        passage_chars: split documents longer than this into passages (None: keep them whole).

    Returns:
        A validated config with the experiment ``inject``.

    Raises:
        ConfigError: a setting the config schema rejects.
    """
    from pd.config import load_config

    gen = project.get("generation") or {}
    extra = heldout_extra(settings["questions"], settings["heldout_fraction"])
    raw = {
        "results_dir": str(out / RESULTS_DIR), "reports_dir": str(out / RESULTS_DIR / "reports"),
        "datasets": {DATASET: {"loader": "folder", "path": str(docs.resolve()),
                               **({"passage_chars": passage_chars} if passage_chars else {})}},
        "models": project.get("models") or {}, "prompts": project.get("prompts") or {},
        "generation": {"backend": gen.get("backend", "transformers"), "openai_base_url": gen.get("openai_base_url"),
                       "openai_cache_tag": gen.get("openai_cache_tag"), "batch_size": settings["generation_batch_size"],
                       "questions": {"mode": settings["qgen_mode"], "per_item": settings["questions"],
                                     "temperature": settings["qgen_temperature"], "max_rounds": settings["max_rounds"]},
                       "answers": {"max_new_tokens": settings["answer_max_tokens"]}},
        # held-out questions per training question: the count heldout_extra gives, as a ratio
        "training": {**training, "heldout_fraction": extra / settings["questions"]},
        "experiments": {EXPERIMENT: {"grid": {"model": [model], "method": ["pd"], "dataset": [DATASET],
                                              "seed": [settings["seed"]],
                                              "answer_temperature": [settings["answer_temperature"]]}}},
        "run": [EXPERIMENT],
    }
    return load_config(raw)


QUESTION_TOKENS = 64  # room for a question in the teacher's prompt, beside the passage and the answer


def _passage_chars(spec, ds, settings: dict[str, Any], training: dict[str, Any]) -> int | None:
    """Characters per passage when a document does not fit ``max_teacher_tokens`` beside a question and answer."""
    from pd.context import PROMPT_MARGIN, passage_chars, token_count
    from pd.models import load_tokenizer
    from pd.train.settings import spec_defaults

    teacher_tokens = training.get("max_teacher_tokens", spec_defaults()["max_teacher_tokens"])
    budget = max(64, teacher_tokens - settings["answer_max_tokens"] - QUESTION_TOKENS - PROMPT_MARGIN)
    texts = {d.id: d.text for d in ds.documents.values()}
    if all(len(t.encode("utf-8")) <= budget for t in texts.values()):  # no more tokens than bytes
        return None
    tok = load_tokenizer(spec)
    if all(token_count(tok, t) <= budget for t in texts.values()):
        return None
    return passage_chars(tok, texts, budget)


def _check_out(docs: Path, out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / RECORD_FILE).is_file()
                                              and not (out / RESULTS_DIR).is_dir())):
        raise DataError(f"{out} exists and is not a `pd inject` output folder; choose another --out "
                        "(it would be replaced)")
    if docs.resolve() == out.resolve() or out.resolve() in docs.resolve().parents:
        raise DataError(f"--out {out} must not contain the documents folder {docs}")
    if docs.resolve() in out.resolve().parents:  # a rerun would read the model card as a document
        raise DataError(f"--out {out} lies inside the documents folder {docs}; choose a folder outside it")


def _size(art, plan) -> str:
    """What a job is about to compute, as its kind's workload plans it (:mod:`pd.pipeline.sizing`: planned
    counts, before the questions that were really kept are known)."""
    from pd.pipeline.registry import get_kind
    from pd.pipeline.sizing import Forwards, Generation, Training

    work = get_kind(art.kind).workload(art, plan) if art.model else None
    if isinstance(work, Generation):
        return f"about {work.sequences} sequences of up to {work.new} new tokens with {art.model}"
    if isinstance(work, Training):
        return f"about {work.rows} training rows, {work.steps} optimizer steps of {work.global_batch} on {art.model}"
    if isinstance(work, Forwards):
        return f"about {work.tokens} tokens through {art.model}"
    return art.path


def _run_jobs(plan, target: str, docs: Path) -> tuple[list[str], dict[str, float]]:
    """Run the jobs ``target`` needs in this process (pd.pipeline.run), reusing every output that exists."""
    from pd.pipeline.run import run_spec

    reused, timings = [], {}
    arts = plan.in_order(target)
    for i, art in enumerate(arts, 1):
        t = time.time()
        if Path(art.path).exists():
            reused.append(art.kind)
            log.info("step %d/%d %s: reusing %s", i, len(arts), art.kind, art.path)
        else:
            log.info("step %d/%d %s starts: %s", i, len(arts), art.kind, _size(art, plan))
            run_spec(art.spec, art.path)
        if art.kind == "questions" and not read_jsonl(art.path):
            from pd.io import stats_path

            raise DataError(f"{art.spec.generator} wrote no usable question about the documents in {docs} "
                            f"(see {stats_path(art.path)}); try --set qgen_mode=single or more max_rounds")
        timings[STEP_TIMES.get(art.kind, f"{art.kind}_s")] = round(time.time() - t, 1)
    return reused, timings


def inject(docs: str | Path, model: str, out: str | Path, overrides: dict[str, Any] | None = None, *,
           config: str | None = None, command: str = "", judge: str | None = None) -> InjectResult:
    """Questions, answers and a PD adapter for the documents under ``docs``, written to ``out``.

    The jobs are the workflow's (:func:`pd.pipeline.plan.build_adapter_plan` over a ``folder``
    dataset), run in this process by :mod:`pd.pipeline.run` into ``<out>/results``; a rerun
    reuses every job whose output exists there, as Snakemake would.

    Args:
        docs: a folder of ``.txt``/``.md`` documents.
        model: the model to inject into (a registry name).
        out: the output folder (created, or an earlier inject's to update).
        overrides: settings over :data:`DEFAULTS` (inject's own and training ones).
        config: a project config for its model registry, prompts and generation backend.
        command: the command line, for the model card.
        judge: a model that grades the recall's answers against the teacher's (None: token F1;
            :mod:`pd.recall`).

    Returns:
        The output folder, the reused job kinds and the run's record (``inject.json``, with the
        recall summary under ``recall``).

    Raises:
        ConfigError: an unknown setting or model, or an invalid value.
        DataError: a missing documents folder, an ``out`` that is not an inject folder, or no
            usable question.
    """
    from pd.models import get_spec
    from pd.pipeline.plan import build_adapter_plan
    from pd.train.rows import HELDOUT_FILE, split_heldout

    t0 = time.time()
    project = project_config(config)
    settings, training = resolve_settings(overrides or {})
    docs, out = Path(docs), Path(out)
    ds = load_folder(docs)
    spec = get_spec(model, project.get("models"))  # an unknown model fails before any work
    if judge and (project.get("generation") or {}).get("backend") != "openai":
        get_spec(judge, project.get("models"))  # so does an unknown judge (a server's names are its own)
    _check_out(docs, out)
    chars = _passage_chars(spec, ds, settings, training)
    if chars:
        ds = load_folder(docs, passage_chars=chars)
        log.info("documents longer than the teacher's prompt allows are split: %d passages of at most %d characters",
                 len(ds.documents), chars)
    cfg = inject_config(docs, model, out, settings, training, project, passage_chars=chars)
    plan, (adapter,) = build_adapter_plan(cfg, EXPERIMENT)
    reused, timings = _run_jobs(plan, adapter, docs)
    if len(reused) == len(plan.in_order(adapter)) and (out / RECORD_FILE).is_file():
        record = read_json(out / RECORD_FILE)
        if (record.get("adapter_job") == str(Path(adapter).relative_to(out)) and isinstance(record.get("recall"), dict)
                and record["recall"].get("judge") == judge):
            log.info("%s is up to date: every job reused", out)
            return InjectResult(out, reused, record)
    by_kind = {a.kind: a for a in plan.in_order(adapter)}
    questions, answers = read_jsonl(by_kind["questions"].path), read_jsonl(by_kind["answers"].path)
    _, heldout_rows = split_heldout(answers, by_kind["adapter"].spec.heldout_fraction)
    meta, kl = read_json(Path(adapter) / META_FILE), read_json(Path(adapter) / HELDOUT_FILE)
    t = time.time()
    summary, recall_rows = measure_recall(model, Path(adapter), heldout_rows, ds, settings, project, judge)
    timings["recall_s"] = round(time.time() - t, 1)
    record = {
        "pd_version": _version(), "command": command, "model": model, "documents_folder": str(docs),
        "documents": [{"id": d.id, **ds.meta.get("passages", {}).get(d.id, {"source": d.id, "offset": 0}),
                       "characters": len(d.text), "words": len(d.text.split()),
                       "questions": sum(q["doc_id"] == d.id for q in questions),
                       "answers": sum(a["doc_id"] == d.id for a in answers)} for d in ds.documents.values()],
        "settings": settings, "training": meta["config"], "questions": len(questions), "answers": len(answers),
        "heldout_pairs": len(heldout_rows), "train_pairs": meta["examples"], "heldout_kl": kl, "recall": summary,
        "train_steps": meta["steps"], "train_wall_clock_s": meta["wall_clock_s"],
        "wall_clock_s": round(time.time() - t0, 1), "step_times_s": timings, "reused": reused,
        "adapter_job": str(Path(adapter).relative_to(out)), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_output(out, by_kind, heldout_rows, record, ds, recall_rows)
    return InjectResult(out, reused, record)


def measure_recall(model: str, adapter: Path, heldout_rows: list[dict], ds, settings: dict[str, Any], project: dict,
                   judge: str | None = None) -> tuple[dict, list[dict]]:
    """The held-out questions asked three ways (adapter, base, with the passage) and graded (:mod:`pd.recall`).

    Args:
        model: the base model.
        adapter: the trained adapter's folder.
        heldout_rows: the held-out answer rows (the teacher's answers are the references).
        ds: the dataset trained on (its passages).
        settings: inject's settings (answer length, seed, batch size).
        project: the project config, or {}.
        judge: a judge model's name, or None (token F1).

    Returns:
        ``(summary, graded rows)`` as :func:`pd.recall.recall` gives them.
    """
    from pd.generate import SamplingParams
    from pd.recall import heldout_cases, judge_generator, load_generators, recall, summarise

    cases = heldout_cases(heldout_rows, {d.id: d.text for d in ds.documents.values()})
    if not cases:
        log.info("recall: no held-out questions (heldout_fraction is 0); not measured")
        return {**summarise([], documents=list(ds.documents)), "judge": judge}, []
    log.info("recall starts: %d held-out questions asked three ways (adapter, base, with the passage) by %s%s",
             len(cases), model, f", graded by {judge}" if judge else ", graded by token F1")
    gens = load_generators(model, adapter, project, settings["generation_batch_size"])
    params = SamplingParams(temperature=RECALL_TEMPERATURE, max_new_tokens=settings["answer_max_tokens"],
                            seed=settings["seed"])
    return recall(gens, cases, params, judge=judge_generator(judge, project) if judge else None, judge_name=judge,
                  documents=list(ds.documents))


def _write_output(out: Path, by_kind: dict, heldout_rows: list[dict], record: dict, ds, recall_rows: list[dict]
                  ) -> None:
    """The output folder's top level: the adapter's files, the data, the recall, the card and, last, the record."""
    from pd.io import stats_path
    from pd.recall import write_recall

    (out / RECORD_FILE).unlink(missing_ok=True)  # until the record is back, the folder is not finished
    adapter = Path(by_kind["adapter"].path)
    for f in sorted(adapter.iterdir()):
        if f.is_file():
            _link_or_copy(f, out / f.name)
    for kind in ("questions", "answers"):
        src = Path(by_kind[kind].path)
        _link_or_copy(src, out / DATA_DIR / f"{kind}.jsonl")
        _link_or_copy(stats_path(src), out / DATA_DIR / f"{kind}.stats.json")
    write_jsonl(out / DATA_DIR / "heldout.jsonl", heldout_rows)
    passages = ds.meta.get("passages", {})
    write_jsonl(out / DATA_DIR / PASSAGES_FILE, [{"id": d.id, **passages.get(d.id, {"source": d.id, "offset": 0}),
                                                  "text": d.text} for d in ds.documents.values()])
    write_recall(out, record["recall"], recall_rows)
    write_text(out / "README.md", model_card(record, out))
    write_json(out / RECORD_FILE, record)


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (a copy across file systems), replaced atomically."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _version() -> str:
    import pd

    return pd.__version__


# --------------------------------------------------------------------------- model card


def _recall_card(record: dict) -> list[str]:
    """The card's first section: how many held-out facts the adapter recalls, per document and overall."""
    from pd.recall import F1_THRESHOLD, WAY_NAMES

    rc = record.get("recall") or {}
    o = rc.get("overall") or {}
    if not o.get("questions"):
        return ["## What it learned", "", "Not measured: no held-out questions (heldout_fraction is 0)."]
    rule = (f"the judge `{rc['judge']}` compares each answer with the teacher's" if rc.get("judge") else
            f"an answer counts when its token F1 with the teacher's answer, question words left out, is at least "
            f"{rc.get('threshold', F1_THRESHOLD):g}")
    lines = ["## What it learned", "", f"**The adapter {rc['line']}.**", "",
             f"The held-out questions were generated like the training questions but never trained on; each was "
             f"asked {WAY_NAMES['adapter']}, {WAY_NAMES['base']}, and by the {WAY_NAMES['passage']}, greedily, and "
             f"graded against the teacher's answer: {rule} (`pd/recall.py`).", "",
             "| document | held-out questions | adapter | base | with the passage |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for doc, c in rc["documents"].items():
        cells = [c[w] if c[w] is not None else "-" for w in ("adapter", "base", "passage")]
        lines.append(f"| {doc} | {c['questions']} | {' | '.join(map(str, cells))} |")
    lines.append(f"| **all** | {o['questions']} | {o['adapter']} | {o['base']} | {o['passage']} |")
    if o.get("mean_f1"):
        lines += ["", "Mean token F1 with the teacher's answer: " + ", ".join(
            f"{w} {v:.2f}" for w, v in o["mean_f1"].items()) + "."]
    return lines


def model_card(record: dict, out: Path) -> str:
    """README.md of an inject output: what went in, how, and the measured held-out KL."""
    s, tr, kl = record["settings"], record["training"], record["heldout_kl"]
    lines = [f"# {out.name}: knowledge injected into {record['model']}", "",
             *_recall_card(record), "",
             f"A LoRA adapter (PEFT) for `{record['model']}` trained by prompt distillation on the documents of "
             f"`{record['documents_folder']}` with `pd inject` (pd {record['pd_version']}).", "",
             "## What was injected", "", "A document longer than the teacher's prompt allows is split into passages "
             "(id: `<file>#<character offset>`).", "",
             "| passage | file | offset | characters | words | questions | answers |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for d in record["documents"]:
        lines.append(f"| {d['id']} | {d.get('source', d['id'])} | {d.get('offset', 0)} | {d['characters']} | "
                     f"{d['words']} | {d['questions']} | {d['answers']} |")
    lines += ["", f"{record['questions']} questions ({s['qgen_mode']} mode, {s['questions']} per document requested, "
              f"written by {record['model']}) and {record['answers']} answers by the expert ({record['model']} with "
              f"the document in its prompt, temperature {s['answer_temperature']:g}, at most {s['answer_max_tokens']} "
              f"tokens): {record['train_pairs']} pairs trained on, {record['heldout_pairs']} held out.", "",
              "## Measured: held-out KL(teacher || student)", ""]
    if kl.get("before") is not None and kl.get("after") is not None:
        lines += [f"On the {kl['n_heldout']} held-out pairs, at temperature {kl['temperature']:g}: "
                  f"**{kl['before']:.4g} → {kl['after']:.4g}** ({100 * kl['closed_fraction']:.1f}% closed). "
                  "The teacher is the base model reading the document; the student, the adapted model without it.", ""]
    else:
        lines += ["Not measured (no held-out pairs: heldout_fraction is 0).", ""]
    lines += ["## Settings", "", "| setting | value |", "| --- | --- |"]
    shown = {"method": "pd", "epochs": tr["epochs"], "lr": tr["lr"], "rank": tr["rank"],
             "alpha": tr["alpha_factor"] * tr["rank"], "batch_size": tr["batch_size"],
             "kd_temperature": tr["kd_temperature"], "warmup_steps": tr["warmup_steps"],
             "weight_decay": tr["weight_decay"], "seed": s["seed"], "steps": record["train_steps"]}
    lines += [f"| {k} | {v:g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown.items()]
    lines += ["", f"All settings: `{RECORD_FILE}` (and `{META_FILE}` for training).", "",
              "## Files", "",
              "- `adapter_config.json`, `adapter_model.safetensors`: the adapter "
              "(`peft.PeftModel.from_pretrained(base_model, this_folder)`)",
              f"- `{DATA_DIR}/questions.jsonl`, `{DATA_DIR}/answers.jsonl`: the generated training data "
              f"(with `.stats.json` yields); `{DATA_DIR}/heldout.jsonl`: the held-out pairs",
              "- `heldout.json`: the KL measurement; `train_log.jsonl`: loss per step",
              f"- `{RECALL_FILE}`: the recall summary; `{RECALL_ANSWERS}`: every answer of the recall, graded; "
              f"`{DATA_DIR}/{PASSAGES_FILE}`: the passages trained on", "",
              "## Use", "", "```bash", f"pd ask {out} \"your question\"", f"pd ask {out} \"your question\" --rag "
              f"{record['documents_folder']}", f"pd ask {out} \"your question\" --no-adapter   # the base model", "```",
              "", "## Provenance", "",
              f"- command: `{record['command']}`",
              f"- wall-clock: {record['wall_clock_s']:.0f} s (training {record['train_wall_clock_s']:.0f} s)",
              f"- finished: {record['finished']}", ""]
    return "\n".join(lines)


