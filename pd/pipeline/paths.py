"""Artifact paths from the kinds' patterns: a job's output, its rule's strings, and back from a path.

Each job kind (:mod:`pd.pipeline.kinds`) declares its output pattern
(:class:`pd.pipeline.kind.PathPattern`); the plan formats it to name an artifact, the rules take
their ``output:``, ``benchmark:`` and ``log:`` strings from it (through
:class:`pd.pipeline.workflow.Workflow`), and the report finds a job's benchmark and log files
with :func:`benchmark_file` and :func:`log_file`. ``{R}`` is the config's ``results_dir``,
``{reports}`` its ``reports_dir``; the other fields are wildcards, each matching what
:data:`pd.pipeline.kind.CONSTRAINTS` allows.
"""

from __future__ import annotations

import re
from pathlib import PurePath

from pd.pipeline.registry import all_kinds, get_kind

_SPEC_HASH = re.compile(r"_[0-9a-f]{8}(?=$|[ ./])")


def output(kind: str, **fields: str) -> str:
    """The output path of one job (:meth:`pd.pipeline.kind.PathPattern.format`).

    Args:
        kind: a job kind.
        **fields: ``R`` (results folder) or ``reports``, and every wildcard of the pattern.

    Returns:
        The formatted path.

    Raises:
        KeyError: an unknown kind or a missing field (a bug in the caller).
        ValueError: a wildcard value its constraint does not allow (e.g. a ``/`` in a stem).
    """
    return get_kind(kind).pattern.format(**fields)


def rule_output(kind: str, results_dir: str, reports_dir: str) -> str:
    """The ``output:`` string of a rule, with the wildcard constraints inline."""
    return get_kind(kind).pattern.rule_string(None, results_dir, reports_dir, constrained=True)


def rule_benchmark(kind: str, results_dir: str) -> str:
    """The ``benchmark:`` string of a rule: ``{R}/benchmarks/<tail>.tsv``."""
    pat = get_kind(kind).pattern
    return pat.rule_string(f"{{R}}/benchmarks/{pat.tail}.tsv", results_dir, "", constrained=False)


def rule_log(kind: str, results_dir: str) -> str:
    """The ``log:`` string of a rule: ``{R}/logs/<tail>.log`` (``{R}/logs/<kind>.log`` for an output
    outside the results folder, the report's)."""
    pat = get_kind(kind).pattern
    tail = pat.tail if pat.pattern.startswith("{R}/") else kind
    return pat.rule_string(f"{{R}}/logs/{tail}.log", results_dir, "", constrained=False)


def parse(path: str, dataset: str | None = None) -> tuple[str, dict[str, str]] | None:
    """The job kind and fields (``R`` and the wildcards) of an output path, or None.

    Args:
        path: an artifact path as the plan writes it (relative or absolute).
        dataset: the dataset the path belongs to, when known (disambiguates ``R``).

    Returns:
        ``(kind, fields)`` for the first kind whose pattern (under the results folder) matches, else None.
    """
    for kind in all_kinds():
        if not kind.pattern.pattern.startswith("{R}/"):
            continue
        fields = kind.pattern.match(path, dataset)
        if fields is not None:
            return kind.name, fields
    return None


def benchmark_file(path: object, dataset: object = None) -> str | None:
    """The benchmark file of the job that wrote ``path`` (see :func:`rule_benchmark`), or None.

    Args:
        path: an artifact path (an adapter folder, an evaluation or grade file); other values give None.
        dataset: the dataset named in the path, when known.

    Returns:
        ``<R>/benchmarks/<tail>.tsv``, or None when ``path`` is not a path a kind makes.
    """
    return _beside(path, dataset, rule_benchmark)


def log_file(path: object, dataset: object = None) -> str | None:
    """The log file of the job that wrote ``path`` (see :func:`rule_log`), or None; as :func:`benchmark_file`."""
    return _beside(path, dataset, rule_log)


def _beside(path: object, dataset: object, rule_string) -> str | None:
    if not isinstance(path, str):
        return None
    found = parse(path, None if dataset is None else str(dataset))
    if found is None:
        return None
    kind, fields = found
    if not get_kind(kind).pattern.timed:
        return None
    return rule_string(kind, fields.pop("R")).format(**fields)


def job_label(path: str, kind: str | None = None, dataset: str | None = None) -> str:
    """A short name of the job that writes ``path``, for its console line and progress bars.

    The kind, then the wildcards of its output path without the specification's hash, e.g.
    ``results/demo-nyt/eval/pd/smollm2-135m-instruct/s1/bm25_1a2b3c4d.jsonl`` gives
    ``evaluate demo-nyt pd smollm2-135m-instruct s1 bm25``: the method, model, seed and
    retrieval a person tells jobs apart by, as the path already names them.

    Args:
        path: the job's output (file or folder).
        kind: the job's kind, when the caller knows it (a path no pattern matches keeps it).
        dataset: the dataset named in the path, when known.

    Returns:
        The label (``"<kind> <file name>"`` for a path no kind's pattern matches, e.g. the report).
    """
    found = parse(str(path), dataset)
    if found is None:
        return f"{kind or 'job'} {PurePath(str(path)).name}"
    found_kind, fields = found
    words = " ".join(v.replace("/", " ") for k, v in fields.items() if k != "R")
    return f"{found_kind} {_SPEC_HASH.sub('', words)}".strip()
