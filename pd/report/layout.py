"""Where each configuration of an experiment goes in its table, and layouts that cannot show a grid.

The table puts a group of seeds at (block value, row key, column key) of its axes
(:class:`pd.report.aggregate.TableSpec`). Two groups that differ only in an axis the layout
does not show would land in one cell; the report refuses that, and so does the plan, from
the grid alone, before any job runs.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pd.errors import ConfigError
from pd.report.aggregate import SEED_AXIS, TableSpec, group_key


def matches_where(axes: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Whether the axes agree with every ``where`` entry of a table spec (compared as strings)."""
    return all(str(axes.get(k)) == str(v) for k, v in where.items())


def place_groups(experiment: str, spec: TableSpec, groups: Sequence[tuple[Mapping[str, Any], Any]]) -> dict[tuple, Any]:
    """Each group's table cell: ``(block value, row key, column key)`` -> the group.

    Args:
        experiment: the experiment's name (for the error).
        spec: its table layout.
        groups: ``(axes, group)`` pairs, one per group of seeds (axes without the seed matter).

    Returns:
        The groups by position.

    Raises:
        ConfigError: two groups that differ in an axis the layout does not show land in one
            cell; the message names those axes. :func:`pd.pipeline.plan.build_plan` calls this on the
            grid, so such a layout is refused before anything runs.
    """
    placed: dict[tuple, Any] = {}
    axes_at: dict[tuple, Mapping[str, Any]] = {}
    for axes, g in groups:
        k = (axes.get(spec.blocks) if spec.blocks else None, tuple(axes.get(a) for a in spec.rows),
             tuple(axes.get(a) for a in spec.columns))
        if k in placed:
            other = axes_at[k]
            varying = sorted(a for a in set(axes) | set(other) if a != SEED_AXIS and axes.get(a) != other.get(a))
            raise ConfigError(f"experiment {experiment!r}: two cell groups land in one table cell {k}; they differ in "
                              f"{', '.join(varying)}: add those axes to rows/columns, fix them with `where`, "
                              "or put those cells in an experiment of their own")
        placed[k], axes_at[k] = g, axes
    return placed


def check_layout(experiment: str, table: Mapping[str, Any], cells: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a table layout that would put two configurations in one cell (:func:`place_groups`).

    Args:
        experiment: the experiment's name.
        table: its ``table:`` entry from the config.
        cells: its grid's cells (axis dicts, seeds included).

    Raises:
        ConfigError: the layout cannot show the grid.
    """
    spec = TableSpec.from_dict(table)
    groups = {group_key(c): c for c in cells if matches_where(dict(c), spec.where)}
    place_groups(experiment, spec, [(c, c) for c in groups.values()])
