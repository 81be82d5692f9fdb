"""Paper-style tables: methods as rows, datasets as columns, a closed-book then a RAG block.

``build_table`` turns an experiment's cell groups into a ``Table`` (numbers, bold best
per column and block, paired tests against the reference method, the paper's value
beside ours); ``render_markdown`` and ``render_latex`` lay it out with the Jinja2
templates in ``pd/report/templates``.

Each comparison has two tests: a bootstrap over seeds, passages and the questions within
them (:func:`pd.report.stats.seed_item_bootstrap`) and, from three shared seeds on, a
paired t-test over seeds. A cell is marked where a test's p, Holm-adjusted over every
test of the page (:func:`adjust_page`), is below the spec's alpha.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jinja2

from pd.errors import ConfigError
from pd.report.aggregate import Group, TableSpec, group_key, hashable
from pd.report.labels import header_for, label_for, sort_values
from pd.report.layout import matches_where, place_groups
from pd.report.paper_values import PaperValue, lookup
from pd.report.stats import (
    MIN_T_SEEDS,
    Bootstrap,
    MeanSE,
    PairedT,
    holm,
    no_spread_notes,
    seed_item_bootstrap,
    seed_t_test,
)

TEMPLATE_DIR = Path(__file__).parent / "templates"
MISSING = "—"

MARK_BINOMIAL = "†"
MARK_BOOT = "*"
MARK_T = "§"
MARK_SHORT = "‡"


def pct(x: float) -> str:
    """An accuracy fraction as a percentage with one decimal."""
    return f"{100.0 * x:.1f}"


def signed(x: float) -> str:
    """A difference in percentage points with an explicit sign (+0.0 for zero)."""
    return f"{x:+.1f}".replace("-0.0", "+0.0")


@dataclass
class Comparison:
    """A baseline cell tested against the reference method's cell (baseline minus reference).

    ``holm_bootstrap`` and ``holm_t`` are the tests' p-values Holm-adjusted over the page's
    family (:func:`adjust_page`); the marks follow them.
    """

    block: str
    row: str
    reference_row: str
    column: str
    diff: float  # fraction
    bootstrap: Bootstrap | None
    t: PairedT | None
    alpha: float = 0.05
    shared_seeds: int = 0
    holm_bootstrap: float | None = None
    holm_t: float | None = None

    @property
    def significant_bootstrap(self) -> bool:
        """The bootstrap's Holm-adjusted p is below alpha."""
        return self.holm_bootstrap is not None and self.holm_bootstrap < self.alpha

    @property
    def significant_t(self) -> bool:
        """The t-test's (three or more shared seeds) Holm-adjusted p is below alpha."""
        return self.holm_t is not None and self.holm_t < self.alpha

    @property
    def seeds(self) -> str:
        """The seeds behind the tests: ``3 paired``, or ``1 vs 3`` where the methods' seeds differ."""
        b = self.bootstrap
        if b is not None and not b.paired_seeds:
            return f"{b.n_seeds[0]} vs {b.n_seeds[1]}"
        return f"{b.n_seeds[0] if b is not None else self.shared_seeds} paired"

    @property
    def sample(self) -> str:
        """The bootstrap's passages / questions (— without one)."""
        b = self.bootstrap
        return f"{b.n_clusters} / {b.n_questions}" if b is not None else MISSING


def adjust_page(comparisons: Sequence[Comparison]) -> int:
    """Holm-adjust every test of a page together: each comparison's bootstrap p and t-test p.

    A page shows the accuracy table and the blocks beneath it; a reader scans all their marks,
    so all their tests are one family. Sets ``holm_bootstrap`` and ``holm_t`` on each comparison.

    Args:
        comparisons: the page's comparisons (accuracy, log-likelihood, KL closure).

    Returns:
        The number of tests in the family (the p-values that exist).
    """
    ps: list[float | None] = []
    for c in comparisons:
        ps += [c.bootstrap.p if c.bootstrap is not None else None, c.t.p if c.t is not None else None]
    adjusted = holm(ps)
    for i, c in enumerate(comparisons):
        c.holm_bootstrap, c.holm_t = adjusted[2 * i], adjusted[2 * i + 1]
    return sum(p is not None and math.isfinite(p) for p in ps)


@dataclass
class TableCell:
    group: Group | None
    summary: MeanSE | None
    paper: PaperValue | None = None
    bold: bool = False
    comparison: Comparison | None = None

    @property
    def missing(self) -> bool:
        return self.summary is None

    @property
    def paper_diff(self) -> float | None:
        """Ours minus the paper's, in percentage points."""
        if self.paper is None or self.summary is None:
            return None
        return 100.0 * self.summary.mean - self.paper.value

    def marks(self) -> str:
        m = ""
        if self.summary is not None and self.summary.kind == "binomial":
            m += MARK_BINOMIAL
        if self.comparison is not None and self.comparison.significant_bootstrap:
            m += MARK_BOOT
        if self.comparison is not None and self.comparison.significant_t:
            m += MARK_T
        if self.group is not None and self.group.short_training:
            m += MARK_SHORT
        return m

    def markdown(self) -> str:
        if self.summary is None:
            text = MISSING
        else:
            value = pct(self.summary.mean)
            marks = self.marks().replace("*", r"\*")
            text = (f"**{value}**" if self.bold else value) + f" ± {pct(self.summary.half_width)}{marks}"
        if self.paper is not None:
            p = f"paper {self.paper.value:.1f}" + ("°" if self.paper.inferred else "")
            if self.paper_diff is not None:
                p += f", Δ {signed(self.paper_diff)}"
            text += f" ({p})"
        return text

    def latex(self) -> str:
        if self.summary is None:
            text = "--"
        else:
            value = pct(self.summary.mean)
            text = ((r"\textbf{" + value + "}" if self.bold else value)
                    + r"\,{\scriptsize$\pm$" + pct(self.summary.half_width) + "}")
            marks = self.marks().replace(MARK_BINOMIAL, r"\dagger").replace(MARK_BOOT, "*").replace(MARK_T, r"\S")
            marks = marks.replace(MARK_SHORT, r"\ddagger")
            if marks:
                text += "$^{" + marks + "}$"
        if self.paper is not None:
            p = f"{self.paper.value:.1f}" + (r"$^{\circ}$" if self.paper.inferred else "")
            if self.paper_diff is not None:
                p += ", " + signed(self.paper_diff).replace("-", "$-$")
            text += r" {\scriptsize(" + p + ")}"
        return text


@dataclass
class TableRow:
    key: tuple
    labels: list[str]
    cells: list[TableCell]


@dataclass
class TableBlock:
    key: Any
    label: str
    rows: list[TableRow]


@dataclass
class Table:
    experiment: str
    title: str
    grader: str
    spec: TableSpec
    row_headers: list[str]
    columns: list[tuple[Any, str]]
    blocks: list[TableBlock]
    comparisons: list[Comparison] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    inferred_paper: list[str] = field(default_factory=list)
    run: list[tuple[str, str, bool]] = field(default_factory=list)  # (label, text, is_code): pd.report.runinfo
    sections: list = field(default_factory=list)  # pd.report.sections.MetricSection: the blocks beneath accuracy
    fixed: list[tuple[str, str]] = field(default_factory=list)  # (header, label) of row axes with one value
    column_n: dict = field(default_factory=dict)  # column key -> " (n=37)": its test questions, for its header
    views: list = field(default_factory=list)  # pd.report.views.View: accuracy on subsets of the questions
    passages: dict[str, str] = field(default_factory=dict)  # question id -> passage (the bootstrap's clusters)
    n_tests: int = 0  # the page's family of tests, Holm-adjusted together (adjust_page)
    judge_calibration: list = field(default_factory=list)  # pd.report.calibration.CalibrationNote, judge grades only

    @property
    def has_binomial(self) -> bool:
        cells = (c for b in self.blocks for r in b.rows for c in r.cells)
        return any(c.summary is not None and c.summary.kind == "binomial" for c in cells)

    @property
    def has_paper(self) -> bool:
        return any(c.paper is not None for b in self.blocks for r in b.rows for c in r.cells)

    def notes(self) -> list[tuple[str, str]]:
        """The footnotes as (marker, plain text); each format renders the marker and escapes the text."""
        n = [("", "; ".join(f"{h}: {v}" for h, v in self.fixed) + " (every row).")] if self.fixed else []
        n.append(("", "Accuracy in percent, mean ± 2 standard errors over seeds (sample std, ddof=1, / √seeds); "
                      f"grader: {self.grader}. Bold: best per column and block."))
        if self.has_binomial:
            n.append((MARK_BINOMIAL, "One seed only: ± 2 binomial standard errors over questions, √(p(1−p)/n)."))
        if self.comparisons:
            n.append((MARK_BOOT, f"Differs from {self.reference_label} in the same column and block: "
                                 + bootstrap_note(self)))
            n.append((MARK_T, "The same by a paired t-test over seeds: " + t_note(self)))
            n += no_spread_notes(c.t for c in self.comparisons)
            n += unclustered_notes(c.bootstrap for c in self.comparisons)
        if any(c.group is not None and c.group.short_training for b in self.blocks for r in b.rows for c in r.cells):
            n.append((MARK_SHORT, "Barely trained: an adapter behind this cell took fewer optimizer steps than its "
                                  "training.min_steps, so the cell says little about its method."))
        if self.has_paper:
            n.append(("", f"(paper x, Δ d): the value paper table {self.spec.paper_table} reports for this cell and "
                          "ours minus it in points; ° marks a paper value whose column was inferred "
                          "(see pd/report/paper_values.yaml)."))
        return n

    def header(self, key: tuple, label: str) -> str:
        """A column's header: its label and the number of test questions graded in it (``NYT (n=37)``)."""
        return label + self.column_n.get(key, "")

    @property
    def reference_label(self) -> str:
        return label_for(self.spec, self.spec.method_axis, self.spec.reference)


def holm_text(table: Table) -> str:
    """How the marks' p-values are adjusted, for the notes: Holm over the page's tests (or one test).

    Args:
        table: the page's table (its ``n_tests`` and the spec's alpha).

    Returns:
        ``p < alpha after Holm's adjustment over the page's N tests``, or ``p < alpha`` for one test.
    """
    if table.n_tests > 1:
        return f"p < {table.spec.alpha:g} after Holm's adjustment over the page's {table.n_tests} tests"
    return f"p < {table.spec.alpha:g}"


def bootstrap_note(table: Table) -> str:
    """The bootstrap mark's footnote (after "Differs from X ..."), shared by every block of a page.

    Args:
        table: the page's table.

    Returns:
        The note's text.
    """
    return (f"{holm_text(table)}, by a paired bootstrap over seeds, passages and the questions within each "
            "passage (questions about one passage rise and fall together); seeds are resampled together where "
            "both methods have the same seeds, each method's own otherwise.")


def t_note(table: Table) -> str:
    """The t-test mark's footnote (after "... paired t-test over seeds: ").

    Args:
        table: the page's table.

    Returns:
        The note's text.
    """
    return (f"{holm_text(table)}, only from {MIN_T_SEEDS} shared seeds on; with fewer (p (t) —) the bootstrap "
            "alone marks a cell.")


def unclustered_notes(boots: Iterable[Bootstrap | None]) -> list[tuple[str, str]]:
    """A footnote where some bootstrap resampled questions with no passage as their own clusters.

    Args:
        boots: a block's bootstraps (None where a comparison had none).

    Returns:
        ``[("", note)]`` when any question had no passage, else ``[]``.
    """
    if any(b is not None and b.n_no_passage for b in boots):
        return [("", "Some grade rows name no passage (graded before they carried it): in the bootstrap "
                     "each such question is its own cluster, as if independent of the others.")]
    return []


def select_grader(spec: TableSpec, groups: Sequence[Group], experiment: str) -> str:
    graders = sorted({r.grader for g in groups for r in g.records})
    if spec.grader is not None:
        if spec.grader not in graders:
            raise ConfigError(f"experiment {experiment!r}: grader {spec.grader!r} has no cells; "
                              f"graded by: {', '.join(graders)}")
        return spec.grader
    if len(graders) != 1:
        raise ConfigError(f"experiment {experiment!r} is graded by several graders ({', '.join(graders)}); "
                          "set the table's `grader` to one of them")
    return graders[0]


def build_table(
    experiment: str,
    spec: TableSpec,
    groups: Sequence[Group],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    paper_values_path: str | None = None,
    display_root: str | None = None,
) -> Table:
    """Lay out an experiment's groups as the spec says and run the paired tests.

    ``display_root``: file paths in the notes are shown relative to it (the report folder).
    """

    def show(path: str) -> str:
        return os.path.relpath(path, display_root) if display_root else path

    grader = select_grader(spec, groups, experiment)
    groups = [g for g in groups if g.records[0].grader == grader and matches_where(g.axes, spec.where)]
    if spec.blocks and not any(spec.blocks in g.axes for g in groups):
        spec = dataclasses.replace(spec, blocks=None)  # e.g. no retrieval axis at all: one block
    for a in list(spec.rows) + list(spec.columns):
        if not any(a in g.axes for g in groups):
            raise ConfigError(f"experiment {experiment!r}: table axis {a!r} is not an axis of any cell; "
                              f"cell axes: {', '.join(sorted({k for g in groups for k in g.axes}))}")

    def key(g: Group, axes: Sequence[str]) -> tuple:
        return tuple(g.axes.get(a) for a in axes)

    spec = _with_dataset_labels(spec, groups)
    spec, fixed = _without_single_rows(spec, groups)
    placed = place_groups(experiment, spec, [(g.axes, g) for g in groups])

    col_keys = _sort_keys(spec, spec.columns, [key(g, spec.columns) for g in groups])
    block_keys = sort_values(spec, spec.blocks, [g.axes.get(spec.blocks) for g in groups]) if spec.blocks else [None]
    columns = [(ck, " ".join(label_for(spec, a, v) for a, v in zip(spec.columns, ck))) for ck in col_keys]

    table = Table(experiment, spec.title or experiment, grader, spec, [header_for(a) for a in spec.rows], columns, [])
    table.fixed = fixed
    table.column_n = {ck: _n_label([g for g in groups if key(g, spec.columns) == ck]) for ck in col_keys}
    for bk in block_keys:
        row_keys = _sort_keys(spec, spec.rows, [rk for (b, rk, _) in placed if b == bk])
        rows = []
        for rk in row_keys:
            labels = [label_for(spec, a, v) for a, v in zip(spec.rows, rk)]
            cells = [_table_cell(table, placed.get((bk, rk, ck)), _block_label(spec, bk), " / ".join(labels), clabel,
                                 show, paper_values_path) for ck, clabel in columns]
            rows.append(TableRow(rk, labels, cells))
        _mark_best(rows, len(columns))
        table.blocks.append(TableBlock(bk, _block_label(spec, bk), rows))
    for g in groups:
        for item, passage in g.passages().items():
            table.passages.setdefault(item, passage)
    _compare(table, groups, n_resamples=n_resamples, seed=seed)
    table.n_tests = adjust_page(table.comparisons)
    return table


def _table_cell(table: Table, g: Group | None, block: str, row: str, column: str, show: Callable[[str], str],
                paper_values_path: str | None) -> TableCell:
    """One cell's numbers and paper value; what is missing or invalid goes into the table's notes."""
    summary = g.summary() if g is not None else None
    cell = TableCell(g, summary)
    if g is None:
        table.missing.append(f"{block} / {row} / {column}: no cell in the manifest")
    elif summary is None:
        paths = ", ".join(show(r.grades) for r in g.missing)
        table.missing.append(f"{block} / {row} / {column}: no grades ({paths})")
    else:
        if g.missing:
            paths = ", ".join(show(r.grades) for r in g.missing)
            table.missing.append(f"{block} / {row} / {column}: seeds missing ({paths})")
        if g.n_invalid:
            rate = f"{100 * g.invalid_rate:.1f}% ({g.n_invalid}/{g.n_graded})"
            table.invalid.append(f"{row} / {column} ({block}): {rate} judge grades invalid")
    if g is not None:
        cell.paper = lookup(table.spec.paper_table, g.axes, table.grader, paper_values_path)
        if cell.paper is not None and cell.paper.inferred:
            table.inferred_paper.append(f"{row} / {column}: {cell.paper.inferred}")
    return cell


def _without_single_rows(spec: TableSpec, groups: Sequence[Group]) -> tuple[TableSpec, list[tuple[str, str]]]:
    """``spec`` without the row axes that take one value in every group (a model column repeating one name on
    every row), and those axes as (header, label) for the caption; the last row axis always stays."""
    rows, fixed = [], []
    for a in spec.rows:
        values = {hashable(g.axes.get(a)) for g in groups}
        if len(values) == 1 and len(spec.rows) - len(fixed) > 1 and a != spec.method_axis:
            fixed.append((header_for(a), label_for(spec, a, next(iter(g.axes.get(a) for g in groups)))))
        else:
            rows.append(a)
    return (dataclasses.replace(spec, rows=rows) if fixed else spec), fixed


def _with_dataset_labels(spec: TableSpec, groups: Sequence[Group]) -> TableSpec:
    """``spec`` with each dataset's name for readers from the manifest (``dataset_label``, the loader's
    :meth:`~pd.data.loaders.Loader.display_name`) where the spec's own ``labels`` give none."""
    found = {str(g.axes["dataset"]): str(r.extra["dataset_label"]) for g in groups if "dataset" in g.axes
             for r in g.records if r.extra.get("dataset_label")}
    if not found:
        return spec
    labels = dict(spec.labels)
    labels["dataset"] = found | dict(spec.labels.get("dataset", {}))
    return dataclasses.replace(spec, labels=labels)


def _n_label(groups: Sequence[Group]) -> str:
    """`` (n=37)``: the test questions graded in a column (a range where its cells differ); empty when none is."""
    ns = sorted({grades.n for g in groups for _, grades in g.present})
    if not ns:
        return ""
    return f" (n={ns[0]})" if len(ns) == 1 else f" (n={ns[0]}–{ns[-1]})"


def _sort_keys(spec: TableSpec, axes: Sequence[str], keys: Iterable[tuple]) -> list[tuple]:
    keys = list(dict.fromkeys(keys))
    orders = [sort_values(spec, a, [k[i] for k in keys]) for i, a in enumerate(axes)]
    return sorted(keys, key=lambda k: tuple(orders[i].index(v) for i, v in enumerate(k)))


def _block_label(spec: TableSpec, bk: Any) -> str:
    return label_for(spec, spec.blocks, bk) if spec.blocks else ""


def _mark_best(rows: list[TableRow], n_cols: int) -> None:
    for j in range(n_cols):
        means = [r.cells[j].summary.mean for r in rows if r.cells[j].summary is not None]
        if not means:
            continue
        best = max(means)
        for r in rows:
            s = r.cells[j].summary
            if s is not None and abs(s.mean - best) <= 1e-12:
                r.cells[j].bold = True


def _compare(table: Table, groups: Sequence[Group], *, n_resamples: int, seed: int) -> None:
    """Test every non-reference cell against the reference method's cell with the same other axes."""
    spec = table.spec
    # The reference is the cell shown in the same block and column, in the reference method's
    # row: axes a method sets for itself (an SFT cell has no distillation temperature, its
    # answers are sampled at 0.25) must not stop PD and SFT from being compared.
    shown = ([spec.blocks] if spec.blocks else []) + list(spec.rows) + list(spec.columns)
    if spec.method_axis in shown:
        def key_of(axes: Mapping[str, Any]) -> tuple:
            return tuple(hashable(axes.get(a)) for a in shown)
    else:
        key_of = group_key
    by_key = {key_of(g.axes): g for g in groups}
    for block in table.blocks:
        for row in block.rows:
            for (ck, clabel), cell in zip(table.columns, row.cells):
                g = cell.group
                if g is None or cell.summary is None or spec.method_axis not in g.axes:
                    continue
                if str(g.axes[spec.method_axis]) == str(spec.reference):
                    continue
                ref = by_key.get(key_of(dict(g.axes, **{spec.method_axis: spec.reference})))
                if ref is None or ref.summary() is None:
                    continue
                boot = seed_item_bootstrap(g.per_seed_items(), ref.per_seed_items(), table.passages,
                                           n_resamples=n_resamples, seed=seed)
                t, shared = seed_t_test(g.per_seed(), ref.per_seed())
                ref_label = " / ".join(label_for(spec, a, ref.axes.get(a)) for a in spec.rows)
                comp = Comparison(block.label, " / ".join(row.labels), ref_label, clabel,
                                  cell.summary.mean - ref.summary().mean, boot, t, alpha=spec.alpha,
                                  shared_seeds=shared)
                cell.comparison = comp
                table.comparisons.append(comp)


# --------------------------------------------------------------------------- rendering

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "—": "--", "√": r"$\surd$", "−": "-", "Δ": r"$\Delta$", "†": r"$^\dagger$",
    "§": r"$^\S$", "‡": r"$^\ddagger$", "°": r"$^\circ$", "<": r"$<$", ">": r"$>$",
    "→": r"$\to$", "‖": r"$\|$", "≥": r"$\geq$", "×": r"$\times$",
}


def latex_escape(text: Any) -> str:
    """Escape LaTeX's special characters (& % $ # _ { } ~ ^ \\) and a few symbols in names."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def markdown_escape(text: Any) -> str:
    """Keep a name from breaking a Markdown table (pipes) or turning into emphasis."""
    text = str(text).replace("\\", "\\\\")
    for ch in "|*_`<>[]":
        text = text.replace(ch, "\\" + ch)
    return text


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["tex"] = latex_escape
    env.filters["md"] = markdown_escape
    env.filters["pct"] = pct
    env.filters["signed"] = signed
    env.filters["pval"] = format_p
    tex_marks = {"": "", MARK_BINOMIAL: r"$^{\dagger}$", MARK_BOOT: r"$^{*}$", MARK_T: r"$^{\S}$",
                 MARK_SHORT: r"$^{\ddagger}$"}
    env.filters["texmark"] = tex_marks.__getitem__
    env.filters["mdmark"] = lambda m: m.replace("*", r"\*")
    env.filters["minus"] = true_minus
    return env


def format_p(p: float | None) -> str:
    """A p-value as the tables show it: ``<0.001``, three decimals, or the missing mark (None, NaN)."""
    if p is None or not math.isfinite(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def render_markdown(table: Table) -> str:
    return _env().get_template("table.md.j2").render(t=table)


def render_latex(table: Table, label: str | None = None, paper: bool = False) -> str:
    """The table as LaTeX (booktabs).

    Args:
        table: the built table (its sections and views attached).
        label: the ``\\label``; default ``tab:<experiment>``.
        paper: the variant to paste into a paper (``table.paper.tex``): the tabular with the accuracy and
            metric blocks only, a one-sentence caption (:func:`paper_caption`), true minus signs; no
            notes, views or run metadata (those stay in ``table.tex``).

    Returns:
        The LaTeX source.
    """
    label = label or "tab:" + re.sub(r"[^A-Za-z0-9:.-]+", "-", table.experiment)
    if paper:
        return _env().get_template("table.paper.tex.j2").render(t=table, label=label, caption=paper_caption(table))
    return _env().get_template("table.tex.j2").render(t=table, label=label)


def paper_caption(table: Table) -> str:
    """One sentence for a paper's caption: the title, the measure, the seeds and what a mark means."""
    seeds = sorted({len(c.group.records) for b in table.blocks for r in b.rows for c in r.cells
                    if c.group is not None})
    n = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}" if seeds else "?"
    fixed = "".join(f", {v}" for _, v in table.fixed)
    text = (f"{table.title}{fixed}. Accuracy (%), mean ± 2 SE over {n} seeds (grader: {table.grader})")
    if table.comparisons:
        text += (f"; * differs from {table.reference_label} at p < {table.spec.alpha:g} "
                 "(clustered paired bootstrap, Holm-adjusted)")
    return text + "."


def true_minus(text: str) -> str:
    """LaTeX with each hyphen that stands for a minus sign (before a digit, not inside a word) set as ``$-$``."""
    return re.sub(r"(?<![\w$])-(?=\d)", "$-$", str(text))
