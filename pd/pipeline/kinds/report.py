"""The HTML report and the tables over every selected experiment's manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.spec import JobSpec


@dataclass(frozen=True)
class ReportSpec(JobSpec):
    KIND: ClassVar[str] = "report"
    manifests: list
    out_dir: str


@register
class Report(JobKind):
    name = "report"
    pattern = PathPattern("{reports}/index.html", timed=False)
    spec = ReportSpec
    base_runtime = 15
    size_independent = True
    local = True
    generic_rule = False  # its outputs include each experiment's table for `snakemake --report`

    def run(self, spec: ReportSpec, out: str) -> None:
        """The HTML report and tables of the manifests.

        Args:
            spec: the report job.
            out: ``index.html`` in the reports folder.

        Raises:
            RuntimeError: the report was written somewhere else than ``out`` (a bug).
        """
        from pd.report import render_reports

        result = render_reports(spec.manifests, spec.out_dir)
        if str(result.index) != out and Path(out).resolve() != Path(result.index).resolve():
            raise RuntimeError(f"the report was written to {result.index}, expected {out}")
