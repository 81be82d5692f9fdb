"""Datasets: the record model (:mod:`pd.data.dataset`) and the loaders, one module each.

Adding a loader: one module here with a :class:`~pd.data.loaders.Loader` subclass decorated
with :func:`~pd.data.loaders.register`, and its name in :data:`BUILTIN`.
"""

from importlib import import_module

from pd.data.dataset import Dataset, Document, TestItem, load_hub_dataset  # noqa: F401
from pd.data.loaders import (  # noqa: F401
    PAPER_SIZE,
    REGISTRY,
    Loader,
    dataset_size,
    get_loader,
    load_dataset,
    loader_names,
    passage_lengths,
    register,
    unregister,
)

BUILTIN = ("squadshifts", "hotpotqa", "folder")

for _name in BUILTIN:
    import_module(f"{__name__}.{_name}")

from pd.data.folder import DOC_SUFFIXES, load_folder  # noqa: E402,F401
from pd.data.hotpotqa import hotpotqa_from_examples, load_hotpotqa  # noqa: E402,F401
from pd.data.squadshifts import (  # noqa: E402,F401
    SQUADSHIFTS_DIR,
    SQUADSHIFTS_SUBSETS,
    load_squadshifts,
    parse_squadshifts_line,
    unquote_csv_line,
)
