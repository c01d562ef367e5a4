"""Label selectivity: each class's ensemble activity with the true label vs each wrong label.

The images of a class pass through the network once per embedded label
(``fflab.models.probing``) and ``fflab.analysis.selectivity`` compares the
activity of the class's ensemble units; BP has no label input. Its one home:
the document (``selectivity.json``), the step, the figure and ``ANALYSIS``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field

from fflab.analysis.selectivity import label_selectivity
from fflab.data import n_classes
from fflab.figures import caption, class_names, model_display_name, note_if_empty, panel_letters, styled
from fflab.models.common import GoodnessNetwork
from fflab.models.probing import representations_with_label
from fflab.pipeline.run_analyses.common import (
    ANALYSIS_SEED,
    AnalysisDocument,
    Part,
    Reader,
    documents_of,
    finite_list,
    first_seed_runs,
    per_class_rows,
    run_identity,
    table_ensembles,
    timed_on_one_thread,
)
from fflab.pipeline.run_document import RunAnalysis
from fflab.spec import ExperimentSpec

if TYPE_CHECKING:
    from fflab.pipeline.run_document import RunAnalysisInput


SELECTIVITY_IMAGES_PER_CLASS = 50


# ------------------------------------------------------------------ the document


class LayerSelectivity(Part):
    layer: int
    activity: list[list[float | None]] = Field(
        description="[c][k]: mean activity of class c's ensemble units on class c's images with label k.")
    true_label: list[float | None]
    wrong_labels: list[float | None] = Field(description="Mean over the nine wrong labels.")
    index: list[float | None] = Field(description="(true - wrong) / (true + wrong).")


class RunSelectivity(AnalysisDocument):
    """selectivity.json: ensemble activity with the true label vs each wrong label."""

    applicable: bool = Field(description="False for a model whose input carries no label (BP).")
    quantile: float
    images_per_class: int
    layers: list[LayerSelectivity]


# ------------------------------------------------------------------ the step


@timed_on_one_thread
def analyse(inputs: RunAnalysisInput) -> RunSelectivity:
    quantile, ensembles = table_ensembles(inputs.ensembles)
    if "label_goodness" not in inputs.representations:  # a model without label input (BP)
        return RunSelectivity(**run_identity(inputs.key), applicable=False, quantile=quantile,
                              images_per_class=SELECTIVITY_IMAGES_PER_CLASS, layers=[])
    stored = inputs.representations
    rows = per_class_rows(stored["labels"], SELECTIVITY_IMAGES_PER_CLASS, ANALYSIS_SEED)
    images, labels = inputs.test_split.images[rows], stored["labels"][rows]
    net = inputs.network
    assert isinstance(net, GoodnessNetwork)  # label_goodness is stored for goodness models only
    per_label = [representations_with_label(net, images, k) for k in range(n_classes(inputs.key.dataset))]  # [label][layer]
    layers = []
    for layer in sorted(ensembles):
        by_label = np.stack([per_label[k][layer - 1].numpy() for k in range(n_classes(inputs.key.dataset))])
        result = label_selectivity(by_label, labels, ensembles[layer], list(range(n_classes(inputs.key.dataset))))
        layers.append(LayerSelectivity(
            layer=layer, activity=[finite_list(row) for row in result.activity],
            true_label=finite_list(result.true_label), wrong_labels=finite_list(result.wrong_labels),
            index=finite_list(result.index),
        ))
    return RunSelectivity(**run_identity(inputs.key), applicable=True, quantile=quantile,
                          images_per_class=SELECTIVITY_IMAGES_PER_CLASS, layers=layers)


# ------------------------------------------------------------------ the figure


def figure(spec: ExperimentSpec, read: Reader) -> Figure | None:
    per_model = {}
    for key, document in documents_of(spec, read, first_seed_runs(spec), RunSelectivity):
        if document.applicable and document.layers:
            per_model[key.model] = {
                layer.layer: np.array([[np.nan if v is None else v for v in row] for row in layer.activity])
                for layer in document.layers
            }
    if not per_model:
        return None
    return draw(per_model, class_names(spec.datasets[0]))


@styled
def draw(per_model: Mapping[str, Mapping[int, np.ndarray]], class_names: Sequence[str]) -> Figure:
    """Mean activity of class c's ensemble (rows) with label k embedded (columns):
    one row of heat maps per model, one per layer; ``per_model[model][layer]`` is
    (C, K), nan where undefined."""
    models = list(per_model)
    n_layers = max((len(layers) for layers in per_model.values()), default=1)
    fig = Figure(figsize=(3.6 * n_layers, 3.4 * max(1, len(models)) + 0.6), layout="constrained")
    shown = []
    axes = np.atleast_2d(fig.subplots(max(1, len(models)), n_layers))
    for row, model in enumerate(models):
        for ax in axes[row][len(per_model[model]):]:
            ax.set_axis_off()
            note_if_empty(ax, f"no further layer in {model_display_name(model)}", always=True)
        for ax, layer in zip(axes[row], sorted(per_model[model])):
            shown.append(ax)
            image = ax.imshow(np.asarray(per_model[model][layer], dtype=float), cmap="viridis", vmin=0)
            ax.set_title(f"{model_display_name(model)}, layer {layer}", fontsize=9)
            ax.set_xlabel("Embedded label", fontsize=8)
            ax.set_ylabel("Class (images, ensemble)", fontsize=8)
            ax.set_xticks(range(len(class_names)), class_names, fontsize=6, rotation=90)
            ax.set_yticks(range(len(class_names)), class_names, fontsize=6)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    panel_letters(shown)
    caption(fig, "mean activity of class c's ensemble over its images with label k embedded; one run per model: "
                 "no error bars; blank cell: undefined (no ensemble)")
    fig.suptitle("Ensemble activity: true label (diagonal) vs wrong labels")
    return fig


ANALYSIS = RunAnalysis(
    "selectivity", RunSelectivity,
    "Activity of each class's ensemble with the true label vs each wrong label.",
    analyse=analyse, figure=figure, layer_fields=("layers",),
    details="Activity of each class's ensemble with the true label vs each wrong label (FF, BP/FF; not "
            "applicable to BP).",
)
