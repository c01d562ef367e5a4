"""Intrinsic dimension: TwoNN per layer and class, set against the ensemble sizes.

``fflab.analysis.intrinsic_dimension.two_nn`` on subsamples of each layer's
analysed representations, overall and per class. Its one home: the document
(``intrinsic_dimension.json``), the step, the figure and ``ANALYSIS``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field

from fflab.analysis.intrinsic_dimension import two_nn
from fflab.figures import caption, integer_ticks, legend, model_color, model_display_name, styled
from fflab.pipeline import folders
from fflab.pipeline.run_analyses.common import (
    ANALYSIS_SEED,
    AnalysisDocument,
    Part,
    Reader,
    documents_of,
    main_runs,
    per_class_rows,
    run_identity,
    table_ensembles,
    timed_on_one_thread,
)
from fflab.pipeline.run_document import NO_NEEDS, RunAnalysis
from fflab.results import finite_or_none
from fflab.spec import ExperimentSpec

if TYPE_CHECKING:
    from fflab.pipeline.run_document import RunAnalysisInput


TWO_NN_DISCARD = 0.1
TWO_NN_MAX_POINTS = 1000


# ------------------------------------------------------------------ the document


class LayerIntrinsicDimension(Part):
    layer: int
    dimension: float | None = Field(description="TwoNN over the analysed images of every class.")
    per_class: list[float | None]
    n_points: list[int] = Field(description="Per class, points the fit used.")
    n_duplicates: list[int] | None = Field(
        None, description="Per class, images dropped as exact copies of another image's representation "
                          "before the fit (null in documents written before it was recorded).")
    ensemble_sizes: list[int | None] = Field(description="Method 1 sizes (table quantile), to set against.")


class RunIntrinsicDimension(AnalysisDocument):
    """intrinsic_dimension.json: TwoNN estimates per layer and class."""

    discard: float = Field(description="Fraction of the largest r2/r1 ratios left out of the fit.")
    max_points: int = Field(description="Images per class (and overall) subsampled at most.")
    subsample_seed: int
    quantile: float
    layers: list[LayerIntrinsicDimension]


# ------------------------------------------------------------------ the step


@timed_on_one_thread
def analyse(inputs: RunAnalysisInput) -> RunIntrinsicDimension:
    stored = inputs.representations
    quantile, ensembles = table_ensembles(inputs.ensembles)
    labels = stored["labels"][inputs.analysed]
    overall_rows = per_class_rows(labels, TWO_NN_MAX_POINTS // len(inputs.classes), ANALYSIS_SEED)
    class_rows = per_class_rows(labels, TWO_NN_MAX_POINTS, ANALYSIS_SEED)
    layers = []
    for layer in range(1, folders.layer_count(stored) + 1):
        X = stored[f"layer{layer}"][inputs.analysed]
        per_class, counts, duplicates = [], [], []
        for c in inputs.classes:
            result = two_nn(X[class_rows[labels[class_rows] == c]], TWO_NN_DISCARD)
            per_class.append(finite_or_none(result.dimension))
            counts.append(result.n_points)
            duplicates.append(result.n_duplicates)
        sizes = ensembles.get(layer, {})
        layers.append(LayerIntrinsicDimension(
            layer=layer, dimension=finite_or_none(two_nn(X[overall_rows], TWO_NN_DISCARD).dimension),
            per_class=per_class, n_points=counts, n_duplicates=duplicates,
            ensemble_sizes=[int(sizes[c].size) if c in sizes and (labels == c).any() else None
                            for c in inputs.classes],
        ))
    return RunIntrinsicDimension(**run_identity(inputs.key), discard=TWO_NN_DISCARD, max_points=TWO_NN_MAX_POINTS,
                                 subsample_seed=ANALYSIS_SEED, quantile=quantile, layers=layers)


# ------------------------------------------------------------------ the figure


def figure(spec: ExperimentSpec, read: Reader) -> Figure | None:
    points: dict[str, tuple[list[Any], list[Any], list[Any]]] = {}
    for key, document in documents_of(spec, read, main_runs(spec), RunIntrinsicDimension):
        sizes, dims, layers = points.setdefault(key.model, ([], [], []))
        for layer in document.layers:
            for size, dim in zip(layer.ensemble_sizes, layer.per_class):
                sizes.append(np.nan if size is None else size)
                dims.append(np.nan if dim is None else dim)
                layers.append(layer.layer)
    if not points:
        return None
    return draw(
        {model: (np.array(sizes, dtype=float), np.array(dims, dtype=float), np.array(layers, dtype=float))
         for model, (sizes, dims, layers) in points.items()})


@styled
def draw(points: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Figure:
    """TwoNN dimension against ensemble size per (run, layer, class):
    ``points[model] = (sizes (P,), dimensions (P,), layers (P,))``; markers by layer."""
    fig = Figure(figsize=(7.6, 4.8), layout="constrained")
    drawn = 0
    ax = fig.add_subplot()
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for index, (model, (sizes, dimensions, layers)) in enumerate(points.items()):
        sizes, dimensions, layers = (np.asarray(a, dtype=float) for a in (sizes, dimensions, layers))
        for layer in np.unique(layers[np.isfinite(layers)]).astype(int):
            rows = (layers == layer) & np.isfinite(sizes) & np.isfinite(dimensions)
            drawn += int(rows.sum())
            ax.scatter(sizes[rows], dimensions[rows], s=14, alpha=0.7, color=model_color(model, index),
                       marker=markers[(layer - 1) % len(markers)],
                       label=f"{model_display_name(model)} layer {layer}")
    ax.set_xlabel("Ensemble size (Method 1, units)")
    ax.set_ylabel("Intrinsic dimension (TwoNN)")
    ax.set_title("Intrinsic dimension vs ensemble size, per layer and class")
    integer_ticks(ax.xaxis)
    legend(ax, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption(fig, f"n={drawn} points, one per (run, layer, class); no averaging, no error bars")
    return fig


ANALYSIS = RunAnalysis(
    "intrinsic_dimension", RunIntrinsicDimension,
    "TwoNN intrinsic dimension per layer and class, with the ensemble sizes.",
    analyse=analyse, figure=figure, layer_fields=("layers",),
    details="TwoNN intrinsic dimension per layer and class, with the ensemble sizes to set it against.",
    needs=NO_NEEDS,  # activities and labels only: also for recorded runs
)
