"""``pd inject`` and ``pd ask``: put a folder of your own documents into a model's weights.

``inject`` runs the harness's pipeline on a folder instead of a benchmark: questions per
document (:mod:`pd.qgen`), the expert's answers with the document in its prompt, prompt
distillation with the adapter-off model as teacher (:func:`pd.train.run.run_adapter`,
which also holds out some questions and measures KL(teacher || student) on them before
and after). The output folder is a PEFT adapter plus a model card (README.md), the
intermediate JSONL (``data/``) and ``inject.json`` (settings, command, wall-clock).

Resuming: each step's output sits in ``<out>.inject/`` (and, once finished, in
``<out>/data``) beside a hash of everything it depends on; a rerun reuses every step whose
hash matches, and generation goes through the disk cache, so an interrupted step redoes
only the completions it had not written.

``ask`` loads the base model named in the adapter's ``pd_meta.json`` with the adapter
(or without, for comparison) and answers closed-book, or with BM25 retrieval over a
folder using the evaluation's RAG prompt.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from pd.config import heldout_extra
from pd.data import Dataset, load_folder
from pd.errors import ConfigError, DataError, PDError
from pd.io import atomic_path, file_hash, read_json, read_jsonl, stable_hash, write_json, write_jsonl, write_text

log = logging.getLogger("pd.inject")

# The one place for inject's defaults (command-line flags and --set override them). Chosen
# for smollm2-135m-instruct on a CPU; `questions` is per document. Measured on the three
# invented-fact documents of tests/test_inject.py (6 questions): these settings gave 1/6
# right closed-book (base 0/6) and held-out KL 0.82 -> 0.17; 12 questions/document at
# distillation temperature 2 and 3 epochs, or 9 questions at T=2 and 8 epochs, gave 0/6.
DEFAULTS: dict[str, Any] = {
    "questions": 20,
    "heldout_fraction": 0.1,  # this many extra questions are generated and held out for the KL measurement
    "qgen_mode": "sentence",  # small models fail at the five-question prompt; this asks about each sentence
    "qgen_temperature": 0.6,  # None: the mode's default (pd/qgen.py MODE_DEFAULTS, 0.8); lower keeps SmolLM2 on topic
    "max_rounds": 6,
    "answer_temperature": 0.25,
    "answer_max_tokens": 48,
    "epochs": 4,
    "lr": 1e-3,
    "rank": 64,
    "kd_temperature": 1.0,  # the paper's 2 spreads the loss over the vocabulary; 1 did better for SmolLM2 (config.yaml, tune-demo)
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
ASK_DEFAULTS = {"k": 7, "temperature": 0.25, "max_tokens": 256}


# --------------------------------------------------------------------------- settings


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings to a dict; values are read as YAML scalars (``1e-3``, ``true``, ``[1, 2]``)."""
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {p!r}: expected key=value")
        try:
            v = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {p!r}: value is not valid YAML: {err}") from None
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
    from pd.qgen import MODES
    from pd.train.settings import TrainConfig

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
    if not isinstance(s["heldout_fraction"], (int, float)) or not 0 <= s["heldout_fraction"] < 1:
        raise ConfigError(f"heldout_fraction must lie in [0, 1), got {s['heldout_fraction']!r}")
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


# --------------------------------------------------------------------------- steps


@dataclasses.dataclass
class InjectResult:
    out: Path
    reused: list[str]  # steps taken from an earlier run
    record: dict


def _docs_fingerprint(ds: Dataset) -> list:
    return [[d.id, stable_hash(d.text)] for d in ds.documents.values()]


def _reuse_rows(name: str, key: str, places: Sequence[Path]) -> list[dict] | None:
    from pd.qgen import stats_path

    for folder in places:
        path, stats = folder / name, stats_path(folder / name)
        if path.is_file() and stats.is_file() and read_json(stats).get("inject_key") == key:
            return read_jsonl(path)
    return None


def _step(name: str, spec: dict, stage: Path, places: Sequence[Path], make: Callable[[], tuple[list[dict], dict]],
          reused: list[str]) -> list[dict]:
    """Rows of a data step: an earlier run's when its key matches, else computed and written to ``stage``."""
    from pd.qgen import write_with_stats

    key = stable_hash(spec)
    rows = _reuse_rows(name, key, [stage, *places])
    if rows is not None:
        reused.append(name)
        if not (stage / name).is_file():
            write_with_stats(stage / name, rows, {"inject_key": key, "spec": spec, "reused": True})
        log.info("%s: reusing %d rows from an earlier run", name, len(rows))
        return rows
    rows, stats = make()
    write_with_stats(stage / name, rows, stats | {"inject_key": key, "spec": spec})
    return rows


def _generator(model: str, cfg: dict, batch_size: int, adapter: str | None = None, progress: bool = True):
    """The workflow's generator (pd.stages), with the backend and model registry of the project config."""
    from pd.stages import make_job_generator

    gen = cfg.get("generation", {})
    backend = gen.get("backend", "transformers")
    options = {"progress": progress} if backend == "transformers" else {}
    return make_job_generator(model, backend=backend, batch_size=batch_size, base_url=gen.get("openai_base_url"),
                              models_extra=cfg.get("models"), adapter=adapter, **options)


def _config(path: str | None) -> dict:
    """The project config when one is given (model registry, prompt overrides, generation backend)."""
    if path is None:
        return {}
    from pd import prompts
    from pd.config import load_config

    cfg = load_config(path)
    prompts.set_overrides(dict(cfg.get("prompts") or {}))
    return cfg


def inject(docs: str | Path, model: str, out: str | Path, overrides: dict[str, Any] | None = None, *,
           config: str | None = None, command: str = "") -> InjectResult:
    """Questions, answers and a PD adapter for the documents under ``docs``, written to ``out``."""
    from pd.generate import SamplingParams
    from pd.jobs import AdapterSpec
    from pd.models import get_spec
    from pd.qgen import QGenConfig, generate_answers, generate_questions
    from pd.train.run import HELDOUT_FILE, run_adapter, split_heldout

    t0 = time.time()
    cfg = _config(config)
    settings, training = resolve_settings(overrides or {})
    docs, out = Path(docs), Path(out)
    ds = load_folder(docs)
    get_spec(model, cfg.get("models"))  # an unknown model fails before any work
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / RECORD_FILE).is_file())):
        raise DataError(f"{out} exists and is not a `pd inject` output folder; choose another --out "
                        "(it would be replaced)")
    if docs.resolve() == out.resolve() or out.resolve() in docs.resolve().parents:
        raise DataError(f"--out {out} must not contain the documents folder {docs}")
    stage = out.with_name(out.name + ".inject")
    stage.mkdir(parents=True, exist_ok=True)
    places = [out / DATA_DIR]
    reused: list[str] = []
    fingerprint = _docs_fingerprint(ds)
    prompt_overrides = {k: file_hash(v) for k, v in sorted((cfg.get("prompts") or {}).items()) if Path(v).is_file()}
    extra = heldout_extra(settings["questions"], settings["heldout_fraction"])
    timings: dict[str, float] = {}

    # 1. questions
    t = time.time()
    qcfg = QGenConfig(mode=settings["qgen_mode"], per_doc=settings["questions"] + extra, seed=settings["seed"],
                      max_rounds=settings["max_rounds"], temperature=settings["qgen_temperature"])
    qspec = {"docs": fingerprint, "generator": model, "qgen": dataclasses.asdict(qcfg), "prompts": prompt_overrides}
    log.info("questions: %d per document (%d held out) for %d document(s)", qcfg.per_doc, extra, len(ds.documents))
    questions = _step("questions.jsonl", qspec, stage, places,
                      lambda: generate_questions(ds, _generator(model, cfg, settings["generation_batch_size"]), qcfg),
                      reused)
    if not questions:
        raise DataError(f"{model} wrote no usable question about the documents in {docs} "
                        f"(see {stage / 'questions.stats.json'}); try --set qgen_mode=single or more max_rounds")
    timings["questions_s"] = round(time.time() - t, 1)

    # 2. the expert's answers, with the document in its prompt
    t = time.time()
    params = SamplingParams(temperature=settings["answer_temperature"], top_k=0, top_p=1.0,
                            max_new_tokens=settings["answer_max_tokens"], seed=settings["seed"])
    aspec = {"questions": stable_hash(questions), "docs": fingerprint, "expert": model, "params": params.as_dict(),
             "prompts": prompt_overrides}
    answers = _step("answers.jsonl", aspec, stage, places, lambda: generate_answers(
        questions, ds, _generator(model, cfg, settings["generation_batch_size"]), params, model), reused)
    timings["answers_s"] = round(time.time() - t, 1)

    # 3. prompt distillation (adapter-off teacher), with the held-out KL before and after
    t = time.time()
    fraction = extra / (settings["questions"] + extra) if extra else 0.0
    spec = {"method": "pd", "model": model, "dataset": ds.name, "dataset_cfg": {"loader": "folder", "path": str(docs)},
            "seed": settings["seed"], "subset": "all", "answers": str(stage / "answers.jsonl"),
            "answers_hash": stable_hash(answers), "teacher_model": model,
            "models_extra": cfg.get("models") or None,
            "training": {**training, "heldout_fraction": extra / settings["questions"] if extra else 0.0}}
    adapter = stage / "adapter"
    stored = read_json_roundtrip(spec)
    done = [p for p in (adapter, out) if (p / META_FILE).is_file()
            and read_json(p / META_FILE).get("workflow_spec") == stored]
    if done:
        reused.append("adapter")
        log.info("adapter: reusing %s", done[0])
        if done[0] != adapter:
            _copy_adapter(done[0], adapter)
    else:
        run_adapter(AdapterSpec.from_dict(spec), str(adapter))
    timings["training_s"] = round(time.time() - t, 1)
    _, heldout_rows = split_heldout(answers, fraction)

    # 4. the output folder: adapter + model card + data, written atomically
    if len(reused) == 3 and done and done[0] == out:
        shutil.rmtree(stage, ignore_errors=True)
        log.info("%s is up to date: every step reused", out)
        return InjectResult(out, reused, read_json(out / RECORD_FILE))
    meta = read_json(adapter / META_FILE)
    kl = read_json(adapter / HELDOUT_FILE)
    record = {
        "pd_version": _version(), "command": command, "model": model, "documents_folder": str(docs),
        "documents": [{"id": d.id, "characters": len(d.text), "words": len(d.text.split()),
                       "questions": sum(q["doc_id"] == d.id for q in questions),
                       "answers": sum(a["doc_id"] == d.id for a in answers)} for d in ds.documents.values()],
        "settings": settings, "training": meta["config"], "questions": len(questions), "answers": len(answers),
        "heldout_pairs": len(heldout_rows), "train_pairs": meta["examples"], "heldout_kl": kl,
        "train_steps": meta["steps"], "train_wall_clock_s": meta["wall_clock_s"],
        "wall_clock_s": round(time.time() - t0, 1),
        "step_times_s": timings, "reused": reused,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_path(out) as tmp:
        shutil.copytree(adapter, tmp)
        (tmp / DATA_DIR).mkdir()
        for name in ("questions", "answers"):
            for suffix in (".jsonl", ".stats.json"):
                shutil.copyfile(stage / f"{name}{suffix}", tmp / DATA_DIR / f"{name}{suffix}")
        write_jsonl(tmp / DATA_DIR / "heldout.jsonl", heldout_rows)
        write_json(tmp / RECORD_FILE, record)
        write_text(tmp / "README.md", model_card(record, out))
    shutil.rmtree(stage, ignore_errors=True)
    return InjectResult(out, reused, record)


def read_json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), to compare with a stored spec."""
    import json

    return json.loads(json.dumps(obj, default=str))


def _copy_adapter(src: Path, dst: Path) -> None:
    """The adapter part of a finished output folder (everything but the data and the card)."""
    with atomic_path(dst) as tmp:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(DATA_DIR, RECORD_FILE, "README.md"))


def _version() -> str:
    import pd

    return pd.__version__


# --------------------------------------------------------------------------- model card


def model_card(record: dict, out: Path) -> str:
    """README.md of an inject output: what went in, how, and the measured held-out KL."""
    s, tr, kl = record["settings"], record["training"], record["heldout_kl"]
    lines = [f"# {out.name}: knowledge injected into {record['model']}", "",
             f"A LoRA adapter (PEFT) for `{record['model']}` trained by prompt distillation on the documents of "
             f"`{record['documents_folder']}` with `pd inject` (pd {record['pd_version']}).", "",
             "## What was injected", "", "| document | characters | words | questions | answers |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for d in record["documents"]:
        lines.append(f"| {d['id']} | {d['characters']} | {d['words']} | {d['questions']} | {d['answers']} |")
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
              "- `heldout.json`: the KL measurement; `train_log.jsonl`: loss per step", "",
              "## Use", "", "```bash", f"pd ask {out} \"your question\"", f"pd ask {out} \"your question\" --rag "
              f"{record['documents_folder']}", f"pd ask {out} \"your question\" --no-adapter   # the base model", "```",
              "", "## Provenance", "",
              f"- command: `{record['command']}`",
              f"- wall-clock: {record['wall_clock_s']:.0f} s (training {record['train_wall_clock_s']:.0f} s)",
              f"- finished: {record['finished']}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- ask


def ask(adapter_dir: str | Path, questions: Sequence[str], *, rag: str | Path | None = None,
        k: int = ASK_DEFAULTS["k"], temperature: float = ASK_DEFAULTS["temperature"],
        max_tokens: int = ASK_DEFAULTS["max_tokens"], use_adapter: bool = True, seed: int = 0,
        config: str | None = None) -> list[dict]:
    """Answers to ``questions`` from the base model of ``adapter_dir`` with (or without) the adapter.

    With ``rag`` the BM25 top-``k`` documents of that folder go into the prompt, as in
    evaluation (:func:`pd.evaluate.eval_conversation`).
    """
    from pd.evaluate import eval_conversation
    from pd.generate import SamplingParams

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / META_FILE).is_file():
        raise DataError(f"{adapter_dir} is not an adapter folder written by pd (no {META_FILE}); "
                        "pass the --out folder of `pd inject`")
    if not questions or not all(q.strip() for q in questions):
        raise DataError("ask needs a non-empty question")
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"--k must be a positive integer, got {k!r}")
    model = read_json(adapter_dir / META_FILE)["model"]
    retrieved: list[list[str]] = [[] for _ in questions]
    ds = None
    if rag is not None:
        from pd.retrieve import make_retriever

        ds = load_folder(rag)
        retrieved = make_retriever("bm25", ds.documents).search(list(questions), min(k, len(ds.documents)))
    cfg = _config(config)
    params = SamplingParams(temperature=temperature, max_new_tokens=max_tokens, seed=seed)
    gen = _generator(model, cfg, batch_size=8, adapter=str(adapter_dir) if use_adapter else None, progress=False)
    convs = [eval_conversation(q, [ds.documents[d].text for d in ids] if ds else None)
             for q, ids in zip(questions, retrieved)]
    outs = gen.generate(convs, params)
    return [{"question": q, "answer": c[0].text.strip(), "retrieved": ids, "model": model,
             "adapter": str(adapter_dir) if use_adapter else None, "finish_reason": c[0].finish_reason}
            for q, ids, c in zip(questions, retrieved, outs)]


def print_answers(rows: list[dict], as_json: bool = False, stream=None) -> None:
    import json

    stream = stream or sys.stdout

    for r in rows:
        if as_json:
            print(json.dumps(r), file=stream)
        elif len(rows) == 1:
            print(r["answer"], file=stream)
        else:
            print(f"Q: {r['question']}\nA: {r['answer']}\n", file=stream)
