"""Refit the cost model's constants to measured rows (``bench/calibrate.py``), and write them into its file.

The fit runs the model's own formulas (:func:`pd.cost.rows.predict`) with trial constants
(:func:`pd.cost.calibration.constants`) and minimises the squared relative errors of every measured field of every
row (``scipy.optimize.least_squares`` over the constants' logarithms, so they stay positive). A small pull towards
the current values (``prior``) keeps constants that the rows do not determine where they are: a fit to one GPU
check's two training rows moves only what those rows measure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pd.cost.calibration import CALIBRATION_PATH, GPU, calibration, constants, reference_gpu
from pd.cost.rows import MEASURED, errors, predict
from pd.errors import ConfigError

# The constants a refit moves: section -> names (calibration.yaml's). The rest (lengths, vLLM's, multi-GPU
# overheads, headroom) are not measured by these rows.
FITTED: dict[str, tuple[str, ...]] = {
    "training": ("act_hidden", "act_intermediate", "ckpt_hidden", "logit_bytes", "overhead_gb",
                 "matmul_efficiency", "elementwise_s", "layer_s", "optimizer_s_per_param"),
    "decoding": ("layer_ms", "row_layer_ms", "sample_row_ms"),
}
UPPER: dict[tuple[str, str], float] = {("training", "matmul_efficiency"): 1.0}  # a share of the peak
SPAN = math.log(100.0)  # a fitted constant stays within 100x of its current value
# Pull of each constant's log towards its current value: moving a constant e-fold costs as much as one row
# predicted 2 % off. Rows measuring a constant move it; rows that hardly see it (the optimizer's share of a
# step, checkpointing's of a peak) do not drag it to the bounds (synthetic rows: recovered within 2 %).
PRIOR = 0.02


@dataclass(frozen=True)
class Measured:
    """One measured row, its section and the GPU it ran on."""

    section: str
    row: dict
    gpu: GPU = field(default_factory=reference_gpu)


def current() -> dict[str, dict[str, float]]:
    """The fitted constants' values in ``calibration.yaml`` (section -> name -> value)."""
    c = calibration()
    return {section: {n: float(c[section][n]) for n in names} for section, names in FITTED.items()}


def report_rows(report: Mapping[str, Any], where: str = "report") -> list[Measured]:
    """The measured rows of a ``bench/cost_check.py`` report (rows without numbers left out).

    Args:
        report: the parsed JSON: ``gpu`` (``name``, ``memory_gb``, ``tflops``, ``bandwidth_gbs``) and, per section,
            ``{"rows": [...]}`` as in ``calibration.yaml``.
        where: its name, for messages.

    Returns:
        The rows, each with the report's GPU.

    Raises:
        ConfigError: the report was measured without a GPU (``--tiny`` on a CPU) or has no GPU block.
    """
    g = report.get("gpu") or {}
    if not g.get("tflops") or not g.get("bandwidth_gbs"):
        raise ConfigError(f"{where}: gpu.tflops/gpu.bandwidth_gbs missing: measured without a GPU (--tiny), "
                          "nothing to calibrate from; use the JSON of a `make gpu-check` on a GPU")
    gpu = GPU(memory_gb=float(g.get("memory_gb") or 0.0), tflops=float(g["tflops"]),
              bandwidth_gbs=float(g["bandwidth_gbs"]))
    out = []
    for section in MEASURED:
        for row in (report.get(section) or {}).get("rows", []):
            if any(isinstance(row.get(n), (int, float)) and not isinstance(row.get(n), bool)
                   for n in MEASURED[section]):
                out.append(Measured(section, dict(row), gpu))
    return out


def row_errors(rows: Sequence[Measured], values: Mapping[str, Mapping[str, float]] | None = None) -> list[dict]:
    """Every row's predictions and errors with the given constants (default: the file's).

    Args:
        rows: the measured rows.
        values: section -> name -> value to compute with (others: the file's).

    Returns:
        Per row ``{"section", "source", "predicted", "error"}`` (measured field -> value / relative error).
    """
    with constants(values or {}):
        out = []
        for m in rows:
            p = predict(m.section, m.row, m.gpu)
            out.append({"section": m.section, "source": m.row.get("source", ""), "predicted": p,
                        "error": errors(m.section, m.row, p)})
    return out


def refit(rows: Sequence[Measured], prior: float = PRIOR,
          start: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Constants that fit ``rows``: least squares of the relative errors through the model's formulas.

    Args:
        rows: the measured rows.
        prior: weight of the pull of each constant's log towards its starting value (0: none; rows that do not
            determine a constant then leave it wherever the solver stops).
        start: starting values (default: the file's, :func:`current`).

    Returns:
        Section -> name -> fitted value, for every constant of :data:`FITTED`.

    Raises:
        ConfigError: no row has a measured number.
    """
    import numpy as np
    from scipy.optimize import least_squares

    start = {s: dict(v) for s, v in (start or current()).items()}
    names = [(s, n) for s, ns in FITTED.items() for n in ns]
    x0 = np.array([start[s][n] for s, n in names], dtype=float)
    targets = [(m, f, float(m.row[f])) for m in rows for f in MEASURED[m.section]
               if isinstance(m.row.get(f), (int, float)) and not isinstance(m.row.get(f), bool) and m.row[f] > 0]
    if not targets:
        raise ConfigError("no measured row to fit: every row lacks a number for its measured fields")

    def values(theta) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {s: {} for s in FITTED}
        for (s, n), v in zip(names, x0 * np.exp(theta)):
            out[s][n] = float(v)
        return out

    def residuals(theta):
        with constants(values(theta)):
            cache: dict[int, dict[str, float]] = {}
            res = []
            for m, f, measured in targets:
                if id(m) not in cache:
                    cache[id(m)] = predict(m.section, m.row, m.gpu)
                res.append(cache[id(m)][f] / measured - 1.0)
        return np.concatenate([np.array(res), prior * theta])

    upper = np.array([min(SPAN, math.log(UPPER[k] / v)) if k in UPPER else SPAN for k, v in zip(names, x0)])
    upper = np.maximum(upper, 1e-9)  # a start at the bound itself
    fit = least_squares(residuals, np.zeros(len(names)), bounds=(-SPAN * np.ones(len(names)), upper),
                        x_scale=1.0, xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
    return values(fit.x)


def _format(value: float) -> str:
    """A constant as calibration.yaml writes it: 4 significant digits, exponent form for small numbers."""
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        mantissa, exp = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exp)}"
    return f"{value:.4g}"


def write_constants(values: Mapping[str, Mapping[str, float]], path: str | Path = CALIBRATION_PATH) -> list[str]:
    """Replace the numbers of the given constants in ``calibration.yaml``, in place: each ``name: number`` line
    of its section keeps its indentation and comment; nothing else of the file changes.

    Args:
        values: section -> name -> new value.
        path: the file (default: the package's).

    Returns:
        The changed lines, as ``section.name: old -> new``.

    Raises:
        ConfigError: a constant has no line of its own in its section.
    """
    from pd.io import read_text, write_text

    lines = read_text(path).splitlines(keepends=True)
    changed = []
    for section, names in values.items():
        start = next((i for i, ln in enumerate(lines) if re.match(rf"^{re.escape(section)}:\s*(#.*)?$", ln)), None)
        if start is None:
            raise ConfigError(f"{path}: no section {section!r}")
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\S", lines[i])), len(lines))
        for name, value in names.items():
            pattern = re.compile(rf"^(\s+{re.escape(name)}:\s*)([-+0-9.eE]+)(.*)$", re.S)
            hit = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
            if hit is None:
                raise ConfigError(f"{path}: section {section!r} has no line `{name}: <number>`")
            m = pattern.match(lines[hit])
            new = _format(float(value))
            if float(new) != float(m.group(2)):
                changed.append(f"{section}.{name}: {m.group(2)} -> {new}")
            lines[hit] = m.group(1) + new + m.group(3)
    write_text(path, "".join(lines))
    if Path(path).resolve() == CALIBRATION_PATH.resolve():
        calibration.cache_clear()
    return changed
