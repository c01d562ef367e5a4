"""Lesions: accuracy lost when a class's ensemble is silenced, against controls.

Each class's Method 1 ensemble (table quantile) is silenced in the trained
network, against as many random and as many most active non-ensemble units
(``fflab.analysis.lesions``, ``fflab.models.probing``). Its one home: the
document (``lesions.json``), the step, the figure and ``ANALYSIS``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field

from fflab.analysis.lesions import accuracy_drop, control_unit_sets, mean_and_se
from fflab.figures import caption, legend, model_display_name, note_if_empty, panel_letters, styled
from fflab.models.probing import lesioned_predictions
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
from fflab.pipeline.run_document import RunAnalysis
from fflab.spec import ExperimentSpec

if TYPE_CHECKING:
    from fflab.pipeline.run_document import RunAnalysisInput


LESION_IMAGES_PER_CLASS = 20
LESION_RANDOM_DRAWS = 3


# ------------------------------------------------------------------ the document


class LesionEffect(Part):
    target: float = Field(description="Accuracy drop on the lesioned class (intact - lesioned).")
    others: float = Field(description="Accuracy drop on the other classes.")
    target_se: float | None = Field(None, description="Standard error over draws (random controls).")
    others_se: float | None = None


class LesionRecord(Part):
    layer: int
    class_index: int
    n_units: int = Field(description="Units silenced (the ensemble's size).")
    ensemble: LesionEffect
    random: LesionEffect | None = Field(description="Mean over random draws outside the ensemble.")
    most_active: LesionEffect | None = Field(description="The class's most active units outside the ensemble.")


class RunLesions(AnalysisDocument):
    """lesions.json: accuracy lost when a class's ensemble is silenced, against controls."""

    quantile: float = Field(description="Ensembles: Method 1 at this quantile (as in ensembles.json).")
    images_per_class: int = Field(description="Test images per class the accuracies are measured on.")
    random_draws: int
    subsample_seed: int = Field(description="Seed of the image subset and the random draws.")
    intact_accuracy: float
    lesions: list[LesionRecord] = Field(description="Per layer and class with a non-empty ensemble.")


# ------------------------------------------------------------------ the step


@timed_on_one_thread
def analyse(inputs: RunAnalysisInput) -> RunLesions:
    spec, stored = inputs.spec, inputs.representations
    quantile, ensembles = table_ensembles(inputs.ensembles)
    labels_all = stored["labels"]
    rows = per_class_rows(labels_all, LESION_IMAGES_PER_CLASS, ANALYSIS_SEED)
    images, labels = inputs.test_split.images[rows], labels_all[rows]
    net = inputs.network
    rng = np.random.default_rng(ANALYSIS_SEED)
    intact = lesioned_predictions(net, images, 1, [[]], spec.prediction)[0].numpy()
    analysed_labels = labels_all[inputs.analysed]
    records = []
    for layer in sorted(ensembles):
        X = stored[f"layer{layer}"][inputs.analysed]
        for c in sorted(ensembles[layer]):
            units = ensembles[layer][c]
            if units.size == 0 or not (labels == c).any():
                continue
            class_rows = X[analysed_labels == c]
            activity = class_rows.mean(axis=0) if len(class_rows) else np.zeros(X.shape[1])
            random_sets, most_active = control_unit_sets(units, activity, LESION_RANDOM_DRAWS, rng)
            sets = [units, most_active, *random_sets] if most_active.size else [units]
            drops = [accuracy_drop(intact, p.numpy(), labels, c)
                     for p in lesioned_predictions(net, images, layer, sets, spec.prediction)]
            random_effect = most_active_effect = None
            if most_active.size:
                most_active_effect = LesionEffect(target=drops[1].target, others=drops[1].others)
                target, target_se = mean_and_se([d.target for d in drops[2:]])
                others, others_se = mean_and_se([d.others for d in drops[2:]])
                random_effect = LesionEffect(target=target, others=others, target_se=target_se, others_se=others_se)
            records.append(LesionRecord(
                layer=layer, class_index=c, n_units=int(units.size),
                ensemble=LesionEffect(target=drops[0].target, others=drops[0].others),
                random=random_effect, most_active=most_active_effect,
            ))
    return RunLesions(**run_identity(inputs.key), quantile=quantile, images_per_class=LESION_IMAGES_PER_CLASS,
                      random_draws=LESION_RANDOM_DRAWS, subsample_seed=ANALYSIS_SEED,
                      intact_accuracy=float((intact == labels).mean()), lesions=records)


# ------------------------------------------------------------------ the figure


def figure(spec: ExperimentSpec, read: Reader) -> Figure | None:
    per_model: dict[str, dict[str, dict[int, list[float]]]] = {}
    for key, document in documents_of(spec, read, main_runs(spec), RunLesions):
        drops = per_model.setdefault(key.model, {"ensemble": {}, "random": {}, "most_active": {}})
        for record in document.lesions:
            drops["ensemble"].setdefault(record.layer, []).append(record.ensemble.target)
            if record.random is not None:
                drops["random"].setdefault(record.layer, []).append(record.random.target)
            if record.most_active is not None:
                drops["most_active"].setdefault(record.layer, []).append(record.most_active.target)
    per_model = {model: drops for model, drops in per_model.items() if drops["ensemble"]}
    if not per_model:
        return None
    return draw(per_model)


LESION_KINDS = (("ensemble", "ensemble", "tab:blue"), ("random", "random units", "tab:gray"),
                ("most_active", "most active non-ensemble", "tab:orange"))


@styled
def draw(per_model: Mapping[str, Mapping[str, Mapping[int, Sequence[float]]]]) -> Figure:
    """Accuracy lost on the lesioned class, per layer, mean ± SE over classes
    (and runs): ``per_model[model][kind][layer]`` lists the drops, kind one of
    ``ensemble``, ``random`` (each already a mean over draws), ``most_active``."""
    models = list(per_model)
    fig = Figure(figsize=(4.2 * max(1, len(models)) + 1.6, 4.2), layout="constrained")
    counts: set[int] = set()
    axes = np.atleast_1d(fig.subplots(1, max(1, len(models)), sharey=True))
    for ax, model in zip(axes, models):
        layers = sorted(per_model[model]["ensemble"])
        x = np.arange(len(layers))
        for offset, (kind, label, colour) in zip((-0.27, 0.0, 0.27), LESION_KINDS):
            drops = [np.asarray(per_model[model].get(kind, {}).get(layer, []), dtype=float) for layer in layers]
            counts.update(d.size for d in drops if d.size)
            mean = np.array([d.mean() if d.size else np.nan for d in drops])
            se = np.array([d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else 0.0 for d in drops])
            ax.bar(x + offset, mean, 0.27, yerr=se, capsize=3, color=colour, label=label)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, [f"layer {layer}" for layer in layers])
        ax.set_title(model_display_name(model), fontsize=10)
        ax.set_ylim(-0.2, 1.02)
        note_if_empty(ax, "no lesion recorded")
    axes[0].set_ylabel("Accuracy drop on the lesioned class")
    legend(fig, source=list(axes), fontsize=7, loc="outside right upper")
    panel_letters(axes[:len(models)])
    n = (f"n={min(counts)}" if len(counts) == 1 else f"n={min(counts)} to {max(counts)}") if counts else "n=0"
    caption(fig, f"bars: mean ± SE over {n} lesioned classes (pooled over runs); random units: "
                 "each already a mean over draws")
    fig.suptitle("Silencing a class's ensemble vs as many other units")
    return fig


ANALYSIS = RunAnalysis(
    "lesions", RunLesions,
    "Accuracy lost when a class's ensemble is silenced, against random and most active units.",
    analyse=analyse, figure=figure, layer_fields=("lesions",),
    details="Accuracy lost on a class and on the others when its ensemble is silenced, against as many "
            "random and most active non-ensemble units.",
)
