"""Questions about each passage, written by the generator model (the paper's training questions)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.sizing import REFERENCE, dataset_size, generation_run
from pd.pipeline.spec import GENERATING_OMIT, GeneratingSpec, Sampling


@dataclass(frozen=True)
class QuestionsSpec(GeneratingSpec):
    KIND: ClassVar[str] = "questions"
    OMIT_NONE: ClassVar[frozenset[str]] = GENERATING_OMIT | {"per_passage"}
    dataset: str
    dataset_cfg: dict
    generator: str
    mode: str
    per_item: int  # questions per passage, held-out ones included
    heldout_per_item: int  # of which held out of training
    seed: int
    sampling: Sampling
    max_rounds: int
    per_passage: bool | None = None  # True: per_item questions per passage (documents without test questions)

    def question_count(self) -> int:
        """Questions the job writes (held-out ones included): ``per_item`` x the passages the test items cite
        (HotpotQA's items cite two each), or x passages."""
        from pd.data import get_loader

        passages, items = dataset_size(self.dataset_cfg)
        if self.per_passage:
            return self.per_item * passages
        return round(self.per_item * items * get_loader(self.dataset_cfg["loader"]).passages_per_item)


@register
class Questions(JobKind):
    name = "questions"
    pattern = PathPattern("{R}/{dataset}/questions/{stem}.jsonl")
    spec = QuestionsSpec
    gpu = True
    priority = 40  # the chain that feeds training is every grid's critical path
    base_runtime = 60

    def plan(self, planner, c) -> str:
        """The questions of a cell's dataset, generator and question count (shared across methods)."""
        from pd import config as pdc

        q = planner.gen["questions"]
        dseed = c.seed if q["per_seed"] else 0
        heldout = planner.training(c)["heldout_fraction"]
        total = c.n_questions + pdc.heldout_extra(c.n_questions, heldout)
        mode = "bonito" if c.qgen.startswith("bonito") else q["mode"]  # a Bonito-style generator has its own prompt
        sampling = Sampling.from_dict({k: q[k] for k in ("temperature", "top_k", "top_p", "max_new_tokens")})
        spec = QuestionsSpec(**planner.data(c), generator=c.qgen, mode=mode, per_item=total,
                             heldout_per_item=total - c.n_questions, seed=dseed, sampling=sampling,
                             max_rounds=q["max_rounds"], prompts=planner.prompt_overrides(), **planner.backend(),
                             models_extra=planner.models(c.qgen), per_passage=planner.per_passage(c.dataset))
        stem = f"{c.qgen}_{mode}_n{c.n_questions}_s{dseed}_{planner.hash(spec)}"
        return planner.add(spec, {"dataset": c.dataset, "stem": stem}, (), c.qgen)

    def run(self, spec: QuestionsSpec, out: str) -> None:
        """Questions about each passage: ``per_item`` per test question citing it, or per passage when
        ``per_passage`` (held-out ones included).

        Args:
            spec: the questions job.
            out: the JSONL of question rows; yields go to ``<out stem>.stats.json``.

        Raises:
            DataError: the dataset's files are missing; ConfigError: an unknown generator.
        """
        from pd.context import check_dataset_fits
        from pd.io import write_with_stats
        from pd.pipeline.jobtools import job_generator, provenance
        from pd.questions import QGenConfig, generate_questions

        s = spec.sampling
        cfg = QGenConfig(mode=spec.mode, per_item=spec.per_item, per_passage=bool(spec.per_passage), seed=spec.seed,
                         max_rounds=spec.max_rounds, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                         max_new_tokens=s.max_new_tokens)
        ds, gen = spec.load_dataset(), job_generator(spec, spec.generator)
        check_dataset_fits(gen, ds, s.max_new_tokens or 512)  # a document the model cannot read fails here, by name
        rows, stats = generate_questions(ds, gen, cfg)
        write_with_stats(out, rows, stats | provenance(spec))

    def workload(self, art, plan):
        """Calls x rounds (as :meth:`work` counts them) rows of the mode's ``max_new_tokens`` after the
        question-writing prompt and a passage."""
        from pd.pipeline.sizing import Generation, lengths
        from pd.questions import MODE_DEFAULTS, PER_CALL

        spec, n = art.spec, lengths()
        new = spec.sampling.max_new_tokens or MODE_DEFAULTS[spec.mode]["max_new_tokens"]
        calls = math.ceil(spec.question_count() / PER_CALL[spec.mode]) * min(spec.max_rounds, REFERENCE["rounds"])
        temperature = spec.sampling.temperature
        return Generation(calls, int(n["question_prompt"] + n["passage"]), new,
                          sampled=temperature is None or temperature > 0, **generation_run(spec, plan))

    def resumable(self, art) -> bool:
        """Completions are cached in chunks as they are made (:class:`pd.generate.cache.CachedGenerator`)."""
        return True

    def work(self, art, plan) -> float:
        """Calls x ``max_new_tokens`` x rounds (calls: questions / questions per call; the first round makes
        every call, later ones only the shortfall, counted as ``min(max_rounds, 2)``)."""
        from pd.questions import MODE_DEFAULTS, PER_CALL

        spec, ref = art.spec, REFERENCE
        tokens = spec.sampling.max_new_tokens or MODE_DEFAULTS[spec.mode]["max_new_tokens"]
        rounds = min(spec.max_rounds, ref["rounds"])
        work = spec.question_count() / PER_CALL[spec.mode] * tokens * rounds
        base = ref["items"] * ref["per_item"] / ref["per_call"] * ref["question_tokens"] * ref["rounds"]
        return max(work, 1.0) / base
