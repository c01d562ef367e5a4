"""A sweep's aggregation (see fflab.spec for what a sweep is): the run records
with their grid point, the ``sweep`` section of results.json, its table
(``tables/sweep.*``) and its figure (``figures/sweep.png`` and ``.svg``).

The rest of an experiment's aggregation (fflab.pipeline.experiment) treats a
sweep thus: Tables 1-3 and the other aggregates are computed per grid point
and stacked, the swept values as leading columns; the paper's figures, the
run documents' figures, the Method 1 vs Method 2 fit and the comparison with
the paper show the first point's runs (``ExperimentSpec.paper_point``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fflab import analysis, figures
from fflab.data import DATASETS
from fflab.models import MODELS
from fflab.pipeline.folders import run_dir_of
from fflab.pipeline.paper_analyses import run_record
from fflab.results import SweepPointValues, SweepResults
from fflab.spec import ExperimentSpec, RunKey

FIGURE = "sweep"


def run_records(spec: ExperimentSpec, experiment_dir: Path, keys: list[RunKey] | None = None) -> list[dict[str, Any]]:
    """Every run's summary record (paper_analyses.run_record), in ``spec.runs()``
    order (only those of ``keys`` where given: partial results); with a sweep, each
    also has its grid point (``point``) and the swept values there (``sweep_values``)."""
    values = {point.index: point.values for point in spec.points()}
    records = []
    for key in spec.runs() if keys is None else keys:
        record = run_record(run_dir_of(experiment_dir, key))
        if key.point is not None:
            record |= {"point": key.point, "sweep_values": values[key.point]}
        records.append(record)
    return records


def sweep_results(spec: ExperimentSpec, records: list[dict[str, Any]]) -> SweepResults:
    """results.json's ``sweep`` section from the records of ``run_records``."""
    points = spec.points()
    paper_point = spec.paper_point()
    if paper_point is None:
        raise ValueError("sweep results are of a spec with a sweep")
    return SweepResults(
        fields=list(spec.sweep or {}),
        points=[SweepPointValues(index=point.index, values=point.values) for point in points],
        paper_point=paper_point,
        ensemble_quantile=spec.analysis.table_quantile,
        cells=analysis.sweep_cells(records, len(points)),
    )


def sweep_table(sweep: SweepResults) -> analysis.Table:
    dumped = sweep.model_dump(mode="json")
    return analysis.sweep_table(sweep.fields, dumped["points"], dumped["cells"], sweep.ensemble_quantile)


def sweep_figure(sweep: SweepResults) -> Figure:
    """The key numbers against the first swept setting; one line per model, data
    set (when there are several) and value of the second swept setting, its
    legend label giving n (the most runs behind one of its points), every
    swept value a labelled tick."""
    first, *second = sweep.fields
    xs = list(dict.fromkeys(point.values[first] for point in sweep.points))
    several_datasets = len({cell.dataset for cell in sweep.cells}) > 1
    lines = []
    seconds = list(dict.fromkeys(point.values[second[0]] for point in sweep.points)) if second else [None]
    for model in MODELS:
        for dataset in DATASETS:
            for other in seconds:
                points = [p for p in sweep.points if not second or p.values[second[0]] == other]
                cells = {c.point: c for c in sweep.cells if c.model == model and c.dataset == dataset}
                if not any(p.index in cells for p in points):
                    continue
                by_x = {p.values[first]: cells.get(p.index) for p in points}
                numbers = {}
                for quantity in ("accuracy", "ensemble_size", "fraction_positive_weights"):
                    numbers[quantity] = _series([by_x.get(x) for x in xs], quantity)
                label = MODELS[model].display_name
                if several_datasets:
                    label += f", {DATASETS[dataset].display_name}"
                if second:
                    label += f", {second[0]}={other}"
                runs = max((cells[p.index].accuracy.n for p in points if p.index in cells), default=0)
                label += f" (n={runs} seed{'s' if runs != 1 else ''})"
                lines.append((label, model, numbers))
    datasets = ", ".join(DATASETS[d].display_name for d in dict.fromkeys(c.dataset for c in sweep.cells))
    grid = "; ".join(f"point {p.index}: " + ", ".join(f"{k}={v}" for k, v in p.values.items())
                     for p in sweep.points)
    return figures.sweep_figure(first, xs, lines, sweep.ensemble_quantile,
                                title=f"{datasets}: the sweep of {' and '.join(sweep.fields)}",
                                note=f"runs trained on every class; grid {grid}")


def _series(cells: list[Any], quantity: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, se) over the x values: shape (V,) for accuracy, (L, V) per layer otherwise."""
    def number(value: float | None) -> float:
        return np.nan if value is None else value

    if quantity == "accuracy":
        return (np.array([np.nan if c is None else number(c.accuracy.mean) for c in cells]),
                np.array([np.nan if c is None else number(c.accuracy.se) for c in cells]))
    layers = max((len(getattr(c, quantity)) for c in cells if c is not None), default=0)
    mean = np.full((layers, len(cells)), np.nan)
    se = np.full((layers, len(cells)), np.nan)
    for j, cell in enumerate(cells):
        for layer, found in enumerate(getattr(cell, quantity) if cell is not None else []):
            mean[layer, j], se[layer, j] = number(found.mean), number(found.se)
    return mean, se
