"""Per-experiment manifests: which grade files make which table cell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.spec import JobSpec


@dataclass(frozen=True)
class ManifestSpec(JobSpec):
    KIND: ClassVar[str] = "manifest"
    experiment: str
    table: dict
    paper_table: str | None
    description: str
    records: list  # pd.pipeline.plan.manifest_records


@register
class Manifest(JobKind):
    name = "manifest"
    pattern = PathPattern("{R}/manifests/{experiment}.json", timed=False)
    spec = ManifestSpec
    base_runtime = 15
    size_independent = True
    local = True
    generic_rule = False  # a local rule without benchmark or resources (workflow/rules/report.smk)

    def run(self, spec: ManifestSpec, out: str) -> None:
        """The experiment's manifest: its specification, records included.

        Args:
            spec: the manifest job.
            out: the JSON file.
        """
        from pd.io import write_json

        write_json(out, spec.as_dict())
