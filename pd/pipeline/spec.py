"""The typed job specifications' common parts: each kind's spec subclasses :class:`JobSpec`.

A specification is everything a job's output depends on: its dictionary form
(:meth:`JobSpec.as_dict`) is what is hashed into the artifact's path, written beside the
output as provenance and passed through Snakemake (``params.spec``), so the field order
and the fields left out when unset (``OMIT_NONE``) keep that form fixed. Each kind's own
class lives in its module of :mod:`pd.pipeline.kinds`; :func:`pd.pipeline.registry.spec_from_dict`
reads a dictionary back.

Nested values that are the config's own data (a dataset's entry, training settings, a
manifest's records) stay mappings; what the jobs read from them goes through the
accessors here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping


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

    def params(self, seed: int, temperature: float = 1.0, max_new_tokens: int | None = None):
        """The :class:`pd.generate.SamplingParams` of these settings (unset ones take the defaults given).

        The config's schema gives every generating job its ``max_new_tokens`` (or the caller its
        mode's default, e.g. :data:`pd.config.EVAL_SAMPLING`): there is no second default here.

        Raises:
            ValueError: neither the settings nor the caller give ``max_new_tokens`` (a bug).
        """
        from pd.generate import SamplingParams

        if self.max_new_tokens is None and max_new_tokens is None:
            raise ValueError("sampling settings without max_new_tokens and no default given")
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
    batch_size: int | str | None = None  # sequences per decoding batch, or "auto"
    base_url: str | None = None
    cache_tag: str | None = None  # names the weights behind an OpenAI-compatible server's model (its cache identity)
    models_extra: dict | None = None


GENERATING_OMIT = frozenset(f.name for f in dataclasses.fields(GeneratingSpec))
