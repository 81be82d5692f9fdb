"""What the Snakefile needs from the plan, as Snakemake-shaped callables.

The Snakefile writes one rule per job kind of the registry (:meth:`Workflow.generic_kinds`);
each rule's ``output:``, ``benchmark:`` and ``log:`` strings come from its kind's path
pattern, the one the plan names its artifacts with; a job's wildcards give back its output
path, and the path gives its specification, inputs and resources. A rule's name is its job
kind everywhere (plan, job runner, resources, site file). Keeping this glue in the package
keeps the Snakefile to one loop and two written-out local rules.
"""

from __future__ import annotations

from typing import Any, Callable

from pd.config import load_config
from pd.models import registry
from pd.pipeline import paths
from pd.pipeline.plan import Plan, build_plan
from pd.pipeline.registry import all_kinds, get_kind


class Workflow:
    """The plan of a Snakemake run and, per rule (job kind), its strings and callables."""

    def __init__(self, config: dict, basedir: str | None = None, cores: int | None = None):
        _move_url_secret(config)
        self.cfg = load_config(dict(config))
        self.cores = cores  # --cores of a local run: model jobs then get half each, so two run side by side
        self.plan: Plan = build_plan(self.cfg)
        self.results_dir = self.cfg["results_dir"]
        self.registry = registry(self.cfg.get("models"))
        from pd.pipeline.resources import load_site

        self.site = load_site(self.cfg.get("slurm_site"))
        from pd.site import apply_job_env

        apply_job_env(self.site)  # HF_HOME, HF_HUB_OFFLINE, PD_CACHE_DIR ... reach every job (sbatch --export=ALL)
        self.device = "gpu" if self.site is not None and self.site.device == "gpu" else "cpu"
        self._costs: dict[str, Any] = {}  # artifact path -> its JobCost (the cost model runs once per job)

    @staticmethod
    def generic_kinds() -> list:
        """The job kinds whose rule the Snakefile's loop writes (:attr:`JobKind.generic_rule`)."""
        return [k for k in all_kinds() if k.generic_rule]

    def output(self, kind: str) -> str:
        """The rule's ``output:`` pattern (wrap a folder output in ``directory()``)."""
        return paths.rule_output(kind, self.results_dir, self.cfg["reports_dir"])

    def benchmark(self, kind: str) -> str:
        """The rule's ``benchmark:`` pattern."""
        return paths.rule_benchmark(kind, self.results_dir)

    def log(self, kind: str) -> str:
        """The rule's ``log:`` pattern."""
        return paths.rule_log(kind, self.results_dir)

    def path(self, kind: str, wildcards) -> str:
        """A job's output path from its rule's wildcards."""
        return paths.output(kind, R=self.results_dir, reports=self.cfg["reports_dir"], **dict(wildcards.items()))

    def artifact(self, kind: str, wildcards):
        """The plan's artifact for a job of ``kind``.

        Raises:
            ConfigError: the path is no artifact of the selected experiments.
            ValueError: the path is another kind's (a bug in the rules).
        """
        art = self.plan.get(self.path(kind, wildcards))
        if art.kind != kind:
            raise ValueError(f"{art.path} is a {art.kind} artifact, not {kind}")
        return art

    def spec(self, kind: str) -> Callable:
        """The job's specification in dictionary form, for ``params:`` (Snakemake records its repr)."""
        return lambda wildcards: self.artifact(kind, wildcards).spec.as_dict()

    def inputs(self, kind: str) -> Callable:
        """The rule's ``input:`` function: the artifacts the job reads."""
        return lambda wildcards: list(self.artifact(kind, wildcards).inputs)

    def params_b(self, kind: str) -> Callable:
        """The size (billions of parameters) of the model a job loads; 0 when it loads none."""
        def size(wildcards) -> float:
            model = self.artifact(kind, wildcards).model
            return self.registry[model].params_b if model else 0.0

        return size

    def resources(self, kind: str) -> dict[str, Any]:
        """The rule's ``resources:`` (:func:`pd.pipeline.resources.rule_resources` for the kind, model size, rank)."""
        from pd.pipeline.resources import rule_resources

        k = get_kind(kind)
        return rule_resources(kind, self.params_b(kind), device=self.device, site=self.site,
                              lora_rank=lambda wc: k.lora_rank(self.artifact(kind, wc)),
                              work=lambda wc: k.work(self.artifact(kind, wc), self.plan),
                              cache_gb=lambda wc: k.cache_gb(self.artifact(kind, wc), self.plan),
                              extra_params_b=lambda wc: k.extra_params_b(self.artifact(kind, wc), self.plan),
                              processes=self.processes(kind), cost=lambda wc: self.cost(kind, wc))

    def cost(self, kind: str, wildcards) -> Any:
        """The cost model's :class:`pd.pipeline.costs.JobCost` of a job on a GPU site (None elsewhere)."""
        from pd.pipeline.requests import artifact_cost

        if self.device != "gpu":
            return None
        art = self.artifact(kind, wildcards)
        if art.path not in self._costs:
            self._costs[art.path] = artifact_cost(art, self.plan, self.site, self.registry)
        return self._costs[art.path]

    def processes(self, kind: str) -> Callable:
        """An adapter job's ``training.processes`` (1 for other kinds): its GPUs, CPUs and memory scale with it."""
        return lambda wildcards: get_kind(kind).processes(self.artifact(kind, wildcards))

    @staticmethod
    def priority(kind: str) -> int:
        """The rule's ``priority:`` (the kind's :attr:`~pd.pipeline.kind.JobKind.priority`)."""
        return get_kind(kind).priority

    def threads(self, kind: str) -> Callable:
        """The job's CPU threads: its ``cpus_per_task``, 1 for jobs that run no model (Snakemake caps it
        at ``--cores``). A job sets torch's thread count to it (pd.pipeline.run.run_job), so jobs that run side
        by side do not oversubscribe the cores."""
        from pd.pipeline.resources import job_resources

        def threads(wildcards) -> int:
            art = self.artifact(kind, wildcards)
            if not get_kind(kind).loads_model(art):
                return 1  # BM25/oracle retrieval, substring grades, manifests, the report
            res = job_resources(kind, self.params_b(kind)(wildcards), 1, self.device, self.site,
                                processes=self.processes(kind)(wildcards))
            n = int(res.get("cpus_per_task") or 1)
            if self.site is None and self.cores:
                # On one machine, two model jobs side by side keep the cores busier than one job on
                # all of them: small-batch decoding and small matrices scale poorly over threads, and
                # the DAG usually has a second job ready (base-model evaluations beside training data).
                n = min(n, max(1, self.cores // 2))
            return n

        return threads

    def final_targets(self) -> list[str]:
        """What ``rule all`` asks for: each selected experiment's manifest, then the report over them.

        The manifests are named too because Snakemake does not rebuild a target that exists when it
        has no record of its inputs: after one selection (the demo) wrote the report, a new selection
        (``--config 'run=[main]'``) still lacks its own manifests, so it has jobs to run.
        """
        return [*self.plan.targets(self.cfg["run"]), self.plan.report_path()]


def _move_url_secret(config: dict) -> None:
    """Take the password out of Snakemake's own ``config`` (``generation.openai_base_url`` and
    ``grading.openai_base_url``), in place.

    Snakemake writes its ``config`` into every job's stage script (``.snakemake/scripts/``, left
    behind by a killed job); the password goes to ``OPENAI_API_KEY`` instead, which the jobs inherit
    (:func:`pd.redact.export_url_key`).
    """
    from pd.redact import export_url_key

    for section in ("generation", "grading"):
        part = config.get(section)
        if isinstance(part, dict) and isinstance(part.get("openai_base_url"), str):
            part["openai_base_url"] = export_url_key(part["openai_base_url"])
