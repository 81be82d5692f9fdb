"""Accuracy against one numeric axis (questions, training time, LoRA rank), one line per method.

Matplotlib with the Agg backend; every figure is written as PNG and PDF, atomically.
Error bars are +- 2 standard errors, as in the tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

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
               spec: TableSpec | None = None) -> list[Series]:
    """Split groups into lines: one per value of ``group_axis`` and of any other axis that varies
    within one of its values. An axis that only follows ``group_axis`` (SFT has no distillation
    temperature, PD has one) splits no line, so it stays out of the labels."""
    spec = spec or TableSpec()
    # unset x values (e.g. the final snapshot, null in config) have no place on the axis
    groups = [g for g in groups if g.axes.get(x) is not None and g.summary() is not None]
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
            s = g.summary()
            pts.append((float(g.axes[x]), 100.0 * s.mean, 100.0 * s.half_width))
        out.append(Series(" · ".join(parts), key[0], pts))
    return out


def _draw(ax, series: list[Series], x: str, *, logx: bool, title: str | None, xlabel: str | None) -> None:
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
    ax.set_ylabel("Accuracy (%) ± 2 SE")
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
              xlabel: str | None = None) -> list[Path]:
    """Accuracy against ``x``, one line per ``group_axis`` value; returns the PNG and PDF paths."""
    series = series_for(groups, x, group_axis, spec)
    if not series:
        raise ConfigError(f"no graded cells have the axis {x!r}; nothing to plot")
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    _draw(ax, series, x, logx=logx, title=title, xlabel=xlabel)
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


def training_curves(runs: Sequence[tuple[str, Sequence[dict]]], stem: str | os.PathLike, *,
                    title: str | None = None) -> list[Path]:
    """Loss and KL per optimizer step of one configuration's seeds, side by side.

    Args:
        runs: (label, step log rows) per seed; rows are ``train_log.jsonl`` lines (``step``,
            ``loss``, and ``kl`` for distilling methods).
        stem: the files' path without suffix.
        title: the figure's title.

    Returns:
        The PNG and PDF paths.

    Raises:
        ConfigError: no run has a logged step.
    """
    runs = [(label, rows) for label, rows in runs if rows]
    if not runs:
        raise ConfigError("no training log rows to plot")
    keys = [k for k in ("loss", "kl") if any(k in r for _, rows in runs for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 2.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, rows in runs:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=label, linewidth=1.2)
        ax.set_xlabel("Optimizer step")
        ax.set_ylabel({"loss": "Training loss", "kl": "KL (nats/token)"}[key])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem)
