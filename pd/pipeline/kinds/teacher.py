"""Teacher statistics and top-k targets over the expert's answers (the cached teacher of PD)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pd.pipeline.kind import JobKind, PathPattern, register
from pd.pipeline.sizing import REFERENCE, questions_behind
from pd.pipeline.spec import JobSpec

STATS_FILE = "stats.jsonl"  # per-example teacher entropy and initial KL


@dataclass(frozen=True)
class TeacherSpec(JobSpec):
    KIND: ClassVar[str] = "teacher"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"models_extra"})
    answers: str
    dataset: str
    dataset_cfg: dict
    teacher: str
    student: str
    topk: int
    logprob_dtype: str
    chunk_size: int
    kd_temperature: float
    max_answer_tokens: int
    max_teacher_tokens: int
    models_extra: dict | None = None


@register
class Teacher(JobKind):
    name = "teacher"
    pattern = PathPattern("{R}/{dataset}/teacher/{qstem}/{astem}/{stem}", directory=True)
    spec = TeacherSpec
    gpu = True
    priority = 40
    base_runtime = 60

    def plan(self, planner, c, apath: str, train: dict) -> str:
        """The teacher's statistics (and top-k cache) over the answers ``apath``, with the adapter's settings."""
        from pd.grid import format_value

        spec = TeacherSpec(answers=apath, **planner.data(c), teacher=c.teacher, student=c.model,
                           topk=train["teacher_topk"], logprob_dtype=train["teacher_logprob_dtype"],
                           chunk_size=train["chunk_size"], kd_temperature=c.kd_temperature,
                           max_answer_tokens=train["max_answer_tokens"], max_teacher_tokens=train["max_teacher_tokens"],
                           models_extra=planner.models(c.teacher, c.model))
        a = planner.fields(apath)
        stem = f"{c.teacher}_k{train['teacher_topk']}_T{format_value(c.kd_temperature)}_{planner.hash(spec)}"
        return planner.add(spec, {"dataset": c.dataset, "qstem": a["qstem"], "astem": a["stem"], "stem": stem},
                           (apath,), c.teacher)

    def run(self, spec: TeacherSpec, out: str) -> None:
        """Per-example teacher entropy and initial KL (and, with topk > 0, the top-k targets).

        The pass keeps its finished chunks in ``<out>.work`` (:mod:`pd.train.cache_chunks`): a retry of a job
        killed at its time limit resumes from them.

        Args:
            spec: the teacher job's specification.
            out: the output folder (``stats.jsonl``, ``topk.safetensors`` when ``topk > 0``, ``build.json``).

        Raises:
            DataError: the answers file is missing or malformed.
        """
        from pd.io import atomic_path, read_jsonl, write_json
        from pd.models import get_spec, load_model, load_tokenizer
        from pd.train.cache_builder import build_teacher_cache
        from pd.train.lora import attach_lora
        from pd.train.sequences import Limits, Tokens, pd_examples

        ds = spec.load_dataset()
        rows = read_jsonl(spec.answers)
        extra = spec.models_extra
        student = get_spec(spec.student, extra)
        tok = load_tokenizer(student)
        tokens = Tokens(tok, student)
        examples, build = pd_examples(rows, ds, tokens, Limits(spec.max_answer_tokens, spec.max_teacher_tokens))
        model = attach_lora(load_model(student), rank=1, alpha=2.0)  # zero-initialised: student == base at step 0
        teacher = None
        if spec.teacher != spec.student:
            teacher = load_model(get_spec(spec.teacher, extra))
        with atomic_path(out) as tmp:
            tmp.mkdir()
            build_teacher_cache(model, examples, tokens.pad_id, k=max(1, spec.topk), temperature=spec.kd_temperature,
                                teacher=teacher, logprob_dtype=spec.logprob_dtype, chunk_size=spec.chunk_size,
                                out=tmp / "topk.safetensors" if spec.topk > 0 else None, stats_path=tmp / STATS_FILE,
                                student_tokenizer=tok, teacher_tokenizer=load_tokenizer(get_spec(spec.teacher, extra)),
                                student_name=spec.student, teacher_name=spec.teacher, work=f"{out}.work")
            write_json(tmp / "build.json", {"spec": spec.as_dict(), "sequences": build.as_dict()})

    def resumable(self, art) -> bool:
        """The teacher pass is kept in chunks as it runs (``<out>.work``)."""
        return True

    def workload(self, art, plan):
        """A forward pass of the teacher over each training row (passage, question and answer)."""
        from pd.data import get_loader
        from pd.pipeline.sizing import Forwards, training_tokens

        spec = art.spec
        answers = plan.get(spec.answers).spec
        passages = get_loader(spec.dataset_cfg["loader"]).passages_per_item
        longest, mean = training_tokens(answers.sampling.max_new_tokens, spec.max_answer_tokens,
                                        spec.max_teacher_tokens, passages)
        return Forwards(questions_behind(art, plan) * mean.teacher, longest.teacher)

    def work(self, art, plan) -> float:
        """Questions x ``max_answer_tokens`` (a forward pass over each answer)."""
        ref = REFERENCE
        work = questions_behind(art, plan) * art.spec.max_answer_tokens
        return max(work, 1.0) / (ref["items"] * ref["per_item"] * ref["answer_tokens"])
