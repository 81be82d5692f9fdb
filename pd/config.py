"""Load and validate config.yaml: one function for the workflow and the CLI alike.

Validation has two layers: the JSON Schema in ``workflow/schemas/config.schema.yaml`` (keys, types, ranges,
enumerations; it also fills defaults), then the cross-references a schema cannot express (model, dataset and
experiment names; teacher vocabularies). Every problem is reported with its key path and, where a set of values
is allowed, that set; all problems are reported at once.

Defaults: the training ones are :mod:`pd.train.settings`'s, the methods and their paper settings
:mod:`pd.train.methods`'s; evaluation's sampling and the
datasets' own settings (judge template, retrieval depth) are defined below.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from pd import config_checks
from pd.data import get_loader, loader_names
from pd.errors import ConfigError
from pd.train.methods.registry import get_method, grid_methods
from pd.train.settings import check_removed, spec_defaults, training_schema

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config.yaml"

# Evaluation's sampling (the paper's): the default of config.yaml's generation.evaluation.
EVAL_SAMPLING: dict[str, Any] = {"temperature": 0.25, "max_new_tokens": 500}

# What a dataset's config entry may set beyond where its data lies, as lm-eval's task YAML does: the judge's
# template and the retrieval depth. A key the entry leaves out comes from its loader's row here, else from
# DATASET_DEFAULTS. (Kept out of the entries themselves, whose content is part of every job's specification.)
DATASET_DEFAULTS: dict[str, Any] = {"judge_template": "judge_squadshifts", "retrieval_k": 7}


def heldout_extra(questions: int, fraction: float) -> int:
    """Questions generated on top of ``questions`` and held out for the held-out KL.

    Args:
        questions: training questions per item (or document).
        fraction: extra questions relative to ``questions`` (``training.heldout_fraction``).

    Returns:
        ``round(questions * fraction)``, at least one when ``fraction > 0``; 0 otherwise.
    """
    return max(1, round(questions * fraction)) if fraction > 0 else 0




def paper_method_settings(method: str) -> dict[str, Any]:
    """The paper's settings for a method (its :attr:`Method.paper <pd.train.methods.registry.Method.paper>`:
    the expert's answers at T=1.5 for PD, 0.25 for SFT; UFT's own lr and epochs), under ``methods:``.

    Raises:
        ConfigError: an unknown method.
    """
    return get_method(method).paper
BUILTIN_DATASETS: dict[str, dict[str, Any]] = {
    **{s: {"loader": "squadshifts", "subset": s} for s in ("amazon", "new_wiki", "nyt", "reddit")},
    "hotpotqa": {"loader": "hotpotqa", "limit": 1000},
}


def dataset_setting(dataset_cfg: dict, key: str) -> Any:
    """A dataset's own setting: its config entry's, else its loader's, else the general default.

    Args:
        dataset_cfg: the dataset's resolved config entry (``cfg["datasets"][name]``, or a job's ``dataset_cfg``).
        key: a key of :data:`DATASET_DEFAULTS` (``judge_template``, ``retrieval_k``).

    Returns:
        The value (for ``judge_template`` a name of :data:`pd.evaluation.grade.JUDGE_TEMPLATES`).

    Raises:
        KeyError: ``key`` is no dataset setting (a bug in the caller).
    """
    if key not in DATASET_DEFAULTS:
        raise KeyError(f"no dataset setting {key!r}; known: {', '.join(DATASET_DEFAULTS)}")
    if key in dataset_cfg:
        return dataset_cfg[key]
    return get_loader(dataset_cfg.get("loader")).defaults.get(key, DATASET_DEFAULTS[key])


def dataset_judge_template(dataset_cfg: dict) -> str:
    """The judge template a dataset is graded with: ``dataset_setting(dataset_cfg, "judge_template")``."""
    return dataset_setting(dataset_cfg, "judge_template")


def retrieval_k(retrieval: dict, dataset_cfg: dict) -> int:
    """Passages retrieved per question: the resolved ``retrieval`` block's ``k`` if set, else the dataset's."""
    k = retrieval.get("k")
    return k if k is not None else dataset_setting(dataset_cfg, "retrieval_k")


def evaluation_sampling(sampling: dict | None = None) -> dict[str, Any]:
    """Evaluation's sampling settings: an evaluation job's ``sampling`` over :data:`EVAL_SAMPLING` (a new dict)."""
    return {**EVAL_SAMPLING, **(sampling or {})}


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
    """config.yaml's JSON Schema: the file, with ``$defs.training`` (from TrainConfig's fields),
    ``$defs.method`` (the registered methods, :func:`pd.train.methods.grid_methods`) and evaluation's
    default (:data:`EVAL_SAMPLING`) filled in.

    Returns:
        The schema (cached; do not modify it).
    """
    global _schema_cache
    if _schema_cache is None:
        s = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
        s["$defs"]["training"].update(training_schema())
        s["properties"]["generation"]["properties"]["evaluation"]["default"] = copy.deepcopy(EVAL_SAMPLING)
        _schema_cache = s
    _schema_cache["$defs"]["method"]["enum"] = list(grid_methods())  # the registry's now, a method added later too
    entry = _schema_cache["properties"]["datasets"]["additionalProperties"]["properties"]
    entry["loader"]["enum"] = list(loader_names())  # likewise the registered dataset loaders
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
        return "; ".join(f"{where}: unknown key {k!r}{_suggest(k, allowed)}; allowed: {', '.join(allowed)}"
                         for k in extra)
    if v == "enum":
        allowed = [str(x) for x in err.validator_value]
        return (f"{where}: {err.instance!r} is not allowed{_suggest(err.instance, allowed)}; "
                f"allowed: {', '.join(allowed)}")
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
    """An experiment's grids: one, or several whose cells are united.

    Args:
        experiment: an entry of ``cfg["experiments"]``.

    Returns:
        Its ``grid`` as a list of grid dicts.
    """
    g = experiment["grid"]
    return g if isinstance(g, list) else [g]


def validate_schema(cfg: dict) -> dict:
    """Validate ``cfg`` in place against the schema, filling in its defaults.

    Args:
        cfg: a parsed config.yaml (modified in place).

    Returns:
        ``cfg``, with the schema's defaults filled in.

    Raises:
        ConfigError: every schema violation, one per line, with its key path and the allowed values.
    """
    errors = _leaf_errors(_Validator(schema()).iter_errors(cfg))
    if errors:
        lines = sorted({_format(e) for e in errors})
        raise config_checks.invalid(lines)
    return cfg


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: nested dicts merge key by key, anything else is replaced.

    Args:
        base: the lower layer (not modified).
        over: the upper layer (not modified); None counts as empty.

    Returns:
        A new dict that shares no mutable value with either argument.
    """
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
    """Check what the schema cannot: names (models, datasets, experiments, table axes, prompts, per_model),
    grid values' ranges and that every input file named exists (:mod:`pd.config_checks`).

    Args:
        cfg: a config that passed :func:`validate_schema`, with the built-in datasets merged in.

    Raises:
        ConfigError: every problem found, one per line.
    """
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
        for key, what in get_loader(d["loader"]).required.items():
            if key not in d:
                problems.append(f"datasets.{name}: loader {d['loader']!r} needs {key!r} ({what})")
    for i, name in enumerate(cfg["run"]):
        if name not in cfg["experiments"]:
            problems.append(f"run[{i}]: unknown experiment {name!r}{_suggest(name, cfg['experiments'])}; "
                            f"allowed: {', '.join(sorted(cfg['experiments']))}")
    for ename, exp in cfg["experiments"].items():
        for gi, g in enumerate(grids(exp)):
            where = f"experiments.{ename}.grid" + (f"[{gi}]" if isinstance(exp["grid"], list) else "")
            _check_grid(problems, where, g, reg, datasets)
            config_checks.check_grid_ranges(problems, where, g)
        axes = set().union(*(grids(exp)))
        unknown_axes = [a for a in exp["table"]["rows"] + exp["table"]["columns"] if a not in axes]
        if unknown_axes:
            problems.append(f"experiments.{ename}.table: unknown axis {unknown_axes}; "
                            f"allowed: {', '.join(sorted(axes))}")
    config_checks.check_per_model(problems, cfg, reg)
    config_checks.check_files(problems, cfg)
    # An openai judge is the server's model name; on the other backends it is a model of the registry.
    if ("judge" in cfg["grading"]["graders"] and cfg["grading"].get("backend") != "openai"
            and cfg["grading"]["judge"] not in reg):
        problems.append(f"grading.judge: unknown model {cfg['grading']['judge']!r}; allowed: {', '.join(sorted(reg))}")
    known_prompts = prompts.builtin_names()
    for name, path in cfg["prompts"].items():
        if known_prompts and name not in known_prompts:
            problems.append(f"prompts.{name}: no such prompt; allowed: {', '.join(known_prompts)}")
        elif not Path(path).is_file():
            problems.append(f"prompts.{name}: template file {path} does not exist")
    if problems:
        raise config_checks.invalid(problems)


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
                                f"student {m!r} (family {reg[m].family}); "
                                "a teacher must share the student's vocabulary")
    for axis in ("seed", "retrieval", "method"):
        dup = {x for x in g[axis] if g[axis].count(x) > 1}
        if dup:
            problems.append(f"{where}.{axis}: repeated value(s) {sorted(dup)}")


def load_config(source: str | os.PathLike | dict | None = None, overrides: dict | None = None) -> dict:
    """The validated config with every default filled in and the built-in datasets added.

    Args:
        source: a path to a YAML file (default: the repository's config.yaml) or an
            already-parsed dict (Snakemake's ``config``; not modified).
        overrides: merged on top of ``source`` before validation (e.g. from ``--config`` or the CLI).

    Returns:
        The resolved config.

    Raises:
        ConfigError: the file is missing, not YAML or repeats a key, or the config is invalid (all problems).
    """
    if source is None:
        source = DEFAULT_CONFIG
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        raw = config_checks.load_yaml_mapping(source)
    cfg = deep_merge(raw, overrides or {})
    for where, block in config_checks.training_blocks(cfg):
        check_removed(block, where)  # before the schema, which would call it an unknown key
    validate_schema(cfg)
    cfg["datasets"] = {**copy.deepcopy(BUILTIN_DATASETS), **cfg["datasets"]}
    validate_references(cfg)
    return cfg


def training_settings(cfg: dict, method: str, model: str, experiment: str | None = None) -> dict:
    """A cell's training settings: :func:`pd.train.settings.spec_defaults` < ``training`` <
    ``per_model`` < method (:func:`paper_method_settings`, then ``methods``) < experiment (its ``training``, then
    its ``methods.<method>.training``).

    Args:
        cfg: the resolved config (:func:`load_config`).
        method: the cell's method.
        model: the cell's model name.
        experiment: the experiment whose ``training`` overrides apply, if any.

    Returns:
        A new dict, setting name -> value (an adapter specification's ``training``).

    Raises:
        KeyError: ``experiment`` is not in the config.
    """
    out = deep_merge(spec_defaults(), cfg.get("training", {}))
    out = deep_merge(out, cfg.get("per_model", {}).get(model, {}))
    out = deep_merge(out, paper_method_settings(method).get("training", {}))
    out = deep_merge(out, cfg.get("methods", {}).get(method, {}).get("training", {}))
    if experiment:
        exp = cfg["experiments"][experiment]
        out = deep_merge(out, exp.get("training", {}))
        out = deep_merge(out, exp.get("methods", {}).get(method, {}).get("training", {}))
    return out


def answer_temperature(cfg: dict, method: str) -> float | None:
    """The expert's sampling temperature for a method's training answers (1.5 PD, 0.25 SFT).

    Args:
        cfg: the resolved config.
        method: a registered method (:mod:`pd.train.methods`).

    Returns:
        The config's ``methods.<method>.answer_temperature``, else the paper's, else None (base, uft).
    """
    m = deep_merge(paper_method_settings(method), cfg.get("methods", {}).get(method, {}))
    return m.get("answer_temperature")
