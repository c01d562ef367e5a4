"""Aggregation over a sweep: how the key numbers move with a swept setting.

A sweep's run records are those of ``fflab.analysis.aggregate`` with two more
keys: ``point`` (the grid point's index) and ``sweep_values`` (the swept
settings' values at that point, by dotted path). Two things are built from them:

- ``sweep_cells``: per grid point, model and data set, over the runs trained on
  every class, the mean and standard error over seeds of the test accuracy, of
  the Method 1 ensemble size per layer (each run's mean over the classes that
  were analysed, as in Table 2) and of the fraction of positive weights per
  layer (Table 3). ``sweep_table`` shows them as one table.
- ``stack_tables``: one table per grid point (Tables 1-3 and the other
  aggregates) stacked into one, the swept values as leading columns.

The standard errors are those of ``mean_and_standard_error`` (None with one
seed). Pure functions over plain records, no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fflab.analysis.aggregate import MEAN_SUFFIX, SE_SUFFIX, Cell, Table, mean_and_standard_error
from fflab.data import DATASETS
from fflab.models import MODELS

__all__ = ["estimate", "sweep_cells", "sweep_table", "stack_tables"]


def estimate(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """``{"mean", "se", "n"}`` over the values that are not None or nan; mean None
    without any, se None with fewer than two."""
    present = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not present:
        return {"mean": None, "se": None, "n": 0}
    mean, se = mean_and_standard_error(present)
    return {"mean": mean, "se": None if math.isnan(se) else se, "n": len(present)}


def _value_cell(value: Any) -> Cell:
    """A swept value as a table cell: numbers and strings as they are, others
    (null, true, false) as their JSON text, so that null is not read as missing."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    return json.dumps(value)


def _run_mean_size(sizes_per_class: Sequence[int | None]) -> float | None:
    present = [s for s in sizes_per_class if s is not None]
    return float(np.mean(present)) if present else None


def sweep_cells(records: Sequence[dict[str, Any]], n_points: int) -> list[dict[str, Any]]:
    """The key numbers per (grid point, model, data set).

    Parameters
    ----------
    records : run records with ``point``, ``model``, ``dataset``, ``seed``,
        ``unseen_class``, ``accuracy``, ``ensemble_sizes_method1`` (layer ->
        size per class, None: no analysed image) and ``fraction_positive_weights``
        (per layer). Runs trained without a class are left out.
    n_points : the number of grid points; each record's point is in 0..n_points-1.

    Returns
    -------
    list of dict, in the order point, model (MODELS), data set (DATASETS), for the
    combinations that have runs: ``{"point", "model", "dataset", "accuracy",
    "ensemble_size", "fraction_positive_weights"}``, each number an ``estimate``;
    the last two are lists with one estimate per layer (as many layers as the
    deepest run of the cell).
    """
    for index, record in enumerate(records):
        point = record.get("point")
        if isinstance(point, bool) or not isinstance(point, int) or not 0 <= point < n_points:
            raise ValueError(f"records[{index}]['point'] must be a grid point in 0..{n_points - 1}; got {point!r}.")
    trained_on_all = [r for r in records if r["unseen_class"] is None]
    cells = []
    for point in range(n_points):
        for model in MODELS:
            for dataset in DATASETS:
                group = [r for r in trained_on_all
                         if r["point"] == point and r["model"] == model and r["dataset"] == dataset]
                if not group:
                    continue
                seeds = [r["seed"] for r in group]
                if len(set(seeds)) != len(seeds):
                    raise ValueError(f"point {point}, {model}, {dataset}: a seed appears more than once ({seeds}).")
                sizes = [[_run_mean_size(layer) for layer in r["ensemble_sizes_method1"]] for r in group]
                positive = [list(r["fraction_positive_weights"]) for r in group]
                layers = max(len(v) for v in sizes + positive)
                cells.append({
                    "point": point, "model": model, "dataset": dataset,
                    "accuracy": estimate([r["accuracy"] for r in group]),
                    "ensemble_size": [estimate([v[layer] for v in sizes if len(v) > layer])
                                      for layer in range(layers)],
                    "fraction_positive_weights": [estimate([v[layer] for v in positive if len(v) > layer])
                                                  for layer in range(layers)],
                })
    return cells


def sweep_table(fields: Sequence[str], points: Sequence[dict[str, Any]], cells: Sequence[dict[str, Any]],
                quantile: float | None = None) -> Table:
    """One row per cell of ``sweep_cells``: the swept values (one column per field),
    model, data set, accuracy, ensemble size and fraction of positive weights per
    layer (mean ± SE over seeds), and the runs behind the accuracy.

    ``points`` are the grid points (``{"index", "values"}``), ``quantile`` the
    Method 1 quantile of the sizes (title only)."""
    values = {point["index"]: point["values"] for point in points}
    layers = max((len(c["ensemble_size"]) for c in cells), default=0)
    columns = list(fields) + ["Model", "Data set", "Accuracy" + MEAN_SUFFIX, "Accuracy" + SE_SUFFIX]
    for name in ("Ensemble size", "Positive weights"):
        for layer in range(1, layers + 1):
            columns += [f"{name} Layer {layer}{MEAN_SUFFIX}", f"{name} Layer {layer}{SE_SUFFIX}"]
    columns.append("runs")
    rows = []
    for cell in cells:
        row: list[Cell] = [_value_cell(values[cell["point"]][field]) for field in fields]
        row += [MODELS[cell["model"]].display_name, DATASETS[cell["dataset"]].display_name]
        row += [cell["accuracy"]["mean"], cell["accuracy"]["se"]]
        for quantity in ("ensemble_size", "fraction_positive_weights"):
            for layer in range(layers):
                found = cell[quantity][layer] if layer < len(cell[quantity]) else {"mean": None, "se": None}
                row += [found["mean"], found["se"]]
        row.append(cell["accuracy"]["n"])
        rows.append(row)
    at = "" if quantile is None else f" (Method 1, quantile {quantile:g})"
    return Table(
        name="sweep",
        title=f"Sweep of {', '.join(fields)}: accuracy, ensemble size{at} and fraction of positive weights "
        "per layer. Mean ± standard error over runs (seeds), runs trained on every class.",
        columns=columns, rows=rows, mean_format=".3g", se_format=".2g",
    )


def stack_tables(fields: Sequence[str], per_point: Sequence[tuple[dict[str, Any], Table]]) -> Table:
    """Tables of the same name, one per grid point, as one: the swept values as
    leading columns (one per field), then each table's rows, point after point.

    ``per_point`` holds (the point's values by field, its table). The columns are
    those of the widest table (e.g. the deepest network); every other table's
    columns must be among them, and its missing cells are None."""
    if not per_point:
        raise ValueError("per_point must hold at least one table.")
    names = {table.name for _, table in per_point}
    if len(names) != 1:
        raise ValueError(f"the tables must have one name; got {sorted(names)}.")
    widest = max((table for _, table in per_point), key=lambda table: len(table.columns))
    for _, table in per_point:
        extra = [c for c in table.columns if c not in widest.columns]
        if extra:
            raise ValueError(f"table {table.name}: columns {extra} are not in the widest table's.")
    rows = []
    for values, table in per_point:
        where = {column: index for index, column in enumerate(table.columns)}
        leading = [_value_cell(values[field]) for field in fields]
        for row in table.rows:
            rows.append(leading + [row[where[c]] if c in where else None for c in widest.columns])
    return Table(
        name=widest.name, title=f"{widest.title} Per grid point of the sweep of {', '.join(fields)}.",
        columns=list(fields) + list(widest.columns), rows=rows,
        mean_format=widest.mean_format, se_format=widest.se_format,
    )
