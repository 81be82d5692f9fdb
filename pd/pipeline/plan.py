"""From a validated config to the set of artifacts the experiment grid needs.

Each grid cell (one point of an experiment's grid) needs a chain of artifacts:
questions -> expert answers -> [teacher statistics / top-k cache] -> adapter ->
[retrieval results] -> evaluation answers -> grades. An artifact's path encodes only
what it depends on (a readable prefix plus a short hash of its full specification), so
two cells that share questions, answers, a teacher cache or retrieval results share the
file, and Snakemake builds it once. A changed setting changes the hash of exactly the
artifacts that depend on it.

Each artifact carries its job's typed specification; each job kind
(:mod:`pd.pipeline.kinds`) plans its own artifact for a cell in :meth:`JobKind.plan
<pd.pipeline.kind.JobKind.plan>` and asks the :class:`Planner` for its inputs by kind name.
The Snakefile asks this module, by output path, for each job's specification and inputs
(:mod:`pd.pipeline.workflow`); the ``pd`` command uses it to list cells and their targets,
and ``pd inject`` runs a plan over a folder of documents in-process (:mod:`pd.inject`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pd import config as pdc
from pd.errors import ConfigError
from pd.grid import AXES, GridCell, expand_grid, format_value, generation_settings
from pd.io import stable_hash
from pd.models import registry
from pd.pipeline import identity
from pd.pipeline.registry import all_kinds, get_kind, kind_names
from pd.pipeline.spec import JobSpec
from pd.train.methods import get_method


@dataclass(frozen=True)
class Artifact:
    """One job's output: its kind, path, typed specification and the artifacts it reads."""

    kind: str
    path: str
    spec: JobSpec
    inputs: tuple[str, ...] = ()
    model: str | None = None  # the model the job loads, for its resources


@dataclass
class Cell:
    """One point of an experiment's grid and the files that make it."""

    experiment: str
    axes: dict[str, Any]
    grades: dict[str, str]  # grader -> grade file
    eval_path: str
    adapter: str | None
    varying: tuple[str, ...] = ()  # the secondary axes the experiment's grid varies
    outputs: dict[str, str] = field(default_factory=dict)  # kind -> path of the per-cell kinds (JobKind.per_cell)

    @property
    def capability(self) -> str | None:
        """MMLU-Pro rows of the cell's model, when the experiment measures forgetting."""
        return self.outputs.get("capability")

    @property
    def cell_id(self) -> str:
        """Readable and unique within its experiment: the main axes, then those the grid varies."""
        a = self.axes
        extra = ",".join(f"{k}={format_value(a[k])}" for k in self.varying if a.get(k) is not None)
        parts = [a["dataset"], a["method"], a["model"], f"s{a['seed']}", a["retrieval"]]
        return "/".join(parts + ([extra] if extra else []))


@dataclass
class Plan:
    """Every artifact the selected experiments need, by path, and each experiment's cells."""

    cfg: dict
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    cells: dict[str, list[Cell]] = field(default_factory=dict)

    def add(self, art: Artifact) -> str:
        """Add an artifact (once per path) and return its path.

        Raises:
            RuntimeError: another specification already maps to the same path.
        """
        old = self.artifacts.get(art.path)
        if old is not None and old.spec != art.spec:  # a hash collision or a bug: never silently merge
            raise RuntimeError(f"two different specifications map to {art.path}")
        self.artifacts[art.path] = art
        return art.path

    def get(self, path: str) -> Artifact:
        """The artifact at ``path``.

        Raises:
            ConfigError: no selected experiment needs ``path``.
        """
        try:
            return self.artifacts[path]
        except KeyError:
            raise ConfigError(f"{path} is not an artifact of the selected experiments ({', '.join(self.cells)}); "
                              "`pd cells <experiment>` lists the targets") from None

    def of_kind(self, kind: str) -> list[Artifact]:
        return [a for a in self.artifacts.values() if a.kind == kind]

    def targets(self, experiments: list[str] | None = None) -> list[str]:
        """The manifests of the given (default: all planned) experiments."""
        return [self.manifest_path(e) for e in (experiments or list(self.cells))]

    def report_path(self) -> str:
        return get_kind("report").pattern.format(reports=self.cfg["reports_dir"])

    def manifest_path(self, experiment: str) -> str:
        return get_kind("manifest").pattern.format(R=self.cfg["results_dir"], experiment=experiment)

    def upstream(self, path: str) -> list[str]:
        """``path`` and every artifact it needs, transitively (the jobs that produce it), sorted."""
        seen, todo = set(), [path]
        while todo:
            p = todo.pop()
            if p in seen or p not in self.artifacts:
                continue
            seen.add(p)
            todo.extend(self.artifacts[p].inputs)
        return sorted(seen)

    def in_order(self, path: str) -> list[Artifact]:
        """The artifacts ``path`` needs and ``path`` itself, each after everything it reads."""
        out: list[Artifact] = []
        seen: set[str] = set()

        def visit(p: str) -> None:
            if p in seen or p not in self.artifacts:
                return
            seen.add(p)
            for q in self.artifacts[p].inputs:
                visit(q)
            out.append(self.artifacts[p])

        visit(path)
        return out

    def count(self) -> dict[str, int]:
        out = {k: 0 for k in kind_names()}
        for a in self.artifacts.values():
            out[a.kind] += 1
        return out


class Planner:
    """What a kind's :meth:`~pd.pipeline.kind.JobKind.plan` reads and calls: the config's settings for the
    experiment being planned, :meth:`need` for its inputs (by kind name) and :meth:`add` for its artifact."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.plan = Plan(cfg)
        self.reg = registry(cfg.get("models"))
        self.R = cfg["results_dir"]
        self.experiment: str | None = None  # the experiment whose cells are being added
        self.gen = cfg["generation"]  # its generation settings
        self.datasets = {name: identity.dataset_entry(name, d) for name, d in cfg["datasets"].items()}
        self.model_entries = identity.ModelEntries(cfg, self.reg)
        self._fields: dict[str, dict[str, str]] = {}

    def start(self, experiment: str) -> None:
        """Plan ``experiment``'s cells next (its generation settings apply)."""
        self.experiment = experiment
        self.gen = generation_settings(self.cfg, experiment)

    def need(self, kind: str, cell: GridCell, *args: Any) -> str | None:
        """The path of the ``kind`` artifact a cell needs, planned on first use (:meth:`JobKind.plan`)."""
        return get_kind(kind).plan(self, cell, *args)

    def add(self, spec: JobSpec, fields: dict[str, str], inputs: tuple[str, ...] = (), model: str | None = None) -> str:
        """Add the artifact of ``spec`` (its kind is ``spec.KIND``) at the path its pattern gives ``fields``.

        Args:
            spec: the job's specification.
            fields: the pattern's wildcards (``R`` and ``reports`` are filled in).
            inputs: the artifacts the job reads.
            model: the model the job loads (its resources follow it).

        Returns:
            The artifact's path.
        """
        path = get_kind(spec.KIND).pattern.format(R=self.R, reports=self.cfg["reports_dir"], **fields)
        self._fields[path] = dict(fields)
        return self.plan.add(Artifact(spec.KIND, path, spec, inputs, model))

    def fields(self, path: str) -> dict[str, str]:
        """The wildcards an artifact's path was made from (for a kind whose path extends its input's)."""
        return self._fields[path]

    def adapter_place(self, adapter: str) -> str:
        """``<method>/<model>/<stem>`` of an adapter path, where its evaluations and capability rows go."""
        f = self._fields[adapter]
        return f"{f['method']}/{f['model']}/{f['stem']}"

    @staticmethod
    def hash(spec: JobSpec) -> str:
        """The short content hash of a specification that its path carries."""
        return stable_hash(spec.as_dict(), 8)

    def data(self, c: GridCell) -> dict:
        """The dataset fields of a cell's specifications."""
        return {"dataset": c.dataset, "dataset_cfg": self.datasets[c.dataset]}

    def training(self, c: GridCell) -> dict:
        """The training settings of a cell's method and model in the experiment (a fresh copy)."""
        return pdc.training_settings(self.cfg, c.method, c.model, self.experiment)

    def per_passage(self, dataset: str) -> bool | None:
        """True for a folder of documents without test questions: questions are then per passage."""
        from pd.data import get_loader

        d = self.cfg["datasets"][dataset]
        return True if get_loader(d["loader"]).questions_per_passage(d) else None

    def backend(self) -> dict:
        """How a generating job runs its model (not what it computes, but part of its spec).

        The server's URL goes without user-info: the spec is recorded in ``.snakemake/metadata``. A URL's
        password is moved into ``OPENAI_API_KEY`` of this process (:func:`pd.redact.export_url_key`), which
        every job started afterwards inherits (Snakemake's local jobs, SLURM's ``--export=ALL``, ``pd inject``).
        """
        from pd.redact import export_url_key

        base_url = export_url_key(self.gen.get("openai_base_url") or None)
        return {"backend": self.gen["backend"], "batch_size": self.gen["batch_size"],
                "base_url": base_url, "cache_tag": self.gen.get("openai_cache_tag")}

    def judge_backend(self) -> dict:
        """How the LLM judge runs: ``grading.backend`` with its own server and cache tag, else as generation runs.

        ``grading.backend: null`` gives :meth:`backend` unchanged (the judge runs as the generations do);
        a backend set there gives it with the generation's batch size and ``grading.openai_base_url`` /
        ``grading.openai_cache_tag``, so an API judge can grade answers generated locally.
        """
        from pd.redact import export_url_key

        g = self.cfg["grading"]
        if not g.get("backend"):
            return self.backend()
        own = g["backend"] == "openai"
        return {"backend": g["backend"], "batch_size": self.gen["batch_size"],
                "base_url": export_url_key(g.get("openai_base_url") or None) if own else None,
                "cache_tag": g.get("openai_cache_tag") if own else None}

    def models(self, *names: str | None) -> dict | None:
        """The config's own entries of the models a job loads (part of its identity)."""
        return self.model_entries.entries(*names)

    def prompt_overrides(self, judge: bool = False) -> dict:
        """The config's prompt template overrides with their content identity.

        Args:
            judge: include the judge's templates (:data:`pd.evaluation.grade.JUDGE_TEMPLATES`): only the
                jobs that run the judge render them, so a new judge template regrades the answers
                without regenerating them.

        Returns:
            Template name -> ``{"path", "hash"}``.
        """
        from pd.evaluation.grade import JUDGE_TEMPLATES

        prompts = {k: v for k, v in self.cfg["prompts"].items() if judge or k not in JUDGE_TEMPLATES}
        return identity.prompt_overrides(prompts)

    def check_steps(self, experiment: str, adapters: list[tuple[str, str, str | None]]) -> None:
        """Refuse an experiment whose adapters would train fewer optimizer steps than their ``training.min_steps``,
        by the plan's estimate (:meth:`pd.pipeline.kinds.adapter.Adapter.check_steps`), before any job runs.

        Args:
            experiment: the experiment.
            adapters: (cell id, method, adapter path or None) of its cells; each adapter is checked once.

        Raises:
            ConfigError: naming the first cell whose adapter is too short, its steps, the minimum and where to
                set more.
        """
        kind = get_kind("adapter")
        seen: set[str] = set()
        for cell_id, method, path in adapters:
            if path is None or path in seen:
                continue
            seen.add(path)
            kind.check_steps(self.plan.get(path), self.plan, f"experiment {experiment}, cell {cell_id}",
                             f"experiments.{experiment}.methods.{method}.training")

    # -- cells -------------------------------------------------------------------------

    def add_experiment(self, name: str) -> None:
        """Every cell of an experiment: adapter, evaluation, grades, capability; then its manifest."""
        self.start(name)
        exp = self.cfg["experiments"][name]
        graders = exp.get("graders") or self.cfg["grading"]["graders"]
        cells = []
        listed = pdc.grids(exp)
        varying = tuple(a for a in AXES[5:] if len({str(v) for g in listed for v in g[a]}) > 1)
        for c in expand_grid(self.cfg, name):
            adapter = self.need("adapter", c) if get_method(c.method).trains else None
            epath = self.need("evaluate", c, adapter)
            grades = {g: self.need("grade", c, epath, g) for g in graders}
            outputs = {k.name: p for k in all_kinds() if k.per_cell and (p := self.need(k.name, c, adapter))}
            cells.append(Cell(name, c.axes(), grades, epath, adapter, varying, outputs))
        from pd.report.layout import check_layout

        check_layout(name, exp["table"], [c.axes for c in cells])  # refused now, not after hours of jobs
        self.check_steps(name, [(c.cell_id, c.axes["method"], c.adapter) for c in cells])
        self.plan.cells[name] = cells
        inputs = tuple(dict.fromkeys(p for cell in cells for p in [*cell.grades.values(), cell.adapter,
                                                                   *cell.outputs.values()] if p))
        spec = get_kind("manifest").spec(experiment=name, table=exp["table"], paper_table=exp.get("paper_table"),
                                         description=exp.get("description", ""),
                                         records=manifest_records(self.plan, name))
        self.add(spec, {"experiment": name}, inputs)


def build_plan(cfg: dict, experiments: list[str] | None = None) -> Plan:
    """The artifacts of the given experiments, with their typed job specifications.

    Args:
        cfg: a validated config (:func:`pd.config.load_config`).
        experiments: the experiments to plan (default: the config's ``run`` list).

    Returns:
        The :class:`Plan`: every artifact by path, each experiment's cells, one manifest per
        experiment and the report over them.

    Raises:
        ConfigError: an unknown experiment, a grid a method cannot run (e.g. quintile
            subsets of a method that does not distil), a table layout that would put two
            configurations in one cell (:func:`pd.report.layout.check_layout`), or an adapter
            that would train fewer optimizer steps than its ``training.min_steps``.
    """
    b = Planner(cfg)
    names = experiments or cfg["run"]
    for name in names:
        if name not in cfg["experiments"]:
            raise ConfigError(f"unknown experiment {name!r}; allowed: {', '.join(sorted(cfg['experiments']))}")
        b.add_experiment(name)
    manifests = b.plan.targets(list(names))
    b.add(get_kind("report").spec(manifests=manifests, out_dir=cfg["reports_dir"]), {}, tuple(manifests))
    return b.plan


def build_adapter_plan(cfg: dict, experiment: str) -> tuple[Plan, list[str]]:
    """The adapters of an experiment's trained cells and what they need, without evaluation.

    ``pd inject`` runs such a plan over a folder of documents; its jobs have the
    specifications and paths the workflow would give them.

    Args:
        cfg: a validated config.
        experiment: one of its experiments.

    Returns:
        The plan and the adapter paths, one per trained cell in grid order.

    Raises:
        ConfigError: as :func:`expand_grid`; an adapter shorter than its ``training.min_steps``.
    """
    b = Planner(cfg)
    b.start(experiment)
    cells = [c for c in expand_grid(cfg, experiment) if get_method(c.method).trains]
    adapters = [b.need("adapter", c) for c in cells]
    b.check_steps(experiment, [(f"{c.dataset}/{c.method}/{c.model}/s{c.seed}", c.method, a)
                               for c, a in zip(cells, adapters)])
    return b.plan, adapters


def manifest_records(plan: Plan, experiment: str) -> list[dict]:
    """The report's view of an experiment: one record per cell and grader.

    Each record names its files (grades, evaluation, adapter, capability), every job behind it
    (``jobs``), the benchmark files of its adapter, evaluation and grades (``benchmarks``, the cell's
    cost) and of every timed job behind it with the job's kind (``job_benchmarks``, the report's job
    time per kind), so that the report needs no knowledge of the job kinds' path patterns; ``dataset_label``
    is the dataset's name for its readers (:func:`pd.data.loaders.display_name`). A judge's
    record names its calibration and the threshold it is held to (``judge_calibration``).
    """
    from pd.data.loaders import display_name
    from pd.pipeline.paths import benchmark_file

    out = []
    for cell in plan.cells[experiment]:
        dataset = cell.axes["dataset"]
        label = display_name(dataset, plan.cfg["datasets"][dataset])
        for grader, path in cell.grades.items():
            spec = plan.artifacts[path].spec
            gname = f"judge:{spec.judge}" if grader == "judge" else "substring"
            adapter_spec = plan.artifacts[cell.adapter].spec if cell.adapter else None
            jobs = plan.upstream(path)
            own = [benchmark_file(p, dataset) for p in (cell.adapter, cell.eval_path, path)]
            timed = {b: plan.artifacts[p].kind for p in jobs if (b := benchmark_file(p, dataset))}
            out.append({"experiment": experiment, "cell_id": cell.cell_id, "axes": cell.axes, "grader": gname,
                        "dataset_label": label,
                        "grades": path, "evaluate": cell.eval_path, "adapter": cell.adapter,
                        "capability": cell.capability, "outputs": cell.outputs, "jobs": jobs,
                        "benchmarks": [b for b in own if b], "job_benchmarks": timed,
                        "meta": {"training": adapter_spec.training if adapter_spec else None}})
            if grader == "judge" and cell.outputs.get("calibrate_judge"):  # the report shows the judge's calibration
                out[-1]["judge_calibration"] = {"file": cell.outputs["calibrate_judge"],
                                                "threshold": plan.cfg["grading"]["calibration_threshold"]}
    return out
