"""Aggregation over runs (seeds) and the paper's Tables 1, 2 and 3.

A run record is a plain dict describing one trained network::

    {
        "model": "ff" | "bpff" | "bp",
        "dataset": "mnist" | "fashion_mnist",
        "seed": int,
        "accuracy": float,                        # test accuracy, Table 1
        "ensemble_sizes_method1": list[list[int | None]],
                                      # layer -> size per class, Method 1 at the
                                      # table's quantile; None: no analysed image
        "fraction_positive_weights": list[float], # per layer, Table 3
        "sparseness_treves_rolls": list[float | None],  # per layer, mean over images of
        "sparseness_hoyer": list[float | None],         # each image's sparseness
        "sparseness_treves_rolls_of_class_mean": list[float | None],  # per layer, mean over
        "sparseness_hoyer_of_class_mean": list[float | None],         # classes of their mean's
        "mean_shared_units": list[float | None],        # per layer, mean over class pairs
        "unseen_activity": list[dict],    # per layer {"unseen": ..., "seen": ...},
                                          # runs trained without a class
    }

Each builder reads only the keys it needs (``model``, ``dataset``, ``seed``
and its own quantity). A (model, dataset, seed) may appear once per builder
call. Tables list the models present in the order FF, BP/FF, BP and the data
sets present in the order MNIST, FASHIONMNIST; the number of layers is the
largest found in the records.

Each estimate is the mean over seeds with its standard error
(``std(ddof=1) / sqrt(n)``); with a single seed the standard error is nan,
rendered "n/a" in markdown and left empty in CSV. A missing value (None) is
left out of its estimate, never counted as 0, and each table says how many
runs it averaged.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from fflab.analysis.ensembles import SPARSENESS_MEASURES
from fflab.data import DATASETS
from fflab.models import MODELS
from fflab.results import EXTERNAL_DATASET, EXTERNAL_MODEL

__all__ = [
    "Table",
    "mean_and_standard_error",
    "accuracy_table",
    "ensemble_size_table",
    "weight_sign_table",
    "sparseness_table",
    "shared_units_table",
    "unseen_activity_table",
]
MEAN_SUFFIX = " mean"
SE_SUFFIX = " se"

Cell = str | int | float | None


def mean_and_standard_error(values: Any, axis: int = 0) -> tuple[Any, Any]:
    """Mean and standard error of the mean along an axis.

    ``sem = std(values, ddof=1) / sqrt(n)``. With ``n == 1`` the standard
    error is nan (unknown), so that a single seed is not shown as exact.

    Parameters
    ----------
    values : array-like
        At least one entry along ``axis``.
    axis : int, default=0

    Returns
    -------
    mean, sem : float for a 1-D input, else ndarrays of the shape of
        ``values`` without ``axis``
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        raise ValueError("values must have at least one dimension.")
    if not -values.ndim <= axis < values.ndim:
        raise ValueError(f"axis must be in [{-values.ndim}, {values.ndim}); got {axis}.")
    n = values.shape[axis]
    if n == 0:
        raise ValueError("values must have at least one entry along axis.")
    mean = values.mean(axis=axis)
    if n == 1:
        sem = np.full_like(mean, np.nan)
    else:
        sem = values.std(axis=axis, ddof=1) / math.sqrt(n)
    if np.ndim(mean) == 0:
        return float(mean), float(sem)
    return mean, sem


def _is_missing(value: Cell) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class Table:
    """A table of results, renderable as markdown, CSV or a JSON-ready dict.

    Columns are flat and machine-readable. An estimate takes two adjacent
    columns named ``"<label> mean"`` and ``"<label> se"``; markdown merges
    them into one column ``"<label>"`` showing ``"mean ± se"``.

    Attributes
    ----------
    name : str
        Identifier, e.g. "table1".
    title : str
    columns : list of str
    rows : list of list of (str, int, float or None)
        One list per row, aligned with ``columns``; None or nan is missing.
    mean_format, se_format : str
        Format specs (``format(value, spec)``) of means and standard errors
        in markdown.
    """

    name: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    mean_format: str = ".2f"
    se_format: str = ".2f"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; nan becomes None."""
        return {
            "name": self.name,
            "title": self.title,
            "columns": list(self.columns),
            "rows": [[None if _is_missing(v) else v for v in row] for row in self.rows],
            "mean_format": self.mean_format,
            "se_format": self.se_format,
        }

    def _markdown_layout(self) -> list[tuple[str, int, int | None]]:
        layout: list[tuple[str, int, int | None]] = []
        i = 0
        while i < len(self.columns):
            column = self.columns[i]
            stem = column[: -len(MEAN_SUFFIX)]
            if (
                column.endswith(MEAN_SUFFIX)
                and i + 1 < len(self.columns)
                and self.columns[i + 1] == stem + SE_SUFFIX
            ):
                layout.append((stem, i, i + 1))
                i += 2
            else:
                layout.append((column, i, None))
                i += 1
        return layout

    def _format_value(self, value: Cell, spec: str) -> str:
        if _is_missing(value):
            return "n/a"
        if isinstance(value, str):
            return value
        if isinstance(value, bool) or isinstance(value, int):
            return str(value)
        return format(value, spec)

    def to_markdown(self, include_title: bool = True) -> str:
        """GitHub markdown table, estimates as "mean ± se" (e.g. "2.7 ± 0.04").

        A missing mean is shown as "-", a missing standard error as "n/a".
        """
        layout = self._markdown_layout()
        lines = []
        if include_title:
            lines += [f"**{self.title}**", ""]
        lines.append("| " + " | ".join(header for header, _, _ in layout) + " |")
        lines.append("|" + "|".join("---" for _ in layout) + "|")
        for row in self.rows:
            cells = []
            for _, mean_index, se_index in layout:
                value = row[mean_index]
                if se_index is None:
                    cells.append("-" if _is_missing(value) else self._format_value(value, "g"))
                elif _is_missing(value):
                    cells.append("-")
                else:
                    mean_text = self._format_value(value, self.mean_format)
                    se_text = self._format_value(row[se_index], self.se_format)
                    cells.append(f"{mean_text} ± {se_text}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV text: a header of ``columns``, then one line per row.

        Numbers are written in full precision (``repr``); missing values are
        empty fields.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow(
                ["" if _is_missing(v) else repr(v) if isinstance(v, float) else v for v in row]
            )
        return buffer.getvalue()


def _check_records(records: Sequence[dict[str, Any]], quantity: str) -> None:
    if not isinstance(records, (list, tuple)):
        raise ValueError(f"records must be a list of dicts; got {type(records).__name__}.")
    seen = set()
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"records[{index}] must be a dict; got {type(record).__name__}.")
        missing = [key for key in ("model", "dataset", "seed", quantity) if key not in record]
        if missing:
            raise ValueError(f"records[{index}] lacks the keys {missing}.")
        if record["model"] not in MODELS and record["model"] != EXTERNAL_MODEL:
            raise ValueError(
                f"records[{index}]['model'] must be one of {list(MODELS)}; "
                f"got {record['model']!r}."
            )
        if record["dataset"] not in DATASETS and record["dataset"] != EXTERNAL_DATASET:
            raise ValueError(
                f"records[{index}]['dataset'] must be one of {list(DATASETS)}; "
                f"got {record['dataset']!r}."
            )
        key = (record["model"], record["dataset"], record["seed"])
        if key in seen:
            raise ValueError(
                f"records holds (model, dataset, seed) = {key} more than once (records[{index}])."
            )
        seen.add(key)


def _check_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number; got {value!r}.")
    return float(value)


def _per_layer_values(record: dict[str, Any], key: str, index: int) -> list[Any]:
    values = record[key]
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"records[{index}]['{key}'] must be a list (one entry per layer).")
    return list(values)


def _present(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The models and data sets of ``records``: the registries' in their order, then
    any other (a recorded run's ``external`` and ``recorded``) as first met."""
    def ordered(registry: Any, field: str) -> list[str]:
        found = [name for name in registry if any(r[field] == name for r in records)]
        return found + list(dict.fromkeys(r[field] for r in records if r[field] not in registry))

    return ordered(MODELS, "model"), ordered(DATASETS, "dataset")


def _model_label(model: str) -> str:
    return MODELS[model].display_name if model in MODELS else model


def _dataset_label(dataset: str) -> str:
    return DATASETS[dataset].display_name if dataset in DATASETS else dataset


def _estimate_cells(values: list[float]) -> list[Cell]:
    if not values:
        return [None, None]
    mean, sem = mean_and_standard_error(values)
    return [mean, None if math.isnan(sem) else sem]


def _layered_table(
    records: Sequence[dict[str, Any]],
    key: str,
    per_layer_value: Callable[[Any, str], tuple[float | None, int]],
    name: str,
    title: str,
    mean_format: str,
    se_format: str,
    count_label: str | None = None,
) -> Table:
    """Rows: models; per data set and layer the mean ± SE over the runs where the
    layer's value is not missing; then ``"<DATASET> runs"`` (runs with a value in
    some layer) and, with ``count_label``, ``"<DATASET> <count_label>"``: the
    items averaged within runs (e.g. classes), summed over runs, in layer 1."""
    _check_records(records, key)
    layered = [_per_layer_values(r, key, i) for i, r in enumerate(records)]
    values = [
        [per_layer_value(v, f"records[{i}]['{key}'][{layer}]") for layer, v in enumerate(layers)]
        for i, layers in enumerate(layered)
    ]
    n_layers = max((len(v) for v in values), default=0)
    models, datasets = _present(records)
    columns = ["Model"]
    for dataset in datasets:
        for layer in range(n_layers):
            label = f"{_dataset_label(dataset)} Layer {layer + 1}"
            columns += [label + MEAN_SUFFIX, label + SE_SUFFIX]
        columns.append(f"{_dataset_label(dataset)} runs")
        if count_label is not None:
            columns.append(f"{_dataset_label(dataset)} {count_label}")
    rows = []
    for model in models:
        row: list[Cell] = [_model_label(model)]
        for dataset in datasets:
            group = [
                v
                for r, v in zip(records, values)
                if r["model"] == model and r["dataset"] == dataset
            ]
            for layer in range(n_layers):
                row += _estimate_cells(
                    [value for v in group if len(v) > layer and (value := v[layer][0]) is not None]
                )
            row.append(sum(1 for v in group if any(value is not None for value, _ in v)))
            if count_label is not None:
                row.append(sum(v[0][1] for v in group if v))
        rows.append(row)
    return Table(name, title, columns, rows, mean_format, se_format)


def _value_or_missing(value: Any, where: str) -> tuple[float | None, int]:
    if value is None:
        return None, 0
    return _check_number(value, where), 1


def accuracy_table(records: Sequence[dict[str, Any]]) -> Table:
    """Table 1: test accuracy, mean and standard error over seeds.

    Parameters
    ----------
    records : list of dict
        Run records (see the module docstring); uses ``accuracy``.

    Returns
    -------
    Table
        Rows: models; columns per data set: ``"<DATASET> mean"``,
        ``"<DATASET> se"``, ``"<DATASET> runs"``.
    """
    _check_records(records, "accuracy")
    accuracies = [
        _check_number(r["accuracy"], f"records[{i}]['accuracy']") for i, r in enumerate(records)
    ]
    models, datasets = _present(records)
    columns = ["Model"]
    for dataset in datasets:
        label = _dataset_label(dataset)
        columns += [label + MEAN_SUFFIX, label + SE_SUFFIX, f"{label} runs"]
    rows = []
    for model in models:
        row: list[Cell] = [_model_label(model)]
        for dataset in datasets:
            group = [
                a
                for r, a in zip(records, accuracies)
                if r["model"] == model and r["dataset"] == dataset
            ]
            row += _estimate_cells(group) + [len(group)]
        rows.append(row)
    return Table(
        name="table1",
        title="Table 1: Classification accuracy. Mean and standard error over runs (seeds).",
        columns=columns,
        rows=rows,
        mean_format=".2f",
        se_format=".1e",
    )


def _mean_ensemble_size(sizes_per_class: Any, where: str) -> tuple[float | None, int]:
    """Mean over the classes that have an ensemble (None = no analysed image: missing)."""
    if not isinstance(sizes_per_class, (list, tuple)) or not sizes_per_class:
        raise ValueError(f"{where} must be a non-empty list of sizes, one per class.")
    present = [_check_number(s, where) for s in sizes_per_class if s is not None]
    if not present:
        return None, 0
    return float(np.mean(present)), len(present)


def ensemble_size_table(
    records: Sequence[dict[str, Any]], quantile: float | None = None
) -> Table:
    """Table 2: size of the Method 1 ensembles, mean ± standard error over seeds.

    Each run contributes its mean ensemble size over classes, per layer. A
    class without any analysed image (None) is missing, not an ensemble of size
    0: it is left out of its run's mean, and a run without any is left out of
    the layer's estimate. The ``"<DATASET> classes"`` column counts the class
    ensembles averaged (over runs).

    Parameters
    ----------
    records : list of dict
        Run records (see the module docstring); uses
        ``ensemble_sizes_method1``.
    quantile : float or None, default=None
        The Method 1 quantile the sizes were computed at, for the title only.

    Returns
    -------
    Table
        Rows: models; columns per data set and layer:
        ``"<DATASET> Layer <l> mean"`` and ``"... se"``, then
        ``"<DATASET> runs"`` and ``"<DATASET> classes"``.
    """
    at_quantile = "" if quantile is None else f" and a threshold of {quantile:g}"
    return _layered_table(
        records,
        "ensemble_sizes_method1",
        _mean_ensemble_size,
        name="table2",
        title="Table 2: Mean ± standard error over runs (seeds) of the size of the ensembles, "
        f"detected with Method 1{at_quantile}.",
        mean_format=".1f",
        se_format=".2f",
        count_label="classes",
    )


def weight_sign_table(records: Sequence[dict[str, Any]]) -> Table:
    """Table 3: fraction of positive weights per layer, mean ± standard error over seeds.

    Parameters
    ----------
    records : list of dict
        Run records (see the module docstring); uses
        ``fraction_positive_weights``.

    Returns
    -------
    Table
        Same layout as :func:`ensemble_size_table`.
    """
    return _layered_table(
        records,
        "fraction_positive_weights",
        _value_or_missing,
        name="table3",
        title="Table 3: Fraction of positive weights. Mean ± standard error over runs (seeds).",
        mean_format=".2g",
        se_format=".1g",
    )


def sparseness_table(records: Sequence[dict[str, Any]], measure: str = "treves_rolls") -> Table:
    """Sparseness of the representations per layer by one measure, mean ± SE over runs.

    Parameters
    ----------
    records : list of dict
        Run records; uses ``sparseness_<measure>``: per layer, for ``"hoyer"``
        and ``"treves_rolls"`` the mean over the analysed images of each
        image's sparseness (the authors' convention), for
        ``"hoyer_of_class_mean"`` and ``"treves_rolls_of_class_mean"`` the mean
        over classes of the sparseness of each class's mean activation vector
        (None: missing).
    measure : str, default="treves_rolls"
        A key of ``fflab.analysis.SPARSENESS_MEASURES``.

    Returns
    -------
    Table
        Named ``sparseness_<measure>``; same layout as :func:`weight_sign_table`.
    """
    description = SPARSENESS_MEASURES.lookup(measure).description
    return _layered_table(
        records,
        f"sparseness_{measure}",
        _value_or_missing,
        name=f"sparseness_{measure}",
        title=f"{description[0].upper()}{description[1:]}. Mean ± standard error over runs (seeds).",
        mean_format=".3f",
        se_format=".1g",
    )


def shared_units_table(records: Sequence[dict[str, Any]], quantile: float | None = None) -> Table:
    """Units shared by a pair of classes, mean ± SE over runs (paper, section 4.3: 1.73).

    Parameters
    ----------
    records : list of dict
        Run records; uses ``mean_shared_units``: per layer, the mean over the
        pairs of distinct classes of ``|E_c ∩ E_c'|`` (None: missing).
    quantile : float or None
        The Method 1 quantile of the ensembles, for the title only.

    Returns
    -------
    Table
        Same layout as :func:`weight_sign_table`.
    """
    at = "" if quantile is None else f" (Method 1, quantile {quantile:g})"
    return _layered_table(
        records,
        "mean_shared_units",
        _value_or_missing,
        name="shared_units",
        title=f"Units shared by a pair of classes{at}. Mean ± standard error over runs (seeds).",
        mean_format=".2f",
        se_format=".2f",
    )


def unseen_activity_table(records: Sequence[dict[str, Any]]) -> Table:
    """Activity of an unseen class's ensemble against the seen classes' (paper, 4.4).

    Parameters
    ----------
    records : list of dict
        Run records of runs trained without a class; uses ``unseen_activity``:
        per layer ``{"unseen": float | None, "seen": float | None}`` (Method 2).

    Returns
    -------
    Table
        Rows: ``"unseen"`` and ``"seen"``; columns per data set and layer, mean
        ± SE over runs, then ``"<DATASET> runs"``.
    """
    _check_records(records, "unseen_activity")
    models, datasets = _present(records)
    n_layers = max((len(r["unseen_activity"]) for r in records), default=0)
    columns = ["Ensemble"]
    for dataset in datasets:
        for layer in range(n_layers):
            label = f"{_dataset_label(dataset)} Layer {layer + 1}"
            columns += [label + MEAN_SUFFIX, label + SE_SUFFIX]
        columns.append(f"{_dataset_label(dataset)} runs")
    rows = []
    for which in ("unseen", "seen"):
        row: list[Cell] = [f"{which} class{'es' if which == 'seen' else ''}"]
        for dataset in datasets:
            group = [r["unseen_activity"] for r in records if r["dataset"] == dataset]
            for layer in range(n_layers):
                values = [
                    _check_number(layers[layer][which], f"unseen_activity[{layer}][{which!r}]")
                    for layers in group
                    if len(layers) > layer and layers[layer].get(which) is not None
                ]
                row += _estimate_cells(values)
            row.append(len(group))
        rows.append(row)
    return Table(
        name="unseen_class",
        title="Mean activity of the unseen class's ensemble and of the seen classes' ensembles "
        "(Method 2). Mean ± standard error over runs (seeds).",
        columns=columns,
        rows=rows,
        mean_format=".3f",
        se_format=".1g",
    )
