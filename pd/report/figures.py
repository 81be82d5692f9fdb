"""Accuracy against one numeric axis (questions, training time, LoRA rank), one line per method.

Matplotlib with the Agg backend; every figure is written as PNG and PDF, atomically.
Error bars are +- 2 standard errors, as in the tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pd.errors import ConfigError  # noqa: E402
from pd.io import atomic_path  # noqa: E402
from pd.report.aggregate import Group, TableSpec  # noqa: E402
from pd.report.labels import header_for, label_for, sort_values  # noqa: E402

FIGURE6_AXES = ("n_questions", "snapshot", "snapshot_s", "rank")
X_LABELS = {"n_questions": "Training questions per test question", "snapshot": "Wall-clock training time (s)",
            "snapshot_s": "Wall-clock training time (s)", "rank": "LoRA rank"}


@dataclass
class Series:
    """One line: its label, group value and points (x, mean %, half-width %)."""

    label: str
    group: Any
    points: list[tuple[float, float, float]]


def series_for(groups: Sequence[Group], x: str, group_axis: str = "method",
               spec: TableSpec | None = None, value: Callable[[Group], Any] | None = None,
               scale: float = 100.0) -> list[Series]:
    """Split groups into lines: one per value of ``group_axis`` and of any other axis that varies
    within one of its values. An axis that only follows ``group_axis`` (SFT has no distillation
    temperature, PD has one) splits no line, so it stays out of the labels.

    ``value`` gives a group's mean ± SE (default its accuracy, :meth:`Group.summary`), drawn times
    ``scale`` (100: percent; 1 for a log-likelihood)."""
    spec = spec or TableSpec()
    value = value or (lambda g: g.summary())
    # unset x values (e.g. the final snapshot, null in config) have no place on the axis
    groups = [g for g in groups if g.axes.get(x) is not None and value(g) is not None]
    if not groups:
        return []
    for g in groups:
        try:
            float(g.axes[x])
        except (TypeError, ValueError):
            raise ConfigError(f"figure axis {x!r} must be numeric; "
                              f"cell {g.records[0].cell_id!r} has {g.axes[x]!r}") from None
    def splits(axis: str) -> bool:
        seen: dict[str, set[str]] = {}
        for g in groups:
            seen.setdefault(str(g.axes.get(group_axis)), set()).add(str(g.axes.get(axis)))
        return any(len(v) > 1 for v in seen.values())

    varying = sorted(a for a in {k for g in groups for k in g.axes} if a not in (x, group_axis) and splits(a))
    lines: dict[tuple, list[Group]] = {}
    for g in groups:
        lines.setdefault((g.axes.get(group_axis),) + tuple(g.axes.get(a) for a in varying), []).append(g)
    group_order = sort_values(spec, group_axis, [k[0] for k in lines])
    out = []
    for key in sorted(lines, key=lambda k: (group_order.index(k[0]), [str(v) for v in k[1:]])):
        parts = [label_for(spec, group_axis, key[0])] + [f"{label_for(spec, a, v)}" for a, v in zip(varying, key[1:])]
        pts = []
        for g in sorted(lines[key], key=lambda g: float(g.axes[x])):
            s = value(g)
            pts.append((float(g.axes[x]), scale * s.mean, scale * s.half_width))
        out.append(Series(" · ".join(parts), key[0], pts))
    return out


def _draw(ax, series: list[Series], x: str, *, logx: bool, title: str | None, xlabel: str | None,
          ylabel: str = "Accuracy (%) ± 2 SE") -> None:
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(dict.fromkeys(str(s.group) for s in series))
    styles = ["-", "--", ":", "-."]
    seen_in_group: dict[str, int] = {}
    for s in series:
        gi = groups.index(str(s.group))
        k = seen_in_group.get(str(s.group), 0)
        seen_in_group[str(s.group)] = k + 1
        xs, ys, es = zip(*s.points)
        ax.errorbar(xs, ys, yerr=es, label=s.label, color=colours[gi % len(colours)], linestyle=styles[k % len(styles)],
                    marker="o", markersize=4, capsize=3, linewidth=1.5)
    if logx:
        ax.set_xscale("log")
        ticks = sorted({p[0] for s in series for p in s.points})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel(xlabel or X_LABELS.get(x, header_for(x)))
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def save_figure(fig, stem: str | os.PathLike) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically; returns both paths."""
    stem = Path(stem)
    paths = []
    for ext in ("png", "pdf"):
        target = stem.with_name(stem.name + f".{ext}")
        with atomic_path(target, suffix=f".{ext}") as tmp:
            # PDFs carry a creation date by default; dropping it keeps reruns byte-identical.
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight",
                        metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(target)
    plt.close(fig)
    return paths


def line_plot(groups: Sequence[Group], x: str, stem: str | os.PathLike, *, group_axis: str = "method",
              spec: TableSpec | None = None, logx: bool = False, title: str | None = None,
              xlabel: str | None = None, loglik: Callable[[Group], Any] | None = None) -> list[Path]:
    """Accuracy against ``x``, one line per ``group_axis`` value; returns the PNG and PDF paths.

    With ``loglik`` (a group's gold-answer log-likelihood, mean ± SE over seeds, or None), a second
    panel beside it draws that, where any cell has it: the judge-free measure beside the accuracy.
    """
    series = series_for(groups, x, group_axis, spec)
    if not series:
        raise ConfigError(f"no graded cells have the axis {x!r}; nothing to plot")
    second = series_for(groups, x, group_axis, spec, value=loglik, scale=1.0) if loglik else []
    fig, axes = plt.subplots(1, 2 if second else 1, figsize=(9.6 if second else 5.0, 3.6), squeeze=False)
    _draw(axes[0][0], series, x, logx=logx, title=title, xlabel=xlabel)
    if second:
        _draw(axes[0][1], second, x, logx=logx, title=None, xlabel=xlabel,
              ylabel="Gold-answer log-likelihood (nats/token) ± 2 SE")
        fig.tight_layout()
    return save_figure(fig, stem)


def panel_plot(panels: Sequence[dict], stem: str | os.PathLike) -> list[Path]:
    """Several line plots side by side (the paper's Figure 6: questions, time, rank).

    Each panel: ``{"groups", "x", "group_axis"?, "spec"?, "logx"?, "title"?}``.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        series = series_for(p["groups"], p["x"], p.get("group_axis", "method"), p.get("spec"))
        if not series:
            raise ConfigError(f"figure panel on {p['x']!r} has no graded cells")
        _draw(ax, series, p["x"], logx=p.get("logx", False), title=p.get("title"), xlabel=p.get("xlabel"))
    fig.tight_layout()
    return save_figure(fig, stem)


def training_grid(panels: Sequence[tuple[str, str, Sequence[tuple[str, Sequence[dict]]]]],
                  stem: str | os.PathLike) -> list[Path]:
    """Training loss per optimizer step of every trained configuration, as one facet grid.

    One row per method (the losses of different methods are different quantities: SFT's
    cross-entropy, PD's KL), one panel per configuration of the other axes, one line per seed;
    panels of a row share their axes, so curves can be compared at a glance.

    Args:
        panels: (row label, panel title, runs) per configuration, in display order; runs are
            (seed label, ``train_log.jsonl`` rows with ``step`` and ``loss``).
        stem: the files' path without suffix.

    Returns:
        The PNG and PDF paths.

    Raises:
        ConfigError: no panel has a logged step.
    """
    panels = [(r, c, [(lab, rows) for lab, rows in runs if rows]) for r, c, runs in panels]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise ConfigError("no training log rows to plot")
    row_names = list(dict.fromkeys(r for r, _, _ in panels))
    per_row = {r: [p for p in panels if p[0] == r] for r in row_names}
    nr, nc = len(row_names), max(len(v) for v in per_row.values())
    fig, axes = plt.subplots(nr, nc, figsize=(0.8 + 2.4 * nc, 0.6 + 1.9 * nr), sharex="row", sharey="row",
                             squeeze=False)
    used = set()
    for r, c, runs in panels:
        i = row_names.index(r)
        j = next(k for k, p in enumerate(per_row[r]) if p[1] == c)
        ax = axes[i][j]
        used.add((i, j))
        for label, rows in runs:
            pts = [(x["step"], x["loss"]) for x in rows if "loss" in x and "step" in x]
            if pts:
                ax.plot(*zip(*pts), label=label, linewidth=1.0)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        if c:
            ax.set_title(c, fontsize=9)
    for i in range(nr):
        for j in range(nc):
            if (i, j) not in used:
                axes[i][j].set_visible(False)
        axes[i][0].set_ylabel(f"{row_names[i]}\nloss", fontsize=9)
    fig.supxlabel("Optimizer step", fontsize=9)
    handles, labels = next(((h, lab) for ax in axes.flat if ax.get_visible()
                            for h, lab in [ax.get_legend_handles_labels()] if h), ([], []))
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, frameon=False, ncol=len(labels))
    fig.tight_layout(rect=(0, 0, 1, 0.97 if handles else 1))
    return save_figure(fig, stem)
