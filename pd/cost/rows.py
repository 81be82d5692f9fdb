"""Measured rows (``calibration.yaml``'s, or a ``make gpu-check``'s) and what the cost model predicts for each.

A row is a mapping with the fields of its section in ``calibration.yaml``:

* ``training``: ``model``, ``rank``, ``micro`` (rows per micro-batch), ``tokens`` (student, teacher, answer of the
  longest row), ``checkpointing``; measured ``peak_gb`` (``torch.cuda.max_memory_allocated``) and ``step_s``
  (one micro-batch's forward and backward with the live teacher, then clipping and the AdamW step);
* ``decoding``: ``model`` (``layers`` when only some of its layers ran), ``batch``, ``prompt``, ``new``, ``sampled``;
  measured ``call_ms`` (ms per forward call of a whole ``generate``, prefill included);
* ``forward``: ``model`` (``layers``), ``tokens``; measured ``s`` (one forward pass without gradients).

Every row has a ``source``. :func:`predict` gives the model's values for a row's measured fields, on the GPU it was
measured on (default: the calibration's, :func:`~pd.cost.calibration.reference_gpu`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pd.cost.calibration import GPU, calibration, reference_gpu
from pd.cost.generation import forward_s, generation_s
from pd.cost.shapes import Shape, Tokens, shape_of
from pd.cost.training import micro_step_s, optimizer_s, train_peak_gb

# section -> its rows' fields (what describes the run, then what was measured), as calibration.yaml writes them
FIELDS: dict[str, tuple[str, ...]] = {
    "training": ("model", "rank", "micro", "tokens", "checkpointing", "peak_gb", "step_s", "source"),
    "decoding": ("model", "batch", "prompt", "new", "sampled", "call_ms", "source"),
    "forward": ("model", "tokens", "s", "source"),
}
MEASURED: dict[str, tuple[str, ...]] = {"training": ("peak_gb", "step_s"), "decoding": ("call_ms",),
                                        "forward": ("s",)}


def row_shape(row: Mapping[str, Any], registry: Mapping[str, Any] | None = None) -> Shape:
    """The shape a row was measured on: its ``model`` (a registry name, or one without the ``-instruct`` the
    catalogue's chat models end in, as ``calibration.yaml`` writes them), with ``layers`` if the row has them.

    Args:
        row: a measured row.
        registry: model specs by name (default: :data:`pd.models.BUILTIN`).

    Returns:
        The :class:`Shape`.

    Raises:
        KeyError: the model is in neither form in the registry.
    """
    if registry is None:
        from pd.models import BUILTIN as registry
    name = row["model"]
    if name not in registry:
        if f"{name}-instruct" not in registry:
            raise KeyError(f"calibration row {row.get('source', row)!r}: unknown model {name!r}")
        name = f"{name}-instruct"
    shape = shape_of(registry[name])
    return dataclasses.replace(shape, layers=int(row["layers"])) if row.get("layers") else shape


def predict(section: str, row: Mapping[str, Any], gpu: GPU | None = None,
            registry: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The cost model's values of a row's measured fields (:data:`MEASURED`), with the current constants.

    Args:
        section: ``training``, ``decoding`` or ``forward``.
        row: the row (its section's :data:`FIELDS`; the measured ones may be missing).
        gpu: the GPU it ran on (default: the calibration's).
        registry: model specs by name (default: the catalogue).

    Returns:
        Measured field -> predicted value.

    Raises:
        ValueError: an unknown section.
    """
    gpu = gpu or reference_gpu()
    shape = row_shape(row, registry)
    if section == "training":
        tokens = Tokens(*(int(t) for t in row["tokens"]))
        ck = bool(row["checkpointing"])
        step = (micro_step_s(shape, row["rank"], row["micro"], tokens, checkpointing=ck, live_teacher=True, gpu=gpu)
                + optimizer_s(shape, row["rank"], gpu))
        return {"peak_gb": train_peak_gb(shape, row["rank"], row["micro"], tokens, checkpointing=ck),
                "step_s": step}
    if section == "decoding":
        seconds = generation_s(shape, row["batch"], row["prompt"], row["new"], batch=row["batch"],
                               sampled=bool(row["sampled"]), gpu=gpu)
        return {"call_ms": 1000 * seconds / row["new"]}  # ms per forward call, the prefill's share included
    if section == "forward":
        return {"s": forward_s(shape, row["tokens"], gpu)}
    raise ValueError(f"unknown calibration section {section!r}; allowed: {sorted(MEASURED)}")


def errors(section: str, row: Mapping[str, Any], predicted: Mapping[str, float]) -> dict[str, float | None]:
    """Relative errors (predicted / measured - 1) of a row's measured fields; None where it has no number.

    Args:
        section: the row's section. row: the row. predicted: :func:`predict`'s values.

    Returns:
        Measured field -> error.
    """
    out: dict[str, float | None] = {}
    for name in MEASURED[section]:
        measured = row.get(name)
        ok = isinstance(measured, (int, float)) and not isinstance(measured, bool) and measured > 0
        out[name] = predicted[name] / measured - 1 if ok and name in predicted else None
    return out


def calibration_rows() -> list[tuple[str, dict]]:
    """``calibration.yaml``'s measured rows: ``(section, row)`` (excluded rows left out)."""
    c = calibration()
    return [(section, dict(row)) for section in MEASURED for row in c.get(section, {}).get("rows", [])]
