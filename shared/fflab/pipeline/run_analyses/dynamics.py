"""Ensemble dynamics: the ensembles at the training snapshots, against the final ones.

Training captures a fixed probe set at the spec's snapshot epochs
(``fflab.pipeline.snapshots``); this analysis compares each capture's Method 1
ensembles with the final ones (``fflab.analysis.dynamics``). Its one home: the
document (``dynamics.json``), the step, the figure and ``ANALYSIS``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field

from fflab.analysis.dynamics import ensemble_trajectory
from fflab.data import DATASETS
from fflab.figures import caption, legend, model_display_name, panel_letters, styled
from fflab.pipeline import folders
from fflab.pipeline.run_analyses.common import (
    AnalysisDocument,
    Part,
    Reader,
    documents_of,
    first_seed_runs,
    run_identity,
    timed_on_one_thread,
)
from fflab.pipeline.run_document import SNAPSHOTS, RunAnalysis
from fflab.pipeline.snapshots import SNAPSHOT_FILE
from fflab.results import finite_or_none
from fflab.spec import ExperimentSpec

if TYPE_CHECKING:
    from fflab.pipeline.run_document import RunAnalysisInput


# ------------------------------------------------------------------ the document


class DynamicsPoint(Part):
    layer: int
    epoch: int = Field(description="Epochs done (for FF: of this layer's training).")
    accuracy: float | None = Field(
        description="Accuracy on the probe images at the snapshot (FF: goodness of layers 1..layer); "
        "null where a representations file did not give it.")
    fraction_positive: float | None = Field(
        description="Fraction of this layer's weights > 0 at the snapshot; null for a representations file.")
    sizes: list[int] = Field(description="Ensemble size per class (Method 1).")
    jaccard: list[float] = Field(description="Per class, overlap with the final ensemble.")
    mean_size: float
    mean_jaccard: float


class RunDynamics(AnalysisDocument):
    """dynamics.json: the ensembles at the training snapshots, against the final ones."""

    epochs: list[int] = Field(description="Snapshot epochs captured (empty: snapshots were off).")
    n_probe_images: int = Field(description="Fixed probe set: a stratified subset of the test images.")
    quantile: float = Field(description="Method 1 quantile (the table quantile).")
    points: list[DynamicsPoint]
    final_sizes: list[list[int]] = Field(description="Per layer, per class: the final ensemble sizes.")


# ------------------------------------------------------------------ the step


@timed_on_one_thread
def analyse(inputs: RunAnalysisInput) -> RunDynamics:
    stored = inputs.representations
    settings = inputs.ensembles.analysis
    quantile = settings.table_quantile
    classes = inputs.classes
    path = inputs.run_dir / SNAPSHOT_FILE
    final_sizes: list[list[int]] = []
    points, epochs, n_probe = [], set(), 0
    if path.is_file():
        with np.load(path) as snapshots:
            rows, meta = snapshots["rows"], snapshots["meta"]
            captured = {name: snapshots[name] for name in snapshots.files if name.startswith("layer")}
        n_probe = int(rows.size)
    for layer in range(1, folders.layer_count(stored) + 1):
        if not n_probe:
            final_sizes.append([])
            continue
        entries = [m for m in meta if int(m[0]) == layer]
        # Snapshots are stored in float16: the final representations are compared at the same precision.
        final = stored[f"layer{layer}"][rows].astype(np.float16).astype(np.float32)
        trajectory = ensemble_trajectory(
            [captured[f"layer{layer}_epoch{int(m[1])}"].astype(np.float32) for m in entries],
            final, stored["labels"][rows], quantile, classes, **settings.method1_options(),
        )
        final_sizes.append(trajectory.final_sizes.tolist())
        for s, m in enumerate(entries):
            epochs.add(int(m[1]))
            points.append(DynamicsPoint(
                layer=layer, epoch=int(m[1]), accuracy=finite_or_none(m[2]), fraction_positive=finite_or_none(m[3]),
                sizes=trajectory.sizes[s].tolist(), jaccard=trajectory.jaccard[s].tolist(),
                mean_size=float(trajectory.sizes[s].mean()), mean_jaccard=float(trajectory.jaccard[s].mean()),
            ))
    return RunDynamics(**run_identity(inputs.key), epochs=sorted(epochs), n_probe_images=n_probe,
                       quantile=quantile, points=points, final_sizes=final_sizes)


# ------------------------------------------------------------------ the figure


DYNAMICS_QUANTITIES = (
    ("mean_size", "Mean ensemble size"),
    ("mean_jaccard", "Jaccard with final"),
    ("accuracy", "Probe-set accuracy"),
    ("fraction_positive", "Fraction of weights > 0"),
)


def figure(spec: ExperimentSpec, read: Reader) -> Figure | None:
    per_model = {}
    for key, document in documents_of(spec, read, first_seed_runs(spec), RunDynamics):
        curves = {}
        for layer in sorted({p.layer for p in document.points}):
            points = sorted((p for p in document.points if p.layer == layer), key=lambda p: p.epoch)
            curves[layer] = {q: (np.array([p.epoch for p in points]), np.array([getattr(p, q) for p in points]))
                             for q, _ in DYNAMICS_QUANTITIES}
        if curves:
            per_model[key.model] = curves
    if not per_model:
        return None
    return draw(per_model, f"{DATASETS[spec.datasets[0]].display_name}, seed {spec.seeds[0]}")


@styled
def draw(per_model: Mapping[str, Mapping[int, Mapping[str, tuple[np.ndarray, np.ndarray]]]],
                    subtitle: str = "") -> Figure:
    """One row per model, one column per quantity (ensemble size, overlap with
    the final ensemble, accuracy, fraction of positive weights) over epochs, one
    line per layer: ``per_model[model][layer][quantity] = (epochs (S,), values (S,))``."""
    models = list(per_model)
    fig = Figure(figsize=(12.0, 2.8 * max(1, len(models)) + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(1, len(models)), len(DYNAMICS_QUANTITIES)))
    for row, model in enumerate(models):
        for ax, (quantity, label) in zip(axes[row], DYNAMICS_QUANTITIES):
            for layer, by_quantity in sorted(per_model[model].items()):
                epochs, values = by_quantity[quantity]
                ax.plot(epochs, values, marker="o", label=f"layer {layer}")
            ax.set_xscale("log")
            ax.set_xlabel("Epoch")
            ax.set_ylabel(label, fontsize=8)
            if quantity in ("mean_jaccard", "accuracy", "fraction_positive"):
                ax.set_ylim(0, 1.02)
        axes[row][0].set_title(model_display_name(model), loc="left", fontsize=10)
        legend(axes[row][0], fontsize=7)
    panel_letters(axes.ravel())
    caption(fig, "one run per model: no error bars; each point a training snapshot, one line per layer")
    fig.suptitle("Ensemble dynamics during training" + (f" ({subtitle})" if subtitle else ""))
    return fig


ANALYSIS = RunAnalysis(
    "dynamics", RunDynamics,
    "Ensembles, accuracy and positive weights at the training snapshots, against the final ones.",
    analyse=analyse, figure=figure, layer_fields=("points",), needs=frozenset({SNAPSHOTS}),
    details="Ensemble size, overlap with the final ensemble, accuracy and fraction of positive weights at "
            "the training snapshots.",
)
