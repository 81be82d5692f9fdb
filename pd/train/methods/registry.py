"""What a training method is, and the registry of methods.

A method is one :class:`Method` subclass in one module of :mod:`pd.train.methods`, registered
with :func:`register`: whether it trains and distils, which expert answers it trains on, the
paper's settings for it, how it builds its training examples, its token loss (a KL for
distilling methods, cross-entropy otherwise) and its own checks. The config's method list,
the grid, the plan, the training loop, ``pd fetch`` and the report's labels read it here; no
other module compares method names.

This module imports neither torch nor the job layer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pd.errors import ConfigError
from pd.registry import Registry


class Method:
    """One method. Subclass it and decorate the class with :func:`register`.

    Class attributes:
        name: the method's name in config.yaml's grids and in adapter paths.
        label: how reports name it.
        order: where reports list it (lower first).
        trains: False only for the untrained base model.
        distils: it learns from a teacher's distribution (a KL loss, the paper's Eq. 1)
            rather than from tokens (cross-entropy).
        direction: the KL's direction when it distils (``forward``: KL(teacher || student)).
        answers: which expert answers it trains on: ``plain``, ``cot`` (chain-of-thought with
            distractor passages) or None (it trains on the passages themselves).
        regularised: part of each batch is instruction data with the base model as teacher (Eq. 2).
        paper: the paper's settings for it (``answer_temperature``, ``training`` overrides),
            under the config's ``methods:`` entry.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    order: ClassVar[int] = 100
    trains: ClassVar[bool] = True
    distils: ClassVar[bool] = False
    direction: ClassVar[str] = "forward"
    answers: ClassVar[str | None] = "plain"
    regularised: ClassVar[bool] = False
    paper: ClassVar[dict[str, Any]] = {}

    def examples(self, cfg: Any, tokens: Any, rows: Any, dataset: Any) -> tuple[list, Any]:
        """The training examples and their build statistics (:mod:`pd.train.sequences`).

        Args:
            cfg: the run's :class:`pd.train.settings.TrainConfig`.
            tokens: the student's :class:`pd.train.sequences.Tokens`.
            rows: the expert's answer rows (None for a method with ``answers = None``).
            dataset: the :class:`pd.data.Dataset` whose passages the rows cite.

        Returns:
            ``(examples, BuildStats)``.
        """
        raise NotImplementedError(f"method {self.name} trains no examples")

    def check(self, cfg: Any) -> None:
        """Refuse settings this method cannot run with (a ConfigError naming the setting)."""

    def data_files(self, training: dict) -> list[str]:
        """Files besides the answers whose content is part of an adapter's identity."""
        return []

    def hub_datasets(self, training: dict) -> dict[str, tuple[str, str | None, str]]:
        """Hub datasets ``pd fetch`` must download for an adapter of this method: name -> (repo, config, split)."""
        return {}


REGISTRY: Registry[Method] = Registry("method", ConfigError)
register = REGISTRY.register
unregister = REGISTRY.unregister


def get_method(name: str) -> Method:
    """The method called ``name``.

    Raises:
        ConfigError: no such method (the message names the known ones).
    """
    return REGISTRY.get_entry(name)


def grid_methods() -> tuple[str, ...]:
    """Every registered method, the base model included, in registration order."""
    return tuple(REGISTRY)


def trained_methods() -> tuple[str, ...]:
    """The methods that train an adapter."""
    return tuple(n for n, m in REGISTRY.items() if m.trains)


def distilling_methods() -> tuple[str, ...]:
    """The methods that learn from a teacher (a KL loss)."""
    return tuple(n for n, m in REGISTRY.items() if m.distils)
