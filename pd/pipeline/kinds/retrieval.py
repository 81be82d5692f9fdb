"""The top-k passages of each test question (BM25, dense embeddings, an embeddings API, the oracle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pd.embeddings import API_RETRIEVERS
from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.spec import JobSpec


@dataclass(frozen=True)
class RetrievalSpec(JobSpec):
    KIND: ClassVar[str] = "retrieval"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"dense_model", "embedding_model"})
    dataset: str
    dataset_cfg: dict
    retriever: str
    k: int
    dense_model: str | None = None
    embedding_model: str | None = None

    @property
    def retriever_model(self) -> str | None:
        """The embedding model of a dense or OpenAI retriever."""
        return self.dense_model or self.embedding_model


@register
class Retrieval(JobKind):
    name = "retrieval"
    pattern = PathPattern("{R}/{dataset}/retrieval/{stem}.jsonl")
    spec = RetrievalSpec
    priority = 20
    base_runtime = 30
    size_independent = True

    def plan(self, planner, c) -> str | None:
        """The cell's retrieval results (None for a closed-book cell)."""
        from pd import config as pdc

        if c.retrieval == "none":
            return None
        over = planner.cfg["experiments"][planner.experiment].get("retrieval", {})
        r = pdc.deep_merge(planner.cfg["retrieval"], over)
        k = pdc.retrieval_k(r, planner.cfg["datasets"][c.dataset])
        spec = RetrievalSpec(**planner.data(c), retriever=c.retrieval, k=k,
                             dense_model=r["dense_model"] if c.retrieval == "dense" else None,
                             embedding_model=r["openai_embedding_model"] if c.retrieval == "openai" else None)
        # Embeddings from a service come from a local job (where the network is); this job reads its cache.
        inputs = (planner.need("embeddings", c, c.retrieval, spec.embedding_model),) if _from_api(spec) else ()
        return planner.add(spec, {"dataset": c.dataset, "stem": f"{c.retrieval}_k{k}_{planner.hash(spec)}"}, inputs)

    def run(self, spec: RetrievalSpec, out: str) -> None:
        """The top-``k`` passages of each test question.

        Args:
            spec: the retrieval job.
            out: the JSONL of ``{item_id, retrieved, gold}`` rows; recall@1 and @k go to ``.stats.json``.

        An API retriever's embeddings are read from the cache the ``embeddings`` job filled; no connection
        is opened.

        Raises:
            DataError: the dataset's files are missing; ConfigError: an unknown retriever;
            ModelUnavailableError: the embedding cache lacks the corpus or the questions (API retrievers).
        """
        from pd.evaluation.retrieve import recall_at_k, retrieve_for_items
        from pd.io import write_json, write_jsonl
        from pd.pipeline.jobtools import provenance
        from pd.pipeline.registry import get_kind

        ds = spec.load_dataset()
        opts = {"model": spec.retriever_model} if spec.retriever_model else {}
        if _from_api(spec):
            opts["offline"] = get_kind("embeddings").offline_hint
        ranked = retrieve_for_items(ds, spec.retriever, spec.k, **opts)
        write_jsonl(out, ({"item_id": it.id, "retrieved": ranked[it.id], "gold": list(it.doc_ids)} for it in ds.items))
        write_json(Path(out).with_suffix(".stats.json"),
                   {**provenance(spec), **{f"recall@{k}": recall_at_k(ds, ranked, k) for k in sorted({1, spec.k})}})

    def loads_model(self, art) -> bool:
        """A dense retriever loads its embedding model (its threads follow it); BM25 and the oracle load none."""
        return art.spec.retriever == "dense"


def _from_api(spec: RetrievalSpec) -> bool:
    """Whether the retriever's embeddings come from a service (made by the local ``embeddings`` job)."""
    return spec.retriever in API_RETRIEVERS
