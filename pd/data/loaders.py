"""What a dataset loader is, the registry of loaders, and loading or sizing a config's dataset entry.

A loader is one :class:`Loader` subclass in one module of :mod:`pd.data` (``squadshifts``,
``hotpotqa``, ``folder``), registered with :func:`register`: its defaults (judge template,
retrieval depth), the settings it requires, how it loads a :class:`~pd.data.dataset.Dataset`
and sizes it without downloading, what enters its identity by content and what ``pd fetch``
downloads for it. The config schema's loader list, the config checks, the plan, the cost
model and ``pd fetch`` read it here; no other module compares loader names.
"""

from __future__ import annotations

import functools
import json
from typing import Any, ClassVar

from pd.errors import ConfigError, DataError, PDError
from pd.registry import Registry

# A dataset of the paper's size, assumed while a dataset's files are not here (yet): passages, test items.
PAPER_SIZE = (200, 1000)


class Loader:
    """One dataset loader. Subclass it and decorate the class with :func:`register`.

    Class attributes:
        name: the ``loader:`` value of a dataset entry.
        defaults: its own dataset settings over :data:`pd.config.DATASET_DEFAULTS` (``judge_template``,
            ``retrieval_k``); a dataset entry's own values win.
        required: settings an entry must give, each with what it expects.
        path_is_folder: its ``path`` setting names a folder (else a file).
        needs_test_items: a dataset of it without test questions is an error (a folder may have none).
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    required: ClassVar[dict[str, str]] = {}
    path_is_folder: ClassVar[bool] = False
    needs_test_items: ClassVar[bool] = True

    def load(self, name: str, settings: dict[str, Any]):
        """The :class:`~pd.data.dataset.Dataset` an entry describes (before any passage slice).

        Raises:
            DataError: a missing or malformed file.
        """
        raise NotImplementedError

    def size(self, settings: dict[str, Any]) -> tuple[int, int]:
        """Passages and test items of an entry, for the cost model; never downloads.

        The default loads the files (once per process, :func:`dataset_size` caches); files that are
        not here (yet) count as :data:`PAPER_SIZE`.
        """
        try:
            ds = load_dataset(settings.get("name", "dataset"), settings)
        except PDError:
            return PAPER_SIZE
        return len(ds.documents), len(ds.items)

    def passage_lengths(self, settings: dict[str, Any]) -> list[int] | None:
        """The characters of each passage of an entry (the plan counts UFT's chunks from them); never downloads.

        The default loads the files (once per process, :func:`passage_lengths` caches); None while they are not
        here (yet).
        """
        try:
            ds = load_dataset(settings.get("name", "dataset"), settings)
        except PDError:
            return None
        return [len(d.text) for d in ds.documents.values()]

    passages_per_item: int = 1  # gold passages a test item cites (questions are written for each; a prompt holds them)

    def questions_per_passage(self, settings: dict[str, Any]) -> bool:
        """Whether training questions are written per passage (a dataset without test questions)."""
        return False

    def display_name(self, name: str, settings: dict[str, Any]) -> str:
        """How reports name a dataset of this loader (a column header, a caption): the entry's name by default.

        Args:
            name: the dataset's key in ``datasets:``.
            settings: its resolved entry.

        Returns:
            A short name; a ``passages`` slice is said after it (``NYT, 4 passages``).
        """
        return with_slice(name, settings)

    def content_identity(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """What enters every job's identity by content besides the files an entry names (a folder's documents)."""
        return {}

    def hub_datasets(self, settings: dict[str, Any]) -> dict[str, tuple[str, str | None, str]]:
        """Hub datasets ``pd fetch`` downloads for an entry: name -> (repo, configuration, split)."""
        return {}


def with_slice(label: str, settings: dict[str, Any]) -> str:
    """``label``, with the entry's ``passages`` slice said after it (``NYT, 4 passages``)."""
    passages = settings.get("passages")
    return f"{label}, {passages} passages" if passages else label


def display_name(name: str, settings: dict[str, Any]) -> str:
    """The report's name of the dataset ``name`` with entry ``settings`` (its loader's :meth:`Loader.display_name`)."""
    return get_loader(settings["loader"]).display_name(name, settings)


REGISTRY: Registry[Loader] = Registry("dataset loader", ConfigError)
register = REGISTRY.register
unregister = REGISTRY.unregister


def get_loader(name: str) -> Loader:
    """The loader called ``name``.

    Raises:
        ConfigError: no such loader (the message names the known ones).
    """
    return REGISTRY.get_entry(name)


def loader_names() -> tuple[str, ...]:
    """Every registered loader's name."""
    return tuple(REGISTRY)


def load_dataset(name: str, settings: dict[str, Any]):
    """The dataset a config entry (``datasets.<name>``, already validated) describes.

    Args:
        name: the entry's name (becomes the dataset's name).
        settings: the entry (``loader`` and the loader's settings, optional ``passages``/``passage_offset``).

    Returns:
        The dataset, sliced when the entry says so.

    Raises:
        DataError: an unknown loader, anything its loader refuses, or a slice without test questions.
    """
    try:
        loader = get_loader(settings["loader"])
    except ConfigError as err:
        raise DataError(f"datasets.{name}.loader: {err}") from None
    ds = loader.load(name, settings)
    if settings.get("passages") or settings.get("passage_offset"):
        ds = ds.select_passages(settings.get("passages"), settings.get("passage_offset", 0))
        if not ds.items and loader.needs_test_items:
            raise DataError(f"datasets.{name}: the passage slice holds no test questions")
    ds.name = name
    return ds


@functools.lru_cache(maxsize=64)
def _dataset_size(cfg_json: str) -> tuple[int, int]:
    cfg = json.loads(cfg_json)
    return get_loader(cfg["loader"]).size(cfg)


def dataset_size(dataset_cfg: dict) -> tuple[int, int]:
    """Passages and test items of a dataset entry (:meth:`Loader.size`; local files read once per process).

    Args:
        dataset_cfg: the config's entry (``loader`` and its settings).

    Returns:
        ``(passages, items)``; a hub dataset from its settings (no download), a dataset whose files
        are missing as :data:`PAPER_SIZE`.
    """
    return _dataset_size(json.dumps(dataset_cfg, sort_keys=True, default=str))


@functools.lru_cache(maxsize=64)
def _passage_lengths(cfg_json: str) -> tuple[int, ...] | None:
    cfg = json.loads(cfg_json)
    chars = get_loader(cfg["loader"]).passage_lengths(cfg)
    return None if chars is None else tuple(chars)


def passage_lengths(dataset_cfg: dict) -> tuple[int, ...] | None:
    """The characters of each passage of a dataset entry (:meth:`Loader.passage_lengths`; read once per process).

    Args:
        dataset_cfg: the config's entry (``loader`` and its settings).

    Returns:
        One length per passage (after the entry's passage slice), or None while its files are not here or a
        hub dataset is not downloaded.
    """
    return _passage_lengths(json.dumps(dataset_cfg, sort_keys=True, default=str))
