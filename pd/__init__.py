"""Knowledge injection by prompt distillation: a benchmark harness.

All logic of the harness lives in this package; the Snakemake workflow and the ``pd``
command are thin callers of it.
"""

import warnings

__version__ = "0.1.0"

# PEFT reads transformers 5's deprecated ``is_gradient_checkpointing`` whenever it wraps a model: one
# FutureWarning per adapter built or loaded, about code that is not pd's and that no user setting changes.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
