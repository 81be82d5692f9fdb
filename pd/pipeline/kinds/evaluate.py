"""The model's answers to the test questions (with its adapter or a snapshot), closed-book or with RAG."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.sizing import REFERENCE, dataset_size
from pd.pipeline.spec import GENERATING_OMIT, GeneratingSpec, Sampling


@dataclass(frozen=True)
class EvaluateSpec(GeneratingSpec):
    KIND: ClassVar[str] = "evaluate"
    OMIT_NONE: ClassVar[frozenset[str]] = GENERATING_OMIT
    dataset: str
    dataset_cfg: dict
    model: str
    adapter: str | None
    snapshot: float | None
    retrieval: str | None  # the retrieval job's output
    retriever: str
    seed: int
    sampling: Sampling
    # What each row scores beyond the answer; part of the identity, so that evaluations made before the
    # gold-answer log-likelihood existed are recomputed rather than mixed with rows that carry it.
    metrics: tuple[str, ...] = ("gold_logprob",)


@register
class Evaluate(JobKind):
    name = "evaluate"
    pattern = PathPattern("{R}/{dataset}/eval/{rest}.jsonl")
    spec = EvaluateSpec
    gpu = True
    priority = 10
    base_runtime = 30

    def plan(self, planner, c, adapter: str | None) -> str:
        """The cell's evaluation: its model with ``adapter`` (None: the base model), after its retrieval."""
        from pd.grid import format_value

        rpath = planner.need("retrieval", c)
        spec = EvaluateSpec(**planner.data(c), model=c.model, adapter=adapter, snapshot=c.snapshot,
                            retrieval=rpath, retriever=c.retrieval, seed=c.seed,
                            sampling=Sampling.from_dict(planner.gen["evaluation"]), prompts=planner.prompt_overrides(),
                            **planner.backend(), models_extra=planner.models(c.model))
        where = planner.adapter_place(adapter) if adapter else f"base/{c.model}/s{c.seed}"
        snap = f"snap{format_value(c.snapshot)}_" if c.snapshot is not None else ""
        rest = f"{where}/{snap}{c.retrieval}_{planner.hash(spec)}"
        return planner.add(spec, {"dataset": c.dataset, "rest": rest}, tuple(p for p in (adapter, rpath) if p),
                           c.model)

    def run(self, spec: EvaluateSpec, out: str) -> None:
        """The model's answers (with its adapter or a snapshot of it) to the test questions, closed-book or
        RAG, each row with the gold answer's log-likelihood under its prompt (``spec.metrics``).

        Args:
            spec: the evaluate job.
            out: the JSONL of per-question answers; counts go to ``.stats.json``.

        Raises:
            DataError: a missing adapter, snapshot or retrieval file.
        """
        from pd import config as pdc
        from pd.context import check_dataset_fits
        from pd.evaluation.evaluate import evaluate
        from pd.io import read_jsonl, write_with_stats
        from pd.pipeline.jobtools import job_generator, provenance

        ds = spec.load_dataset()
        retrieved = {r["item_id"]: r["retrieved"] for r in read_jsonl(spec.retrieval)} if spec.retrieval else None
        params = spec.sampling.params(spec.seed, **pdc.EVAL_SAMPLING)
        adapter = _adapter_folder(spec)
        gen = job_generator(spec, spec.model, adapter)
        check_dataset_fits(gen, ds, params.max_new_tokens)  # a question the model cannot read fails here, by name
        rows, stats = evaluate(ds, gen, retrieved, params, model=spec.model, adapter=adapter,
                               gold_logprob="gold_logprob" in spec.metrics)
        write_with_stats(out, rows, stats | provenance(spec))

    def workload(self, art, plan):
        """One answer per test item after its question and, with retrieval, the ``k`` retrieved passages."""
        from pd.pipeline.sizing import Generation, generation_run, lengths

        spec, n = art.spec, lengths()
        k = plan.get(spec.retrieval).spec.k if spec.retrieval else 0
        tokens = spec.sampling.max_new_tokens or REFERENCE["eval_tokens"]
        temperature = spec.sampling.temperature
        return Generation(dataset_size(spec.dataset_cfg)[1], int(n["chat"] + k * n["passage"]), tokens,
                          sampled=temperature is None or temperature > 0, **generation_run(spec, plan))

    def resumable(self, art) -> bool:
        """Completions are cached in chunks as they are made."""
        return True

    def work(self, art, plan) -> float:
        """Test items x ``max_new_tokens`` (one sample per item)."""
        items = dataset_size(art.spec.dataset_cfg)[1]
        tokens = art.spec.sampling.max_new_tokens or REFERENCE["eval_tokens"]
        return max(items * tokens, 1.0) / (REFERENCE["items"] * REFERENCE["eval_tokens"])


def _adapter_folder(spec: EvaluateSpec) -> str | None:
    if not spec.adapter:
        return None
    if spec.snapshot is None:
        return spec.adapter
    from pd.train.checkpoint import snapshot_folder

    return str(snapshot_folder(spec.adapter, spec.snapshot))
