"""The paper's per-run analyses, each a run document (registered in
fflab.pipeline.documents): the ensembles of every layer and class by Methods 1
and 2 with the sparseness of the representations and the unseen class's
activity (``ensembles``), the units each pair of classes' ensembles share
(``shared_units``), and the signs of the weights (``weight_stats``). Then
``run_record``: the run's summary, the input of the tables; and
``cut_rule_fits``: Figure 8B's fits under each Method 2 cut rule, from the
runs' ensembles documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fflab import analysis
from fflab.pipeline.folders import layer_count
from fflab.pipeline.train import METRICS_FILE, run_identity
from fflab.results import (
    CutRuleFit,
    EnsembleRecord,
    LayerSparseness,
    LayerWeightStats,
    RunEnsembles,
    RunMetrics,
    RunSharedUnits,
    RunWeightStats,
    SharedUnitsMatrix,
    SizeFit,
    UnseenClassSummary,
    finite_or_none,
    read_document,
)

if TYPE_CHECKING:
    from pathlib import Path

    from fflab.pipeline.documents import RunAnalysisInput


def ensembles_document(inputs: RunAnalysisInput) -> RunEnsembles:
    """Per layer: Method 1 ensembles at every quantile and Method 2 ensembles of
    every class (by ``analysis.method2_cut``, and the sizes under every cut rule),
    every sparseness measure, and for a run trained without a class, that class's
    activity against the seen classes' (Method 2)."""
    key, settings = inputs.key, inputs.settings
    stored, keep = inputs.representations, inputs.analysed
    labels = stored["labels"][keep]
    classes, names = inputs.classes, inputs.class_names
    records: list[EnsembleRecord] = []
    sparseness: list[LayerSparseness] = []
    unseen: list[UnseenClassSummary] = []
    sizes_by_rule: dict[str, list[list[int | None]]] = {rule: [] for rule in analysis.METHOD2_CUTS}
    n_images = {c: int((labels == c).sum()) for c in classes}
    upper_bound = inputs.upper_bound
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
        for rule in analysis.METHOD2_CUTS:
            sizes_by_rule[rule].append([None] * len(classes))
        for c in classes:
            under = {
                rule: analysis.method2_ensemble(X[labels == c], upper_bound=upper_bound,
                                                **settings.method2_options() | {"cut": rule})
                for rule in analysis.METHOD2_CUTS
            }
            if n_images[c] > 0:
                for rule, by_rule in under.items():
                    sizes_by_rule[rule][-1][c] = int(by_rule.units.size)
            result = under[settings.method2_cut]
            method2[c] = result.units
            records.append(
                EnsembleRecord(
                    layer=layer, class_index=c, class_name=names[c], method="method2",
                    epsilon=settings.epsilon, rho_cut=finite_or_none(result.rho_cut),
                    nh_cut=finite_or_none(result.nh_cut), n_images=n_images[c],
                    units=result.units.tolist(), size=result.units.size,
                )
            )
        def by_class(measure: str, X: np.ndarray = X) -> list[float | None]:
            per_class = analysis.class_sparseness(X, labels, classes, measure=measure)
            return [finite_or_none(per_class[c]) for c in classes]

        sparseness.append(
            LayerSparseness(
                layer=layer,
                hoyer=finite_or_none(analysis.mean_sparseness(X, "hoyer")),
                treves_rolls=finite_or_none(analysis.mean_sparseness(X, "treves_rolls")),
                hoyer_by_class=by_class("hoyer"),
                treves_rolls_by_class=by_class("treves_rolls"),
                treves_rolls_of_class_mean=by_class("treves_rolls_of_class_mean"),
                hoyer_of_class_mean=by_class("hoyer_of_class_mean"),
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
        **run_identity(key), analysis=settings, n_units=inputs.n_units,
        ensembles=records, sparseness=sparseness, unseen=unseen, method2_sizes_by_cut_rule=sizes_by_rule,
    )


def shared_units_document(inputs: RunAnalysisInput) -> RunSharedUnits:
    """From the ensembles document: per layer, the shared-units matrix of Method 1
    at each quantile, then of Method 2."""
    ensembles: RunEnsembles = inputs.ensembles
    classes = inputs.classes
    units: dict[tuple[Any, ...], dict[int, np.ndarray]] = {}
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
    """Per layer, the fraction of positive weights, per unit the fraction of negative
    incoming ones, and Figure 7's counts: the units whose incoming weights are all
    negative, and the share of units near 3/4 negative."""
    layers = []
    for index, w in enumerate(inputs.weights, start=1):
        all_negative = analysis.all_negative_incoming(w)
        layers.append(LayerWeightStats(
            layer=index,
            fraction_positive=analysis.fraction_positive_weights(w),
            fraction_negative_incoming=analysis.fraction_negative_incoming(w).tolist(),
            units_all_negative=int(all_negative.size),
            fraction_units_all_negative=all_negative.size / w.shape[0],
            fraction_units_three_quarters_negative=analysis.fraction_units_negative_share_near(w),
        ))
    return RunWeightStats(**run_identity(inputs.key), layers=layers)


# The run documents run_record reads: a run that has them can be tabulated and compared.
RECORD_DOCUMENTS = ("metrics", "ensembles", "shared_units", "weight_stats")


def run_record(run_dir: Path) -> dict[str, Any]:
    """The run's summary record (the input of the tables), from its JSON files.

    Per layer: ensemble sizes per class (Method 1 at the table quantile, Method
    2 by ``analysis.method2_cut`` and under every cut rule), None for a class with
    no analysed image (missing, not 0); the mean number of units shared by a pair
    of classes (Method 1 at the figure quantile, pairs of classes that both have
    images) and each pair's count ``[class, class, shared units]``; the sparseness by each measure (per image: the mean over the analysed
    images, the authors' convention; of the class mean: the mean over classes); the
    fraction of positive weights and Figure 7's counts; for a run trained without a
    class, that class's ensemble activity against the seen classes' and its
    ensemble's size (Method 2). A value a document written before it existed lacks
    is None. A recorded run (fflab.pipeline.recorded) may lack metrics.json (no
    predictions: accuracy None) and weight_stats.json (no weights: None per layer).
    """
    ensembles = read_document(RunEnsembles, run_dir / "ensembles.json")
    shared = read_document(RunSharedUnits, run_dir / "shared_units.json")
    has_metrics, has_weights = (run_dir / METRICS_FILE).is_file(), (run_dir / "weight_stats.json").is_file()
    metrics = read_document(RunMetrics, run_dir / METRICS_FILE) if has_metrics else None
    weights = read_document(RunWeightStats, run_dir / "weight_stats.json") if has_weights else None
    settings = ensembles.analysis
    n_layers = len(ensembles.sparseness)
    n_classes = max((record.class_index for record in ensembles.ensembles), default=-1) + 1
    sizes: dict[str, list[list[int | None]]] = {
        method: [[None] * n_classes for _ in range(n_layers)] for method in ("method1", "method2")
    }
    analysed = [False] * n_classes
    for record in ensembles.ensembles:
        if record.method == "method2" or record.quantile == settings.table_quantile:
            if record.n_images > 0:
                sizes[record.method][record.layer - 1][record.class_index] = record.size
                analysed[record.class_index] = True
    pair_means: list[float | None] = [None] * n_layers
    pairs: list[list[list[int]]] = [[] for _ in range(n_layers)]
    for matrix in shared.matrices:
        if matrix.method == "method1" and matrix.quantile == settings.figure_quantile:
            present = [i for i, c in enumerate(matrix.classes) if analysed[c]]
            pair_means[matrix.layer - 1] = analysis.mean_shared_units(
                np.asarray(matrix.matrix)[np.ix_(present, present)]
            ) if len(present) >= 2 else None
            pairs[matrix.layer - 1] = [[matrix.classes[i], matrix.classes[j], int(matrix.matrix[i][j])]
                                       for k, i in enumerate(present) for j in present[k + 1:]]

    def mean_over_classes(values: list[float | None]) -> float | None:
        finite = [v for v in values if v is not None]
        return float(np.mean(finite)) if finite else None

    def per_layer(name: str) -> list[Any]:
        if weights is None:
            return [None] * n_layers
        return [getattr(layer, name) for layer in weights.layers]

    return {
        "run_id": ensembles.run_id,
        "model": ensembles.model,
        "dataset": ensembles.dataset,
        "seed": ensembles.seed,
        "unseen_class": ensembles.unseen_class,
        "accuracy": None if metrics is None else metrics.accuracy,
        "per_class_accuracy": None if metrics is None else metrics.per_class_accuracy,
        "n_test": None if metrics is None else metrics.n_test,
        "ensemble_sizes_method1": sizes["method1"],
        "ensemble_sizes_method2": sizes["method2"],
        "mean_shared_units": pair_means,
        "shared_units_pairs": pairs,
        "ensemble_sizes_method2_by_cut_rule": ensembles.method2_sizes_by_cut_rule,
        "sparseness_treves_rolls": [layer.treves_rolls for layer in ensembles.sparseness],
        "sparseness_hoyer": [layer.hoyer for layer in ensembles.sparseness],
        "sparseness_treves_rolls_of_class_mean": [
            mean_over_classes(layer.treves_rolls_of_class_mean) for layer in ensembles.sparseness
        ],
        "sparseness_hoyer_of_class_mean": [
            mean_over_classes(layer.hoyer_of_class_mean) for layer in ensembles.sparseness
        ],
        "unseen_activity": [
            {"unseen": u.unseen_mean_activity, "seen": u.seen_mean_activity} for u in ensembles.unseen
        ],
        "unseen_ensemble_size_method2": [len(u.units) for u in ensembles.unseen],
        "fraction_positive_weights": per_layer("fraction_positive"),
        "units_all_negative_incoming": per_layer("units_all_negative"),
        "fraction_units_all_negative_incoming": per_layer("fraction_units_all_negative"),
        "fraction_units_three_quarters_negative_incoming": per_layer("fraction_units_three_quarters_negative"),
        "train_seconds": None if metrics is None else metrics.timings.train_seconds,
    }


def cut_rule_fits(
    runs: Sequence[tuple[str, RunEnsembles]], quantile: float
) -> dict[str, CutRuleFit]:
    """Figure 8B's fits (fflab.analysis.method_size_fits) with Method 2's sizes
    under each cut rule of ``fflab.analysis.METHOD2_CUTS``, for
    ``MethodComparison.by_cut_rule``.

    The points are those of the pipeline's method comparison: every (run, layer,
    class) with analysed images, Method 1's size at ``quantile`` (y) against
    Method 2's (x), from each run's ensembles document. A rule a document lacks
    (written before it existed) gets no fit.

    Parameters
    ----------
    runs : sequence of (model, RunEnsembles)
        The runs trained on every class, each with its model (the group of the
        per-model fits).
    quantile : float
        Method 1's quantile (0.99 in the paper).

    Returns
    -------
    dict of str to CutRuleFit
        By rule, in registry order.
    """
    points: dict[str, tuple[list[int], list[int], list[str]]] = {}
    for model, document in runs:
        method1 = {
            (e.layer, e.class_index): e.size
            for e in document.ensembles
            if e.method == "method1" and e.quantile == quantile and e.n_images > 0
        }
        for rule, layers in document.method2_sizes_by_cut_rule.items():
            y, x, groups = points.setdefault(rule, ([], [], []))
            for layer, sizes in enumerate(layers, start=1):
                for c, size in enumerate(sizes):
                    if size is not None and (layer, c) in method1:
                        y.append(method1[(layer, c)])
                        x.append(size)
                        groups.append(model)

    def size_fit(fit: analysis.LinearFit | None) -> SizeFit | None:
        return None if fit is None else SizeFit(
            slope=fit.slope, intercept=fit.intercept, r2=finite_or_none(fit.r2), n_points=fit.n_points)

    fits = {}
    for rule in analysis.METHOD2_CUTS:
        if rule not in points:
            continue
        y, x, groups = points[rule]
        found = analysis.method_size_fits(np.array(y), np.array(x), np.array(groups, dtype=object))
        pooled = found.all_points
        fits[rule] = CutRuleFit(
            slope=None if pooled is None else pooled.slope,
            intercept=None if pooled is None else pooled.intercept,
            r2=None if pooled is None else finite_or_none(pooled.r2),
            n_points=len(y), both_found=size_fit(found.both_found), left_out=found.left_out,
            per_model={group: size_fit(fit) for group, fit in found.per_group.items()},
        )
    return fits
