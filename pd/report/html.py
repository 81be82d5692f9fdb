"""The HTML report and the captions ``snakemake --report`` needs.

One page (``reports/index.html`` by default) with every experiment's table, figures and
per-cell details: resolved config, cost from Snakemake benchmark files, tokens from the
adapter's metadata, judge-invalid rate, sample answers, and relative links to the raw
per-sample grade files. No external resources: styles are inline, images are files
beside the page.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import jinja2

from pd.io import write_text
from pd.report.aggregate import Group
from pd.report.tables import MARK_BINOMIAL, MARK_BOOT, MARK_T, Table, format_p, pct, signed

TEMPLATE_DIR = Path(__file__).parent / "templates"


@dataclass
class Cost:
    """Summed wall and CPU seconds and the peak resident memory over a cell's benchmark files."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    files: int = 0


def read_benchmarks(paths: Iterable[str]) -> Cost | None:
    """Parse Snakemake benchmark TSVs (columns s, cpu_time, max_rss; repeats are averaged)."""
    cost, found = Cost(), False
    for p in paths:
        if not Path(p).is_file():
            continue
        with open(p, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        found = True
        cost.files += 1
        cost.wall_s += sum(_num(r.get("s")) for r in rows) / len(rows)
        cost.cpu_s += sum(_num(r.get("cpu_time")) for r in rows) / len(rows)
        cost.max_rss_mb = max([cost.max_rss_mb] + [_num(r.get("max_rss")) for r in rows])
    return cost if found else None


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0  # Snakemake writes "NA" for values it could not measure


def token_counts(meta: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric entry of the metadata whose key mentions tokens (e.g. adapter.train_tokens)."""
    out: dict[str, float] = {}
    for k, v in meta.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(token_counts(v, name + "."))
        elif "token" in str(k).lower() and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = v
    return out


@dataclass
class SeedDetail:
    cell_id: str
    seed: Any
    grades_link: str | None
    grades_path: str
    accuracy: float | None
    n: int
    n_invalid: int
    cost: Cost | None
    benchmark_links: list[str]
    tokens: dict[str, float]
    config_json: str
    samples: list[dict]


@dataclass
class GroupDetail:
    title: str
    axes: dict[str, Any]
    seeds: list[SeedDetail]
    invalid_rate: float


@dataclass
class ExperimentPage:
    name: str
    table: Table
    table_html_rows: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # label -> relative link
    figures: list[dict] = field(default_factory=list)  # {"png", "pdf", "caption"}
    details: list[GroupDetail] = field(default_factory=list)
    training: list[dict] = field(default_factory=list)  # {"png", "pdf", "caption"}: loss and KL per step


def inside_link(path: str | os.PathLike, out_dir: str | os.PathLike) -> str | None:
    """A link from the report folder to ``path``: relative, and only for a file inside that folder.

    A report is committed or copied as its folder: a link out of it (``../results/...``) is dead in a
    clone, so the page names such a file as text instead (its rows are in the folder's ``rows.jsonl.gz``).
    """
    if not Path(path).is_file():
        return None
    rel = os.path.relpath(path, out_dir)
    return None if rel == ".." or rel.startswith(".." + os.sep) else rel.replace(os.sep, "/")


def group_details(groups: Iterable[Group], out_dir: str | os.PathLike, n_samples: int = 3) -> list[GroupDetail]:
    """What the report shows per cell: config, cost, tokens, invalid rate, sample answers, links to its files
    where they lie inside the report folder (:func:`inside_link`)."""
    out = []
    for g in groups:
        seeds = []
        for rec, grades in zip(g.records, g.grades):
            exists = Path(rec.grades).is_file()
            samples = []
            if grades is not None:
                for row in grades.rows[:n_samples]:
                    samples.append({"item_id": row.get("item_id"), "answer": row.get("answer", ""),
                                    "gold": row.get("gold", []),
                                    "grade": ("invalid" if not row.get("valid")
                                              else "correct" if row.get("correct") else "wrong"),
                                    "reason": row.get("reason")})
            seeds.append(SeedDetail(
                rec.cell_id, rec.seed, inside_link(rec.grades, out_dir) if exists else None, rec.grades,
                grades.accuracy if grades is not None and grades.n else None,
                grades.n if grades is not None else 0, grades.n_invalid if grades is not None else 0,
                read_benchmarks(rec.benchmarks),
                [link for b in rec.benchmarks if (link := inside_link(b, out_dir))],
                token_counts(rec.meta), json.dumps(rec.meta, indent=2, sort_keys=True, default=str), samples,
            ))
        title = ", ".join(f"{k}={v}" for k, v in sorted(g.axes.items()) if v is not None)
        out.append(GroupDetail(title, dict(g.axes), seeds, g.invalid_rate))
    return out


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined,
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = pct
    env.filters["signed"] = signed
    env.filters["pval"] = format_p
    env.globals.update(MARK_BINOMIAL=MARK_BINOMIAL, MARK_BOOT=MARK_BOOT, MARK_T=MARK_T)
    return env


def render_html(pages: list[ExperimentPage], target: str | os.PathLike, *, title: str = "Prompt distillation: results",
                extra_figures: list[dict] | None = None) -> Path:
    """Write the report page atomically; every link in it is relative to its folder."""
    html = _env().get_template("report.html.j2").render(pages=pages, title=title, extra_figures=extra_figures or [])
    write_text(target, html)
    return Path(target)


def write_snakemake_captions(out_dir: str | os.PathLike, pages: list[ExperimentPage],
                             extra_figures: list[dict] | None = None) -> dict[str, str]:
    """Write an .rst caption beside every table and figure; returns {file: caption path}.

    The workflow's report rule marks each file with ``report(file, caption=<caption>,
    category=<experiment>)``.
    """
    out_dir = Path(out_dir)
    captions: dict[str, str] = {}

    def write(file_rel: str, text: str) -> None:
        target = out_dir / (file_rel.rsplit(".", 1)[0] + ".rst")
        write_text(target, text.strip() + "\n")
        captions[str(out_dir / file_rel)] = str(target)

    for page in pages:
        t = page.table
        rel = page.files.get("Markdown")
        if rel:
            notes = " ".join(n for _, n in t.notes())
            write(rel, f"{t.title}: accuracy per cell (grader ``{t.grader}``). {notes}")
        for fig in page.figures:
            write(fig["png"], f"{fig['caption']} Error bars: ± 2 standard errors.")
    for fig in extra_figures or []:
        write(fig["png"], f"{fig['caption']} Error bars: ± 2 standard errors.")
    return captions
