"""How axis values are shown: display labels, column headers and the order values appear in.

Tables and figures both read these, so a method or a dataset is called and ordered the same
way everywhere; an experiment's spec (``labels``, ``order``) overrides the built-in ones.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from pd.report.aggregate import TableSpec

# A row of the paper's tables that the harness runs as pd_reg with its XL settings (paper_values.yaml): a
# label and a place in the order beside the registered methods', which come from pd.train.methods.
PAPER_ROWS = {"pd_reg_xl": ("Prompt Distillation XL + Tülu 3", 25)}

DEFAULT_LABELS: dict[str, dict[str, str]] = {
    "dataset": {
        "amazon": "Amazon", "new_wiki": "New Wiki", "nyt": "NYT", "reddit": "Reddit",
        "squadshifts-amazon": "Amazon", "squadshifts-new_wiki": "New Wiki", "squadshifts-nyt": "NYT",
        "squadshifts-reddit": "Reddit", "hotpotqa": "HotpotQA",
    },
    "retrieval": {"none": "Closed-book", "bm25": "RAG (BM25)", "bm25_paper": "RAG (BM25, paper's tokenisation)",
                  "dense": "RAG (dense embeddings)", "openai": "RAG (OpenAI embeddings)",
                  "oracle": "RAG (oracle passage)"},
}
DEFAULT_ORDER: dict[str, list[Any]] = {
    "retrieval": ["none", "bm25", "bm25_paper", "dense", "openai", "oracle"],
    "dataset": ["squadshifts-amazon", "amazon", "squadshifts-new_wiki", "new_wiki", "squadshifts-nyt", "nyt",
                "squadshifts-reddit", "reddit", "hotpotqa"],
}
AXIS_HEADERS = {"n_questions": "Questions", "snapshot": "Time (s)", "snapshot_s": "Time (s)", "kd_temperature": "T",
                "answer_temperature": "Answer temperature", "rank": "LoRA rank", "qgen": "Question generator"}
# What an unset (null) axis value means, per axis; others show "default".
NONE_LABELS = {"snapshot": "end of training", "expert": "self", "teacher": "self", "qgen": "self"}


def label_for(spec: TableSpec, axis: str, value: Any) -> str:
    """Display label of an axis value: the spec's labels, the built-in ones, else the value."""
    if value is None:
        return str(spec.labels.get(axis, {}).get("null", NONE_LABELS.get(axis, "default")))
    for table in (spec.labels.get(axis, {}), _builtin_labels(axis)):
        if str(value) in table:
            return str(table[str(value)])
    return str(value)


def _methods() -> dict[str, tuple[str, int]]:
    """Label and order of each registered method (:mod:`pd.train.methods`) and of the paper's extra rows."""
    from pd.train.methods import REGISTRY

    return {name: (m.label, m.order) for name, m in REGISTRY.items()} | PAPER_ROWS


def _builtin_labels(axis: str) -> dict[str, str]:
    if axis == "method":
        return {name: label for name, (label, _) in _methods().items()}
    return DEFAULT_LABELS.get(axis, {})


def _builtin_order(axis: str) -> list[Any]:
    if axis == "method":
        methods = _methods()
        return sorted(methods, key=lambda name: methods[name][1])
    return DEFAULT_ORDER.get(axis, [])


def header_for(axis: str) -> str:
    """Column header of an axis: the built-in one, else the name with spaces, capitalised."""
    return AXIS_HEADERS.get(axis, axis.replace("_", " ").capitalize())


def sort_values(spec: TableSpec, axis: str, values: Sequence[Any]) -> list[Any]:
    """Order axis values: the spec's order, the built-in order, numbers ascending, else appearance."""
    order = [str(v) for v in spec.order.get(axis, [])] or [str(v) for v in _builtin_order(axis)]
    unique = list(dict.fromkeys(values))
    numbers = [v for v in unique if v is not None]
    if not spec.order.get(axis) and numbers and all(is_number(v) for v in numbers):
        return sorted(numbers, key=float) + [None] * (None in unique)  # unset (e.g. final snapshot) last
    pos = {v: i for i, v in enumerate(order)}
    first = {v: i for i, v in enumerate(unique)}
    return sorted(unique, key=lambda v: (pos.get(str(v), len(pos)), first[v]))


def is_number(v: Any) -> bool:
    """True for a finite number or a string that reads as one (not a boolean)."""
    if isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
