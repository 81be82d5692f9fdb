"""The training methods, one module each, and what trains them.

Each method registers itself (:mod:`pd.train.methods.registry`); :data:`BUILTIN` imports the
built-in ones in the order the config's method list shows them. Adding a method: one module
here with a :class:`~pd.train.methods.registry.Method` subclass decorated with
:func:`~pd.train.methods.registry.register`, and its name in :data:`BUILTIN`.

The training data and the loss of a batch (:mod:`pd.train.methods.training`, which imports
torch) are exported lazily, so reading the registry (the config, the plan) stays light.
"""

from importlib import import_module

from pd.train.methods.registry import (  # noqa: F401
    REGISTRY,
    Method,
    distilling_methods,
    get_method,
    grid_methods,
    register,
    trained_methods,
    unregister,
)

BUILTIN = ("base_model", "pd", "pd_reverse", "pd_reg", "sft", "uft", "sft_distractors")

for _name in BUILTIN:
    import_module(f"{__name__}.{_name}")

_LAZY = {"TrainingData": "training", "build_training_data": "training", "load_instruction_pairs": "training",
         "batch_loss": "training", "teacher_groups": "training", "teacher_for": "training", "TULU3": "pd_reg"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
