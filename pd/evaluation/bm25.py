"""BM25 scoring with Lucene's idf (the ``bm25`` retriever's scorer; see :mod:`pd.evaluation.retrieve`).

Okapi's idf, ``log((N - n + 0.5) / (n + 0.5))``, is 0 for a word in half the documents
and negative for one in more than half, so in small corpora (2 documents, or 4 where
each query word is in two) every score is 0 and ranking falls back to corpus order.
Lucene's ``log(1 + (N - n + 0.5) / (n + 0.5))`` is positive for every word of the corpus
and nearly equal to Okapi's for rare words, so large-corpus rankings barely move.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np


class LuceneBM25:
    """Okapi BM25 scores with Lucene's idf, which is positive for every word of the corpus.

    score(q, d) = sum over query words w (repeats count) of
    idf(w) * f(w, d) * (k1 + 1) / (f(w, d) + k1 * (1 - b + b * |d| / avgdl)),
    idf(w) = log(1 + (N - n(w) + 0.5) / (n(w) + 0.5)), with N documents, n(w) of them holding w.
    """

    def __init__(self, corpus: list[list[str]], k1: float = 1.5, b: float = 0.75):
        """Index ``corpus`` (one list of words per document; not all empty).

        Args:
            corpus: the documents' words, in corpus order.
            k1: term-frequency saturation.
            b: length normalisation (0: none, 1: full).
        """
        n_docs = len(corpus)
        lengths = np.array([len(d) for d in corpus], dtype=np.float64)
        self.k1 = k1
        self.norm = k1 * (1 - b + b * lengths / lengths.mean())  # [n_docs]
        rows: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for j, doc in enumerate(corpus):
            for word, count in Counter(doc).items():
                rows[word].append((j, count))
        self.postings = {w: (np.array([j for j, _ in r]), np.array([c for _, c in r], dtype=np.float64))
                         for w, r in rows.items()}
        self.idf = {w: math.log(1 + (n_docs - len(r) + 0.5) / (len(r) + 0.5)) for w, r in rows.items()}
        self.n_docs = n_docs

    def get_scores(self, query: list[str]) -> np.ndarray:
        """[n_docs] scores of the query's words (0 for a document holding none of them)."""
        scores = np.zeros(self.n_docs)
        for word in query:
            if word in self.postings:
                docs, tf = self.postings[word]
                scores[docs] += self.idf[word] * tf * (self.k1 + 1) / (tf + self.norm[docs])
        return scores
