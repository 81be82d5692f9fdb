"""From per-sample grade files to accuracy per cell and seed, then per group of seeds.

A *cell record* is one graded run (one seed, one retrieval, one grader). A *group* is
all records that differ only by seed; its accuracy is the mean over seeds with +- 2 SE.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pd.errors import ConfigError, DataError
from pd.io import read_json, read_jsonl
from pd.report.stats import MeanSE, mean_se

SEED_AXIS = "seed"


@dataclass
class CellRecord:
    """One graded run, as the workflow's manifest lists it.

    Keys beyond the contract (the workflow's ``eval`` and ``adapter`` paths) are kept in
    ``extra``. Without ``benchmarks``, the Snakemake benchmark files are found by the
    workflow's convention ``<results>/benchmarks/<path below results, no suffix>.tsv``
    for the grade, eval and adapter paths; the adapter's ``pd_meta.json`` is read into
    ``meta["adapter"]`` when the manifest does not carry it.
    """

    experiment: str
    cell_id: str
    axes: dict[str, Any]
    grader: str
    grades: str
    benchmarks: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dirs: Sequence[str | os.PathLike] = ()) -> "CellRecord":
        missing = [k for k in ("experiment", "cell_id", "axes", "grader", "grades") if k not in d]
        if missing:
            raise DataError(f"manifest cell {d.get('cell_id', '?')!r} lacks {', '.join(missing)}; "
                            "each cell needs experiment, cell_id, axes, grader, grades")
        if not isinstance(d["axes"], Mapping):
            raise DataError(f"manifest cell {d['cell_id']!r}: axes must be a mapping, got {type(d['axes']).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in d.items() if k not in known}

        def resolve(p: str | None) -> str | None:
            if p is None or os.path.isabs(p) or not base_dirs:
                return p
            for base in base_dirs:
                if (Path(base) / p).exists():
                    return str(Path(base) / p)
            for base in base_dirs:  # a file not written yet: the base whose folder for it exists
                if (Path(base) / p).parent.is_dir():
                    return str(Path(base) / p)
            return str(Path(base_dirs[0]) / p)

        for key in ("evaluate", "adapter"):
            if isinstance(extra.get(key), str):
                extra[key] = resolve(extra[key])
        if isinstance(extra.get("judge_calibration"), dict):  # the judge's calibration (pd.report.calibration)
            extra["judge_calibration"] = {**extra["judge_calibration"],
                                          "file": resolve(extra["judge_calibration"].get("file"))}
        if isinstance(extra.get("jobs"), list):  # every artifact behind the cell (see pd.pipeline.plan.Plan.upstream)
            extra["jobs"] = [resolve(str(j)) for j in extra["jobs"]]
        if isinstance(extra.get("job_benchmarks"), dict):  # benchmark file -> job kind, of every timed job behind it
            extra["job_benchmarks"] = {resolve(str(b)): str(k) for b, k in extra["job_benchmarks"].items()}
        rec = cls(
            experiment=str(d["experiment"]), cell_id=str(d["cell_id"]), axes=dict(d["axes"]),
            grader=str(d["grader"]), grades=resolve(str(d["grades"])),
            benchmarks=[resolve(str(b)) for b in d.get("benchmarks") or []], meta=dict(d.get("meta") or {}),
            extra=extra,
        )
        adapter = rec.extra.get("adapter")
        if adapter and "adapter" not in rec.meta and (Path(adapter) / "pd_meta.json").is_file():
            rec.meta["adapter"] = read_json(Path(adapter) / "pd_meta.json")
        return rec

    @property
    def seed(self) -> Any:
        return self.axes.get(SEED_AXIS)

    def short_training(self) -> tuple[int, int] | None:
        """(steps taken, minimum) when the cell's adapter took fewer optimizer steps than its ``training.min_steps``
        (the one its ``pd_meta.json`` records; an adapter trained before it was recorded: the current default);
        None otherwise, and for a cell without an adapter."""
        meta = self.meta.get("adapter") or {}
        steps, minimum = meta.get("steps"), meta.get("min_steps")
        if not isinstance(steps, int):
            return None
        if minimum is None:
            from pd.train.settings import TrainConfig

            minimum = TrainConfig.min_steps
        return (steps, minimum) if steps < minimum else None


@dataclass
class FigureSpec:
    """A line plot of accuracy against one numeric axis, one line per group value."""

    x: str
    group: str = "method"
    logx: bool = False
    title: str | None = None
    xlabel: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FigureSpec":
        return _from_dict(cls, d, "figure")


@dataclass
class TableSpec:
    """How one experiment is laid out: which axes make rows, columns and blocks.

    ``reference`` is the method every other row is tested against (paired tests);
    ``where`` keeps only cells whose axes have these values; ``order`` fixes the order of
    axis values (others follow in order of appearance); ``labels`` renames axis values.
    """

    rows: list[str] = field(default_factory=lambda: ["method"])
    columns: list[str] = field(default_factory=lambda: ["dataset"])
    blocks: str | None = "retrieval"
    grader: str | None = None
    paper_table: str | None = None
    title: str | None = None
    reference: str = "pd"
    method_axis: str = "method"
    alpha: float = 0.05
    where: dict[str, Any] = field(default_factory=dict)
    order: dict[str, list[Any]] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    figures: list[FigureSpec] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TableSpec":
        d = dict(d)
        figure_x = d.pop("figure_x", None)  # the config schema's short form of one figure
        if figure_x:
            d.setdefault("figures", [{"x": figure_x, "logx": figure_x in ("n_questions", "rank")}])
        description = d.pop("description", None)
        if description and not d.get("title"):
            d["title"] = description
        for key in ("rows", "columns"):
            if isinstance(d.get(key), str):
                d[key] = [d[key]]
        figures = [f if isinstance(f, FigureSpec) else FigureSpec.from_dict(f) for f in d.pop("figures", []) or []]
        spec = _from_dict(cls, d, "table spec")
        spec.figures = figures
        return spec


def _from_dict(cls, d: Mapping[str, Any], what: str):
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{what}: unknown keys {unknown}; allowed: {', '.join(names)}")
    return cls(**dict(d))


@dataclass
class Manifest:
    """The cells and, per experiment, the table spec (a default spec where none is given)."""

    cells: list[CellRecord]
    experiments: dict[str, TableSpec]


def load_manifest(paths: str | os.PathLike | Sequence[str | os.PathLike], specs: Mapping[str, Any] | None = None,
                  root: str | os.PathLike | None = None) -> Manifest:
    """Read one or more manifests (files, or folders of ``*.json`` manifests).

    A manifest is a list of cells, ``{"cells": [...], "experiments": {name: spec}}``, or
    the workflow's per-experiment form ``{"experiment", "table", "paper_table",
    "description", "records": [...]}``. Relative paths in cells are taken from ``root``
    (default: the current folder, where Snakemake runs) or else the manifest's folder.
    ``specs`` (from config) override the manifests' own experiment specs.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.glob("*.json")))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"report manifest {p} does not exist; run the workflow first (it writes it)")
    if not files:
        raise DataError(f"no manifest files in {', '.join(map(str, paths))}")
    cells: list[CellRecord] = []
    spec_dicts: dict[str, Any] = {}
    for path in files:
        raw = read_json(path)
        if isinstance(raw, list):
            raw = {"cells": raw}
        if isinstance(raw, dict) and isinstance(raw.get("records"), list) and "experiment" in raw:
            spec = dict(raw.get("table") or {})
            for key, target in (("paper_table", "paper_table"), ("description", "title")):
                if raw.get(key) and target not in spec:
                    spec[target] = raw[key]
            spec_dicts[str(raw["experiment"])] = spec
            raw = {"cells": raw["records"]}
        if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
            raise DataError(f"{path}: a manifest is a list of cells, an object with a 'cells' list, "
                            "or an experiment object with 'records'")
        bases = [root if root is not None else Path.cwd(), path.parent]
        cells.extend(CellRecord.from_dict(c, base_dirs=bases) for c in raw["cells"])
        spec_dicts.update(raw.get("experiments") or {})
    spec_dicts.update(specs or {})
    experiments: dict[str, TableSpec] = {}
    for cell in cells:
        if cell.experiment not in experiments:
            s = spec_dicts.get(cell.experiment, {})
            experiments[cell.experiment] = s if isinstance(s, TableSpec) else TableSpec.from_dict(s)
    return Manifest(cells, experiments)


# --------------------------------------------------------------------------- grades


@dataclass
class Grades:
    """One grade file as arrays aligned by item; invalid grades count as not correct."""

    path: str
    item_ids: list[str]
    correct: np.ndarray  # float64 0/1, invalid -> 0
    valid: np.ndarray  # bool
    rows: list[dict]

    @property
    def n(self) -> int:
        return len(self.item_ids)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.n else float("nan")

    @property
    def n_invalid(self) -> int:
        return int((~self.valid).sum())

    @property
    def invalid_rate(self) -> float:
        return self.n_invalid / self.n if self.n else 0.0


def load_grades(path: str | os.PathLike) -> Grades:
    """Read and check a per-sample grade file (pd.evaluation.grade's rows)."""
    rows = read_jsonl(path)
    ids: list[str] = []
    correct, valid = [], []
    seen: set[str] = set()
    for i, r in enumerate(rows, 1):
        where = f"{path}:{i}"
        for key in ("item_id", "correct", "valid"):
            if key not in r:
                raise DataError(f"{where}: grade row lacks {key!r}; rows need item_id, grader, correct, valid")
        if not isinstance(r["valid"], bool):
            raise DataError(f"{where}: 'valid' must be true or false, got {r['valid']!r}")
        if r["valid"] and not isinstance(r["correct"], bool):
            raise DataError(f"{where}: a valid grade needs 'correct' true or false, got {r['correct']!r}")
        if not r["valid"] and r["correct"] is not None:
            raise DataError(f"{where}: an invalid grade must have 'correct': null, got {r['correct']!r}")
        item = str(r["item_id"])
        if item in seen:
            raise DataError(f"{where}: item {item!r} is graded twice in one file")
        seen.add(item)
        ids.append(item)
        valid.append(r["valid"])
        correct.append(1.0 if r["correct"] is True else 0.0)
    return Grades(str(path), ids, np.asarray(correct, dtype=np.float64), np.asarray(valid, dtype=bool), rows)


# --------------------------------------------------------------------------- groups


def group_key(axes: Mapping[str, Any]) -> tuple:
    """The axes that identify a group: everything but the seed, in a stable order."""
    return tuple(sorted((k, hashable(v)) for k, v in axes.items() if k != SEED_AXIS))


def hashable(v: Any) -> Any:
    """An axis value made hashable: lists become tuples, dicts sorted tuples of pairs (recursively)."""
    if isinstance(v, list):
        return tuple(hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, hashable(x)) for k, x in v.items()))
    return v


@dataclass
class Group:
    """All seeds of one configuration, with their grades (None where a file is missing)."""

    axes: dict[str, Any]  # without the seed
    records: list[CellRecord]
    grades: list[Grades | None]

    @property
    def present(self) -> list[tuple[CellRecord, Grades]]:
        return [(r, g) for r, g in zip(self.records, self.grades) if g is not None and g.n > 0]

    @property
    def missing(self) -> list[CellRecord]:
        return [r for r, g in zip(self.records, self.grades) if g is None or g.n == 0]

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r, _ in self.present]

    @property
    def accuracies(self) -> list[float]:
        return [g.accuracy for _, g in self.present]

    def summary(self) -> MeanSE | None:
        """Mean +- SE over seeds (binomial over questions with one seed); None if nothing graded."""
        present = self.present
        if not present:
            return None
        return mean_se([g.accuracy for _, g in present], [g.n for _, g in present])

    @property
    def invalid_rate(self) -> float:
        present = self.present
        n = sum(g.n for _, g in present)
        return sum(g.n_invalid for _, g in present) / n if n else 0.0

    @property
    def n_invalid(self) -> int:
        return sum(g.n_invalid for _, g in self.present)

    @property
    def n_graded(self) -> int:
        return sum(g.n for _, g in self.present)

    def per_seed(self) -> dict[Any, float]:
        return {r.seed: g.accuracy for r, g in self.present}

    @property
    def short_training(self) -> bool:
        """Some seed's adapter took fewer optimizer steps than its minimum (:meth:`CellRecord.short_training`)."""
        return any(r.short_training() is not None for r, _ in self.present)

    def per_seed_items(self) -> dict[Any, dict[str, float]]:
        """Seed -> question id -> correct (1/0; an invalid grade is 0), for the seeds with grades."""
        return {r.seed: dict(zip(g.item_ids, map(float, g.correct))) for r, g in self.present}

    def passages(self) -> dict[str, str]:
        """Question id -> its passage, from the grade rows' ``passage`` (rows written before it: none).

        The passage is the item's first gold passage (:func:`pd.evaluation.grade.item_passage`),
        the cluster the report's bootstrap resamples questions within.
        """
        out: dict[str, str] = {}
        for _, g in self.present:
            for item, row in zip(g.item_ids, g.rows):
                if row.get("passage") is not None:
                    out.setdefault(item, str(row["passage"]))
        return out


def build_groups(records: Iterable[CellRecord], *, cache: dict[str, Grades | None] | None = None) -> list[Group]:
    """Group records by their axes without the seed, reading each grade file once.

    A missing grade file is kept as None (the cell renders as missing and is listed);
    two records with the same axes and seed are an error.
    """
    cache = {} if cache is None else cache
    groups: dict[tuple, Group] = {}
    seen: dict[tuple, str] = {}
    for rec in records:
        full = (group_key(rec.axes), hashable(rec.seed), rec.grader)
        if full in seen:
            raise DataError(f"cells {seen[full]!r} and {rec.cell_id!r} have the same axes, seed and grader")
        seen[full] = rec.cell_id
        if rec.grades not in cache:
            cache[rec.grades] = load_grades(rec.grades) if Path(rec.grades).is_file() else None
        key = (group_key(rec.axes), rec.grader)
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group({k: v for k, v in rec.axes.items() if k != SEED_AXIS}, [], [])
        g.records.append(rec)
        g.grades.append(cache[rec.grades])
    return list(groups.values())
