"""API embeddings of a dataset's corpus and questions, computed where the network is (a local rule).

Compute nodes have no network, so a retrieval job with embeddings from a service (``retrieval:
openai``) cannot call it. This kind's job runs on the host that runs Snakemake (``local = True``:
the Snakefile makes its rule a ``localrule``), sends the corpus and the test questions of one
dataset to the embedding model, and leaves them in the content-addressed embedding cache
(:class:`pd.evaluation.retrieve.EmbeddingCache`, ``$PD_CACHE_DIR/retrieval/embeddings``: its key
is a hash of the model and every text, so a changed passage or question is a miss, never a stale
hit). The retrieval job reads that cache and opens no connection (:data:`OFFLINE_HINT` is what its
error says to do when the cache lacks them; the retrieval kind reads it through the registry). One
job per (dataset, embedding model): retrieval jobs at every depth k share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.spec import JobSpec

OFFLINE_HINT = ("Snakemake's local rule `embeddings` fills it on the host that runs Snakemake: rerun your snakemake "
                "command there with `--forcerun embeddings`, with PD_CACHE_DIR on storage the compute nodes share "
                "and OPENAI_BASE_URL / OPENAI_API_KEY set")


@dataclass(frozen=True)
class EmbeddingsSpec(JobSpec):
    KIND: ClassVar[str] = "embeddings"
    dataset: str
    dataset_cfg: dict
    retriever: str  # one of pd.embeddings.API_RETRIEVERS
    embedding_model: str  # the model's name at the service (a name pd's model registry does not hold)


@register
class Embeddings(JobKind):
    name = "embeddings"
    pattern = PathPattern("{R}/{dataset}/embeddings/{stem}.json")
    spec = EmbeddingsSpec
    priority = 30  # a retrieval job, and every RAG evaluation after it, waits for it
    base_runtime = 15
    size_independent = True
    local = True  # it calls the service: it runs where the network is
    offline_hint = OFFLINE_HINT

    def plan(self, planner, c, retriever: str, model: str) -> str:
        """The embeddings job of a cell's dataset for an API retriever.

        Args:
            planner: the planner.
            c: the grid cell (its dataset).
            retriever: one of :data:`pd.embeddings.API_RETRIEVERS`.
            model: the embedding model.

        Returns:
            The job's output path (a JSON record of what is in the cache).
        """
        spec = EmbeddingsSpec(**planner.data(c), retriever=retriever, embedding_model=model)
        return planner.add(spec, {"dataset": c.dataset, "stem": f"{retriever}_{planner.hash(spec)}"})

    def run(self, spec: EmbeddingsSpec, out: str) -> None:
        """Put the corpus and question embeddings of ``spec.dataset`` into the embedding cache.

        Args:
            spec: the embeddings job.
            out: a JSON record: the model's identity, the counts, the texts sent now and the cache keys.

        Raises:
            ConfigError: no API key or service URL; ModelUnavailableError: a request failed.
        """
        from pd.evaluation.retrieve import embed_corpus_and_queries
        from pd.io import write_json
        from pd.pipeline.jobtools import provenance

        record = embed_corpus_and_queries(spec.load_dataset(), spec.retriever, model=spec.embedding_model)
        write_json(out, {**provenance(spec), **record})

    def loads_model(self, art) -> bool:
        """It loads no model: the service embeds."""
        return False

    def needs_network(self, art) -> str | None:
        """It calls the embedding service (and, being local, runs where the network is)."""
        return f"call the embedding service (retrieval: {art.spec.retriever}): run them where the network is"
