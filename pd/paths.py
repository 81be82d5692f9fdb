"""The one registry of artifact paths: where each job kind writes, logs and times itself.

Every job kind (the Snakemake rule of the same name) has one output pattern here. The
plan (:mod:`pd.plan`) formats it to name an artifact; the rules take their ``output:``,
``benchmark:`` and ``log:`` strings from it (through :class:`pd.workflow.Workflow`); the
report finds a job's benchmark file with :func:`benchmark_file`. ``{R}`` is the config's
``results_dir``, ``{reports}`` its ``reports_dir``; the other fields are wildcards, each
matching what :data:`CONSTRAINTS` allows.

A job whose output is ``{R}/<tail>.<ext>`` (or the folder ``{R}/<tail>``) records its
benchmark in ``{R}/benchmarks/<tail>.tsv`` and its log in ``{R}/logs/<tail>.log``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

CONSTRAINTS = {
    "dataset": r"[^/]+", "stem": r"[^/]+", "qstem": r"[^/]+", "astem": r"[^/]+", "method": r"[^/]+",
    "model": r"[^/]+", "experiment": r"[^/]+", "grader": r"[^/.]+", "rest": r".+",
}


@dataclass(frozen=True)
class PathPattern:
    """Where one job kind writes: ``pattern`` with ``{R}``/``{reports}`` and wildcards."""

    pattern: str
    directory: bool = False  # the output is a folder (an adapter, a teacher cache)
    timed: bool = True  # the rule records a benchmark and a log (not the local manifest/report rules)

    @property
    def tail(self) -> str:
        """The pattern after ``{R}/`` without its file extension (the benchmark/log name)."""
        if not self.pattern.startswith("{R}/"):
            raise ValueError(f"{self.pattern} is not under the results folder")
        tail = self.pattern[len("{R}/"):]
        return tail if self.directory else tail.rsplit(".", 1)[0]


PATTERNS: dict[str, PathPattern] = {
    "questions": PathPattern("{R}/{dataset}/questions/{stem}.jsonl"),
    "answers": PathPattern("{R}/{dataset}/answers/{qstem}/{stem}.jsonl"),
    "teacher": PathPattern("{R}/{dataset}/teacher/{qstem}/{astem}/{stem}", directory=True),
    "adapter": PathPattern("{R}/{dataset}/adapters/{method}/{model}/{stem}", directory=True),
    "retrieval": PathPattern("{R}/{dataset}/retrieval/{stem}.jsonl"),
    "evaluate": PathPattern("{R}/{dataset}/eval/{rest}.jsonl"),
    "grade": PathPattern("{R}/{dataset}/grades/{rest}.{grader}.jsonl"),
    "capability": PathPattern("{R}/capability/{rest}.jsonl"),
    "manifest": PathPattern("{R}/manifests/{experiment}.json", timed=False),
    "report": PathPattern("{reports}/index.html", timed=False),
}
KINDS = tuple(PATTERNS)  # the job kinds, named as the Snakemake rules are


def output(kind: str, **fields: str) -> str:
    """The output path of one job.

    Args:
        kind: a job kind (:data:`KINDS`).
        **fields: ``R`` (results folder) or ``reports``, and every wildcard of the pattern.

    Returns:
        The formatted path.

    Raises:
        KeyError: an unknown kind or a missing field (a bug in the caller).
        ValueError: a wildcard value its constraint does not allow (e.g. a ``/`` in a stem).
    """
    pat = PATTERNS[kind].pattern
    for name in re.findall(r"{(\w+)}", pat):
        if name in CONSTRAINTS and not re.fullmatch(CONSTRAINTS[name], str(fields[name])):
            raise ValueError(f"{kind} path field {name}={fields[name]!r} does not match {CONSTRAINTS[name]}")
    return pat.format(**fields)


def _rule_string(pattern: str, results_dir: str, reports_dir: str, constrained: bool) -> str:
    """``pattern`` with the folders filled in and each wildcard left for Snakemake (with its constraint)."""

    def wildcard(m: re.Match) -> str:
        name = m.group(1)
        if name == "R":
            return results_dir
        if name == "reports":
            return reports_dir
        return f"{{{name},{CONSTRAINTS[name]}}}" if constrained else f"{{{name}}}"

    return re.sub(r"{(\w+)}", wildcard, pattern)


def rule_output(kind: str, results_dir: str, reports_dir: str) -> str:
    """The ``output:`` string of a rule, with the wildcard constraints inline."""
    return _rule_string(PATTERNS[kind].pattern, results_dir, reports_dir, constrained=True)


def rule_benchmark(kind: str, results_dir: str) -> str:
    """The ``benchmark:`` string of a rule: ``{R}/benchmarks/<tail>.tsv``."""
    return _rule_string(f"{{R}}/benchmarks/{PATTERNS[kind].tail}.tsv", results_dir, "", constrained=False)


def rule_log(kind: str, results_dir: str) -> str:
    """The ``log:`` string of a rule: ``{R}/logs/<tail>.log`` (``{R}/logs/<kind>.log`` for an output
    outside the results folder, the report's)."""
    tail = PATTERNS[kind].tail if PATTERNS[kind].pattern.startswith("{R}/") else kind
    return _rule_string(f"{{R}}/logs/{tail}.log", results_dir, "", constrained=False)


@functools.cache
def _regex(kind: str, dataset: str | None) -> re.Pattern:
    fields = {name: (re.escape(dataset) if name == "dataset" and dataset is not None else rx)
              for name, rx in CONSTRAINTS.items()}
    parts = re.split(r"({\w+})", PATTERNS[kind].pattern)
    out = []
    for part in parts:
        m = re.fullmatch(r"{(\w+)}", part)
        if not m:
            out.append(re.escape(part))
        elif m.group(1) == "R":
            out.append("(?P<R>.*?)")
        else:
            out.append(f"(?P<{m.group(1)}>{fields[m.group(1)]})")
    return re.compile("".join(out))


def parse(path: str, dataset: str | None = None) -> tuple[str, dict[str, str]] | None:
    """The job kind and fields (``R`` and the wildcards) of an output path, or None.

    Args:
        path: an artifact path as the plan writes it (relative or absolute).
        dataset: the dataset the path belongs to, when known (disambiguates ``R``).

    Returns:
        ``(kind, fields)`` for the first kind whose pattern matches, else None.
    """
    for kind, pat in PATTERNS.items():
        if not pat.pattern.startswith("{R}/"):
            continue
        for candidate in (path, "./" + path):
            m = _regex(kind, dataset).fullmatch(candidate)
            if m:
                return kind, m.groupdict()
    return None


def benchmark_file(path: object, dataset: object = None) -> str | None:
    """The benchmark file of the job that wrote ``path`` (see :func:`rule_benchmark`), or None.

    Args:
        path: an artifact path (an adapter folder, an evaluation or grade file); other values give None.
        dataset: the dataset named in the path, when known.

    Returns:
        ``<R>/benchmarks/<tail>.tsv``, or None when ``path`` is not a path this registry makes.
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
    if not PATTERNS[kind].timed:
        return None
    return rule_string(kind, fields.pop("R")).format(**fields)
