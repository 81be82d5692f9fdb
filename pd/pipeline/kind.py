"""What a job kind is: its path pattern, its specification, how it plans, runs and is sized.

A job kind (questions, answers, teacher, adapter, ...) is one class in one module of
:mod:`pd.pipeline.kinds`, registered with :func:`register`. Its name is its Snakemake rule's
name, its output pattern names its artifacts, its specification class (:mod:`pd.pipeline.spec`)
is its identity, :meth:`JobKind.plan` adds its artifact for a grid cell (asking for its inputs
by kind name through the planner, never importing it), :meth:`JobKind.run` makes the output,
and the class attributes and sizing hooks are its resource facts. Every table that used to be
keyed by kind name is read from here.

This module imports nothing of the pipeline; :mod:`pd.pipeline.registry` imports the kinds.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pd.registry import Registry

if TYPE_CHECKING:
    from pd.pipeline.plan import Artifact, Plan

# What each wildcard of a path pattern may match (the rules' inline constraints).
CONSTRAINTS = {
    "dataset": r"[^/]+", "stem": r"[^/]+", "qstem": r"[^/]+", "astem": r"[^/]+", "method": r"[^/]+",
    "model": r"[^/]+", "experiment": r"[^/]+", "grader": r"[^/.]+", "rest": r".+",
}


@dataclass(frozen=True)
class PathPattern:
    """Where one job kind writes: ``pattern`` with ``{R}`` (results folder) / ``{reports}`` and wildcards.

    A job whose output is ``{R}/<tail>.<ext>`` (or the folder ``{R}/<tail>``) records its
    benchmark in ``{R}/benchmarks/<tail>.tsv`` and its log in ``{R}/logs/<tail>.log``.
    """

    pattern: str
    directory: bool = False  # the output is a folder (an adapter, a teacher cache)
    timed: bool = True  # the rule records a benchmark and a log (not the local manifest/report rules)

    @property
    def tail(self) -> str:
        """The pattern after ``{R}/`` without its file extension (the benchmark/log name).

        Raises:
            ValueError: the pattern is not under the results folder.
        """
        if not self.pattern.startswith("{R}/"):
            raise ValueError(f"{self.pattern} is not under the results folder")
        tail = self.pattern[len("{R}/"):]
        return tail if self.directory else tail.rsplit(".", 1)[0]

    @property
    def wildcards(self) -> tuple[str, ...]:
        """The pattern's fields in order, ``R``/``reports`` included."""
        return tuple(re.findall(r"{(\w+)}", self.pattern))

    def format(self, **fields: Any) -> str:
        """The path of one artifact.

        Args:
            **fields: ``R`` (results folder) or ``reports``, and every wildcard of the pattern.

        Returns:
            The formatted path.

        Raises:
            KeyError: a missing field (a bug in the caller).
            ValueError: a wildcard value its constraint does not allow (e.g. a ``/`` in a stem).
        """
        for name in self.wildcards:
            if name in CONSTRAINTS and not re.fullmatch(CONSTRAINTS[name], str(fields[name])):
                raise ValueError(f"{self.pattern}: field {name}={fields[name]!r} does not match {CONSTRAINTS[name]}")
        return self.pattern.format(**fields)

    def rule_string(self, pattern: str | None, results_dir: str, reports_dir: str, constrained: bool) -> str:
        """``pattern`` (default: this one) with the folders filled in and each wildcard left for Snakemake."""

        def wildcard(m: re.Match) -> str:
            name = m.group(1)
            if name == "R":
                return results_dir
            if name == "reports":
                return reports_dir
            return f"{{{name},{CONSTRAINTS[name]}}}" if constrained else f"{{{name}}}"

        return re.sub(r"{(\w+)}", wildcard, self.pattern if pattern is None else pattern)

    def match(self, path: str, dataset: str | None = None) -> dict[str, str] | None:
        """The fields (``R`` and the wildcards) of ``path`` if this pattern made it, else None.

        Args:
            path: an artifact path (relative or absolute).
            dataset: the dataset named in the path, when known (disambiguates ``R``).
        """
        rx = _regex(self.pattern, dataset)
        for candidate in (path, "./" + path):
            m = rx.fullmatch(candidate)
            if m:
                return m.groupdict()
        return None


@functools.cache
def _regex(pattern: str, dataset: str | None) -> re.Pattern:
    fields = {name: (re.escape(dataset) if name == "dataset" and dataset is not None else rx)
              for name, rx in CONSTRAINTS.items()}
    out = []
    for part in re.split(r"({\w+})", pattern):
        m = re.fullmatch(r"{(\w+)}", part)
        if not m:
            out.append(re.escape(part))
        elif m.group(1) in ("R", "reports"):
            out.append(f"(?P<{m.group(1)}>.*?)")
        else:
            out.append(f"(?P<{m.group(1)}>{fields[m.group(1)]})")
    return re.compile("".join(out))


class JobKind:
    """One job kind. Subclass it in a module of :mod:`pd.pipeline.kinds` and decorate with :func:`register`.

    Class attributes (the kind's facts):
        name: the kind's name, also its Snakemake rule's.
        pattern: where its jobs write (:class:`PathPattern`).
        spec: its specification class (a :class:`pd.pipeline.spec.JobSpec` subclass with ``KIND = name``).
        gpu: its jobs ask for GPUs on a GPU site when they load a model.
        priority: Snakemake's ``priority:`` (higher starts first among ready jobs).
        base_runtime: minutes of a paper-size job (:data:`pd.pipeline.workload.REFERENCE`) for an 8B
            model on one GPU (or a 0.5B model on a CPU); the job's ``work`` scales it.
        size_independent: its memory and time do not grow with a model's size (it loads none).
        local: a Snakemake ``localrule`` (runs on the submitting host: manifests, the report, API embeddings).
        stops_on_sigterm: on SIGTERM its jobs save their progress and exit (training's checkpoint,
            :mod:`pd.train.interrupt`): on a SLURM site they are submitted to get it before their time
            limit (the site's ``term_before_limit_s``, :mod:`pd.pipeline.resources`).
        generic_rule: the Snakefile writes its rule in the one loop over kinds (False: written out).
        per_cell: the planner asks every cell of an experiment for this kind's artifact
            (``plan(planner, cell, adapter)``; None: the cell needs none) and lists it in the cell's
            manifest record under ``outputs``: the way a new measurement joins every experiment.
    """

    name: ClassVar[str]
    pattern: ClassVar[PathPattern]
    spec: ClassVar[type]
    gpu: ClassVar[bool] = False
    priority: ClassVar[int] = 0
    base_runtime: ClassVar[int] = 15
    size_independent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    stops_on_sigterm: ClassVar[bool] = False
    generic_rule: ClassVar[bool] = True
    per_cell: ClassVar[bool] = False

    def plan(self, planner: Any, cell: Any, *args: Any) -> str | None:
        """Add this kind's artifact for a grid cell to the plan (and, through ``planner.need``, its inputs).

        Args:
            planner: the :class:`pd.pipeline.plan.Planner` (config, settings, ``add``, ``need``).
            cell: the grid cell (:class:`pd.grid.GridCell`).
            *args: what the asking kind passes (e.g. an evaluation's adapter path).

        Returns:
            The artifact's path (None: this cell needs no such artifact).
        """
        raise NotImplementedError(f"{self.name} artifacts are not planned per cell")

    def run(self, spec: Any, out: str) -> None:
        """Make the output ``out`` of one job from its specification (atomically)."""
        raise NotImplementedError

    # -- sizing (pd.pipeline.resources): the defaults fit a job that loads one model and no cache ----------

    def work(self, art: Artifact, plan: Plan) -> float:
        """The job's work over the paper-size reference's (1: the paper's size); the runtime scales with it."""
        return 1.0

    def loads_model(self, art: Artifact) -> bool:
        """Whether the job loads a model (its threads and memory follow the model)."""
        return art.model is not None

    def cache_gb(self, art: Artifact, plan: Plan) -> float:
        """Host memory (GB) of data the job holds besides its model."""
        return 0.0

    def extra_params_b(self, art: Artifact, plan: Plan) -> float:
        """Billions of frozen parameters of a second model the job loads."""
        return 0.0

    def workload(self, art: Artifact, plan: Plan) -> Any:
        """What the job computes on a GPU, for the cost model (:mod:`pd.pipeline.costs`): a
        :class:`pd.pipeline.sizing.Generation`, :class:`~pd.pipeline.sizing.Forwards` or
        :class:`~pd.pipeline.sizing.Training`; None: it loads no model or runs nothing on a GPU."""
        return None

    def resumable(self, art: Artifact) -> bool:
        """Whether a killed job resumes where it stopped on its retry (chunked outputs, checkpoints), so that
        work longer than a site's ``max_runtime`` is done over several attempts."""
        return False

    def needs_network(self, art: Artifact) -> str | None:
        """Whether the job calls a service over the network while it runs: None if not, else what it calls and
        what to do instead (a generating or judging job on the ``openai`` backend). ``pd validate`` refuses such
        a job on a SLURM site whose compute nodes are offline, unless its kind is ``local``."""
        if getattr(art.spec, "backend", None) == "openai":
            return ("call the openai backend (generation.backend: openai): set generation.backend to transformers "
                    "or vllm")
        return None

    def lora_rank(self, art: Artifact) -> int | None:
        """The LoRA rank the job trains (None: it trains none)."""
        return None

    def processes(self, art: Artifact) -> int | str:
        """Processes of the job (GPUs, CPUs and memory scale with it)."""
        return 1


REGISTRY: Registry[JobKind] = Registry("job kind", KeyError, listed="known")
unregister = REGISTRY.unregister


def register(cls: type[JobKind]) -> type[JobKind]:
    """Class decorator: register a job kind under its ``name`` (one instance).

    Raises:
        ValueError: another kind has that name, or the spec class names another kind.
    """
    if getattr(cls.spec, "KIND", None) != cls.name:
        raise ValueError(f"job kind {cls.name!r}: its spec {cls.spec.__name__} names another kind "
                         f"({getattr(cls.spec, 'KIND', None)!r})")
    return REGISTRY.register(cls)
