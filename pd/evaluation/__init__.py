"""Evaluation: retrieval (BM25, dense embeddings, the oracle), answering the test questions closed-book or
with RAG (:mod:`pd.evaluation.evaluate`), the gold answer's log-likelihood, grading (substring match and an
LLM judge) and the MMLU-Pro forgetting check."""
