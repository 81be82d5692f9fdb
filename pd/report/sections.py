"""The blocks every table shows beneath accuracy: gold-answer log-likelihood and held-out KL closure.

Each is a :class:`MetricSection` laid out as the accuracy table (its rows and columns;
the log-likelihood also in its retrieval blocks, the KL closure once, since an adapter's
held-out KL does not depend on what the evaluation retrieves), with mean +- 2 SE over
seeds, bold for the best per column and block, and the paired tests against the
reference method as the accuracy table makes them: a paired t-test over seeds (from three
shared seeds on) and, for the log-likelihood, the bootstrap over seeds, passages and the
questions within them (the held-out KL is stored as one mean per adapter, so it has no
per-question resample). Their p-values join the accuracy table's in one Holm-adjusted
family (:func:`pd.report.tables.adjust_page`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from pd.report.aggregate import Group, hashable
from pd.report.evidence import Evidence
from pd.report.labels import label_for
from pd.report.stats import MeanSE, no_spread_notes, seed_item_bootstrap, seed_t_test
from pd.report.tables import (
    MARK_BINOMIAL,
    MARK_BOOT,
    MARK_T,
    MISSING,
    Comparison,
    Table,
    adjust_page,
    bootstrap_note,
    t_note,
    unclustered_notes,
)

GOLD = "gold_logprob"
KL = "heldout_kl"


@dataclass
class MetricCell:
    """One cell of a section: the summary (and for the KL, the mean before and after)."""

    group: Group | None
    summary: MeanSE | None
    before: float | None = None
    after: float | None = None
    bold: bool = False
    comparison: Comparison | None = None

    def marks(self) -> str:
        m = MARK_BINOMIAL if self.summary is not None and self.summary.kind == "questions" else ""
        if self.comparison is not None and self.comparison.significant_bootstrap:
            m += MARK_BOOT
        if self.comparison is not None and self.comparison.significant_t:
            m += MARK_T
        return m


@dataclass
class MetricRow:
    key: tuple
    labels: list[str]
    cells: list[MetricCell]


@dataclass
class MetricBlock:
    label: str
    rows: list[MetricRow]


@dataclass
class MetricSection:
    """One metric's block of a table; ``name`` is :data:`GOLD` or :data:`KL`."""

    name: str
    title: str
    blocks: list[MetricBlock] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def value(self, x: float) -> str:
        """A difference as the paired-test table shows it: nats per token, or points of the fraction closed."""
        return f"{x:+.3f}" if self.name == GOLD else f"{100 * x:+.1f}"

    def text(self, cell: MetricCell, fmt: str = "md") -> str:
        """The cell as ``fmt`` (md, tex or html) shows it, marks included."""
        s = cell.summary
        if s is None:
            return MISSING if fmt != "tex" else "--"
        pm = {"md": " ± ", "html": " ± ", "tex": r"\,$\pm$"}[fmt]
        has_se = not math.isnan(s.se)
        if self.name == GOLD:
            core = f"{s.mean:.3f}" + (f"{pm}{2 * s.se:.3f}" if has_se else "")
        else:
            arrow = r"$\to$" if fmt == "tex" else "→"
            if s.mean < 0 and cell.before > 0:  # training raised the KL: a negative fraction closed misleads
                times = r"$\times$" if fmt == "tex" else "×"
                core = f"{cell.before:.3f} {arrow} {cell.after:.3f} ({times}{cell.after / cell.before:.1f}, grew)"
            else:
                pct = f"{100 * s.mean:.1f}" + (f"{pm}{200 * s.se:.1f}" if has_se else "")
                core = f"{cell.before:.3f} {arrow} {cell.after:.3f} ({pct}" + (r"\%)" if fmt == "tex" else "%)")
        if cell.bold:
            core = {"md": f"**{core}**", "html": f"<b>{core}</b>", "tex": r"\textbf{" + core + "}"}[fmt]
        marks = cell.marks()
        if marks and fmt == "md":
            core += marks.replace("*", r"\*")
        elif marks and fmt == "tex":
            core += "$^{" + marks.replace(MARK_BINOMIAL, r"\dagger").replace(MARK_T, r"\S") + "}$"
        elif marks:
            core += f'<sup class="mark">{marks}</sup>'
        return core


def metric_sections(table: Table, evidence: Evidence | None = None, *, n_resamples: int = 10_000,
                    seed: int = 0) -> list[MetricSection]:
    """The log-likelihood and KL sections of a built accuracy table (those with any data).

    Their tests and the table's are then Holm-adjusted as one family (the page's): the
    table's marks and ``n_tests`` change with them.

    Args:
        table: the accuracy table (:func:`pd.report.tables.build_table`); its cells' groups are used.
        evidence: the file reader (a fresh one by default).
        n_resamples: bootstrap resamples.
        seed: the bootstrap's seed.

    Returns:
        The sections, in order log-likelihood, KL closure; a section without any value is left out.
    """
    ev = evidence or Evidence()
    out = []
    gold = _section(table, GOLD, "Gold-answer log-likelihood (nats per answer token)", ev.gold_summary, merge=False)
    if gold is not None:
        _compare(table, gold, ev, n_resamples=n_resamples, seed=seed)
        out.append(gold)
    kl = _section(table, KL, "Held-out KL(teacher ‖ student): before → after training (fraction closed)",
                  ev.kl_summary, merge=True)
    if kl is not None:
        _compare(table, kl, ev, n_resamples=n_resamples, seed=seed)
        out.append(kl)
    table.n_tests = adjust_page([*table.comparisons, *(c for sec in out for c in sec.comparisons)])
    for sec in out:
        sec.notes = _notes(table, sec)
    return out


def _section(table: Table, name: str, title: str, summarise: Callable[[Group], Any], *, merge: bool
             ) -> MetricSection | None:
    """Lay the table's groups out for one metric; ``merge``: one block, the first block's group that has data."""
    blocks: list[tuple[str, list]] = [(b.label, b.rows) for b in table.blocks]
    if merge:
        keys: dict[tuple, list] = {}
        for _, rows in blocks:
            for row in rows:
                if row.key not in keys:
                    keys[row.key] = [row.labels, [None] * len(table.columns)]
                slots = keys[row.key][1]
                for j, cell in enumerate(row.cells):
                    if slots[j] is None and cell.group is not None and summarise(cell.group) is not None:
                        slots[j] = cell.group
        grid = [("", [(k, labels, groups) for k, (labels, groups) in keys.items()])]
    else:
        grid = [(label, [(r.key, r.labels, [c.group for c in r.cells]) for r in rows]) for label, rows in blocks]
    section = MetricSection(name, title)
    for label, rows in grid:
        block = MetricBlock(label, [])
        for key, labels, groups in rows:
            cells = []
            for g in groups:
                res = summarise(g) if g is not None else None
                if name == KL and res is not None:
                    cells.append(MetricCell(g, res[0], before=res[1], after=res[2]))
                else:
                    cells.append(MetricCell(g if res is not None else None, res))
            if any(c.summary is not None for c in cells):
                block.rows.append(MetricRow(key, labels, cells))
        if block.rows:
            _mark_best(block.rows)
            section.blocks.append(block)
    return section if section.blocks else None


def _mark_best(rows: list[MetricRow]) -> None:
    for j in range(len(rows[0].cells)):
        means = [r.cells[j].summary.mean for r in rows if r.cells[j].summary is not None]
        for r in rows:
            s = r.cells[j].summary
            r.cells[j].bold = s is not None and len(means) > 1 and abs(s.mean - max(means)) <= 1e-12


def _compare(table: Table, section: MetricSection, ev: Evidence, *, n_resamples: int, seed: int) -> None:
    """Each non-reference cell against the reference method's cell of the same block and column."""
    spec = table.spec
    shown = list(spec.rows) + list(spec.columns) + ([spec.blocks] if spec.blocks and section.name == GOLD else [])

    def key_of(axes: dict) -> tuple:
        if spec.method_axis not in shown:  # the method is fixed by `where`: every axis tells the cells apart
            return tuple(sorted((k, hashable(v)) for k, v in axes.items()))
        return tuple(hashable(axes.get(a)) for a in shown)

    by_key = {key_of(c.group.axes): c.group for b in section.blocks for r in b.rows for c in r.cells
              if c.group is not None}
    for block in section.blocks:
        for row in block.rows:
            for (_, clabel), cell in zip(table.columns, row.cells):
                g = cell.group
                if g is None or str(g.axes.get(spec.method_axis)) == str(spec.reference):
                    continue
                ref = by_key.get(key_of(dict(g.axes, **{spec.method_axis: spec.reference})))
                if ref is None:
                    continue
                comp = _test(section.name, g, ref, ev, table.passages, n_resamples, seed)
                if comp is None:
                    continue
                diff, boot, t, shared = comp
                ref_label = " / ".join(label_for(spec, a, ref.axes.get(a)) for a in spec.rows)
                cell.comparison = Comparison(block.label, " / ".join(row.labels), ref_label, clabel, diff, boot, t,
                                             alpha=spec.alpha, shared_seeds=shared)
                section.comparisons.append(cell.comparison)


def _test(name: str, g: Group, ref: Group, ev: Evidence, passages: dict[str, str], n_resamples: int, seed: int):
    """(difference of the means, bootstrap, t, shared seeds) of ``g`` minus ``ref``; None if ``ref`` has no data."""
    if name == GOLD:
        a_seed = {s: v.mean for s, v in ev.gold_per_seed(g).items()}
        b_seed = {s: v.mean for s, v in ev.gold_per_seed(ref).items()}
        summ_a, summ_b = ev.gold_summary(g), ev.gold_summary(ref)
    else:
        a_seed = {s: v.closed for s, v in ev.kl_per_seed(g).items()}
        b_seed = {s: v.closed for s, v in ev.kl_per_seed(ref).items()}
        summ_a, summ_b = ((x[0] if x else None) for x in (ev.kl_summary(g), ev.kl_summary(ref)))
    if summ_a is None or summ_b is None:
        return None
    boot = None
    if name == GOLD:
        boot = seed_item_bootstrap(ev.gold_per_seed_items(g), ev.gold_per_seed_items(ref), passages,
                                   n_resamples=n_resamples, seed=seed)
    t, shared = seed_t_test(a_seed, b_seed)
    return summ_a.mean - summ_b.mean, boot, t, shared


def _notes(table: Table, section: MetricSection) -> list[tuple[str, str]]:
    ref = table.reference_label
    if section.name == GOLD:
        notes = [("", "Gold-answer log-likelihood: log-probability of the gold answer given the cell's evaluation "
                      "prompt, per answer token, teacher-forced, best alias, mean over questions; mean ± 2 SE over "
                      "seeds (higher is better). Bold: best per column and block.")]
        if any(c.summary is not None and c.summary.kind == "questions" for b in section.blocks for r in b.rows
               for c in r.cells):
            notes.append((MARK_BINOMIAL, "One seed only: ± 2 standard errors over questions."))
        notes.append((MARK_BOOT, f"Differs from {ref}: " + bootstrap_note(table)))
    else:
        notes = [("", "Held-out KL(teacher ‖ student) per answer token on held-out question-answer pairs, mean over "
                      "seeds before → after training; in brackets the fraction closed, 1 − after/before, in percent, "
                      "mean ± 2 SE over seeds (no ± with one seed); where training raised it, (×r, grew): "
                      "after/before of the seeds' means. Bold: most closed per column.")]
    notes.append((MARK_T, f"Differs from {ref} by a paired t-test over seeds: " + t_note(table)))
    return notes + no_spread_notes(c.t for c in section.comparisons) + unclustered_notes(
        c.bootstrap for c in section.comparisons)
