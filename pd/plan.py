"""From a validated config to the set of artifacts the experiment grid needs.

Each grid cell (one point of an experiment's grid) needs a chain of artifacts:
questions -> expert answers -> [teacher statistics / top-k cache] -> adapter ->
[retrieval results] -> evaluation answers -> grades. An artifact's path encodes only
what it depends on (a readable prefix plus a short hash of its full specification), so
two cells that share questions, answers, a teacher cache or retrieval results share the
file, and Snakemake builds it once. A changed setting changes the hash of exactly the
artifacts that depend on it.

Each artifact carries its job's typed specification (:mod:`pd.jobs`); its path comes
from the one registry of path patterns (:mod:`pd.paths`). The Snakefile asks this module,
by output path, for each job's specification and inputs (:mod:`pd.workflow`); the ``pd``
command uses it to list cells and their targets, and ``pd inject`` runs a plan over a
folder of documents in-process (:mod:`pd.inject`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pd import config as pdc
from pd import identity, jobs, paths
from pd.errors import ConfigError
from pd.grid import AXES, expand_grid, format_value, generation_settings
from pd.io import stable_hash
from pd.models import registry
from pd.train.settings import SEPARATE_TEACHER_TOPK

KINDS = paths.KINDS


def _hash(spec: jobs.JobSpec) -> str:
    return stable_hash(spec.as_dict(), 8)


@dataclass(frozen=True)
class Artifact:
    """One job's output: its kind, path, typed specification and the artifacts it reads."""

    kind: str
    path: str
    spec: jobs.JobSpec
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
    capability: str | None = None  # MMLU-Pro rows of the cell's model, when the experiment measures forgetting

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
        return paths.output("report", reports=self.cfg["reports_dir"])

    def manifest_path(self, experiment: str) -> str:
        return paths.output("manifest", R=self.cfg["results_dir"], experiment=experiment)

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
        out = {k: 0 for k in KINDS}
        for a in self.artifacts.values():
            out[a.kind] += 1
        return out


class _Builder:
    """Adds each cell's artifacts to a plan; each method returns the artifact's path."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.plan = Plan(cfg)
        self.reg = registry(cfg.get("models"))
        self.R = cfg["results_dir"]
        self.experiment: str | None = None  # the experiment whose cells are being added
        self.gen = cfg["generation"]  # its generation settings
        self.datasets = {name: identity.dataset_entry(name, d) for name, d in cfg["datasets"].items()}
        self.model_entries = identity.ModelEntries(cfg, self.reg)

    def _add(self, path: str, spec: jobs.JobSpec, inputs: tuple[str, ...] = (), model: str | None = None) -> str:
        return self.plan.add(Artifact(spec.KIND, path, spec, inputs, model))

    def _data(self, c: dict) -> dict:
        return {"dataset": c["dataset"], "dataset_cfg": self.datasets[c["dataset"]]}

    def questions(self, c: dict) -> str:
        q = self.gen["questions"]
        dseed = c["seed"] if q["per_seed"] else 0
        heldout = pdc.training_settings(self.cfg, c["method"], c["model"], self.experiment)["heldout_fraction"]
        total = c["n_questions"] + pdc.heldout_extra(c["n_questions"], heldout)
        mode = "bonito" if c["qgen"].startswith("bonito") else q["mode"]  # a Bonito-style generator has its own prompt
        sampling = jobs.Sampling.from_dict({k: q[k] for k in ("temperature", "top_k", "top_p", "max_new_tokens")})
        spec = jobs.QuestionsSpec(**self._data(c), generator=c["qgen"], mode=mode, per_item=total,
                                  heldout_per_item=total - c["n_questions"], seed=dseed, sampling=sampling,
                                  max_rounds=q["max_rounds"], prompts=self._prompt_overrides(), **self._backend(),
                                  models_extra=self._models(c["qgen"]), per_passage=self._per_passage(c["dataset"]))
        stem = f"{c['qgen']}_{mode}_n{c['n_questions']}_s{dseed}_{_hash(spec)}"
        return self._add(paths.output("questions", R=self.R, dataset=c["dataset"], stem=stem), spec, (), c["qgen"])

    def answers(self, c: dict) -> str:
        qpath = self.questions(c)
        kind = "cot" if c["method"] == "sft_distractors" else "plain"
        train = pdc.training_settings(self.cfg, c["method"], c["model"], self.experiment)
        distractors = jobs.Distractors(train["distractors"], train["gold_drop_prob"]) if kind == "cot" else None
        sampling = jobs.Sampling.from_dict({"temperature": c["answer_temperature"], **self.gen["answers"]})
        spec = jobs.AnswersSpec(questions=qpath, **self._data(c), expert=c["expert"], kind=kind,
                                seed=c["seed"] if self.gen["questions"]["per_seed"] else 0, sampling=sampling,
                                prompts=self._prompt_overrides(), **self._backend(),
                                models_extra=self._models(c["expert"]), distractors=distractors)
        qstem = paths.parse(qpath, c["dataset"])[1]["stem"]
        stem = f"{c['expert']}_{kind}_t{format_value(c['answer_temperature'])}_{_hash(spec)}"
        return self._add(paths.output("answers", R=self.R, dataset=c["dataset"], qstem=qstem, stem=stem), spec,
                         (qpath,), c["expert"])

    def teacher(self, c: dict, apath: str, train: dict) -> str:
        spec = jobs.TeacherSpec(answers=apath, **self._data(c), teacher=c["teacher"], student=c["model"],
                                topk=train["teacher_topk"], logprob_dtype=train["teacher_logprob_dtype"],
                                chunk_size=train["chunk_size"], kd_temperature=c["kd_temperature"],
                                max_answer_tokens=train["max_answer_tokens"],
                                max_teacher_tokens=train["max_teacher_tokens"],
                                models_extra=self._models(c["teacher"], c["model"]))
        a = paths.parse(apath, c["dataset"])[1]
        stem = f"{c['teacher']}_k{train['teacher_topk']}_T{format_value(c['kd_temperature'])}_{_hash(spec)}"
        path = paths.output("teacher", R=self.R, dataset=c["dataset"], qstem=a["qstem"], astem=a["stem"], stem=stem)
        return self._add(path, spec, (apath,), c["teacher"])

    def adapter(self, c: dict, experiment: str) -> str:
        m = c["method"]
        train = pdc.training_settings(self.cfg, m, c["model"], experiment)
        train["rank"] = c["rank"]
        apath = self.answers(c) if m != "uft" else None
        teacher_model = tpath = None
        if m in pdc.DISTILLING_METHODS:
            train["kd_temperature"] = c["kd_temperature"]
            teacher_model = c["teacher"]
            if teacher_model != c["model"] and train["teacher_topk"] == 0:
                # Another (larger) teacher never runs inside the student's job: a teacher job sized
                # for it caches its top-k targets, and training reads them.
                train["teacher_topk"] = SEPARATE_TEACHER_TOPK
            if train["teacher_topk"] > 0 or c["subset"] != "all":
                tpath = self.teacher(c, apath, train)
        reg_hash = identity.file_identity(train["reg_data"]) if m == "pd_reg" else None
        spec = jobs.AdapterSpec(method=m, model=c["model"], **self._data(c), seed=c["seed"], subset=c["subset"],
                                answers=apath, teacher_model=teacher_model, teacher=tpath, training=train,
                                models_extra=self._models(c["model"], teacher_model), reg_data_hash=reg_hash)
        stem = f"r{c['rank']}_{_hash(spec)}_s{c['seed']}"
        path = paths.output("adapter", R=self.R, dataset=c["dataset"], method=m, model=c["model"], stem=stem)
        return self._add(path, spec, tuple(p for p in (apath, tpath) if p), c["model"])

    def retrieval(self, c: dict) -> str | None:
        if c["retrieval"] == "none":
            return None
        r = pdc.deep_merge(self.cfg["retrieval"], self.cfg["experiments"][self.experiment].get("retrieval", {}))
        k = pdc.retrieval_k(r, self.cfg["datasets"][c["dataset"]])
        spec = jobs.RetrievalSpec(**self._data(c), retriever=c["retrieval"], k=k,
                                  dense_model=r["dense_model"] if c["retrieval"] == "dense" else None,
                                  embedding_model=r["openai_embedding_model"] if c["retrieval"] == "openai" else None)
        stem = f"{c['retrieval']}_k{k}_{_hash(spec)}"
        return self._add(paths.output("retrieval", R=self.R, dataset=c["dataset"], stem=stem), spec)

    def evaluation(self, c: dict, adapter: str | None) -> str:
        rpath = self.retrieval(c)
        spec = jobs.EvaluateSpec(**self._data(c), model=c["model"], adapter=adapter, snapshot=c["snapshot"],
                                 retrieval=rpath, retriever=c["retrieval"], seed=c["seed"],
                                 sampling=jobs.Sampling.from_dict(self.gen["evaluation"]),
                                 prompts=self._prompt_overrides(), **self._backend(),
                                 models_extra=self._models(c["model"]))
        where = _adapter_place(adapter, c["dataset"]) if adapter else f"base/{c['model']}/s{c['seed']}"
        snap = f"snap{format_value(c['snapshot'])}_" if c["snapshot"] is not None else ""
        path = paths.output("evaluate", R=self.R, dataset=c["dataset"],
                            rest=f"{where}/{snap}{c['retrieval']}_{_hash(spec)}")
        return self._add(path, spec, tuple(p for p in (adapter, rpath) if p), c["model"])

    def grade(self, c: dict, epath: str, grader: str) -> str:
        g = self.cfg["grading"]
        if grader == "judge":
            judge = g["judge"]
            spec = jobs.GradeSpec(eval=epath, **self._data(c), grader=grader, judge=judge,
                                  max_new_tokens=g["judge_max_new_tokens"], prompts=self._prompt_overrides(),
                                  **self._backend(), models_extra=self._models(judge))
            name = f"judge-{judge}"
        else:
            judge = None
            spec = jobs.GradeSpec(eval=epath, **self._data(c), grader=grader, mode=g["substring_mode"])
            name = f"substring-{g['substring_mode']}"
        rest = paths.parse(epath, c["dataset"])[1]["rest"]
        return self._add(paths.output("grade", R=self.R, dataset=c["dataset"], rest=rest, grader=name), spec,
                         (epath,), judge)

    def capability(self, c: dict, adapter: str | None) -> str:
        """MMLU-Pro accuracy of a cell's model (base or with its adapter): the forgetting check."""
        cap = self.cfg["capability"]
        spec = jobs.CapabilitySpec(model=c["model"], adapter=adapter, path=cap["path"], limit=cap["limit"],
                                   hash=identity.file_identity(cap["path"]),
                                   models_extra=self._models(c["model"]))
        where = _adapter_place(adapter, c["dataset"]) if adapter else f"base/{c['model']}"
        path = paths.output("capability", R=self.R, rest=f"{where}/mmlu_pro_{_hash(spec)}")
        return self._add(path, spec, (adapter,) if adapter else (), c["model"])

    def _per_passage(self, dataset: str) -> bool | None:
        """True for a folder of documents without test questions: questions are then per passage."""
        d = self.cfg["datasets"][dataset]
        return True if d["loader"] == "folder" and not d.get("questions") else None

    def _backend(self) -> dict:
        """How a generating job runs its model (not what it computes, but part of its spec)."""
        return {"backend": self.gen["backend"], "batch_size": self.gen["batch_size"],
                "base_url": self.gen.get("openai_base_url") or None, "cache_tag": self.gen.get("openai_cache_tag")}

    def _models(self, *names: str | None) -> dict | None:
        return self.model_entries.entries(*names)

    def _prompt_overrides(self) -> dict:
        return identity.prompt_overrides(self.cfg["prompts"])

    # -- cells -------------------------------------------------------------------------

    def add_experiment(self, name: str) -> None:
        self.experiment = name
        self.gen = generation_settings(self.cfg, name)
        exp = self.cfg["experiments"][name]
        graders = exp.get("graders") or self.cfg["grading"]["graders"]
        cells = []
        listed = pdc.grids(exp)
        varying = tuple(a for a in AXES[5:] if len({str(v) for g in listed for v in g[a]}) > 1)
        for c in expand_grid(self.cfg, name):
            adapter = None if c["method"] == "base" else self.adapter(c, name)
            epath = self.evaluation(c, adapter)
            grades = {g: self.grade(c, epath, g) for g in graders}
            capability = self.capability(c, adapter) if exp["capability"] else None
            cells.append(Cell(name, c, grades, epath, adapter, varying, capability))
        from pd.report.layout import check_layout

        check_layout(name, exp["table"], [c.axes for c in cells])  # refused now, not after hours of jobs
        self.plan.cells[name] = cells
        inputs = tuple(dict.fromkeys(p for cell in cells for p in [*cell.grades.values(), cell.adapter, cell.capability]
                                     if p))
        spec = jobs.ManifestSpec(experiment=name, table=exp["table"], paper_table=exp.get("paper_table"),
                                 description=exp.get("description", ""), records=manifest_records(self.plan, name))
        self._add(self.plan.manifest_path(name), spec, inputs)


def _adapter_place(adapter: str, dataset: str) -> str:
    """``<method>/<model>/<stem>`` of an adapter path, where its evaluations and capability rows go."""
    f = paths.parse(adapter, dataset)[1]
    return f"{f['method']}/{f['model']}/{f['stem']}"


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
            subsets of a method that does not distil), or a table layout that would put two
            configurations in one cell (:func:`pd.report.layout.check_layout`).
    """
    b = _Builder(cfg)
    names = experiments or cfg["run"]
    for name in names:
        if name not in cfg["experiments"]:
            raise ConfigError(f"unknown experiment {name!r}; allowed: {', '.join(sorted(cfg['experiments']))}")
        b.add_experiment(name)
    manifests = b.plan.targets(list(names))
    b._add(b.plan.report_path(), jobs.ReportSpec(manifests=manifests, out_dir=cfg["reports_dir"]), tuple(manifests))
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
        ConfigError: as :func:`expand_grid`.
    """
    b = _Builder(cfg)
    b.experiment = experiment
    b.gen = generation_settings(cfg, experiment)
    adapters = [b.adapter(c, experiment) for c in expand_grid(cfg, experiment) if c["method"] != "base"]
    return b.plan, adapters


def manifest_records(plan: Plan, experiment: str) -> list[dict]:
    """The report's view of an experiment: one record per cell and grader."""
    out = []
    for cell in plan.cells[experiment]:
        for grader, path in cell.grades.items():
            spec = plan.artifacts[path].spec
            gname = f"judge:{spec.judge}" if grader == "judge" else "substring"
            adapter_spec = plan.artifacts[cell.adapter].spec if cell.adapter else None
            out.append({"experiment": experiment, "cell_id": cell.cell_id, "axes": cell.axes, "grader": gname,
                        "grades": path, "evaluate": cell.eval_path, "adapter": cell.adapter,
                        "capability": cell.capability, "jobs": plan.upstream(path),
                        "meta": {"training": adapter_spec.training if adapter_spec else None}})
    return out
