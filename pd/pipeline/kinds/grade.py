"""Per-answer grades of an evaluation: substring match or an LLM judge."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.sizing import REFERENCE, dataset_size
from pd.pipeline.spec import GENERATING_OMIT, GeneratingSpec


@dataclass(frozen=True)
class GradeSpec(GeneratingSpec):
    KIND: ClassVar[str] = "grade"
    OMIT_NONE: ClassVar[frozenset[str]] = GENERATING_OMIT | {"judge", "max_new_tokens", "mode"}
    eval: str  # the evaluation job's output
    dataset: str
    dataset_cfg: dict
    grader: str  # judge | substring
    judge: str | None = None
    max_new_tokens: int | None = None
    mode: str | None = None  # substring matching mode

    @property
    def judge_template(self) -> str:
        """The judge's prompt template for this dataset (its config entry's ``judge_template``, else its loader's)."""
        from pd.config import dataset_judge_template

        return dataset_judge_template(self.dataset_cfg)


def path_name(model: str) -> str:
    """A judge's name as a path part: characters other than letters, digits, ``-`` and ``_`` become ``_``
    (a server's model name may hold ``/`` or ``.``; a path's grader part holds neither).

    Args:
        model: the judge's model name.

    Returns:
        The name to put in a path.
    """
    return re.sub(r"[^A-Za-z0-9_-]", "_", model)


@register
class Grade(JobKind):
    name = "grade"
    pattern = PathPattern("{R}/{dataset}/grades/{rest}.{grader}.jsonl")
    spec = GradeSpec
    gpu = True
    priority = 5
    base_runtime = 60

    def plan(self, planner, c, epath: str, grader: str) -> str:
        """The grades of the evaluation ``epath`` by ``grader`` (``judge`` or ``substring``).

        A judge's grades are named by the judge and the hash of their specification (the answers'
        file, the judge, how it runs, the prompt overrides): another judge, template or backend
        writes new grades beside the old ones from the same answers, which are not regenerated
        (the evaluation's specification holds no grading setting). Substring grades keep their name.
        """
        g = planner.cfg["grading"]
        if grader == "judge":
            judge = g["judge"]
            run = planner.judge_backend()
            spec = GradeSpec(eval=epath, **planner.data(c), grader=grader, judge=judge,
                             max_new_tokens=g["judge_max_new_tokens"], prompts=planner.prompt_overrides(judge=True),
                             **run, models_extra=planner.models(judge) if run["backend"] != "openai" else None)
            name = f"judge-{path_name(judge)}_{planner.hash(spec)}"
            model = None if run["backend"] == "openai" else judge  # a server elsewhere: nothing loaded here
        else:
            model = None
            spec = GradeSpec(eval=epath, **planner.data(c), grader=grader, mode=g["substring_mode"])
            name = f"substring-{g['substring_mode']}"
        fields = {"dataset": c.dataset, "rest": planner.fields(epath)["rest"], "grader": name}
        return planner.add(spec, fields, (epath,), model)

    def run(self, spec: GradeSpec, out: str) -> None:
        """Per-answer grades of the evaluation ``spec.eval``: substring match or an LLM judge.

        Args:
            spec: the grade job.
            out: the JSONL of per-answer grades; accuracy goes to ``.summary.json``.

        Raises:
            DataError: a missing or malformed evaluation file.
        """
        from pd.evaluation.grade import grade_file, judge_params
        from pd.pipeline.jobtools import job_generator

        ds = spec.load_dataset()
        if spec.grader == "judge":
            grade_file(spec.eval, ds, out, "judge", generator=job_generator(spec, spec.judge),
                       template=spec.judge_template, params=judge_params(spec.max_new_tokens))
        else:
            grade_file(spec.eval, ds, out, "substring", mode=spec.mode)

    def workload(self, art, plan):
        """A judge's verdict per test item after its prompt and the graded answer; substring grades run no model."""
        from pd.pipeline.sizing import Generation, generation_run, lengths

        spec, n = art.spec, lengths()
        if not spec.judge:
            return None
        answer = plan.get(spec.eval).spec.sampling.max_new_tokens or REFERENCE["eval_tokens"]
        return Generation(dataset_size(spec.dataset_cfg)[1], int(n["judge_prompt"] + answer),
                          spec.max_new_tokens or REFERENCE["judge_tokens"], sampled=False, **generation_run(spec, plan))

    def resumable(self, art) -> bool:
        """Verdicts are cached in chunks as they are made."""
        return True

    def work(self, art, plan) -> float:
        """Test items x the judge's ``max_new_tokens`` (substring grades load no model: counted at the reference's)."""
        items = dataset_size(art.spec.dataset_cfg)[1]
        tokens = art.spec.max_new_tokens or REFERENCE["judge_tokens"]
        return max(items * tokens, 1.0) / (REFERENCE["items"] * REFERENCE["judge_tokens"])
