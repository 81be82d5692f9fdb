"""Typed job specifications: one frozen dataclass per job kind.

The plan (:mod:`pd.plan`) builds them; the stages (:mod:`pd.stages`, :mod:`pd.train.run`)
read them. A specification is everything its output depends on: its dictionary form
(:meth:`JobSpec.as_dict`) is what is hashed into the artifact's path, written beside the
output as provenance and passed through Snakemake (``params.spec``), so the field order
and the fields left out when unset (``OMIT_NONE``) keep that form fixed.
:func:`from_dict` reads it back.

Nested values that are the config's own data (a dataset's entry, training settings, a
manifest's records) stay mappings; what the stages read from them goes through the
accessors here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from pd.config import dataset_judge_template
from pd.paths import KINDS


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of a generating job (None: the generator's or the mode's default).

    ``keys`` holds the settings the config gave, in its order (None values included), so
    the dictionary form is the config's own.
    """

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    keys: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Sampling:
        """The settings of a config's sampling mapping.

        Raises:
            ValueError: a key that is no sampling setting (the schema admits none: a bug).
        """
        unknown = set(d) - _SAMPLING_FIELDS
        if unknown:
            raise ValueError(f"unknown sampling setting(s) {sorted(unknown)}")
        return cls(**dict(d), keys=tuple(d))

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.keys}

    def params(self, seed: int, temperature: float = 1.0, max_new_tokens: int = 256):
        """The :class:`pd.generate.SamplingParams` of these settings (unset ones take the defaults given)."""
        from pd.generate import SamplingParams

        return SamplingParams(temperature=temperature if self.temperature is None else self.temperature,
                              top_k=self.top_k or 0, top_p=1.0 if self.top_p is None else self.top_p,
                              max_new_tokens=max_new_tokens if self.max_new_tokens is None else self.max_new_tokens,
                              seed=seed)


_SAMPLING_FIELDS = {"temperature", "top_k", "top_p", "max_new_tokens"}


@dataclass(frozen=True)
class Distractors:
    """Distractor passages of chain-of-thought answers (``sft_distractors``)."""

    count: int
    gold_drop_prob: float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Distractors:
        return cls(**d)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "gold_drop_prob": self.gold_drop_prob}


_NESTED = {"sampling": Sampling, "distractors": Distractors}


class JobSpec:
    """What every job specification offers: its kind, dictionary form and the config data it carries."""

    KIND: ClassVar[str]
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()  # fields left out of the dictionary when None

    def as_dict(self) -> dict[str, Any]:
        """The specification as the plain dictionary that is hashed and recorded."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None and f.name in self.OMIT_NONE:
                continue
            out[f.name] = v.as_dict() if hasattr(v, "as_dict") else v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """The specification from its dictionary form.

        Raises:
            ValueError: a key the job kind does not have (a bug, or a spec of another kind).
        """
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{cls.KIND} specification: unknown field(s) {sorted(unknown)}")
        values = {k: (_NESTED[k].from_dict(v) if k in _NESTED and v is not None else v) for k, v in d.items()}
        return cls(**values)

    # -- the config data a spec carries ---------------------------------------------------

    @property
    def prompt_paths(self) -> dict[str, str]:
        """Prompt template overrides (template name -> file) the job installs before it runs."""
        return {k: v["path"] for k, v in (getattr(self, "prompts", None) or {}).items()}

    def load_dataset(self):
        """The :class:`pd.data.Dataset` the job reads, as its config entry describes it.

        Raises:
            DataError: the dataset's files are missing or malformed.
        """
        from pd.data import load_dataset

        return load_dataset(self.dataset, self.dataset_cfg)  # type: ignore[attr-defined]

    @property
    def loader(self) -> str | None:
        """The loader of the job's dataset (``squadshifts``, ``hotpotqa``, ``folder``), if it has one."""
        cfg = getattr(self, "dataset_cfg", None)
        return cfg["loader"] if cfg else None


@dataclass(frozen=True, kw_only=True)
class GeneratingSpec(JobSpec):
    """The fields of a job that runs a generator: its prompt overrides and how it runs its model.

    Keyword-only, so that each kind's own fields keep their order in front of them; every
    field unset (None) is left out of the dictionary, as :data:`GENERATING_OMIT` says.
    """

    prompts: dict | None = None
    backend: str | None = None
    batch_size: int | None = None
    base_url: str | None = None
    cache_tag: str | None = None  # names the weights behind an OpenAI-compatible server's model (its cache identity)
    models_extra: dict | None = None


GENERATING_OMIT = frozenset(f.name for f in dataclasses.fields(GeneratingSpec))


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


@dataclass(frozen=True)
class AdapterSpec(JobSpec):
    KIND: ClassVar[str] = "adapter"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"answers", "teacher_model", "teacher", "models_extra",
                                                     "reg_data_hash"})
    method: str
    model: str
    dataset: str
    dataset_cfg: dict
    seed: int
    subset: str
    answers: str | None = None  # not for UFT, which trains on the passages
    teacher_model: str | None = None  # distilling methods
    teacher: str | None = None  # the teacher job's folder (top-k cache, per-example statistics)
    training: dict = field(default_factory=dict)  # TrainConfig fields and heldout_fraction
    models_extra: dict | None = None
    reg_data_hash: str | None = None  # pd_reg: the content of a local training.reg_data file

    @property
    def heldout_fraction(self) -> float:
        """Extra questions generated and held out, relative to the training questions (0: none)."""
        return float(self.training.get("heldout_fraction", 0.0))

    def train_config(self):
        """The :class:`pd.train.settings.TrainConfig` of this adapter (held-out settings aside)."""
        from pd.train.settings import TrainConfig

        settings = {k: v for k, v in self.training.items() if k != "heldout_fraction"}
        return TrainConfig.from_dict(settings, method=self.method, seed=self.seed)


@dataclass(frozen=True)
class RetrievalSpec(JobSpec):
    KIND: ClassVar[str] = "retrieval"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"dense_model", "embedding_model"})
    dataset: str
    dataset_cfg: dict
    retriever: str
    k: int
    dense_model: str | None = None
    embedding_model: str | None = None

    @property
    def retriever_model(self) -> str | None:
        """The embedding model of a dense or OpenAI retriever."""
        return self.dense_model or self.embedding_model


@dataclass(frozen=True)
class EvaluateSpec(GeneratingSpec):
    KIND: ClassVar[str] = "evaluate"
    OMIT_NONE: ClassVar[frozenset[str]] = GENERATING_OMIT
    dataset: str
    dataset_cfg: dict
    model: str
    adapter: str | None
    snapshot: float | None
    retrieval: str | None  # the retrieval job's output
    retriever: str
    seed: int
    sampling: Sampling
    # What each row scores beyond the answer; part of the identity, so that evaluations made before the
    # gold-answer log-likelihood existed are recomputed rather than mixed with rows that carry it.
    metrics: tuple[str, ...] = ("gold_logprob",)


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
        return dataset_judge_template(self.dataset_cfg)


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


@dataclass(frozen=True)
class ManifestSpec(JobSpec):
    KIND: ClassVar[str] = "manifest"
    experiment: str
    table: dict
    paper_table: str | None
    description: str
    records: list  # pd.plan.manifest_records


@dataclass(frozen=True)
class ReportSpec(JobSpec):
    KIND: ClassVar[str] = "report"
    manifests: list
    out_dir: str


SPECS: dict[str, type] = {cls.KIND: cls for cls in (QuestionsSpec, AnswersSpec, TeacherSpec, AdapterSpec, RetrievalSpec,
                                                     EvaluateSpec, GradeSpec, CapabilitySpec, ManifestSpec, ReportSpec)}
if tuple(SPECS) != KINDS:
    raise RuntimeError(f"one specification class per job kind of pd.paths: {tuple(SPECS)} != {KINDS}")


def from_dict(kind: str, d: Mapping[str, Any]) -> JobSpec:
    """The typed specification of a job of ``kind`` from its dictionary form.

    Raises:
        KeyError: an unknown job kind.
        ValueError: a key that kind does not have.
    """
    return SPECS[kind].from_dict(d)
