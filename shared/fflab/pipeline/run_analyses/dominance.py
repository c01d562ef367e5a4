"""Dominant units: how often one unit carries a layer's representation.

For each image, the layer's most active unit "wins". A layer whose images are
won by a handful of units represents them by a few dominant units over a low,
nearly constant bulk; that makes Method 1 at a fixed quantile return the top
few percent of the bulk (the signature docs/science.md discusses for FF's
layers 2 and 3). Per layer, this document gives how many distinct units win
any analysed image, the share of images won by the most frequent winner, and
each class's most frequent winner with its share of the class's images.

The pure function is ``fflab.analysis.dominance.winner_counts``; this module is
the analysis's one home: its document (``dominance.json``), the step, the
figure and ``ANALYSIS``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from pydantic import BaseModel, Field

from fflab import figures
from fflab.analysis.dominance import winner_counts
from fflab.data import DATASETS
from fflab.pipeline.folders import layer_count
from fflab.pipeline.run_analyses.common import Reader, read_as, run_identity
from fflab.pipeline.run_document import NO_NEEDS, RunAnalysis
from fflab.results import RunIdentity

if TYPE_CHECKING:

    from fflab.pipeline.run_document import RunAnalysisInput
    from fflab.spec import ExperimentSpec


# ------------------------------------------------------------------ the document


class ClassWinner(BaseModel):
    class_index: int
    unit: int | None = Field(description="The unit that wins most of the class's images; null: no image.")
    share: float | None = Field(description="The share of the class's images it wins.")


class LayerDominance(BaseModel):
    layer: int
    n_winners: int = Field(description="Distinct units that win at least one analysed image.")
    top_unit: int | None
    top_share: float | None = Field(description="Share of the analysed images won by top_unit.")
    per_class: list[ClassWinner]


class RunDominance(RunIdentity):
    layers: list[LayerDominance]


# ------------------------------------------------------------------ the step


def analyse(inputs: RunAnalysisInput) -> RunDominance:
    stored, keep = inputs.representations, inputs.analysed
    labels = stored["labels"][keep]
    layers = []
    for layer in range(1, layer_count(stored) + 1):
        X = stored[f"layer{layer}"][keep]
        counts = winner_counts(X)
        per_class = []
        for c in inputs.classes:
            class_counts = winner_counts(X[labels == c])
            n = int(class_counts.sum())
            per_class.append(ClassWinner(class_index=c, unit=int(class_counts.argmax()) if n else None,
                                         share=float(class_counts.max() / n) if n else None))
        n = int(counts.sum())
        layers.append(LayerDominance(
            layer=layer, n_winners=int((counts > 0).sum()),
            top_unit=int(counts.argmax()) if n else None, top_share=float(counts.max() / n) if n else None,
            per_class=per_class,
        ))
    return RunDominance(**run_identity(inputs.key), layers=layers)


# ------------------------------------------------------------------ the figure


@figures.styled
def figure(spec: ExperimentSpec, read: Reader) -> Figure:
    """The share of images won by each layer's top unit, per model (first seed, first data set)."""
    from fflab.spec import RunKey

    figure = Figure(figsize=(6, 3.6), layout="constrained")
    ax = figure.add_subplot()
    width = 0.8 / len(spec.models)
    for index, model in enumerate(spec.models):
        document = read_as(read, RunKey(model, spec.datasets[0], spec.seeds[0]), RunDominance)
        shares = [np.nan if layer.top_share is None else layer.top_share for layer in document.layers]
        positions = np.arange(1, len(shares) + 1) + (index - (len(spec.models) - 1) / 2) * width
        ax.bar(positions, shares, width, label=figures.model_display_name(model),
               color=figures.model_color(model, index))
    ax.set_xlabel("layer")
    ax.set_ylabel("share of images won by the top unit")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(1, spec.network.layers + 1))
    ax.set_title(f"{DATASETS[spec.datasets[0]].display_name}: share of images won by each layer's top unit")
    figures.legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figures.caption(figure, f"one run per model (seed {spec.seeds[0]}): no error bars")
    return figure


ANALYSIS = RunAnalysis(
    "dominance", RunDominance,
    "Per layer, the units that are the most active on an image, and how often.",
    analyse=analyse, figure=figure, layer_fields=("layers",),
    details="Per layer, how many units are ever the most active on an analysed image, the share of images "
            "won by the most frequent winner, and each class's most frequent winner with its share.",
    needs=NO_NEEDS,  # activities and labels only: also for recorded runs
)
