"""From a validated config to the set of artifacts the experiment grid needs.

Each grid cell (one point of an experiment's grid) needs a chain of artifacts:
questions -> expert answers -> [teacher statistics / top-k cache] -> adapter ->
[retrieval results] -> evaluation answers -> grades. An artifact's path encodes only
what it depends on (a readable prefix plus a short hash of its full specification), so
two cells that share questions, answers, a teacher cache or retrieval results share the
file, and Snakemake builds it once. A changed setting changes the hash of exactly the
artifacts that depend on it.

The Snakefile asks this module, by output path, for each job's specification and
inputs; the ``pd`` command uses it to list cells and their targets.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pd import config as pdc
from pd.errors import ConfigError
from pd.io import file_hash, stable_hash
from pd.models import registry

AXES = ("model", "method", "dataset", "seed", "retrieval", "expert", "teacher", "qgen", "answer_temperature",
        "kd_temperature", "n_questions", "rank", "snapshot", "subset")
KINDS = ("questions", "answers", "teacher", "adapter", "retrieval", "eval", "grade", "capability", "manifest", "report")


@dataclass(frozen=True)
class Artifact:
    kind: str
    path: str
    spec: dict
    inputs: tuple[str, ...] = ()
    model: str | None = None  # the model the job loads, for its resources


@dataclass
class Cell:
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
        extra = ",".join(f"{k}={_fmt(a[k])}" for k in self.varying if a.get(k) is not None)
        parts = [a["dataset"], a["method"], a["model"], f"s{a['seed']}", a["retrieval"]]
        return "/".join(parts + ([extra] if extra else []))


@dataclass
class Plan:
    cfg: dict
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    cells: dict[str, list[Cell]] = field(default_factory=dict)

    def add(self, art: Artifact) -> str:
        old = self.artifacts.get(art.path)
        if old is not None and old.spec != art.spec:  # a hash collision or a bug: never silently merge
            raise RuntimeError(f"two different specifications map to {art.path}")
        self.artifacts[art.path] = art
        return art.path

    def get(self, path: str) -> Artifact:
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
        return f"{self.cfg['reports_dir']}/index.html"

    def manifest_path(self, experiment: str) -> str:
        return f"{self.cfg['results_dir']}/manifests/{experiment}.json"

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

    def count(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for a in self.artifacts.values():
            out[a.kind] += 1
        return out


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def generation_settings(cfg: dict, experiment: str | None) -> dict:
    """The generation settings an experiment's cells use: the top level, then its overrides."""
    base = cfg["generation"]
    over = cfg["experiments"][experiment].get("generation", {}) if experiment else {}
    return pdc.deep_merge(base, over)


def expand_grid(cfg: dict, experiment: str) -> list[dict]:
    """The experiment's cells as axis dicts, with defaults resolved and irrelevant axes cleared.

    Axes a method does not use (a base model has no teacher; SFT has no distillation
    temperature) are set to None, so cells that differ only there collapse into one.
    """
    qcfg = generation_settings(cfg, experiment)["questions"]
    seen, cells = set(), []
    points = (v for g in pdc.grids(cfg["experiments"][experiment]) for v in itertools.product(*(g[a] for a in AXES)))
    for values in points:
        c = dict(zip(AXES, values))
        m = c["method"]
        train = pdc.training_settings(cfg, m, c["model"], experiment)
        for axis in ("expert", "teacher", "qgen"):
            if c[axis] == "self":
                c[axis] = c["model"]
        if c["answer_temperature"] is None:
            c["answer_temperature"] = pdc.answer_temperature(cfg, m)
        if c["kd_temperature"] is None:
            c["kd_temperature"] = train["kd_temperature"]
        if c["n_questions"] is None:
            c["n_questions"] = qcfg["per_item"]
        if c["rank"] is None:
            c["rank"] = train["rank"]
        if m == "base":
            for axis in AXES[5:]:
                c[axis] = None
        else:
            if m not in pdc.DISTILLING_METHODS:
                c["teacher"] = c["kd_temperature"] = None
                if c["subset"] != "all":
                    raise ConfigError(f"experiments.{experiment}.grid.subset: quintile subsets need a distilling method "
                                      f"({', '.join(pdc.DISTILLING_METHODS)}), not {m!r}")
            if m == "uft":
                c["expert"] = c["qgen"] = c["answer_temperature"] = c["n_questions"] = None
        key = tuple(sorted((k, str(v)) for k, v in c.items()))
        if key not in seen:
            seen.add(key)
            cells.append(c)
    return cells


class _Builder:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.plan = Plan(cfg)
        self.reg = registry(cfg.get("models"))
        self.R = cfg["results_dir"]
        self.experiment: str | None = None  # the experiment whose cells are being added
        self.gen = cfg["generation"]  # its generation settings

    # -- artifacts, each returns its path ----------------------------------------------

    def questions(self, c: dict) -> str:
        q = self.gen["questions"]
        dseed = c["seed"] if q["per_seed"] else 0
        heldout = pdc.training_settings(self.cfg, c["method"], c["model"], self.experiment)["heldout_fraction"]
        total = c["n_questions"] + pdc.heldout_extra(c["n_questions"], heldout)
        mode = "bonito" if c["qgen"].startswith("bonito") else q["mode"]  # a Bonito-style generator has its own prompt
        spec = {"dataset": c["dataset"], "dataset_cfg": self.cfg["datasets"][c["dataset"]], "generator": c["qgen"],
                "mode": mode, "per_item": total, "heldout_per_item": total - c["n_questions"], "seed": dseed,
                "sampling": {k: q[k] for k in ("temperature", "top_k", "top_p", "max_new_tokens")},
                "max_rounds": q["max_rounds"], "prompts": self._prompt_overrides(), **self._backend(),
                **self._models(c["qgen"])}
        stem = f"{c['qgen']}_{mode}_n{c['n_questions']}_s{dseed}_{stable_hash(spec, 8)}"
        return self.plan.add(Artifact("questions", f"{self.R}/{c['dataset']}/questions/{stem}.jsonl", spec, (), c["qgen"]))

    def answers(self, c: dict) -> str:
        qpath = self.questions(c)
        a = self.gen["answers"]
        kind = "cot" if c["method"] == "sft_distractors" else "plain"
        train = pdc.training_settings(self.cfg, c["method"], c["model"], self.experiment)
        spec = {"questions": qpath, "dataset": c["dataset"], "dataset_cfg": self.cfg["datasets"][c["dataset"]],
                "expert": c["expert"], "kind": kind, "seed": c["seed"] if self.gen["questions"]["per_seed"] else 0,
                "sampling": {"temperature": c["answer_temperature"], **a}, "prompts": self._prompt_overrides(),
                **self._backend(), **self._models(c["expert"])}
        if kind == "cot":
            spec["distractors"] = {"count": train["distractors"], "gold_drop_prob": train["gold_drop_prob"]}
        qstem = qpath.rsplit("/", 1)[1][: -len(".jsonl")]
        stem = f"{c['expert']}_{kind}_t{_fmt(c['answer_temperature'])}_{stable_hash(spec, 8)}"
        return self.plan.add(Artifact("answers", f"{self.R}/{c['dataset']}/answers/{qstem}/{stem}.jsonl", spec,
                                      (qpath,), c["expert"]))

    def teacher(self, c: dict, apath: str, train: dict) -> str:
        spec = {"answers": apath, "dataset": c["dataset"], "dataset_cfg": self.cfg["datasets"][c["dataset"]],
                "teacher": c["teacher"], "student": c["model"], "topk": train["teacher_topk"],
                "logprob_dtype": train["teacher_logprob_dtype"], "chunk_size": train["chunk_size"],
                "kd_temperature": c["kd_temperature"], "max_answer_tokens": train["max_answer_tokens"],
                "max_teacher_tokens": train["max_teacher_tokens"], **self._models(c["teacher"], c["model"])}
        astem = "/".join(apath.rsplit("/", 2)[1:])[: -len(".jsonl")]
        stem = f"{c['teacher']}_k{train['teacher_topk']}_T{_fmt(c['kd_temperature'])}_{stable_hash(spec, 8)}"
        return self.plan.add(Artifact("teacher", f"{self.R}/{c['dataset']}/teacher/{astem}/{stem}", spec, (apath,),
                                      c["teacher"]))

    def adapter(self, c: dict, experiment: str) -> str:
        m = c["method"]
        train = pdc.training_settings(self.cfg, m, c["model"], experiment)
        train["rank"] = c["rank"]
        inputs: list[str] = []
        spec: dict[str, Any] = {"method": m, "model": c["model"], "dataset": c["dataset"],
                                "dataset_cfg": self.cfg["datasets"][c["dataset"]], "seed": c["seed"], "subset": c["subset"]}
        if m != "uft":
            apath = self.answers(c)
            inputs.append(apath)
            spec["answers"] = apath
        if m in pdc.DISTILLING_METHODS:
            train["kd_temperature"] = c["kd_temperature"]
            spec["teacher_model"] = c["teacher"]
            if train["teacher_topk"] > 0 or c["subset"] != "all":
                tpath = self.teacher(c, spec["answers"], train)
                inputs.append(tpath)
                spec["teacher"] = tpath
        spec["training"] = train
        spec.update(self._models(c["model"], spec.get("teacher_model")))
        stem = f"r{c['rank']}_{stable_hash(spec, 8)}_s{c['seed']}"
        path = f"{self.R}/{c['dataset']}/adapters/{m}/{c['model']}/{stem}"
        return self.plan.add(Artifact("adapter", path, spec, tuple(inputs), c["model"]))

    def retrieval(self, c: dict) -> str | None:
        if c["retrieval"] == "none":
            return None
        r = pdc.deep_merge(self.cfg["retrieval"], self.cfg["experiments"][self.experiment].get("retrieval", {}))
        k = pdc.retrieval_k(r, self.cfg["datasets"][c["dataset"]])
        spec = {"dataset": c["dataset"], "dataset_cfg": self.cfg["datasets"][c["dataset"]], "retriever": c["retrieval"],
                "k": k}
        if c["retrieval"] == "dense":
            spec["dense_model"] = r["dense_model"]
        if c["retrieval"] == "openai":
            spec["embedding_model"] = r["openai_embedding_model"]
        stem = f"{c['retrieval']}_k{k}_{stable_hash(spec, 8)}"
        return self.plan.add(Artifact("retrieval", f"{self.R}/{c['dataset']}/retrieval/{stem}.jsonl", spec))

    def evaluation(self, c: dict, adapter: str | None) -> str:
        rpath = self.retrieval(c)
        spec = {"dataset": c["dataset"], "dataset_cfg": self.cfg["datasets"][c["dataset"]], "model": c["model"],
                "adapter": adapter, "snapshot": c["snapshot"], "retrieval": rpath, "retriever": c["retrieval"],
                "seed": c["seed"], "sampling": dict(self.gen["evaluation"]),
                "prompts": self._prompt_overrides(), **self._backend(), **self._models(c["model"])}
        where = adapter.split("/adapters/", 1)[1] if adapter else f"base/{c['model']}/s{c['seed']}"
        snap = f"snap{_fmt(c['snapshot'])}_" if c["snapshot"] is not None else ""
        path = f"{self.R}/{c['dataset']}/eval/{where}/{snap}{c['retrieval']}_{stable_hash(spec, 8)}.jsonl"
        inputs = tuple(p for p in (adapter, rpath) if p)
        return self.plan.add(Artifact("eval", path, spec, inputs, c["model"]))

    def grade(self, c: dict, epath: str, grader: str) -> str:
        g = self.cfg["grading"]
        spec: dict[str, Any] = {"eval": epath, "dataset": c["dataset"], "dataset_cfg": self.cfg["datasets"][c["dataset"]],
                                "grader": grader}
        judge = None
        if grader == "judge":
            judge = g["judge"]
            spec.update(judge=judge, max_new_tokens=g["judge_max_new_tokens"], prompts=self._prompt_overrides(),
                        **self._backend(), **self._models(judge))
            name = f"judge-{judge}"
        else:
            spec["mode"] = g["substring_mode"]
            name = f"substring-{g['substring_mode']}"
        stem = epath.split("/eval/", 1)[1][: -len(".jsonl")]
        path = f"{self.R}/{c['dataset']}/grades/{stem}.{name}.jsonl"
        return self.plan.add(Artifact("grade", path, spec, (epath,), judge))

    def capability(self, c: dict, adapter: str | None) -> str:
        """MMLU-Pro accuracy of a cell's model (base or with its adapter): the forgetting check."""
        cap = self.cfg["capability"]
        spec = {"model": c["model"], "adapter": adapter, "path": cap["path"], "limit": cap["limit"],
                "hash": file_hash(cap["path"]) if cap["path"] and Path(cap["path"]).is_file() else None,
                **self._models(c["model"])}
        where = adapter.split("/adapters/", 1)[1] if adapter else f"base/{c['model']}"
        path = f"{self.R}/capability/{where}/mmlu_pro_{stable_hash(spec, 8)}.jsonl"
        return self.plan.add(Artifact("capability", path, spec, (adapter,) if adapter else (), c["model"]))

    def _backend(self) -> dict:
        """How a generating job runs its model (not what it computes, but part of its spec)."""
        out = {"backend": self.gen["backend"], "batch_size": self.gen["batch_size"]}
        if self.gen.get("openai_base_url"):
            out["base_url"] = self.gen["openai_base_url"]
        return out

    def _models(self, *names: str | None) -> dict:
        """The config's own entries (`models:`) for the models a job loads, so the job resolves them
        and a changed entry (another path or dtype) changes the job's hash; {} for built-in models.
        (An entry's `base:` is always a built-in model, so nothing else is needed.)"""
        own = self.cfg.get("models") or {}
        extra = {n: own[n] for n in sorted({n for n in names if n and n in own})}
        return {"models_extra": extra} if extra else {}

    def _prompt_overrides(self) -> dict:
        return {k: {"path": v, "hash": file_hash(v) if Path(v).is_file() else None} for k, v in sorted(self.cfg["prompts"].items())}

    # -- cells -------------------------------------------------------------------------

    def add_experiment(self, name: str) -> None:
        self.experiment = name
        self.gen = generation_settings(self.cfg, name)
        exp = self.cfg["experiments"][name]
        graders = exp.get("graders") or self.cfg["grading"]["graders"]
        cells = []
        expanded = expand_grid(self.cfg, name)
        listed = pdc.grids(exp)
        varying = tuple(a for a in AXES[5:] if len({str(v) for g in listed for v in g[a]}) > 1)
        for c in expanded:
            adapter = None if c["method"] == "base" else self.adapter(c, name)
            epath = self.evaluation(c, adapter)
            grades = {g: self.grade(c, epath, g) for g in graders}
            capability = self.capability(c, adapter) if exp["capability"] else None
            cells.append(Cell(name, c, grades, epath, adapter, varying, capability))
        self.plan.cells[name] = cells
        records = manifest_records(self.plan, name)
        inputs = tuple(dict.fromkeys(p for cell in cells for p in [*cell.grades.values(), cell.adapter, cell.capability]
                                     if p))
        spec = {"experiment": name, "table": exp["table"], "paper_table": exp.get("paper_table"),
                "description": exp.get("description", ""), "records": records}
        self.plan.add(Artifact("manifest", self.plan.manifest_path(name), spec, inputs))


def build_plan(cfg: dict, experiments: list[str] | None = None) -> Plan:
    """The artifacts of the given experiments (default: the config's ``run`` list)."""
    b = _Builder(cfg)
    names = experiments or cfg["run"]
    for name in names:
        if name not in cfg["experiments"]:
            raise ConfigError(f"unknown experiment {name!r}; allowed: {', '.join(sorted(cfg['experiments']))}")
        b.add_experiment(name)
    manifests = b.plan.targets(list(names))
    b.plan.add(Artifact("report", b.plan.report_path(), {"manifests": manifests, "out_dir": cfg["reports_dir"]},
                        tuple(manifests)))
    return b.plan


def manifest_records(plan: Plan, experiment: str) -> list[dict]:
    """The report's view of an experiment: one record per cell and grader."""
    out = []
    for cell in plan.cells[experiment]:
        for grader, path in cell.grades.items():
            spec = plan.artifacts[path].spec
            gname = f"judge:{spec['judge']}" if grader == "judge" else "substring"
            adapter_spec = plan.artifacts[cell.adapter].spec if cell.adapter else None
            out.append({"experiment": experiment, "cell_id": cell.cell_id, "axes": cell.axes, "grader": gname,
                        "grades": path, "eval": cell.eval_path, "adapter": cell.adapter, "capability": cell.capability,
                        "jobs": plan.upstream(path),
                        "meta": {"training": adapter_spec["training"] if adapter_spec else None}})
    return out
