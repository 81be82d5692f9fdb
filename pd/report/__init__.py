"""Reports: accuracy with +- 2 SE, paired tests, paper-style tables, figures, HTML.

Input contract (what the workflow hands over)
---------------------------------------------
Per-sample grade files, JSONL, one per cell x retrieval x grader, written by pd.evaluation.grade::

    {"item_id": str, "grader": "substring" | "judge:<model>", "correct": true | false | null,
     "valid": bool, "reason": str | null, "answer": str, "gold": [str], ...}

``correct`` is null exactly when ``valid`` is false (a judge output that could not be
parsed); such a grade counts as not correct and the invalid rate is reported.

A manifest JSON (``{"cells": [...], "experiments": {...}}`` or just the list of cells);
each cell (``aggregate.CellRecord``)::

    {"experiment": str, "cell_id": str,
     "axes": {"model", "method", "dataset", "retrieval", "seed", ...any other axis},
     "grader": str, "grades": path, "benchmarks": [Snakemake benchmark TSV paths],
     "meta": {resolved config, adapter pd_meta.json content, ...}}

Beside accuracy, the tables show two judge-free blocks (:mod:`pd.report.sections`) read
from the files a cell's optional ``eval`` and ``adapter`` keys name
(:mod:`pd.report.evidence`): the evaluation rows' ``gold_logprob_per_token`` and the
adapter's ``heldout.json`` (KL before and after); the HTML page also plots the adapter's
``train_log.jsonl``. Two views beneath each table (:mod:`pd.report.views`) change none of its
numbers: the questions the base model already answers and accuracy on the rest
(:mod:`pd.report.base_answered`), and the leakage audit of the generated training questions
against the test questions (:mod:`pd.report.leakage`: the evaluation rows' ``question``, the
answers file an adapter's ``pd_meta.json`` names).

Relative paths are relative to the manifest's folder. Each experiment has a table spec
(``aggregate.TableSpec``), e.g. ``{"rows": ["model", "method"], "columns": ["dataset"],
"blocks": "retrieval", "grader": "judge:llama3-8b-instruct", "paper_table": "2",
"figures": [{"x": "n_questions", "logx": true}]}``.

Entry point: ``render_reports(manifest_path, out_dir)`` (``pd report`` calls it).
"""

from importlib import import_module

# Imported on first use (PEP 562), so that a submodule the plan needs (pd.report.layout) does not
# load matplotlib and jinja with the renderer: ``import pd.report.layout`` runs this file first.
_EXPORTS = {"CellRecord": "aggregate", "FigureSpec": "aggregate", "TableSpec": "aggregate",
            "load_manifest": "aggregate", "ReportResult": "render", "render_reports": "render"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pd.report' has no attribute {name!r}")
    return getattr(import_module(f"pd.report.{_EXPORTS[name]}"), name)
