"""Evaluation results in experiment trackers: ``pd report --log-to tensorboard|mlflow|wandb``.

After ``pd report`` has rendered its folder, each rendered experiment becomes ONE run in each
tracker asked for (:func:`log_runs`), holding what the report shows (:func:`experiment_runs`):

* **summary metrics**, one per table cell, named by the cell's block, row and column values
  (``retrieval:bm25/method:pd/dataset:demo-nyt``): ``accuracy/<grader>/<cell>`` for every
  grader that graded the experiment (the page shows one of them: tag ``pd.grader``) and
  ``accuracy_2se/<grader>/<cell>``, the ± the tables show (two standard errors); for the page's
  grader ``gold_logprob/<cell>`` and ``gold_logprob_2se/<cell>``, and ``kl_closed/<cell>``,
  ``kl_closed_2se/<cell>``, ``kl_before/<cell>``, ``kl_after/<cell>`` (without the block: the
  report shows the held-out KL once per row and column). A ``_2se`` is left out where the
  report shows no ±. The numbers come from the report's own aggregation
  (:meth:`pd.report.aggregate.Group.summary`, :class:`pd.report.evidence.Evidence`), cell by
  cell as the tables lay them out, so they equal ``summary.json``'s;
* **tables**: ``cells`` (one row per cell and grader: its axes and the numbers above) and
  ``rows`` (every graded answer, the rows of ``rows.jsonl.gz``, with the axes as columns);
* **the report**: the experiment's folder and the report's top-level files (``index.html``,
  Figure 6) as an artifact under ``report/``;
* **tags**: ``pd.experiment``, ``pd.grader``, the table layout, every axis's values
  (``axis.model``, ``axis.method``, ...) and the config's identity (:func:`config_identity`).

Where each tracker writes follows its own conventions:

* TensorBoard: ``<log_dir>/<experiment>/<UTC time>/`` (``log_dir`` default ``runs``, PyTorch's
  and TensorBoard's usual folder): the event file (scalars at step 0, the tables as Markdown
  text, the rows capped at :data:`ROWS_IN_TEXT`) and a copy of the report files in ``report/``;
* MLflow: ``MLFLOW_TRACKING_URI`` (unset: MLflow's default, ``sqlite:///mlflow.db`` with
  artifacts in ``./mlruns`` from MLflow 3, which needs ``alembic``; ``./mlruns`` before); the
  MLflow experiment is ``MLFLOW_EXPERIMENT_NAME`` or else the pd experiment's name, the run is
  named after the pd experiment; tables with ``log_table`` (``cells.json``, ``rows.json``);
* Weights & Biases: project ``WANDB_PROJECT`` (default :data:`WANDB_PROJECT`), group and run
  name the experiment, job type ``report``; ``WANDB_MODE=offline`` writes the run under
  ``WANDB_DIR`` (default ``./wandb``) for a later ``wandb sync``; tables as ``wandb.Table``, the
  report as an artifact of type ``report``.

Each tracker's library is imported only when it is asked for; a missing one is a
:class:`pd.errors.ConfigError` naming the package to install (all of them:
``pip install -e '.[trackers]'``). Every call makes a new run: re-rendering and logging
again adds a run beside the earlier one, as each tracker does for a repeated experiment.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from pd.errors import ConfigError
from pd.io import atomic_path, stable_hash
from pd.report.aggregate import Group, TableSpec, build_groups, load_manifest
from pd.report.evidence import Evidence
from pd.report.labels import sort_values
from pd.report.layout import matches_where
from pd.report.rows_export import read_exported
from pd.report.tables import markdown_escape, select_grader

if TYPE_CHECKING:  # the renderer (matplotlib, jinja) is the CLI's to import
    from pd.report.render import ReportResult

# tracker -> (the module its adapter imports, the pip package that provides it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("torch.utils.tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "wandb": ("wandb", "wandb"),
}
DEFAULT_LOG_DIR = "runs"
WANDB_PROJECT = "pd"
ROWS_IN_TEXT = 500  # rows shown in TensorBoard's text tab (all of them are in report/<experiment>/rows.jsonl.gz)
_METRIC_CHARS = re.compile(r"[^\w.\- :]")  # what MLflow allows in a metric name (and so the others)


# --------------------------------------------------------------------------- choosing trackers


def parse_trackers(values: Sequence[str] | None) -> list[str]:
    """The trackers named by ``--log-to`` (repeated, or comma lists), each once, in order.

    Args:
        values: the option's values, e.g. ``["mlflow,tensorboard", "wandb"]``.

    Returns:
        The tracker names (empty when none is given).

    Raises:
        ConfigError: a name that is not one of :data:`TRACKERS`.
    """
    names: list[str] = []
    for value in values or []:
        for name in (n.strip().lower() for n in value.split(",")):
            if not name:
                continue
            if name not in TRACKERS:
                raise ConfigError(f"--log-to: unknown tracker {name!r}; allowed: {', '.join(TRACKERS)}")
            if name not in names:
                names.append(name)
    return names


def import_tracker(name: str):
    """Import the library behind a tracker (its adapter's module).

    Args:
        name: a key of :data:`TRACKERS`.

    Returns:
        The imported module.

    Raises:
        ConfigError: the library is not installed; the message names the pip package.
    """
    module, package = TRACKERS[name]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"--log-to {name}: {package} is not installed ({err}); run `pip install {package}` "
                          "(every tracker: pip install -e '.[trackers]')") from err


def check_trackers(names: Iterable[str]) -> None:
    """Fail before rendering when a tracker's library is missing (see :func:`import_tracker`).

    Args:
        names: tracker names (:func:`parse_trackers`).

    Raises:
        ConfigError: a tracker whose library is not installed.
    """
    for name in names:
        import_tracker(name)


# --------------------------------------------------------------------------- what a run holds


@dataclass
class ExperimentRun:
    """One experiment's results as every tracker logs them.

    Attributes:
        experiment: the experiment's name (the run's name and group).
        folder: the experiment's report folder's name (inside the report folder).
        grader: the grader the experiment's page shows.
        metrics: metric name -> value (see the module's docstring for the names).
        tags: tag -> text.
        cells: one row per table cell and grader (its axes and numbers).
        rows_file: the experiment's ``rows.jsonl.gz``.
        files: the report files, by their path inside the report folder (posix).
    """

    experiment: str
    folder: str
    grader: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    cells: list[dict[str, Any]] = field(default_factory=list)
    rows_file: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """The per-answer rows of ``rows.jsonl.gz`` made flat for a table (see :func:`flat_row`)."""
        if self.rows_file is None or not Path(self.rows_file).is_file():
            return []
        return [flat_row(r) for r in read_exported(self.rows_file)]


def flat_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A per-answer row as one table row: its axes as columns, lists and mappings as JSON text.

    Args:
        row: a row of ``rows.jsonl.gz`` (:func:`pd.report.rows_export.answer_rows`).

    Returns:
        ``cell_id``, ``grader``, ``item_id``, then each axis (``axis.<name>`` where a row field
        has the axis's name), then the other fields.
    """
    out = {k: _scalar(row.get(k)) for k in ("cell_id", "grader", "item_id") if k in row}
    axes = row.get("axes") or {}
    for axis, value in axes.items():
        out[f"axis.{axis}" if axis in row else axis] = _scalar(value)
    for key, value in row.items():
        if key != "axes" and key not in out:
            out[key] = _scalar(value)
    return out


def _scalar(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def metric_part(value: Any) -> str:
    """A value as part of a metric name.

    Args:
        value: an axis name or value, or a grader.

    Returns:
        Its text with the characters MLflow refuses in a metric name (all but letters, digits,
        ``_ . - :`` and space) replaced by ``_``.
    """
    return _METRIC_CHARS.sub("_", str(value))


def shown_axes(spec: TableSpec, axes: Mapping[str, Any], *, block: bool = True) -> list[tuple[str, Any]]:
    """The axes that place a cell in its table: the block's (where the cell has it), rows', columns'.

    Args:
        spec: the experiment's table layout.
        axes: the cell's axes.
        block: include the block's axis.

    Returns:
        ``(axis, value)`` pairs in table order.
    """
    shown = ([spec.blocks] if block and spec.blocks and spec.blocks in axes else []) + [*spec.rows, *spec.columns]
    return [(a, axes.get(a)) for a in dict.fromkeys(shown)]


def cell_name(spec: TableSpec, axes: Mapping[str, Any], *, block: bool = True) -> str:
    """A table cell's name in metric names: ``retrieval:bm25/method:pd/dataset:demo-nyt``.

    Args:
        spec: the experiment's table layout.
        axes: the cell's axes.
        block: include the block's axis (the held-out KL is shown once per row and column).

    Returns:
        The name.
    """
    return "/".join(f"{metric_part(a)}:{metric_part(v)}" for a, v in shown_axes(spec, axes, block=block))


def config_identity(cfg: Mapping[str, Any], experiment: str, config_file: str | os.PathLike | None = None
                    ) -> dict[str, str]:
    """The tags that identify the settings behind an experiment.

    Args:
        cfg: the loaded config (:func:`pd.config.load_config`).
        experiment: the experiment's name.
        config_file: the config's file, named in a tag.

    Returns:
        ``pd.config_hash``: a hash of the experiment's entry and every top-level setting but
        ``run``, ``experiments`` and the results and reports folders (what other experiments or
        the output location change leaves it alone); ``pd.config``: the file, when given.
    """
    settings = {k: v for k, v in cfg.items() if k not in ("run", "experiments", "results_dir", "reports_dir")}
    out = {"pd.config_hash": stable_hash({"experiment": (cfg.get("experiments") or {}).get(experiment),
                                          "settings": settings})}
    if config_file is not None:
        out["pd.config"] = str(config_file)
    return out


def experiment_runs(manifests: str | os.PathLike | Sequence[str | os.PathLike], result: ReportResult, *,
                    specs: Mapping[str, Any] | None = None,
                    identity: Mapping[str, Mapping[str, str]] | None = None) -> list[ExperimentRun]:
    """What each rendered experiment's run holds: metrics, tables, report files and tags.

    Args:
        manifests: the manifests the report was rendered from (as given to
            :func:`pd.report.render.render_reports`).
        result: what :func:`pd.report.render.render_reports` wrote.
        specs: the table specs given to the render, if any.
        identity: experiment -> extra tags (:func:`config_identity`).

    Returns:
        One run per experiment of ``result``, in its order.
    """
    from pd import __version__

    manifest = load_manifest(manifests, specs)
    out_dir = Path(result.index).parent
    top = {p.name: p for p in sorted(out_dir.iterdir()) if p.is_file()}
    evidence, cache, runs = Evidence(), {}, []
    for name, paths in result.tables.items():
        spec = manifest.experiments[name]
        records = [c for c in manifest.cells if c.experiment == name]
        groups = build_groups(records, cache=cache)
        grader = select_grader(spec, groups, name)
        exp_dir = Path(paths["md"]).parent
        run = ExperimentRun(name, exp_dir.name, grader, rows_file=Path(paths["rows"]) if "rows" in paths else None)
        _add_numbers(run, spec, [g for g in groups if matches_where(g.axes, spec.where)], evidence)
        run.files = {**top, **{f"{exp_dir.name}/{p.relative_to(exp_dir).as_posix()}": p
                               for p in sorted(exp_dir.rglob("*")) if p.is_file()}}
        axes: dict[str, dict[str, None]] = {}
        for rec in records:
            for axis, value in rec.axes.items():
                if value is not None:
                    axes.setdefault(axis, {})[str(value)] = None
        run.tags = {"pd.experiment": name, "pd.title": spec.title or name, "pd.grader": grader,
                    "pd.table": f"rows={','.join(spec.rows)} columns={','.join(spec.columns)} blocks={spec.blocks}",
                    "pd.cells": str(len(records)), "pd.report": str(out_dir), "pd.version": __version__,
                    **{f"axis.{a}": ",".join(values) for a, values in axes.items()},
                    **dict((identity or {}).get(name, {}))}
        runs.append(run)
    return runs


def _add_numbers(run: ExperimentRun, spec: TableSpec, groups: list[Group], evidence: Evidence) -> None:
    """Fill a run's metrics and cells table from the groups the page shows (its ``where``)."""
    order = sort_values(spec, spec.blocks, [g.axes.get(spec.blocks) for g in groups]) if spec.blocks else []
    by_block = sorted(groups, key=lambda g: order.index(g.axes.get(spec.blocks)) if order else 0)
    for g in by_block:  # in the table's block order: the held-out KL comes from the first block that has it
        s = g.summary()
        if s is None:
            continue
        grader, cell = g.records[0].grader, cell_name(spec, g.axes)
        row: dict[str, Any] = {"grader": grader, "cell": cell, **dict(shown_axes(spec, g.axes)), "accuracy": s.mean,
                               "accuracy_2se": _finite(s.half_width), "se_kind": s.kind, "n_seeds": s.n_seeds,
                               "n_graded": g.n_graded, "invalid_rate": g.invalid_rate}
        _put(run.metrics, f"accuracy/{metric_part(grader)}/{cell}", s.mean, s.half_width)
        if grader == run.grader:
            gold = evidence.gold_summary(g)
            if gold is not None:
                row.update(gold_logprob=gold.mean, gold_logprob_2se=_finite(gold.half_width))
                _put(run.metrics, f"gold_logprob/{cell}", gold.mean, gold.half_width)
            kl = evidence.kl_summary(g)
            kl_cell = cell_name(spec, g.axes, block=False)
            if kl is not None and f"kl_closed/{kl_cell}" not in run.metrics:
                closed, before, after = kl
                row.update(kl_closed=closed.mean, kl_closed_2se=_finite(closed.half_width), kl_before=before,
                           kl_after=after)
                _put(run.metrics, f"kl_closed/{kl_cell}", closed.mean, closed.half_width)
                run.metrics[f"kl_before/{kl_cell}"], run.metrics[f"kl_after/{kl_cell}"] = before, after
        run.cells.append(row)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _put(metrics: dict[str, float], name: str, mean: float, two_se: float) -> None:
    """``name`` and, where the ± is a number, ``<first part>_2se/<rest>``."""
    metrics[name] = mean
    if math.isfinite(two_se):
        head, _, rest = name.partition("/")
        metrics[f"{head}_2se/{rest}"] = two_se


# --------------------------------------------------------------------------- the trackers


class Tracker:
    """One tracker's adapter: :meth:`log` writes one run and says where."""

    name = ""

    def log(self, run: ExperimentRun) -> str:
        """Log ``run`` as one run of this tracker.

        Args:
            run: the experiment's results (:func:`experiment_runs`).

        Returns:
            A line saying where the run went (printed by ``pd report``).
        """
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files under ``<log_dir>/<experiment>/<UTC time>/`` and the report files beside them."""

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike = DEFAULT_LOG_DIR) -> None:
        self.log_dir = Path(log_dir)

    def log(self, run: ExperimentRun) -> str:
        writer_module = import_tracker(self.name)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = self.log_dir / run.folder / stamp
        n = 1
        while folder.exists():
            n += 1
            folder = self.log_dir / run.folder / f"{stamp}-{n}"
        writer = writer_module.SummaryWriter(log_dir=str(folder))
        try:
            for key, value in run.metrics.items():
                writer.add_scalar(key, value, 0)
            writer.add_text("tags", markdown_table([{"tag": k, "value": v} for k, v in run.tags.items()]), 0)
            writer.add_text("cells", markdown_table(run.cells), 0)
            rows = run.rows()
            note = (f"\n\nThe first {ROWS_IN_TEXT} of {len(rows)} rows; all of them: "
                    f"report/{run.folder}/{run.rows_file.name}." if len(rows) > ROWS_IN_TEXT else "")
            writer.add_text("rows", markdown_table(rows[:ROWS_IN_TEXT]) + note, 0)
        finally:
            writer.close()
        with atomic_path(folder / "report") as tmp:
            tmp.mkdir()
            for rel, src in run.files.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, tmp / rel)
        return f"tensorboard: {folder}"


class MLflowTracker(Tracker):
    """A run in the MLflow experiment ``MLFLOW_EXPERIMENT_NAME`` (or the pd experiment's name) of
    ``MLFLOW_TRACKING_URI`` (or MLflow's default)."""

    name = "mlflow"

    def log(self, run: ExperimentRun) -> str:
        import pandas as pd

        mlflow = import_tracker(self.name)
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException

        uri = mlflow.get_tracking_uri()
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or run.experiment
        try:
            client = mlflow.MlflowClient()
            found = client.get_experiment_by_name(experiment)
        except (ImportError, MlflowException) as err:
            raise ConfigError(f"--log-to mlflow: cannot open MLflow's tracking store {uri} ({_first_line(err)}); set "
                              "MLFLOW_TRACKING_URI, e.g. sqlite:///mlflow.db (needs `pip install alembic`) or "
                              "file:./mlruns with MLFLOW_ALLOW_FILE_STORE=true") from err
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        run_id = client.create_run(experiment_id, run_name=run.experiment, tags=run.tags).info.run_id
        status = "FAILED"
        try:
            stamp = int(time.time() * 1000)
            metrics = [Metric(k, float(v), stamp, 0) for k, v in run.metrics.items()]
            for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
                client.log_batch(run_id, metrics=metrics[i:i + 1000])
            if run.cells:
                client.log_table(run_id, pd.DataFrame(run.cells), "cells.json")
            rows = run.rows()
            if rows:
                client.log_table(run_id, pd.DataFrame(rows), "rows.json")
            for rel, src in run.files.items():
                parent = Path(rel).parent.as_posix()
                client.log_artifact(run_id, str(src), "report" if parent == "." else f"report/{parent}")
            status = "FINISHED"
        finally:
            client.set_terminated(run_id, status)
        return f"mlflow: run {run_id} in experiment {experiment!r} at {uri}"


class WandbTracker(Tracker):
    """A run in the W&B project ``WANDB_PROJECT`` (or :data:`WANDB_PROJECT`), grouped by experiment."""

    name = "wandb"

    def log(self, run: ExperimentRun) -> str:
        import pandas as pd

        wandb = import_tracker(self.name)
        project = os.environ.get("WANDB_PROJECT") or WANDB_PROJECT
        tags = [f"{k[len('axis.'):]}:{v}"[:64] for k, values in run.tags.items()  # W&B's tags are short
                if k.startswith("axis.") and k != "axis.seed" for v in values.split(",")]
        try:
            wrun = wandb.init(project=project, group=run.experiment, name=run.experiment, job_type="report",
                              tags=tags, config=run.tags, settings=wandb.Settings(console="off", quiet=True))
        except wandb.errors.Error as err:  # no API key, a project one may not write to
            raise ConfigError(f"--log-to wandb: {_first_line(err)}; or set WANDB_MODE=offline to log locally "
                              "(then `wandb sync`)") from err
        code = 1
        try:
            logged: dict[str, Any] = dict(run.metrics)
            if run.cells:
                logged["cells"] = wandb.Table(dataframe=pd.DataFrame(run.cells), allow_mixed_types=True)
            rows = run.rows()
            if rows:
                logged["rows"] = wandb.Table(dataframe=pd.DataFrame(rows), allow_mixed_types=True)
            wrun.log(logged, step=0)
            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", f"report-{run.folder}"), type="report")
            for rel, src in run.files.items():
                artifact.add_file(str(src), name=f"report/{rel}")
            wrun.log_artifact(artifact)
            code = 0
        finally:
            where = wrun.dir if wrun.offline else wrun.url
            wrun.finish(exit_code=code)
        return f"wandb: run {wrun.id} in project {project!r}, group {run.experiment!r}: {where}"


def _first_line(err: Exception) -> str:
    """An error's first sentence on one line (a library's message can run to a paragraph)."""
    return " ".join(str(err).split()).split(". ")[0].rstrip(".")


def make_tracker(name: str, *, log_dir: str | os.PathLike = DEFAULT_LOG_DIR) -> Tracker:
    """The adapter of a tracker.

    Args:
        name: a key of :data:`TRACKERS`.
        log_dir: TensorBoard's folder.

    Returns:
        The adapter.

    Raises:
        ConfigError: an unknown tracker.
    """
    if name == "tensorboard":
        return TensorBoardTracker(log_dir)
    if name == "mlflow":
        return MLflowTracker()
    if name == "wandb":
        return WandbTracker()
    raise ConfigError(f"--log-to: unknown tracker {name!r}; allowed: {', '.join(TRACKERS)}")


def log_runs(runs: Sequence[ExperimentRun], trackers: Sequence[str], *,
             log_dir: str | os.PathLike = DEFAULT_LOG_DIR) -> list[str]:
    """Log every run to every tracker.

    Args:
        runs: the experiments' runs (:func:`experiment_runs`).
        trackers: tracker names (:func:`parse_trackers`).
        log_dir: TensorBoard's folder.

    Returns:
        One line per run and tracker, saying where it went.

    Raises:
        ConfigError: a tracker whose library is missing, or an MLflow store that cannot be opened.
    """
    adapters = [make_tracker(n, log_dir=log_dir) for n in trackers]
    return [adapter.log(run) for run in runs for adapter in adapters]


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a Markdown table (the columns of all rows, in order of appearance; empty: a line saying so).

    Args:
        rows: the rows.

    Returns:
        The table's text.
    """
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def text(v: Any) -> str:
        return "" if v is None else markdown_escape(f"{v:.6g}" if isinstance(v, float) else v).replace("\n", " ")

    lines = ["| " + " | ".join(markdown_escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
