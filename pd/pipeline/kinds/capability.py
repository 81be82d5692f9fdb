"""MMLU-Pro rows of a cell's model, with or without its adapter: the forgetting check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.sizing import REFERENCE
from pd.pipeline.spec import JobSpec


@dataclass(frozen=True)
class CapabilitySpec(JobSpec):
    KIND: ClassVar[str] = "capability"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"models_extra"})
    model: str
    adapter: str | None
    path: str | None  # the MMLU-Pro file
    limit: int | None
    hash: str | None  # of that file
    models_extra: dict | None = None


@register
class Capability(JobKind):
    name = "capability"
    pattern = PathPattern("{R}/capability/{rest}.jsonl")
    spec = CapabilitySpec
    gpu = True
    priority = 10
    base_runtime = 30
    per_cell = True

    def plan(self, planner, c, adapter: str | None) -> str | None:
        """MMLU-Pro accuracy of a cell's model (base, or with ``adapter``), when the experiment measures
        forgetting (its ``capability`` setting); else None."""
        from pd.pipeline import identity

        if not planner.cfg["experiments"][planner.experiment]["capability"]:
            return None
        cap = planner.cfg["capability"]
        spec = CapabilitySpec(model=c.model, adapter=adapter, path=cap["path"], limit=cap["limit"],
                              hash=identity.file_identity(cap["path"]), models_extra=planner.models(c.model))
        where = planner.adapter_place(adapter) if adapter else f"base/{c.model}"
        return planner.add(spec, {"rest": f"{where}/mmlu_pro_{planner.hash(spec)}"}, (adapter,) if adapter else (),
                           c.model)

    def run(self, spec: CapabilitySpec, out: str) -> None:
        """MMLU-Pro rows of the model (with its adapter).

        Args:
            spec: the capability job.
            out: the JSONL of per-question rows; accuracy goes to ``.summary.json``.

        Raises:
            DataError: the MMLU-Pro file is missing.
        """
        from pd.evaluation.mmlu import run_mmlu

        run_mmlu(spec.model, spec.path, out, adapter=spec.adapter, limit=spec.limit, models_extra=spec.models_extra)

    def workload(self, art, plan):
        """One scoring forward pass per MMLU-Pro question."""
        from pd.pipeline.sizing import Forwards, lengths

        questions = art.spec.limit or REFERENCE["mmlu_questions"]
        return Forwards(int(questions * lengths()["mmlu_prompt"]), int(lengths()["mmlu_prompt"]))

    def work(self, art, plan) -> float:
        """MMLU-Pro questions scored (``limit``) over the reference's."""
        return max(art.spec.limit or REFERENCE["mmlu_questions"], 1.0) / REFERENCE["mmlu_questions"]
