"""Accuracy per layer: what each layer knows about the class.

Three readouts per layer: its goodness alone, the layers up to it combined by
the prediction rule (FF, BP/FF), and a linear probe fitted on its neutral-label
representations (every model; BP's hidden outputs). The pure functions are in
``fflab.analysis.layer_accuracy``; this module is the analysis's one home: its
document (``layer_accuracy.json``), the pipeline step that computes it, its
figure and its registry entry ``ANALYSIS``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field

from fflab.analysis.layer_accuracy import goodness_accuracy, linear_probe
from fflab.data import n_classes
from fflab.figures import caption, integer_ticks, legend, model_color, model_display_name, spread_note, styled
from fflab.models.probing import neutral_representations
from fflab.pipeline.run_analyses.common import (
    ANALYSIS_SEED,
    AnalysisDocument,
    Part,
    Reader,
    documents_of,
    finite_list,
    main_runs,
    mean_se,
    per_class_rows,
    run_identity,
    timed_on_one_thread,
)
from fflab.pipeline.run_document import RunAnalysis
from fflab.spec import ExperimentSpec

if TYPE_CHECKING:
    from fflab.pipeline.run_document import RunAnalysisInput


PROBE_TRAIN_IMAGES = 2000  # linear probe: fitted on this many training images
PROBE_TEST_IMAGES = 2000  # and scored on this many test images
PROBE_REGULARIZATION = 1.0
PROBE_MAX_ITER = 200


# ------------------------------------------------------------------ the document


class LayerGoodnessAccuracy(Part):
    layer: int
    accuracy: float = Field(description="Accuracy of the label with the highest goodness in this layer alone.")
    cumulative_accuracy: float = Field(
        description="Accuracy of layers 1..layer combined by the prediction rule (last layer: the network's).")
    per_class: list[float | None]
    cumulative_per_class: list[float | None]


class ProbeSettings(Part):
    solver: Literal["lbfgs"] = "lbfgs"
    regularization: float = Field(description="scikit-learn's C (inverse L2 strength).")
    max_iter: int
    standardized: bool = Field(True, description="Features scaled by the probe-training set's mean and std.")
    input: Literal["neutral_label", "hidden"] = Field(
        description="neutral_label: FF and BP/FF layers with every label pixel at a tenth of the label "
        "value (the true label would give the answer away); hidden: BP's hidden outputs.")
    n_train: int = Field(description="Training images the probe is fitted on (a stratified subset).")
    n_test: int = Field(description="Test images it is scored on.")
    subset_seed: int


class LayerProbe(Part):
    layer: int
    train_accuracy: float
    test_accuracy: float
    per_class: list[float | None]
    iterations: int
    converged: bool


class RunLayerAccuracy(AnalysisDocument):
    """layer_accuracy.json: what each layer knows about the class."""

    prediction_rule: str | None = Field(description="How layers' goodness is combined; null without goodness (BP).")
    goodness: list[LayerGoodnessAccuracy] = Field(
        description="Per layer; empty for a model that does not predict by goodness (BP).")
    probe: ProbeSettings
    probes: list[LayerProbe]


# ------------------------------------------------------------------ the step


@timed_on_one_thread
def analyse(inputs: RunAnalysisInput) -> RunLayerAccuracy:
    spec, key, stored = inputs.spec, inputs.key, inputs.representations
    labels = stored["labels"]
    goodness = []
    if "label_goodness" in stored:
        result = goodness_accuracy(stored["label_goodness"], labels, spec.prediction)
        goodness = [
            LayerGoodnessAccuracy(
                layer=layer + 1, accuracy=result.per_layer[layer], cumulative_accuracy=result.cumulative[layer],
                per_class=finite_list(result.per_layer_per_class[layer]),
                cumulative_per_class=finite_list(result.cumulative_per_class[layer]),
            )
            for layer in range(result.per_layer.size)
        ]
    train = inputs.train_split
    train_rows = per_class_rows(train.labels.numpy(), PROBE_TRAIN_IMAGES // n_classes(inputs.key.dataset), ANALYSIS_SEED)
    test_rows = per_class_rows(labels, PROBE_TEST_IMAGES // n_classes(inputs.key.dataset), ANALYSIS_SEED)
    train_layers = neutral_representations(inputs.network, train.images[train_rows])
    test_layers = neutral_representations(inputs.network, inputs.test_split.images[test_rows])
    probes = []
    for layer, (train_x, test_x) in enumerate(zip(train_layers, test_layers), start=1):
        fit = linear_probe(train_x.numpy(), train.labels.numpy()[train_rows], test_x.numpy(), labels[test_rows],
                           n_classes(inputs.key.dataset), PROBE_REGULARIZATION, PROBE_MAX_ITER)
        probes.append(LayerProbe(layer=layer, train_accuracy=fit.train_accuracy, test_accuracy=fit.test_accuracy,
                                 per_class=finite_list(fit.test_per_class), iterations=fit.iterations,
                                 converged=fit.converged))
    return RunLayerAccuracy(
        **run_identity(key), prediction_rule=spec.prediction if goodness else None, goodness=goodness,
        probe=ProbeSettings(regularization=PROBE_REGULARIZATION, max_iter=PROBE_MAX_ITER,
                            input="neutral_label" if goodness else "hidden",
                            n_train=int(train_rows.size), n_test=int(test_rows.size), subset_seed=ANALYSIS_SEED),
        probes=probes,
    )


# ------------------------------------------------------------------ the figure


def figure(spec: ExperimentSpec, read: Reader) -> Figure | None:
    series: dict[str, dict[str, list[Any]]] = {}
    for key, document in documents_of(spec, read, main_runs(spec), RunLayerAccuracy):
        readouts = series.setdefault(key.model, {})
        if document.goodness:
            readouts.setdefault("goodness", []).append([g.accuracy for g in document.goodness])
            readouts.setdefault("cumulative", []).append([g.cumulative_accuracy for g in document.goodness])
        readouts.setdefault("probe", []).append([p.test_accuracy for p in document.probes])
    if not series:
        return None
    return draw(
        {model: {r: np.array(v, dtype=float) for r, v in readouts.items()} for model, readouts in series.items()})


READOUT_STYLES = {"goodness": "-", "cumulative": "--", "probe": ":"}


@styled
def draw(series: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Accuracy per layer: ``series[model][readout]`` is (R, L), readout one of
    ``goodness`` (the layer alone), ``cumulative`` (layers up to it) and
    ``probe`` (linear probe); mean ± SE over runs."""
    fig = Figure(figsize=(7.6, 4.4), layout="constrained")
    runs: dict[str, int] = {}
    ax = fig.add_subplot()
    for index, (model, readouts) in enumerate(series.items()):
        for readout, values in readouts.items():
            if readout not in READOUT_STYLES:
                raise ValueError(f"readout must be one of {', '.join(READOUT_STYLES)}; got {readout!r}")
            mean, se = mean_se(values)
            runs[model_display_name(model)] = max(runs.get(model_display_name(model), 0), np.shape(values)[0])
            layers = np.arange(1, mean.size + 1)
            ax.errorbar(layers, mean, yerr=se, color=model_color(model, index), linestyle=READOUT_STYLES[readout],
                        marker="o", capsize=3, label=f"{model_display_name(model)} {readout}")
    ax.set_xlabel("Layer")
    ax.set_ylabel("Test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Accuracy per layer")
    integer_ticks(ax.xaxis)
    legend(ax, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption(fig, spread_note(runs))
    return fig


ANALYSIS = RunAnalysis(
    "layer_accuracy", RunLayerAccuracy,
    "Accuracy per layer: its goodness alone, layers up to it, and a linear probe.",
    analyse=analyse, figure=figure, layer_fields=("goodness", "probes"),
    details="Accuracy per layer: from its goodness alone, from the layers up to it (FF, BP/FF), "
            "and a linear probe (every model).",
)
