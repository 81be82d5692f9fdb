"""The cost model: GPU memory and time of every job, from measurements.

What a job needs follows from the model's shape (:class:`Shape`), the job's work (rows, token lengths,
sequences to generate) and the GPU (:class:`GPU`: memory, bf16 peak, bandwidth):

* training (:mod:`pd.cost.training`): bf16 weights, the LoRA state in fp32 (weight, gradient, two AdamW
  moments: 16 bytes a parameter), activations per token x micro-batch x length (or, with gradient
  checkpointing, one input per block), the KL's logits; time from matmul FLOPs at a calibrated share of the
  GPU's peak, bandwidth-bound elementwise work and a per-block cost; the layout (processes, micro-batch,
  accumulation, checkpointing, DDP or FSDP) that fits and is fastest;
* generation (:mod:`pd.cost.generation`): weights and KV cache; a decode step from the layers, the batch
  and the context (not from the parameter count alone), by backend and split (layers in turn, or
  tensor-parallel vLLM); prefills and teacher forwards from FLOPs.

Its constants live in ``calibration.yaml`` with the rows they were fitted to and their source (one H200, this
project's own training step and decode loop); ``tests/test_cost.py`` checks every row within +-15 %, and
``bench/calibrate.py`` refits them from a new ``make gpu-check``. GB are 10^9 bytes throughout.
"""

from pd.cost.calibration import GPU, calibration
from pd.cost.shapes import Shape, Tokens, shape_of
from pd.cost.training import Layout, plan_training, train_peak_gb, training_layout

__all__ = ["GPU", "Layout", "Shape", "Tokens", "calibration", "plan_training", "shape_of", "train_peak_gb",
           "training_layout"]
