"""The paper's per-run analyses, each a run document (registered in
fflab.pipeline.documents): the ensembles of every layer and class by Methods 1
and 2 with the sparseness of the representations and the unseen class's
activity (``ensembles``), the units each pair of classes' ensembles share
(``shared_units``), and the signs of the weights (``weight_stats``). Then
``run_record``: the run's summary, the input of the tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fflab import analysis
from fflab.data import DATASETS, N_CLASSES
from fflab.models.components import ACTIVATIONS
from fflab.pipeline.folders import layer_count
from fflab.pipeline.train import METRICS_FILE, run_identity
from fflab.results import (
    EnsembleRecord,
    LayerSparseness,
    LayerWeightStats,
    RunEnsembles,
    RunMetrics,
    RunSharedUnits,
    RunWeightStats,
    SharedUnitsMatrix,
    UnseenClassSummary,
    finite_or_none,
    read_document,
)

if TYPE_CHECKING:
    from pathlib import Path

    from fflab.pipeline.documents import RunAnalysisInput


def ensembles_document(inputs: RunAnalysisInput) -> RunEnsembles:
    """Per layer: Method 1 ensembles at every quantile and Method 2 ensembles of
    every class, both sparseness measures per class, and for a run trained without
    a class, that class's activity against the seen classes' (Method 2)."""
    spec, key, settings = inputs.spec, inputs.key, inputs.spec.analysis
    stored, keep = inputs.representations, inputs.analysed
    labels = stored["labels"][keep]
    classes = list(range(N_CLASSES))
    names = list(DATASETS[key.dataset].class_names)
    records: list[EnsembleRecord] = []
    sparseness: list[LayerSparseness] = []
    unseen: list[UnseenClassSummary] = []
    n_images = {c: int((labels == c).sum()) for c in classes}
    upper_bound = ACTIVATIONS.lookup(spec.network.activation).upper_bound
    n_layers = layer_count(stored)

    for layer in range(1, n_layers + 1):
        X = stored[f"layer{layer}"][keep]
        for quantile in settings.quantiles:
            for c in classes:
                result = analysis.method1_ensemble(X[labels == c], quantile, **settings.method1_options())
                records.append(
                    EnsembleRecord(
                        layer=layer, class_index=c, class_name=names[c], method="method1",
                        quantile=quantile, threshold=finite_or_none(result.threshold),
                        n_images=n_images[c], units=result.units.tolist(), size=result.units.size,
                    )
                )
        method2: dict[int, np.ndarray] = {}
        for c in classes:
            result = analysis.method2_ensemble(
                X[labels == c], settings.epsilon, settings.rho_cut, settings.nh_cut, upper_bound
            )
            method2[c] = result.units
            records.append(
                EnsembleRecord(
                    layer=layer, class_index=c, class_name=names[c], method="method2",
                    epsilon=settings.epsilon, rho_cut=finite_or_none(result.rho_cut),
                    nh_cut=finite_or_none(result.nh_cut), n_images=n_images[c],
                    units=result.units.tolist(), size=result.units.size,
                )
            )
        per_class = analysis.class_sparseness(X, labels, classes)
        hoyer = analysis.class_sparseness(X, labels, classes, measure="hoyer")
        sparseness.append(
            LayerSparseness(
                layer=layer,
                per_class=[finite_or_none(per_class[c]) for c in classes],
                hoyer_per_class=[finite_or_none(hoyer[c]) for c in classes],
            )
        )
        if key.unseen_class is not None:
            activity = analysis.unseen_class_activity(X, labels, key.unseen_class, method2)
            unseen.append(
                UnseenClassSummary(
                    layer=layer, unseen_class=key.unseen_class,
                    units=activity.unseen_units.tolist(),
                    unseen_mean_activity=finite_or_none(activity.unseen_mean_activity),
                    seen_mean_activity=finite_or_none(activity.seen_mean_activity),
                )
            )
    return RunEnsembles(
        **run_identity(key), analysis=settings, n_units=spec.network.width,
        ensembles=records, sparseness=sparseness, unseen=unseen,
    )


def shared_units_document(inputs: RunAnalysisInput) -> RunSharedUnits:
    """From the ensembles document: per layer, the shared-units matrix of Method 1
    at each quantile, then of Method 2."""
    ensembles: RunEnsembles = inputs.documents["ensembles"]
    classes = list(range(N_CLASSES))
    units: dict[tuple, dict[int, np.ndarray]] = {}
    for record in ensembles.ensembles:
        place = (record.layer, record.method, record.quantile)
        units.setdefault(place, {})[record.class_index] = np.asarray(record.units, dtype=np.int64)
    matrices = [
        SharedUnitsMatrix(
            layer=layer, method=method, quantile=quantile, classes=classes,
            matrix=analysis.shared_units_matrix(by_class, classes).tolist(),
        )
        for (layer, method, quantile), by_class in units.items()
    ]
    return RunSharedUnits(**run_identity(inputs.key), matrices=matrices)


def weight_stats_document(inputs: RunAnalysisInput) -> RunWeightStats:
    """Per layer, the fraction of positive weights and, per unit, of negative incoming ones."""
    return RunWeightStats(
        **run_identity(inputs.key),
        layers=[
            LayerWeightStats(
                layer=index,
                fraction_positive=analysis.fraction_positive_weights(w),
                fraction_negative_incoming=analysis.fraction_negative_incoming(w).tolist(),
            )
            for index, w in enumerate(inputs.weights, start=1)
        ],
    )


# The run documents run_record reads: a run that has them can be tabulated and compared.
RECORD_DOCUMENTS = ("metrics", "ensembles", "shared_units", "weight_stats")


def run_record(run_dir: Path) -> dict:
    """The run's summary record (the input of the tables), from its JSON files.

    Per layer: ensemble sizes per class (Method 1 at the table quantile, Method
    2), None for a class with no analysed image (missing, not 0); the mean number
    of units shared by a pair of classes (Method 1 at the figure quantile, pairs
    of classes that both have images); the mean over classes of each sparseness
    measure; the fraction of positive weights; for a run trained without a class,
    that class's ensemble activity against the seen classes' (Method 2).
    """
    metrics = read_document(RunMetrics, run_dir / METRICS_FILE)
    ensembles = read_document(RunEnsembles, run_dir / "ensembles.json")
    weights = read_document(RunWeightStats, run_dir / "weight_stats.json")
    shared = read_document(RunSharedUnits, run_dir / "shared_units.json")
    settings = ensembles.analysis
    n_layers = len(weights.layers)
    sizes: dict[str, list[list[int | None]]] = {
        method: [[None] * N_CLASSES for _ in range(n_layers)] for method in ("method1", "method2")
    }
    analysed = [False] * N_CLASSES
    for record in ensembles.ensembles:
        if record.method == "method2" or record.quantile == settings.table_quantile:
            if record.n_images > 0:
                sizes[record.method][record.layer - 1][record.class_index] = record.size
                analysed[record.class_index] = True
    pair_means: list[float | None] = [None] * n_layers
    for matrix in shared.matrices:
        if matrix.method == "method1" and matrix.quantile == settings.figure_quantile:
            present = [i for i, c in enumerate(matrix.classes) if analysed[c]]
            pair_means[matrix.layer - 1] = analysis.mean_shared_units(
                np.asarray(matrix.matrix)[np.ix_(present, present)]
            ) if len(present) >= 2 else None

    def mean_over_classes(values: list[float | None]) -> float | None:
        finite = [v for v in values if v is not None]
        return float(np.mean(finite)) if finite else None

    return {
        "run_id": metrics.run_id,
        "model": metrics.model,
        "dataset": metrics.dataset,
        "seed": metrics.seed,
        "unseen_class": metrics.unseen_class,
        "accuracy": metrics.accuracy,
        "per_class_accuracy": metrics.per_class_accuracy,
        "ensemble_sizes_method1": sizes["method1"],
        "ensemble_sizes_method2": sizes["method2"],
        "mean_shared_units": pair_means,
        "sparseness_treves_rolls": [mean_over_classes(layer.per_class) for layer in ensembles.sparseness],
        "sparseness_hoyer": [mean_over_classes(layer.hoyer_per_class) for layer in ensembles.sparseness],
        "unseen_activity": [
            {"unseen": u.unseen_mean_activity, "seen": u.seen_mean_activity} for u in ensembles.unseen
        ],
        "fraction_positive_weights": [layer.fraction_positive for layer in weights.layers],
        "train_seconds": metrics.timings.train_seconds,
    }
