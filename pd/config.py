"""Load and validate config.yaml: one function for the workflow and the CLI alike.

Validation has two layers: the JSON Schema in ``workflow/schemas/config.schema.yaml``
(keys, types, ranges, enumerations; it also fills defaults), then the cross-references a
schema cannot express (model, dataset and experiment names; teacher vocabularies).
Every problem is reported with its key path and, where a set of values is allowed,
that set; all problems are reported at once.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterable

import yaml
from jsonschema import Draft202012Validator, validators

from pd.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config.yaml"

METHODS = ("base", "pd", "pd_reverse", "pd_reg", "sft", "uft", "sft_distractors")
TRAINED_METHODS = tuple(m for m in METHODS if m != "base")
DISTILLING_METHODS = ("pd", "pd_reverse", "pd_reg")
RETRIEVERS = ("none", "bm25", "bm25_paper", "dense", "openai", "oracle")

# The paper's Table 8 (Llama-3 column); per-model and per-method settings override it.
PAPER_TRAINING: dict[str, Any] = {
    "lr": 1e-5, "weight_decay": 0.1, "max_grad_norm": 1.0, "batch_size": 4, "grad_accum": 1,
    "epochs": 10, "warmup_epochs": 1, "warmup_steps": 0, "rank": 1024, "alpha_factor": 2.0,
    "lora_dropout": 0.0, "kd_temperature": 2.0, "t2_scale": False, "teacher_topk": 0,
    "max_answer_tokens": 512, "max_teacher_tokens": 768, "chunk_size": 128, "checkpoint_every": 0,
    "teacher_logprob_dtype": "float16",
    "snapshot_seconds": [], "reg_fraction": 0.5, "reg_data": "tulu3", "uft_chunk_tokens": 256,
    "uft_overlap": 64, "distractors": 2, "gold_drop_prob": 0.4,
    # Not the paper's: 10% extra questions are generated and held out of training, to measure
    # KL(teacher || student) on unseen pairs before and after (every trained cell reports it).
    "heldout_fraction": 0.1,
}
def heldout_extra(questions: int, fraction: float) -> int:
    """Questions generated on top of ``questions`` and held out for the held-out KL (at least one)."""
    return max(1, round(questions * fraction)) if fraction > 0 else 0


PAPER_METHODS: dict[str, dict[str, Any]] = {
    "base": {},
    "pd": {"answer_temperature": 1.5},
    "pd_reverse": {"answer_temperature": 1.5},
    "pd_reg": {"answer_temperature": 1.5},
    "sft": {"answer_temperature": 0.25},
    "sft_distractors": {"answer_temperature": 0.25},
    "uft": {"training": {"lr": 5e-5, "epochs": 3}},
}
BUILTIN_DATASETS: dict[str, dict[str, Any]] = {
    **{s: {"loader": "squadshifts", "subset": s} for s in ("amazon", "new_wiki", "nyt", "reddit")},
    "hotpotqa": {"loader": "hotpotqa", "limit": 1000},
}


def _with_defaults(cls):
    """A validator class that writes schema defaults into the instance while validating."""
    validate_properties = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(cls, {"properties": set_defaults})


_Validator = _with_defaults(Draft202012Validator)
_schema_cache: dict | None = None


def schema() -> dict:
    global _schema_cache
    if _schema_cache is None:
        _schema_cache = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    return _schema_cache


def _path(parts: Iterable) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _allowed_keys(sub: dict) -> list[str]:
    return sorted(sub.get("properties", {}))


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _format(err) -> str:
    where = _path(err.absolute_path)
    v = err.validator
    if v == "additionalProperties" and isinstance(err.instance, dict):
        allowed = _allowed_keys(err.schema)
        extra = sorted(set(err.instance) - set(allowed))
        return "; ".join(
            f"{where}: unknown key {k!r}{_suggest(k, allowed)}; allowed: {', '.join(allowed)}" for k in extra
        )
    if v == "enum":
        allowed = [str(x) for x in err.validator_value]
        return f"{where}: {err.instance!r} is not allowed{_suggest(err.instance, allowed)}; allowed: {', '.join(allowed)}"
    if v == "type":
        want = err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
        return f"{where}: expected {want}, got {type(err.instance).__name__} {err.instance!r}"
    if v == "required":
        return f"{where}: {err.message}"
    if v == "oneOf" or v == "anyOf":
        return f"{where}: {err.instance!r} does not match any allowed form"
    return f"{where}: {err.message}"


def _leaf_errors(errs) -> list:
    """The errors worth showing: inside allOf/$ref, and inside the oneOf branch meant.

    For a oneOf (e.g. a grid or a list of grids) the branch whose type fits the value is
    the one the user meant; its errors name the real problem.
    """
    out = []
    for e in errs:
        if e.validator in ("allOf", "$ref") and e.context:
            out.extend(_leaf_errors(e.context))
        elif e.validator in ("oneOf", "anyOf") and e.context:
            branches: dict[int, list] = {}
            for sub in e.context:
                branches.setdefault(sub.relative_schema_path[0], []).append(sub)
            fitting = [b for b in branches.values()
                       if not any(x.validator == "type" and not x.relative_path for x in b)]
            out.extend(_leaf_errors(fitting[0]) if len(fitting) == 1 else [e])
        else:
            out.append(e)
    return out


def grids(experiment: dict) -> list[dict]:
    """An experiment's grids: one, or several whose cells are united."""
    g = experiment["grid"]
    return g if isinstance(g, list) else [g]


def validate_schema(cfg: dict) -> dict:
    """Validate ``cfg`` in place against the schema, filling defaults; raise on problems."""
    errors = _leaf_errors(_Validator(schema()).iter_errors(cfg))
    if errors:
        lines = sorted({_format(e) for e in errors})
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return cfg


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _check_names(problems: list[str], where: str, names: Iterable[str], known: Iterable[str], what: str,
                 extra_ok: tuple[str, ...] = ()) -> None:
    known = sorted(set(known))
    for i, n in enumerate(names):
        if n not in known and n not in extra_ok:
            allowed = ", ".join([*extra_ok, *known])
            problems.append(f"{where}[{i}]: unknown {what} {n!r}{_suggest(n, known)}; allowed: {allowed}")


def validate_references(cfg: dict) -> None:
    """Cross-references the schema cannot see; all problems in one error."""
    from pd import models as pdm
    from pd import prompts

    problems: list[str] = []
    try:
        reg = pdm.registry(cfg.get("models"))
    except ConfigError as err:
        problems.append(str(err))
        reg = dict(pdm.BUILTIN)
    datasets = cfg["datasets"]
    for name, d in datasets.items():
        if d["loader"] == "squadshifts" and "subset" not in d:
            problems.append(f"datasets.{name}: loader 'squadshifts' needs 'subset' (amazon, new_wiki, nyt, reddit)")
        if d["loader"] == "folder" and "path" not in d:
            problems.append(f"datasets.{name}: loader 'folder' needs 'path' (a folder of .txt/.md files)")
    for i, name in enumerate(cfg["run"]):
        if name not in cfg["experiments"]:
            problems.append(f"run[{i}]: unknown experiment {name!r}{_suggest(name, cfg['experiments'])}; "
                            f"allowed: {', '.join(sorted(cfg['experiments']))}")
    for ename, exp in cfg["experiments"].items():
        for gi, g in enumerate(grids(exp)):
            where = f"experiments.{ename}.grid" + (f"[{gi}]" if isinstance(exp["grid"], list) else "")
            _check_grid(problems, where, g, reg, datasets)
        axes = set().union(*(grids(exp)))
        unknown_axes = [a for a in exp["table"]["rows"] + exp["table"]["columns"] if a not in axes]
        if unknown_axes:
            problems.append(f"experiments.{ename}.table: unknown axis {unknown_axes}; allowed: {', '.join(sorted(axes))}")
    if "judge" in cfg["grading"]["graders"] and cfg["grading"]["judge"] not in reg:
        problems.append(f"grading.judge: unknown model {cfg['grading']['judge']!r}; allowed: {', '.join(sorted(reg))}")
    known_prompts = prompts.builtin_names()
    for name, path in cfg["prompts"].items():
        if known_prompts and name not in known_prompts:
            problems.append(f"prompts.{name}: no such prompt; allowed: {', '.join(known_prompts)}")
        elif not Path(path).is_file():
            problems.append(f"prompts.{name}: template file {path} does not exist")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _check_grid(problems: list[str], where: str, g: dict, reg: dict, datasets: dict) -> None:
    """Names in one grid: models, datasets, experts/teachers/generators, teacher vocabularies."""
    _check_names(problems, f"{where}.model", g["model"], reg, "model")
    _check_names(problems, f"{where}.dataset", g["dataset"], datasets, "dataset")
    for axis in ("expert", "teacher", "qgen"):
        _check_names(problems, f"{where}.{axis}", g[axis], reg, "model", extra_ok=("self",))
    for t in g["teacher"]:
        if t == "self" or t not in reg:
            continue
        for m in g["model"]:
            if m in reg and reg[m].family != reg[t].family:
                problems.append(f"{where}.teacher: teacher {t!r} (vocabulary family {reg[t].family}) cannot teach "
                                f"student {m!r} (family {reg[m].family}); a teacher must share the student's vocabulary")
    for axis in ("seed", "retrieval", "method"):
        dup = {x for x in g[axis] if g[axis].count(x) > 1}
        if dup:
            problems.append(f"{where}.{axis}: repeated value(s) {sorted(dup)}")




def load_config(source: str | os.PathLike | dict | None = None, overrides: dict | None = None) -> dict:
    """The validated config with every default filled in.

    ``source`` is a path to a YAML file (default: the repository's config.yaml) or an
    already-parsed dict (Snakemake's ``config``); ``overrides`` is merged on top (e.g.
    from ``--config`` or the CLI).
    """
    if source is None:
        source = DEFAULT_CONFIG
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        p = Path(source)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(raw).__name__}")
    cfg = deep_merge(raw, overrides or {})
    validate_schema(cfg)
    cfg["datasets"] = {**copy.deepcopy(BUILTIN_DATASETS), **cfg["datasets"]}
    validate_references(cfg)
    return cfg


def training_settings(cfg: dict, method: str, model: str, experiment: str | None = None) -> dict:
    """Resolved training settings: paper defaults < training < per_model < method < experiment."""
    out = deep_merge(PAPER_TRAINING, cfg.get("training", {}))
    out = deep_merge(out, cfg.get("per_model", {}).get(model, {}))
    out = deep_merge(out, PAPER_METHODS.get(method, {}).get("training", {}))
    out = deep_merge(out, cfg.get("methods", {}).get(method, {}).get("training", {}))
    if experiment:
        out = deep_merge(out, cfg["experiments"][experiment].get("training", {}))
    return out


def answer_temperature(cfg: dict, method: str) -> float | None:
    """The expert's sampling temperature for a method's training answers (1.5 PD, 0.25 SFT)."""
    m = deep_merge(PAPER_METHODS.get(method, {}), cfg.get("methods", {}).get(method, {}))
    return m.get("answer_temperature")
