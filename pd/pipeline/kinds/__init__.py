"""The built-in job kinds, one module each, in the order of a cell's chain (the order of listings).

Adding a kind: write its module here (a :class:`pd.pipeline.kind.JobKind` subclass decorated
with :func:`pd.pipeline.kind.register`) and add its name to :data:`BUILTIN`.
"""

from importlib import import_module

BUILTIN = ("questions", "answers", "teacher", "adapter", "embeddings", "retrieval", "evaluate", "grade",
           "calibrate_judge", "capability", "manifest", "report")

for _name in BUILTIN:
    import_module(f"{__name__}.{_name}")
