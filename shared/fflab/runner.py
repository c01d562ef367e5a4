"""Runs, analyses and aggregates experiments into a results folder.

The science modules (models, analysis, figures) are pure; this module is the
edge where files are read and written. The CLI calls ``run_experiment`` for a
whole experiment in one process; the service's workers call ``execute_run``
per run and ``aggregate`` once the runs are done, on the same folder layout
(see ``fflab.results``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fflab import analysis, figures, paper
from fflab.data import N_CLASSES, load_split
from fflab.gpu import describe_device
from fflab.models import MODELS
from fflab.models.common import (
    Checkpoint,
    ProgressCallback,
    StopCheck,
    TrainingJob,
    negative_classes_of,
    resolve_device,
    seed_everything,
)
from fflab.models.components import ACTIVATIONS
from fflab.results import (
    EnsembleRecord,
    ExperimentResults,
    LayerSparseness,
    LayerWeightStats,
    MethodComparison,
    PaperComparison,
    RunEnsembles,
    RunDevice,
    RunMetrics,
    RunSharedUnits,
    RunWeightStats,
    SharedUnitsMatrix,
    SizeFit,
    Timings,
    UnseenClassSummary,
    read_document,
    write_document,
)
from fflab.spec import AnalysisSpec, ExperimentSpec, RunKey

# The training subset is drawn with a fixed seed so that every model and seed of an
# experiment sees the same images: seeds vary the initialisation and the negatives.
DATA_SEED = 0
# A run's JSON documents, written once it is analysed; then everything it writes.
ANALYSED_RUN_FILES = ("metrics.json", "ensembles.json", "shared_units.json", "weight_stats.json")
RUN_FILES = ANALYSED_RUN_FILES + ("representations.npz", "weights.pt")


def run_dir_of(experiment_dir: Path, key: RunKey) -> Path:
    return experiment_dir / "runs" / key.run_id


def _identity(key: RunKey) -> dict:
    return {
        "run_id": key.run_id,
        "model": key.model,
        "dataset": key.dataset,
        "seed": key.seed,
        "unseen_class": key.unseen_class,
    }


# --------------------------------------------------------------------------- training


def negative_classes_for(spec: ExperimentSpec, key: RunKey, train_labels: torch.Tensor) -> torch.Tensor:
    """The labels a run's wrong labels are drawn from: all ten for an unseen-class
    run under ``unseen_class_negatives="all_labels"`` (the authors' code), else the
    classes it trains on."""
    if key.unseen_class is not None and spec.unseen_class_negatives == "all_labels":
        return torch.arange(N_CLASSES)
    return negative_classes_of(train_labels, None)


def train_and_evaluate(
    spec: ExperimentSpec,
    key: RunKey,
    run_dir: Path,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int | None = None,
) -> RunMetrics:
    """Train one run, evaluate it on the test set, and write its metrics,
    weights and representations into ``run_dir``.

    With a ``checkpoint``, training saves its state there (FF after every layer,
    BP/FF and BP every ``checkpoint_every`` epochs) and resumes from it if it
    holds one: the results equal those of an uninterrupted run."""
    device = resolve_device(spec.device)
    excluded = () if key.unseen_class is None else (key.unseen_class,)
    train = load_split(key.dataset, True, spec.data.train_subset, excluded, seed=DATA_SEED)
    test = load_split(key.dataset, False, spec.data.test_subset, seed=DATA_SEED)
    generator = seed_everything(key.seed)
    model = MODELS.lookup(key.model)
    net = model.build(spec.network).to(device)
    job = TrainingJob(
        net=net, images=train.images.to(device), labels=train.labels.to(device),
        training=spec.training(key.model), generator=generator, negative_labels=spec.negative_labels,
        negative_classes=negative_classes_for(spec, key, train.labels), progress=progress,
        should_stop=should_stop, checkpoint=checkpoint, checkpoint_every=checkpoint_every, tf32=spec.tf32,
    )

    started = time.perf_counter()
    history = model.train(job)
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    net.eval()
    evaluation = model.evaluate(net, test.images, test.labels, spec)
    predictions = evaluation.predictions
    arrays = {name: array.numpy() for name, array in evaluation.arrays.items()}
    correct = (predictions == test.labels).numpy()
    for index, layer in enumerate(evaluation.layers, start=1):
        arrays[f"layer{index}"] = layer.numpy().astype(np.float32)
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        run_dir / "representations.npz",
        labels=test.labels.numpy(),
        predictions=predictions.numpy(),
        correct=correct,
        **arrays,
    )
    torch.save({name: t.cpu() for name, t in net.state_dict().items()}, run_dir / "weights.pt")
    evaluate_seconds = time.perf_counter() - started

    test_labels = test.labels.numpy()
    per_class = [
        float(correct[test_labels == c].mean()) if (test_labels == c).any() else None
        for c in range(N_CLASSES)
    ]
    metrics = RunMetrics(
        **_identity(key),
        accuracy=float(correct.mean()),
        per_class_accuracy=per_class,
        n_train=len(train),
        n_test=len(test),
        loss_history=history,
        device=str(device),
        device_info=RunDevice(**describe_device(device).as_dict()),
        timings=Timings(train_seconds=train_seconds, evaluate_seconds=evaluate_seconds),
    )
    write_document(metrics, run_dir / "metrics.json")
    return metrics


# --------------------------------------------------------------------------- analysis


def load_representations(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "representations.npz") as stored:
        return {name: stored[name] for name in stored.files}


def layer_count(stored: dict[str, np.ndarray]) -> int:
    return sum(1 for name in stored if name.startswith("layer"))


def analysed_rows(stored: dict[str, np.ndarray], unseen_class: int | None, correct_only: bool) -> np.ndarray:
    """Boolean mask of the test images the analyses use: the correctly classified
    ones (paper), plus every image of a class left out of training, which can
    never be classified correctly."""
    if not correct_only:
        return np.ones_like(stored["correct"], dtype=bool)
    keep = stored["correct"].astype(bool)
    if unseen_class is not None:
        keep |= stored["labels"] == unseen_class
    return keep


def _weight_matrices(run_dir: Path) -> list[np.ndarray]:
    state = torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True)
    names = sorted(
        (n for n in state if n.startswith("layers.") and n.endswith(".weight")),
        key=lambda n: int(n.split(".")[1]),
    )
    return [state[n].numpy() for n in names]


def analyse_run(spec: ExperimentSpec, key: RunKey, run_dir: Path) -> dict:
    """Compute ensembles, shared units and weight statistics of one trained run
    from its stored representations and weights; write them; return the run's
    summary record."""
    started = time.perf_counter()
    settings = spec.analysis
    stored = load_representations(run_dir)
    keep = analysed_rows(stored, key.unseen_class, settings.correct_only)
    labels = stored["labels"][keep]
    classes = list(range(N_CLASSES))
    names = figures.class_names(key.dataset)
    records: list[EnsembleRecord] = []
    matrices: list[SharedUnitsMatrix] = []
    sparseness: list[LayerSparseness] = []
    unseen: list[UnseenClassSummary] = []
    n_images = {c: int((labels == c).sum()) for c in classes}
    upper_bound = ACTIVATIONS.lookup(spec.network.activation).upper_bound

    for layer in range(1, layer_count(stored) + 1):
        X = stored[f"layer{layer}"][keep]
        for quantile in settings.quantiles:
            ensembles: dict[int, np.ndarray] = {}
            for c in classes:
                result = analysis.method1_ensemble(X[labels == c], quantile)
                ensembles[c] = result.units
                records.append(
                    EnsembleRecord(
                        layer=layer, class_index=c, class_name=names[c], method="method1",
                        quantile=quantile, threshold=_finite_or_none(result.threshold),
                        n_images=n_images[c], units=result.units.tolist(), size=result.units.size,
                    )
                )
            matrices.append(_shared(layer, "method1", quantile, ensembles, classes))
        method2: dict[int, np.ndarray] = {}
        for c in classes:
            result = analysis.method2_ensemble(
                X[labels == c], settings.epsilon, settings.rho_cut, settings.nh_cut, upper_bound
            )
            method2[c] = result.units
            records.append(
                EnsembleRecord(
                    layer=layer, class_index=c, class_name=names[c], method="method2",
                    epsilon=settings.epsilon, rho_cut=_finite_or_none(result.rho_cut),
                    nh_cut=_finite_or_none(result.nh_cut), n_images=n_images[c],
                    units=result.units.tolist(), size=result.units.size,
                )
            )
        matrices.append(_shared(layer, "method2", None, method2, classes))
        per_class = analysis.class_sparseness(X, labels, classes)
        hoyer = analysis.class_sparseness(X, labels, classes, measure="hoyer")
        sparseness.append(
            LayerSparseness(
                layer=layer,
                per_class=[_finite_or_none(per_class[c]) for c in classes],
                hoyer_per_class=[_finite_or_none(hoyer[c]) for c in classes],
            )
        )
        if key.unseen_class is not None:
            activity = analysis.unseen_class_activity(X, labels, key.unseen_class, method2)
            unseen.append(
                UnseenClassSummary(
                    layer=layer, unseen_class=key.unseen_class,
                    units=activity.unseen_units.tolist(),
                    unseen_mean_activity=_finite_or_none(activity.unseen_mean_activity),
                    seen_mean_activity=_finite_or_none(activity.seen_mean_activity),
                )
            )

    weights = _weight_matrices(run_dir)
    weight_stats = RunWeightStats(
        **_identity(key),
        layers=[
            LayerWeightStats(
                layer=index,
                fraction_positive=analysis.fraction_positive_weights(w),
                fraction_negative_incoming=analysis.fraction_negative_incoming(w).tolist(),
            )
            for index, w in enumerate(weights, start=1)
        ],
    )
    write_document(
        RunEnsembles(
            **_identity(key), analysis=settings, n_units=spec.network.width,
            ensembles=records, sparseness=sparseness, unseen=unseen,
        ),
        run_dir / "ensembles.json",
    )
    write_document(RunSharedUnits(**_identity(key), matrices=matrices), run_dir / "shared_units.json")
    write_document(weight_stats, run_dir / "weight_stats.json")

    metrics = read_document(RunMetrics, run_dir / "metrics.json")
    metrics.timings.analyse_seconds = time.perf_counter() - started
    write_document(metrics, run_dir / "metrics.json")
    return run_record(run_dir)


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _shared(layer: int, method: str, quantile: float | None, ensembles: dict, classes: list[int]) -> SharedUnitsMatrix:
    matrix = analysis.shared_units_matrix(ensembles, classes)
    return SharedUnitsMatrix(
        layer=layer, method=method, quantile=quantile, classes=classes, matrix=matrix.tolist()
    )


def run_record(run_dir: Path) -> dict:
    """The run's summary record (the input of the tables), from its JSON files.

    Per layer: ensemble sizes per class (Method 1 at the table quantile, Method
    2), None for a class with no analysed image (missing, not 0); the mean number
    of units shared by a pair of classes (Method 1 at the figure quantile, pairs
    of classes that both have images); the mean over classes of each sparseness
    measure; the fraction of positive weights; for a run trained without a class,
    that class's ensemble activity against the seen classes' (Method 2).
    """
    metrics = read_document(RunMetrics, run_dir / "metrics.json")
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


def execute_run(
    spec: ExperimentSpec,
    key: RunKey,
    run_dir: Path,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int | None = None,
) -> dict:
    """Train, evaluate and analyse one run; return its summary record. See
    ``train_and_evaluate`` for ``checkpoint``."""
    train_and_evaluate(spec, key, run_dir, progress, should_stop, checkpoint, checkpoint_every)
    return analyse_run(spec, key, run_dir)


# --------------------------------------------------------------------------- aggregation


def figure_runs(spec: ExperimentSpec) -> list[RunKey]:
    """The runs whose representations the figures read: the first seed of each
    (model, data set), and the first seed's unseen-class runs."""
    seed = spec.seeds[0]
    return [key for key in spec.runs() if key.seed == seed]


def _pick_dataset(spec: ExperimentSpec, preferred: str) -> str:
    return preferred if preferred in spec.datasets else spec.datasets[0]


def write_figures(spec: ExperimentSpec, experiment_dir: Path, records: list[dict]) -> list[str]:
    """Draw Figures 1-8 from the stored results; return the PNG file names."""
    settings = spec.analysis
    out = experiment_dir / "figures"
    written: list[str] = []

    def save(fig, name: str) -> None:
        figures.save_png(fig, out / f"{name}.png")
        written.append(f"{name}.png")

    def layer_view(key: RunKey, layer: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        stored = load_representations(run_dir_of(experiment_dir, key))
        keep = analysed_rows(stored, key.unseen_class, settings.correct_only)
        return stored[f"layer{layer}"][keep], stored["labels"][keep], stored

    seed = spec.seeds[0]
    upper_bound = ACTIVATIONS.lookup(spec.network.activation).upper_bound
    main_model = "ff" if "ff" in spec.models else spec.models[0]
    main_dataset = _pick_dataset(spec, "mnist")
    main_key = RunKey(main_model, main_dataset, seed)
    names = figures.class_names(main_dataset)
    n_layers = spec.network.layers

    # Figure 1: activation patterns (A), class means with ensembles (B), layer-1 map (C).
    X1, labels1, stored = layer_view(main_key, 1)
    first = int(np.flatnonzero(stored["correct"])[0]) if stored["correct"].any() else 0
    patterns = [stored[f"layer{layer}"][first] for layer in range(1, n_layers + 1)]
    save(figures.figure1a_activation_patterns(patterns), "figure1a")
    ensembles = analysis.class_ensembles(
        X1, labels1, "method1", classes=range(N_CLASSES), quantile=settings.figure_quantile
    )
    save(figures.figure1b_class_mean_activations(X1, labels1, ensembles, names), "figure1b")
    save(figures.activation_map(X1, labels1, names, layer=1), "figure1c")
    # Figures 5 and 6: the same map for layers 2 and 3.
    for layer, name in ((2, "figure5"), (3, "figure6")):
        if layer <= n_layers:
            X, labels, _ = layer_view(main_key, layer)
            save(figures.activation_map(X, labels, names, layer=layer), name)

    # Figure 2: ensemble sizes per class and model, over seeds; layer 1 (the paper's),
    # then the deeper layers. A class with no analysed image is missing (nan).
    for layer in range(1, n_layers + 1):
        sizes = {
            model: np.array(
                [[np.nan if v is None else v for v in r["ensemble_sizes_method1"][layer - 1]]
                 for r in records
                 if r["model"] == model and r["dataset"] == main_dataset and r["unseen_class"] is None],
                dtype=float,
            )
            for model in spec.models
        }
        save(
            figures.figure2_ensemble_sizes(
                sizes, names,
                title=f"Layer-{layer} ensemble size per class "
                f"(Method 1, quantile {settings.table_quantile})",
            ),
            "figure2" if layer == 1 else f"figure2_layer{layer}",
        )

    # Figure 3: shared units between classes, on Fashion-MNIST where available.
    shared_dataset = _pick_dataset(spec, "fashion_mnist")
    shared_names = figures.class_names(shared_dataset)
    X, labels, _ = layer_view(RunKey(main_model, shared_dataset, seed), 1)
    ensembles = analysis.class_ensembles(
        X, labels, "method1", classes=range(N_CLASSES), quantile=settings.figure_quantile
    )
    matrix = analysis.shared_units_matrix(ensembles, range(N_CLASSES))
    off_diagonal = matrix - np.diag(np.diag(matrix))
    a, b = np.unravel_index(np.argmax(off_diagonal), matrix.shape)
    save(
        figures.figure3a_shared_units(
            ensembles[a], ensembles[b], spec.network.width, shared_names[a], shared_names[b]
        ),
        "figure3a",
    )
    save(figures.figure3b_shared_units_matrix(matrix, shared_names), "figure3b")

    # Figure 4: the unseen class, Method 2, on Fashion-MNIST where available.
    without_a_class = spec.models_without_a_class()
    if spec.unseen_class is not None and without_a_class:
        unseen_key = RunKey(without_a_class[0], shared_dataset, seed, spec.unseen_class)
        X, labels, _ = layer_view(unseen_key, 1)
        unseen_rows = X[labels == spec.unseen_class]
        result = analysis.method2_ensemble(
            unseen_rows, settings.epsilon, settings.rho_cut, settings.nh_cut, upper_bound
        )
        class_name = shared_names[spec.unseen_class]
        save(figures.figure4a_unseen_activations(unseen_rows, class_name), "figure4a")
        save(figures.figure4b_mean_activity(result.mean_activity, result.units, class_name), "figure4b")
        save(
            figures.figure4c_decision_diagram(
                result.rho, result.n_higher, result.units, result.rho_cut, result.nh_cut
            ),
            "figure4c",
        )

    # Figure 7: per-unit fraction of negative incoming weights in layer 2.
    weight_layer = min(2, n_layers)
    fractions = {}
    for model in spec.models:
        stats = read_document(
            RunWeightStats, run_dir_of(experiment_dir, RunKey(model, main_dataset, seed)) / "weight_stats.json"
        )
        fractions[model] = np.array(stats.layers[weight_layer - 1].fraction_negative_incoming)
    save(figures.figure7_negative_weight_fraction(fractions, layer=weight_layer), "figure7")

    # Figure 8A: the first class where the two methods disagree (else class 0), layer 1.
    quantile = _comparison_quantile(settings)
    comparison = None
    for c in range(N_CLASSES):
        rows = X1[labels1 == c]
        m1 = analysis.method1_ensemble(rows, quantile).units
        m2 = analysis.method2_ensemble(
            rows, settings.epsilon, settings.rho_cut, settings.nh_cut, upper_bound
        )
        differs = not np.array_equal(m1, m2.units)
        if comparison is None or differs:
            comparison = (c, m1, m2)
        if differs:
            break
    chosen, m1, m2 = comparison
    save(figures.figure8a_method_comparison(m2.mean_activity, m1, m2.units, names[chosen]), "figure8a")
    return written


def _comparison_quantile(settings: AnalysisSpec) -> float:
    """Figure 8 uses quantile 0.99 in the paper; the largest computed one otherwise."""
    return 0.99 if 0.99 in settings.quantiles else max(settings.quantiles)


def method_comparison(
    spec: ExperimentSpec, run_dirs: dict[str, Path], records: list[dict]
) -> tuple[MethodComparison, np.ndarray, np.ndarray]:
    """Method 1 vs Method 2 sizes over every (run, layer, class) of the
    trained-on-all-classes runs where the class was analysed: the paper's pooled
    fit, the fit where both methods find an ensemble, and one per model.
    ``run_dirs`` maps each record's run_id to its folder."""
    quantile = _comparison_quantile(spec.analysis)
    sizes1, sizes2, models = [], [], []
    for record in records:
        if record["unseen_class"] is not None:
            continue
        stored = read_document(RunEnsembles, run_dirs[record["run_id"]] / "ensembles.json")
        by_place = {}
        for e in stored.ensembles:
            if e.n_images > 0 and (e.method == "method2" or e.quantile == quantile):
                by_place[(e.method, e.layer, e.class_index)] = e.size
        for (method, layer, c), size in by_place.items():
            if method == "method1":
                sizes1.append(size)
                sizes2.append(by_place[("method2", layer, c)])
                models.append(record["model"])
    sizes1_arr, sizes2_arr = np.array(sizes1), np.array(sizes2)
    fits = analysis.method_size_fits(sizes1_arr, sizes2_arr, np.array(models, dtype=object))

    def document(fit) -> SizeFit | None:
        if fit is None:
            return None
        return SizeFit(slope=fit.slope, intercept=fit.intercept, r2=_finite_or_none(fit.r2),
                       n_points=fit.n_points)

    pooled = fits.all_points
    comparison = MethodComparison(
        quantile=quantile, epsilon=spec.analysis.epsilon,
        slope=None if pooled is None else pooled.slope,
        intercept=None if pooled is None else pooled.intercept,
        r2=None if pooled is None else _finite_or_none(pooled.r2),
        n_points=len(sizes1),
        both_found=document(fits.both_found), left_out=fits.left_out,
        per_model={model: document(fit) for model, fit in fits.per_group.items()},
    )
    return comparison, sizes1_arr, sizes2_arr


def experiment_tables(spec: ExperimentSpec, records: list[dict]) -> dict[str, analysis.Table]:
    """The paper's Tables 1-3, then the other aggregates over runs: sparseness
    (both measures), units shared by a pair of classes and, with unseen-class runs,
    the unseen class's activity."""
    trained_on_all = [r for r in records if r["unseen_class"] is None]
    tables = {
        "table1": analysis.accuracy_table(trained_on_all),
        "table2": analysis.ensemble_size_table(trained_on_all, spec.analysis.table_quantile),
        "table3": analysis.weight_sign_table(trained_on_all),
        "sparseness_treves_rolls": analysis.sparseness_table(trained_on_all, "treves_rolls"),
        "sparseness_hoyer": analysis.sparseness_table(trained_on_all, "hoyer"),
        "shared_units": analysis.shared_units_table(trained_on_all, spec.analysis.figure_quantile),
    }
    unseen = [r for r in records if r["unseen_class"] is not None]
    if unseen:
        tables["unseen_class"] = analysis.unseen_activity_table(unseen)
    return tables


def aggregate(spec: ExperimentSpec, experiment_dir: Path) -> dict:
    """Tables 1-3, Figures 1-8 and results.json from the runs' stored results."""
    records = [run_record(run_dir_of(experiment_dir, key)) for key in spec.runs()]
    tables = experiment_tables(spec, records)
    tables_dir = experiment_dir / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        (tables_dir / f"{name}.json").write_text(json.dumps(table.to_dict(), indent=2) + "\n")
        (tables_dir / f"{name}.md").write_text(table.to_markdown() + "\n")
        (tables_dir / f"{name}.csv").write_text(table.to_csv())

    written = write_figures(spec, experiment_dir, records)
    run_dirs = {key.run_id: run_dir_of(experiment_dir, key) for key in spec.runs()}
    comparison, sizes1, sizes2 = method_comparison(spec, run_dirs, records)
    if comparison.slope is not None:
        both = comparison.both_found
        figures.save_png(
            figures.figure8b_method_sizes(
                sizes1, sizes2, comparison.slope, comparison.intercept,
                None if both is None else (both.slope, both.intercept),
            ),
            experiment_dir / "figures" / "figure8b.png",
        )
        written.append("figure8b.png")
    comparison_with_paper = paper.paper_comparison(
        spec, records, comparison.model_dump(mode="json"), experiment=spec.name
    )
    write_paper_comparison(comparison_with_paper, experiment_dir)
    written.append("paper_comparison.png")
    results = ExperimentResults(
        name=spec.name,
        runs=records,
        tables={name: table.to_dict() for name, table in tables.items()},
        figures=sorted(written),
        method_comparison=comparison,
    )
    write_document(results, experiment_dir / "results.json")
    return results.model_dump(mode="json")


def write_paper_comparison(comparison: PaperComparison, experiment_dir: Path) -> None:
    """tables/paper_comparison.{json,md,csv} and figures/paper_comparison.png."""
    write_document(comparison, experiment_dir / "tables" / "paper_comparison.json")
    (experiment_dir / "tables" / "paper_comparison.md").write_text(paper.to_markdown(comparison))
    (experiment_dir / "tables" / "paper_comparison.csv").write_text(paper.to_csv(comparison))
    figures.save_png(paper.comparison_figure(comparison), experiment_dir / "figures" / "paper_comparison.png")


def compare_folders(experiment_dirs: list[Path]) -> PaperComparison:
    """The comparison with the paper of one or several results folders, their
    runs pooled (each (model, data set, seed, left-out class) at most once).

    A folder whose experiment has not finished contributes the runs that have
    been analysed, and the comparison's name says how many of how many. The
    analysis settings of the first folder decide what is comparable; the protocol
    lists each folder's differences from the paper."""
    if not experiment_dirs:
        raise ValueError("give at least one results folder")
    records: list[dict] = []
    protocol = []
    seen: dict[tuple, Path] = {}
    specs = []
    run_dirs: dict[str, Path] = {}
    names = []
    for folder in experiment_dirs:
        spec = read_spec(folder)
        specs.append(spec)
        keys = spec.runs()
        done = [key for key in keys
                if all((run_dir_of(folder, key) / name).is_file() for name in ANALYSED_RUN_FILES)]
        if not done:
            raise FileNotFoundError(f"{folder} has no analysed run yet")
        for key in done:
            record = run_record(run_dir_of(folder, key))
            identity = (key.model, key.dataset, key.seed, key.unseen_class)
            if identity in seen:
                raise ValueError(f"run {key.run_id} is in both {seen[identity]} and {folder}")
            seen[identity] = folder
            records.append(record)
            run_dirs[key.run_id] = run_dir_of(folder, key)
        protocol += paper.protocol_differences(spec, source=folder.name if len(experiment_dirs) > 1 else "")
        names.append(str(folder) + ("" if len(done) == len(keys) else f" ({len(done)} of {len(keys)} runs)"))
    fits = method_comparison(specs[0], run_dirs, records)[0].model_dump(mode="json")
    return paper.paper_comparison(specs[0], records, fits, experiment=" + ".join(names), protocol=protocol)

# --------------------------------------------------------------------------- experiments

RunProgress = Callable[[RunKey, int, int], None]


def write_spec(spec: ExperimentSpec, experiment_dir: Path) -> None:
    experiment_dir.mkdir(parents=True, exist_ok=True)
    (experiment_dir / "spec.json").write_text(spec.model_dump_json(indent=2) + "\n")


def read_spec(experiment_dir: Path) -> ExperimentSpec:
    path = experiment_dir / "spec.json"
    if not path.is_file():
        raise FileNotFoundError(f"{experiment_dir} is not a results folder: it has no spec.json")
    return ExperimentSpec.model_validate_json(path.read_text())


def run_experiment(
    spec: ExperimentSpec,
    experiment_dir: Path,
    progress: ProgressCallback | None = None,
    on_run: RunProgress | None = None,
) -> dict:
    """Every run of the experiment in this process, then the aggregation."""
    write_spec(spec, experiment_dir)
    keys = spec.runs()
    for index, key in enumerate(keys):
        if on_run is not None:
            on_run(key, index, len(keys))
        execute_run(spec, key, run_dir_of(experiment_dir, key), progress)
    return aggregate(spec, experiment_dir)


def reanalyse(experiment_dir: Path, settings: AnalysisSpec) -> dict:
    """Recompute ensembles, tables and figures with other analysis settings,
    from the stored representations, without retraining."""
    spec = read_spec(experiment_dir).model_copy(update={"analysis": settings})
    write_spec(spec, experiment_dir)
    for key in spec.runs():
        analyse_run(spec, key, run_dir_of(experiment_dir, key))
    return aggregate(spec, experiment_dir)
