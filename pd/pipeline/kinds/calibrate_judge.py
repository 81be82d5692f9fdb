"""The LLM judge's calibration: its verdicts on the shipped labelled set (pd.evaluation.judge_calibration).

Planned for every cell of an experiment graded by the judge, but its specification names only
the judge: the model, its template (by content), how it runs (backend, server, cache tag, the
model's config entry) and the calibration set (by content). So the judge is calibrated once per
identity, whatever the experiments, and again only when one of these changes; the report of an
experiment graded by the judge reads it from the cell's ``outputs``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.kinds.grade import path_name
from pd.pipeline.sizing import REFERENCE
from pd.pipeline.spec import GENERATING_OMIT, GeneratingSpec


@dataclass(frozen=True)
class CalibrateJudgeSpec(GeneratingSpec):
    KIND: ClassVar[str] = "calibrate_judge"
    OMIT_NONE: ClassVar[frozenset[str]] = GENERATING_OMIT
    judge: str
    template: str  # the judge's prompt template (a name of pd.evaluation.grade.JUDGE_TEMPLATES)
    template_hash: str  # its content (the built-in file or the config's override)
    set_hash: str  # the calibration set's content
    max_new_tokens: int


def judge_template_file(planner, template: str) -> str:
    """The file a judge template is read from: the config's override (``prompts:``), else the built-in one."""
    from pd.prompts import TEMPLATE_DIR

    return planner.cfg["prompts"].get(template) or str(TEMPLATE_DIR / f"{template}.j2")


@register
class CalibrateJudge(JobKind):
    name = "calibrate_judge"
    pattern = PathPattern("{R}/judge-calibration/{rest}.json")
    spec = CalibrateJudgeSpec
    gpu = True
    priority = 5
    base_runtime = 5
    per_cell = True

    def plan(self, planner, c, adapter: str | None) -> str | None:
        """The calibration of the judge that grades this cell (None: the experiment has no judge grader)."""
        from pd.config import dataset_judge_template
        from pd.evaluation.judge_calibration import CALIBRATION_SET
        from pd.pipeline import identity

        exp = planner.cfg["experiments"][planner.experiment]
        if "judge" not in (exp.get("graders") or planner.cfg["grading"]["graders"]):
            return None
        g = planner.cfg["grading"]
        judge = g["judge"]
        template = dataset_judge_template(planner.datasets[c.dataset])
        override = planner.prompt_overrides(judge=True).get(template)
        run = planner.judge_backend()
        local = run["backend"] != "openai"
        spec = CalibrateJudgeSpec(judge=judge, template=template,
                                  template_hash=identity.file_identity(judge_template_file(planner, template)),
                                  set_hash=identity.file_identity(CALIBRATION_SET),
                                  max_new_tokens=g["judge_max_new_tokens"],
                                  prompts={template: override} if override else None, **run,
                                  models_extra=planner.models(judge) if local else None)
        rest = f"{path_name(judge)}/{template}_{planner.hash(spec)}"
        return planner.add(spec, {"rest": rest}, (), judge if local else None)

    def run(self, spec: CalibrateJudgeSpec, out: str) -> None:
        """The judge's verdicts on the calibration set and its agreement with the labels.

        Args:
            spec: the calibration job.
            out: the JSON result (:func:`pd.evaluation.judge_calibration.calibrate`'s, rows included).

        Raises:
            DataError: a malformed calibration set.
        """
        from pd.evaluation.grade import judge_params
        from pd.evaluation.judge_calibration import run_calibration
        from pd.pipeline.jobtools import job_generator

        run_calibration(out, job_generator(spec, spec.judge), spec.template, judge_params(spec.max_new_tokens))

    def workload(self, art, plan):
        """One greedy verdict per calibration candidate (about a hundred)."""
        from pd.pipeline.sizing import Generation, generation_run, lengths

        n = lengths()
        return Generation(calibration_cases(), int(n["judge_prompt"] + 32), art.spec.max_new_tokens, sampled=False,
                          **generation_run(art.spec, plan))

    def resumable(self, art) -> bool:
        """Verdicts are cached as they are made."""
        return True

    def work(self, art, plan) -> float:
        """The calibration's verdicts x the judge's ``max_new_tokens`` over the reference's."""
        return calibration_cases() * art.spec.max_new_tokens / (REFERENCE["items"] * REFERENCE["judge_tokens"])


@functools.cache
def calibration_cases() -> int:
    """The shipped calibration set's candidates (the verdicts a calibration makes)."""
    from pd.evaluation.judge_calibration import load_calibration_set

    return len(load_calibration_set())
