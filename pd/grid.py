"""An experiment's grid: its cells as axis values, with defaults resolved.

:func:`expand_grid` is what :mod:`pd.pipeline.plan` builds artifacts from; it resolves the axes
each method uses from the config (the expert's temperature, the distillation
temperature, the number of questions, the LoRA rank) and clears the ones it does not.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

from pd import config as pdc
from pd.errors import ConfigError
from pd.train.methods.registry import distilling_methods, get_method

AXES = ("model", "method", "dataset", "seed", "retrieval", "expert", "teacher", "qgen", "answer_temperature",
        "kd_temperature", "n_questions", "rank", "snapshot", "subset")


@dataclass(frozen=True)
class GridCell:
    """One point of an experiment's grid: a value per axis (:data:`AXES`), defaults resolved, the axes its
    method does not use None. The job kinds read it (``cell.method``, ``cell.n_questions``, ...)."""

    model: str
    method: str
    dataset: str
    seed: int
    retrieval: str
    expert: str | None
    teacher: str | None
    qgen: str | None
    answer_temperature: float | None
    kd_temperature: float | None
    n_questions: int | None
    rank: int | None
    snapshot: float | None
    subset: str | None

    def axes(self) -> dict[str, Any]:
        """The cell as an axis -> value mapping (what manifests record and reports group by)."""
        return asdict(self)


if tuple(f for f in GridCell.__dataclass_fields__) != AXES:
    raise RuntimeError("GridCell's fields must be the grid's AXES, in order")


def format_value(x: Any) -> str:
    """A number as it appears in paths and cell ids (floats in %g)."""
    return f"{x:g}" if isinstance(x, float) else str(x)


def generation_settings(cfg: dict, experiment: str | None) -> dict:
    """The generation settings an experiment's cells use: the top level, then its overrides."""
    base = cfg["generation"]
    over = cfg["experiments"][experiment].get("generation", {}) if experiment else {}
    return pdc.deep_merge(base, over)


def expand_grid(cfg: dict, experiment: str) -> list[GridCell]:
    """The experiment's cells, with defaults resolved and irrelevant axes cleared.

    Axes a method does not use (a base model has no teacher; SFT has no distillation
    temperature) are set to None, so cells that differ only there collapse into one.
    """
    qcfg = generation_settings(cfg, experiment)["questions"]
    seen, cells = set(), []
    points = (v for g in pdc.grids(cfg["experiments"][experiment]) for v in itertools.product(*(g[a] for a in AXES)))
    for values in points:
        c = dict(zip(AXES, values))
        m = c["method"]
        method = get_method(m)
        train = pdc.training_settings(cfg, m, c["model"], experiment)
        for axis in ("expert", "teacher", "qgen"):
            if c[axis] == "self":
                c[axis] = c["model"]
        if c["answer_temperature"] is None:
            c["answer_temperature"] = pdc.answer_temperature(cfg, m)
        if c["kd_temperature"] is None:
            c["kd_temperature"] = train["kd_temperature"]
        if c["n_questions"] is None:
            c["n_questions"] = qcfg["per_item"]
        if c["rank"] is None:
            c["rank"] = train["rank"]
        if not method.trains:  # the base model: no training axis applies
            for axis in AXES[5:]:
                c[axis] = None
        else:
            if not method.distils:  # no teacher, no distillation temperature
                c["teacher"] = c["kd_temperature"] = None
                if c["subset"] != "all":
                    raise ConfigError(f"experiments.{experiment}.grid.subset: quintile subsets need a distilling "
                                      f"method ({', '.join(distilling_methods())}), not {m!r}")
            if method.answers is None:  # trains on the passages: no questions, no expert answers
                c["expert"] = c["qgen"] = c["answer_temperature"] = c["n_questions"] = None
        key = tuple(sorted((k, str(v)) for k, v in c.items()))
        if key not in seen:
            seen.add(key)
            cells.append(GridCell(**c))
    return cells
