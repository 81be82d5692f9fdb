"""Knowledge injection by prompt distillation: a benchmark harness.

All logic of the harness lives in this package; the Snakemake workflow and the ``pd``
command are thin callers of it.
"""

__version__ = "0.1.0"
