"""Checks of a config that neither the schema nor the name cross-references make.

:mod:`pd.config` runs these while it validates: the YAML text itself (a key given twice
in one mapping), grid values out of their range, ``per_model`` entries naming an unknown
model, and every input file or folder the config names (dataset folders and files,
questions files, instruction data, the MMLU-Pro file, a dense retriever's model). Each
problem is one line that starts with its key path.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from pd.embeddings import DENSE_DEFAULT_ALIASES
from pd.errors import ConfigError, PDError


def invalid(problems: list[str]) -> ConfigError:
    """The error for a config's problems: one line for one problem, else one line each under a heading."""
    if len(problems) == 1:
        return ConfigError(f"invalid configuration: {problems[0]}")
    return ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML allows it: the last wins)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise ConfigError(f"line {line}: a key must be a plain value (a name or a number), "
                              f"got a {type(key).__name__}") from None
        if key in seen:
            raise ConfigError(f"line {line}: duplicate key {key!r} (first given on line {seen[key]}); "
                              "YAML keeps only the last, so merge the two")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML as ``yaml.safe_load`` does, refusing duplicate keys.

    Args:
        text: the YAML text.
        where: names the source in an error (a file path, or ``--set key=value``).

    Returns:
        The parsed value.

    Raises:
        ConfigError: one line naming ``where`` and the line: a duplicate key, a key that is a list or
            mapping, text that is not YAML, or a number that is not finite or an integer beyond 64 bits.
    """
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
        check_numbers(data)
        return data
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {at}{problem}") from None


INT_LIMIT = 2**63  # integers must fit a signed 64-bit integer (torch seeds, sizes)


def check_numbers(value: Any, where: str = "") -> None:
    """Every number in a parsed config is finite, and every integer fits in 64 bits.

    Args:
        value: a parsed YAML value (mappings and lists are walked).
        where: the dotted key of ``value``, for the error.

    Raises:
        ConfigError: one line naming the key: NaN, an infinity, or an integer with ``|n| >= 2**63``.
    """
    if isinstance(value, dict):
        for k, v in value.items():
            check_numbers(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_numbers(v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where or 'value'}: {value} is not a finite number")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT:
        raise ConfigError(f"{where or 'value'}: {value} is too large (integers must be below 2**63)")


def parse_config_item(item: str) -> dict:
    """One ``KEY=VALUE`` of a ``--config`` option, read as ``snakemake --config`` reads it (VALUE is YAML).

    Args:
        item: e.g. ``run=[main]``.

    Returns:
        ``{KEY: value}``.

    Raises:
        ConfigError: no ``=``, an empty key, or a value that is not YAML.
    """
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--config {item!r}: expected KEY=VALUE, e.g. 'run=[main]'")
    return {key.strip(): load_yaml(value, f"--config {key.strip()}")}


def load_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict:
    """A YAML file whose top level is a mapping, read as UTF-8 (BOM dropped) with duplicate keys refused.

    Args:
        path: the file.
        what: what the file is, for the errors (``config file``, ``site file``).

    Returns:
        The mapping ({} for an empty file).

    Raises:
        ConfigError: the file is missing, not UTF-8, not YAML, repeats a key, or is not a mapping.
    """
    from pd.io import read_text

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    data = load_yaml(read_text(p), str(p))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


# Grid values' ranges the schema's types leave open: name -> (test, what the value must be).
GRID_RANGES = {
    "answer_temperature": (lambda v: v >= 0, ">= 0 (0: greedy)"),
    "kd_temperature": (lambda v: v > 0, "> 0"),
    "snapshot": (lambda v: v >= 0, ">= 0 (seconds into training)"),
}


def check_grid_ranges(problems: list[str], where: str, grid: dict) -> None:
    """Grid values out of range (``answer_temperature: [-1]``, ``kd_temperature: [0]``, ``snapshot: [-5]``).

    Args:
        problems: the list each problem line is appended to.
        where: the grid's key path (``experiments.<name>.grid``).
        grid: the grid, defaults filled in.
    """
    for axis, (ok, what) in GRID_RANGES.items():
        for i, v in enumerate(grid.get(axis) or []):
            if v is not None and not ok(v):
                problems.append(f"{where}.{axis}[{i}]: {v!r} is out of range; it must be {what}")


def check_per_model(problems: list[str], cfg: dict, known: dict) -> None:
    """``per_model`` entries must name a model of the registry."""
    for name in cfg.get("per_model") or {}:
        if name not in known:
            problems.append(f"per_model.{name}: unknown model {name!r}; allowed: {', '.join(sorted(known))}")


def training_blocks(cfg: dict) -> list[tuple[str, dict]]:
    """Every block of training settings in a config, with its key path: ``training``, ``per_model.<model>``,
    ``methods.<method>.training``, ``experiments.<name>.training`` and ``experiments.<name>.methods.<method>.training``.

    Args:
        cfg: a parsed config (before or after schema validation: entries that are no mapping are skipped).

    Returns:
        ``[(key path, block)]`` for each block that is a mapping.
    """
    def mapping(v) -> dict:
        return v if isinstance(v, dict) else {}

    out = [("training", cfg.get("training"))]
    out += [(f"per_model.{n}", b) for n, b in mapping(cfg.get("per_model")).items()]
    out += [(f"methods.{n}.training", mapping(b).get("training")) for n, b in mapping(cfg.get("methods")).items()]
    out += [(f"experiments.{n}.training", mapping(e).get("training"))
            for n, e in mapping(cfg.get("experiments")).items()]
    out += [(f"experiments.{n}.methods.{m}.training", mapping(b).get("training"))
            for n, e in mapping(cfg.get("experiments")).items() for m, b in mapping(mapping(e).get("methods")).items()]
    return [(where, b) for where, b in out if isinstance(b, dict)]


def check_files(problems: list[str], cfg: dict) -> None:
    """Every input file or folder the config names exists (datasets, questions, reg_data, MMLU-Pro, dense model).

    Args:
        problems: the list each problem line is appended to.
        cfg: the config, schema defaults filled in and the built-in datasets merged.
    """
    for name, d in cfg["datasets"].items():
        from pd.data import get_loader

        _exists(problems, f"datasets.{name}.path", d.get("path"), folder=get_loader(d["loader"]).path_is_folder)
        _exists(problems, f"datasets.{name}.questions", d.get("questions"), folder=False)
        _exists(problems, f"datasets.{name}.root", d.get("root"), folder=True)
    for where, block in training_blocks(cfg):
        _reg_data(problems, where, block)
    _exists(problems, "capability.path", (cfg.get("capability") or {}).get("path"), folder=False)
    _check_templates(problems, cfg.get("prompts") or {})
    if _uses_dense(cfg):
        _dense_model(problems, "retrieval.dense_model", cfg["retrieval"]["dense_model"])
        for name, exp in cfg["experiments"].items():
            if (exp.get("retrieval") or {}).get("dense_model"):
                _dense_model(problems, f"experiments.{name}.retrieval.dense_model", exp["retrieval"]["dense_model"])


def _check_templates(problems: list[str], overrides: dict) -> None:
    """Each prompt template the config names compiles and renders in the sandbox (nothing it runs escapes it)."""
    from pd import prompts
    from pd.io import read_text

    for name, path in overrides.items():
        p = Path(str(path))
        if not p.is_file():
            continue  # named by pd.config's own check
        try:
            problem = prompts.template_problem(read_text(p))
        except PDError as err:  # not UTF-8
            problem = str(err)
        if problem:
            problems.append(f"prompts.{name}: template {path}: {problem}")


def _exists(problems: list[str], where: str, path: str | None, folder: bool) -> None:
    if not path:
        return
    p = Path(path).expanduser()
    if folder and not p.is_dir():
        problems.append(f"{where}: folder {path} does not exist" if not p.exists()
                        else f"{where}: {path} is not a folder")
    elif not folder and not p.is_file():
        problems.append(f"{where}: file {path} does not exist" if not p.exists() else f"{where}: {path} is not a file")


def _reg_data(problems: list[str], where: str, block: dict | None) -> None:
    source = (block or {}).get("reg_data")
    if source and source not in ("tulu3", "allenai/tulu-3-sft-mixture"):
        _exists(problems, f"{where}.reg_data", source, folder=False)


def _uses_dense(cfg: dict) -> bool:
    listed = [e["grid"] if isinstance(e["grid"], list) else [e["grid"]] for e in cfg["experiments"].values()]
    return any("dense" in g.get("retrieval", []) for gs in listed for g in gs)


def _dense_model(problems: list[str], where: str, model: str) -> None:
    """A dense retriever's model: a packaged alias, an existing folder, or a hub id (in the cache when offline)."""
    if model in DENSE_DEFAULT_ALIASES or Path(model).expanduser().is_dir():
        return
    parts = model.split("/")
    if len(parts) != 2 or not all(parts) or model.startswith((".", "~")):
        problems.append(f"{where}: {model!r} is neither a folder nor a hub id (owner/name); "
                        f"allowed: a sentence-transformers folder, a hub id, or {DENSE_DEFAULT_ALIASES[0]}")
    elif os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(model):
        problems.append(f"{where}: {model!r} is not a folder, and not in the hub cache while HF_HUB_OFFLINE=1")


def _in_hub_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo, "config.json"), str)
