"""The registry of job kinds: every built-in kind registered, looked up by name.

Importing this module imports :mod:`pd.pipeline.kinds` (each kind registers itself); every
reader of kind facts (the plan, the Snakefile's rules, the job runner, resources, the site
file's checks) asks here.
"""

from __future__ import annotations

from typing import Any, Mapping

from pd.pipeline import kinds as _builtin  # noqa: F401  (registers the built-in kinds)
from pd.pipeline.kind import REGISTRY, JobKind


def get_kind(name: str) -> JobKind:
    """The job kind called ``name``.

    Raises:
        KeyError: no such kind (the message names the known ones).
    """
    return REGISTRY.get_entry(name)


def kind_names() -> tuple[str, ...]:
    """Every registered kind's name, built-in ones in a cell's chain order, then any added later."""
    return tuple(REGISTRY)


def all_kinds() -> tuple[JobKind, ...]:
    """Every registered kind, in :func:`kind_names` order."""
    return tuple(REGISTRY.values())


def spec_from_dict(kind: str, d: Mapping[str, Any]):
    """The typed specification of a job of ``kind`` from its dictionary form.

    Raises:
        KeyError: an unknown job kind.
        ValueError: a key that kind does not have.
    """
    return get_kind(kind).spec.from_dict(d)
