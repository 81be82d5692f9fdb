"""``render_reports``: every table, figure and the HTML page from existing results.

Reads only the manifest and the files it names (grades, benchmarks); never loads a
model, so ``pd report`` can re-render after any change to templates or specs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pd.io import write_json, write_text
from pd.report.aggregate import Grades, Group, Manifest, TableSpec, build_groups, hashable, load_manifest
from pd.report.base_answered import DEFAULT_RULE, base_answered_view, check_rule
from pd.report.calibration import calibration_notes
from pd.report.evidence import Evidence, load_train_log
from pd.report.figures import FIGURE6_AXES, X_LABELS, line_plot, panel_plot, training_grid
from pd.report.html import ExperimentPage, group_details, render_html, write_snakemake_captions
from pd.report.labels import AXIS_HEADERS, header_for, label_for
from pd.report.leakage import DEFAULT_MEASURE, DEFAULT_THRESHOLD, check_setting, leakage_view
from pd.report.rows_export import export_rows
from pd.report.runinfo import machine_description, run_info
from pd.report.sections import MetricSection, metric_sections
from pd.report.tables import Comparison, Table, build_table, render_latex, render_markdown


@dataclass
class ReportResult:
    """What was written, for the workflow and the CLI to list or mark for ``snakemake --report``."""

    index: Path
    tables: dict[str, dict[str, Path]] = field(default_factory=dict)  # experiment -> {"md", "tex", "json"}
    figures: dict[str, list[Path]] = field(default_factory=dict)  # experiment -> png/pdf paths
    captions: dict[str, str] = field(default_factory=dict)  # file -> .rst caption
    missing: dict[str, list[str]] = field(default_factory=dict)  # experiment -> missing cells


def summary_rows(table: Table) -> list[dict[str, Any]]:
    """The table's numbers in machine-readable form (fractions, not percent)."""
    rows = []
    for block in table.blocks:
        for row in block.rows:
            for (ck, clabel), cell in zip(table.columns, row.cells):
                s = cell.summary
                g = cell.group
                rows.append({
                    "block": block.key, "row": list(row.key), "column": list(ck),
                    "axes": g.axes if g is not None else None,
                    "cell_ids": [r.cell_id for r in g.records] if g is not None else [],
                    "mean": s.mean if s else None, "se": s.se if s else None, "se_kind": s.kind if s else None,
                    "n_seeds": s.n_seeds if s else 0,
                    "per_seed": {str(k): v for k, v in g.per_seed().items()} if g else {},
                    "invalid_rate": g.invalid_rate if g is not None else None,
                    "paper": cell.paper.value if cell.paper else None,
                    **comparison_fields(cell.comparison),
                })
    return rows


def comparison_fields(c: Comparison | None) -> dict[str, Any]:
    """A cell's paired tests in machine-readable form (None throughout where it has none).

    Args:
        c: the cell's comparison with the reference method.

    Returns:
        ``p_bootstrap`` and ``p_t`` (raw), ``p_holm_bootstrap`` and ``p_holm_t`` (over the page's
        family), the marks ``significant_bootstrap`` and ``significant_t``, and the bootstrap's
        interval and sample (``ci_low``, ``ci_high``, ``passages``, ``questions``).
    """
    b = c.bootstrap if c is not None else None
    return {"p_bootstrap": b.p if b else None, "p_t": c.t.p if c is not None and c.t else None,
            "p_holm_bootstrap": c.holm_bootstrap if c is not None else None,
            "p_holm_t": c.holm_t if c is not None else None,
            "significant_bootstrap": c.significant_bootstrap if c is not None else None,
            "significant_t": c.significant_t if c is not None else None,
            "ci_low": b.ci_low if b else None, "ci_high": b.ci_high if b else None,
            "passages": b.n_clusters if b else None, "questions": b.n_questions if b else None}


def render_reports(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike = "reports",
    *,
    specs: Mapping[str, Any] | None = None,
    index_name: str = "index.html",
    title: str = "Prompt distillation: results",
    n_resamples: int = 10_000,
    bootstrap_seed: int = 0,
    paper_values_path: str | None = None,
    figure6: bool = True,
    base_rule: str = DEFAULT_RULE,
    leakage_threshold: float = DEFAULT_THRESHOLD,
    leakage_measure: str = DEFAULT_MEASURE,
) -> ReportResult:
    """Render ``out_dir/<experiment>/table.{md,tex,json}``, figures, captions and the HTML page.

    ``specs`` maps experiment names to table specs (dicts or ``TableSpec``) and overrides
    those in the manifest. With ``figure6``, experiments whose figures run along the
    number of questions, training time and LoRA rank are also drawn side by side.

    Beneath each table, two views that change none of its numbers (``views`` in ``summary.json``):
    the questions the base model already answers and accuracy on the rest
    (:mod:`pd.report.base_answered`, ``base_rule``: ``any`` or ``majority`` of the base runs), and
    the leakage audit (:mod:`pd.report.leakage`: a test question whose nearest generated training
    question scores at or above ``leakage_threshold`` by ``leakage_measure`` is flagged).

    Raises:
        ConfigError: an unknown ``base_rule`` or ``leakage_measure``, a threshold outside (0, 1].
    """
    check_rule(base_rule)
    check_setting(leakage_threshold, leakage_measure)
    out_dir = Path(out_dir)
    manifest: Manifest = load_manifest(manifest_path, specs)
    cache: dict[str, Grades | None] = {}
    result = ReportResult(index=out_dir / index_name)
    pages: list[ExperimentPage] = []
    fig6_panels: dict[str, dict] = {}
    machine = machine_description()
    evidence = Evidence()
    for name, spec in manifest.experiments.items():
        exp_dir = out_dir / _safe(name)
        records = [c for c in manifest.cells if c.experiment == name]
        groups = build_groups(records, cache=cache)
        table = build_table(name, spec, groups, n_resamples=n_resamples, seed=bootstrap_seed,
                            paper_values_path=paper_values_path, display_root=str(out_dir))
        table.sections = metric_sections(table, evidence, n_resamples=n_resamples, seed=bootstrap_seed)
        table.views = [base_answered_view(table, groups, base_rule),
                       leakage_view(table, records, threshold=leakage_threshold, measure=leakage_measure,
                                    display_root=str(out_dir))]
        table.judge_calibration = calibration_notes(records, table.grader)
        info = run_info(records, name, machine)
        table.run = info.lines()
        paths = {"md": exp_dir / "table.md", "tex": exp_dir / "table.tex", "json": exp_dir / "summary.json"}
        write_text(paths["md"], render_markdown(table))
        write_text(paths["tex"], render_latex(table))
        paths["paper"] = exp_dir / "table.paper.tex"
        write_text(paths["paper"], render_latex(table, paper=True))
        write_json(paths["json"], {"experiment": name, "grader": table.grader, "rows": summary_rows(table),
                                   "sections": {sec.name: section_rows(sec) for sec in table.sections},
                                   "views": {v.name: v.data for v in table.views},
                                   "missing": table.missing, "run": dataclasses.asdict(info),
                                   "judge_calibration": [dataclasses.asdict(n) for n in table.judge_calibration]})
        paths.update(export_rows(records, exp_dir, grades=cache))
        result.tables[name] = paths
        result.missing[name] = list(table.missing)
        page = ExperimentPage(name, table, files={
            "Markdown": _rel(paths["md"], out_dir), "LaTeX": _rel(paths["tex"], out_dir),
            "LaTeX for a paper": _rel(paths["paper"], out_dir),
            "JSON": _rel(paths["json"], out_dir), "per-answer rows (JSONL, gzip)": _rel(paths["rows"], out_dir),
            "training logs (JSONL, gzip)": _rel(paths["training"], out_dir)})
        graded = [g for g in groups if g.records[0].grader == table.grader]
        for fig in spec.figures:
            stem = exp_dir / f"figure_{_safe(fig.x)}"
            caption = fig.title or f"{table.title}: accuracy against {X_LABELS.get(fig.x, fig.x)}"
            files = line_plot(graded, fig.x, stem, group_axis=fig.group, spec=spec, logx=fig.logx,
                              title=fig.title, xlabel=fig.xlabel, loglik=evidence.gold_summary)
            result.figures.setdefault(name, []).extend(files)
            page.figures.append({"png": _rel(files[0], out_dir), "pdf": _rel(files[1], out_dir), "caption": caption})
            if fig.x in FIGURE6_AXES and fig.x not in fig6_panels:
                fig6_panels[fig.x] = {"groups": graded, "x": fig.x, "group_axis": fig.group, "spec": spec,
                                      "logx": fig.logx, "title": X_LABELS[fig.x]}
        page.details = group_details(groups, out_dir)
        page.training = _training_figures(graded, spec, evidence, exp_dir, out_dir)
        pages.append(page)
    extra = []
    if figure6 and len(fig6_panels) >= 2:
        panels = [fig6_panels[x] for x in FIGURE6_AXES if x in fig6_panels]
        files = panel_plot(panels, out_dir / "figure6")
        result.figures["figure6"] = files
        extra.append({"png": _rel(files[0], out_dir), "pdf": _rel(files[1], out_dir),
                      "caption": "Accuracy against " + ", ".join(X_LABELS[p["x"]] for p in panels)
                                 + " (as the paper's Figure 6), by method."})
    result.captions = write_snakemake_captions(out_dir, pages, extra)
    render_html(pages, result.index, title=title, extra_figures=extra)
    return result


def section_rows(section: MetricSection) -> list[dict[str, Any]]:
    """A section's numbers in machine-readable form (nats per token, or fractions closed and KL in nats)."""
    rows = []
    for block in section.blocks:
        for row in block.rows:
            for cell in row.cells:
                s, c = cell.summary, cell.comparison
                rows.append({"block": block.label, "row": list(row.key),
                             "axes": cell.group.axes if cell.group is not None else None,
                             "mean": s.mean if s else None, "se": s.se if s else None, "se_kind": s.kind if s else None,
                             "n_seeds": s.n_seeds if s else 0, "before": cell.before, "after": cell.after,
                             **comparison_fields(c)})
    return rows


def _training_figures(groups: list[Group], spec: TableSpec, evidence: Evidence, exp_dir: Path,
                      out_dir: Path) -> list[dict]:
    """The experiment's training curves: one facet grid (:func:`pd.report.figures.training_grid`).

    Configurations that share their adapters (the same adapters evaluated closed-book and with
    retrieval) are drawn once; a panel is titled by the axes that vary between the trained
    configurations, and the axes that do not are said once in the caption. Returns the page's
    figure entries (none when nothing was trained).
    """
    trained, drawn = [], set()
    for g in groups:
        adapters = tuple(r.extra.get("adapter") for r in g.records if r.extra.get("adapter"))
        if adapters and adapters not in drawn:
            drawn.add(adapters)
            trained.append(g)
    method = spec.method_axis
    skip = {method, "seed", "retrieval", spec.blocks}
    names = sorted({k for g in trained for k in g.axes} - skip)

    def values(k: str, gs: list[Group]) -> set:
        return {hashable(g.axes.get(k)) for g in gs}

    fixed = [k for k in names if len(values(k, trained)) == 1 and trained[0].axes.get(k) is not None]
    rows = {g.axes.get(method) for g in trained}
    # a panel's title: the axes that vary among the configurations of its method (a temperature only PD has
    # is the method's, not a panel's)
    varying = [k for k in names if any(len(values(k, [g for g in trained if g.axes.get(method) == m])) > 1
                                       for m in rows)]
    panels, kl = [], []
    for g in trained:
        runs = [(f"seed {r.seed}", load_train_log(r.extra.get("adapter"))) for r in g.records]
        title = " · ".join(f"{header_for(k)} {label_for(spec, k, g.axes.get(k))}" if k in AXIS_HEADERS
                           else label_for(spec, k, g.axes.get(k)) for k in varying)
        row = label_for(spec, method, g.axes.get(method))
        panels.append((row, title, runs))
        seeds = [f"seed {s}: {k.before:.3f} → {k.after:.3f} ({100 * k.closed:.1f}% closed)"
                 for s, k in evidence.kl_per_seed(g).items()]
        if seeds:
            kl.append(f"{row}, {title}: " + "; ".join(seeds))
    if not any(rows for _, _, runs in panels for _, rows in runs):
        return []
    files = training_grid(panels, exp_dir / "training")
    same = "; ".join(f"{header_for(k)}: {label_for(spec, k, trained[0].axes.get(k))}" for k in fixed)
    caption = ("Training loss per optimizer step, one line per seed; a row per method, sharing its axes"
               + (f"; panels: {', '.join(header_for(k) for k in varying)}" if varying else "")
               + (f". In every panel: {same}" if same else "") + ". Held-out KL before → after: "
               + (" | ".join(kl) if kl else "not measured") + ".")
    return [{"png": _rel(files[0], out_dir), "pdf": _rel(files[1], out_dir), "caption": caption, "wide": True}]


def _rel(path: Path, root: Path) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))
