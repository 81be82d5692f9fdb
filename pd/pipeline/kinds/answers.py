"""The expert's answers to the training questions, with the passage in its prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.sizing import REFERENCE, questions_behind
from pd.pipeline.spec import GENERATING_OMIT, Distractors, GeneratingSpec, Sampling


@dataclass(frozen=True)
class AnswersSpec(GeneratingSpec):
    KIND: ClassVar[str] = "answers"
    OMIT_NONE: ClassVar[frozenset[str]] = GENERATING_OMIT | {"distractors"}
    questions: str
    dataset: str
    dataset_cfg: dict
    expert: str
    kind: str  # plain | cot
    seed: int
    sampling: Sampling
    distractors: Distractors | None = None


@register
class Answers(JobKind):
    name = "answers"
    pattern = PathPattern("{R}/{dataset}/answers/{qstem}/{stem}.jsonl")
    spec = AnswersSpec
    gpu = True
    priority = 40
    base_runtime = 120

    def plan(self, planner, c) -> str:
        """The expert's answers to the cell's questions, of the kind its method trains on."""
        from pd.grid import format_value
        from pd.train.methods import get_method

        qpath = planner.need("questions", c)
        kind = get_method(c.method).answers  # plain, or cot: chain-of-thought answers with distractors
        train = planner.training(c)
        distractors = Distractors(train["distractors"], train["gold_drop_prob"]) if kind == "cot" else None
        sampling = Sampling.from_dict({"temperature": c.answer_temperature, **planner.gen["answers"]})
        spec = AnswersSpec(questions=qpath, **planner.data(c), expert=c.expert, kind=kind,
                           seed=c.seed if planner.gen["questions"]["per_seed"] else 0, sampling=sampling,
                           prompts=planner.prompt_overrides(), **planner.backend(),
                           models_extra=planner.models(c.expert), distractors=distractors)
        stem = f"{c.expert}_{kind}_t{format_value(c.answer_temperature)}_{planner.hash(spec)}"
        fields = {"dataset": c.dataset, "qstem": planner.fields(qpath)["stem"], "stem": stem}
        return planner.add(spec, fields, (qpath,), c.expert)

    def run(self, spec: AnswersSpec, out: str) -> None:
        """The expert's answers, with the passage in its prompt, to each question of ``spec.questions``.

        Args:
            spec: the answers job (``kind`` cot: chain-of-thought answers with distractor passages).
            out: the JSONL of answer rows; yields go to ``<out stem>.stats.json``.

        Raises:
            DataError: a missing or malformed questions file.
        """
        from pd.answers import generate_answers, generate_cot_answers
        from pd.io import read_jsonl, write_with_stats
        from pd.pipeline.jobtools import job_generator, provenance

        ds = spec.load_dataset()
        rows = read_jsonl(spec.questions)
        params = spec.sampling.params(spec.seed)
        gen = job_generator(spec, spec.expert)
        if spec.kind == "cot":
            d = spec.distractors
            out_rows, stats = generate_cot_answers(rows, ds, gen, params, spec.expert, seed=spec.seed,
                                                   distractors=d.count, gold_drop_prob=d.gold_drop_prob)
        else:
            out_rows, stats = generate_answers(rows, ds, gen, params, spec.expert)
        write_with_stats(out, out_rows, stats | provenance(spec))

    def workload(self, art, plan):
        """One answer of up to ``max_new_tokens`` per question, after the question and the passages the expert
        sees (its gold passages, and distractors when set)."""
        from pd.data import get_loader
        from pd.pipeline.sizing import Generation, generation_run, lengths

        spec, n = art.spec, lengths()
        passages = get_loader(spec.dataset_cfg["loader"]).passages_per_item
        if spec.distractors is not None:
            passages += spec.distractors.count
        temperature = spec.sampling.temperature
        return Generation(questions_behind(art, plan), int(n["chat"] + passages * n["passage"]),
                          spec.sampling.max_new_tokens, sampled=temperature is None or temperature > 0,
                          **generation_run(spec, plan))

    def resumable(self, art) -> bool:
        """Completions are cached in chunks as they are made."""
        return True

    def work(self, art, plan) -> float:
        """Questions x the answers' ``max_new_tokens`` (the schema always sets it)."""
        ref = REFERENCE
        work = questions_behind(art, plan) * art.spec.sampling.max_new_tokens
        return max(work, 1.0) / (ref["items"] * ref["per_item"] * ref["answer_tokens"])
