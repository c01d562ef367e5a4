"""The per-run analyses beyond the paper: the edge where their inputs are read
and their documents written.

After a run is trained, evaluated and analysed as in the paper
(``fflab.runner``), ``analyse_run`` computes six more documents from the run
folder (``fflab.analysis_results``): per-layer accuracy, ensemble dynamics,
lesions, label selectivity, intrinsic dimension and sub-ensembles. They read
the stored test representations, ``label_goodness``, the ensembles of
``ensembles.json`` (Method 1 at the table quantile) and the weights; the
analyses that need forward passes (the linear probe's neutral-label
representations, lesions, selectivity) rebuild the network on the CPU and
reload the run's data subsets, which are drawn with a fixed seed.

Every analysis works on subsamples small enough to take seconds on the quick
preset's sizes (10000 test images x 784 units) on two CPU cores; the sizes and
seeds are constants below, recorded in each document. They are computed once,
when the run is trained: a re-analysis with other settings leaves them as they
are (their documents record the quantile they used).

The dynamics analysis needs captures made during training: ``SnapshotRecorder``
wraps the trainers' per-epoch progress callback and, at the spec's snapshot
epochs, records a fixed probe set's representations, accuracy and each
layer's fraction of positive weights into ``snapshots.npz``. A run resumed
from a checkpoint has only the snapshots taken after it resumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from fflab import runner
from fflab.analysis.dynamics import default_snapshot_epochs, ensemble_trajectory
from fflab.analysis.intrinsic_dimension import two_nn
from fflab.analysis.layer_accuracy import PREDICTION_RULES, goodness_accuracy, linear_probe
from fflab.analysis.lesions import accuracy_drop, control_unit_sets, mean_and_se
from fflab.analysis.selectivity import label_selectivity
from fflab.analysis.subensembles import sub_ensembles
from fflab.analysis.weights import fraction_positive_weights
from fflab.analysis_results import (
    DynamicsPoint,
    LayerGoodnessAccuracy,
    LayerIntrinsicDimension,
    LayerProbe,
    LayerSelectivity,
    LesionEffect,
    LesionRecord,
    ProbeSettings,
    RunDynamics,
    RunIntrinsicDimension,
    RunLayerAccuracy,
    RunLesions,
    RunSelectivity,
    RunSubEnsembles,
    SubEnsembleRecord,
    RUN_ANALYSIS_DOCUMENTS,
    only_layer,
)
from fflab.data import N_CLASSES, load_split
from fflab.models import MODELS
from fflab.models.bp import BPClassifier, bp_predict_and_represent
from fflab.models.common import (
    GoodnessNetwork,
    ProgressCallback,
    TrainingProgress,
    goodness_representations,
    label_goodness,
)
from fflab.models.probing import lesioned_predictions, neutral_representations, representations_with_label
from fflab.results import RunEnsembles, write_document
from fflab.spec import ExperimentSpec, RunKey

# What each analysis subsamples, and the seed of every draw (recorded in the documents).
ANALYSIS_SEED = 0
SNAPSHOT_PROBE_PER_CLASS = 50  # dynamics: the fixed probe set, 500 test images
SNAPSHOT_COUNT = 5  # default snapshots: log-spaced epochs
PROBE_TRAIN_IMAGES = 2000  # linear probe: fitted on this many training images
PROBE_TEST_IMAGES = 2000  # and scored on this many test images
PROBE_REGULARIZATION = 1.0
PROBE_MAX_ITER = 200
LESION_IMAGES_PER_CLASS = 20
LESION_RANDOM_DRAWS = 3
SELECTIVITY_IMAGES_PER_CLASS = 50
TWO_NN_DISCARD = 0.1
TWO_NN_MAX_POINTS = 1000
SUBENSEMBLE_MAX_IMAGES = 300
SUBENSEMBLE_MAX_CLUSTERS = 6
SUBENSEMBLE_MIN_SILHOUETTE = 0.25
SUBENSEMBLE_MIN_GROUP_FRACTION = 0.05

SNAPSHOT_FILE = "snapshots.npz"
DOCUMENT_FILES = tuple(f"{name}.json" for name in RUN_ANALYSIS_DOCUMENTS)


def per_class_rows(labels: np.ndarray, per_class: int, seed: int, among: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of at most ``per_class`` rows of each class (drawn with ``seed``),
    among the rows where ``among`` (a boolean mask) is true."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    allowed = np.ones(labels.shape, dtype=bool) if among is None else np.asarray(among, dtype=bool)
    chosen = []
    for c in np.unique(labels):
        rows = np.flatnonzero((labels == c) & allowed)
        chosen.append(rows if rows.size <= per_class else rng.choice(rows, per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- snapshots


def snapshot_epochs(spec: ExperimentSpec, model: str) -> list[int]:
    """The epochs at which a model's training is captured (see ``ExperimentSpec.snapshots``)."""
    epochs = spec.training(model).epochs
    if spec.snapshots is None:
        return default_snapshot_epochs(epochs, SNAPSHOT_COUNT)
    return [e for e in spec.snapshots if e <= epochs]


class SnapshotRecorder:
    """A progress callback that also captures the probe set at the snapshot epochs.

    ``net`` is the network being trained, read at each capture.
    Captures are kept in memory (float16 representations of 500 images) and
    written by ``save``.
    """

    def __init__(self, spec: ExperimentSpec, key: RunKey, images: torch.Tensor, labels: torch.Tensor,
                 net: torch.nn.Module, progress: ProgressCallback | None):
        self.spec, self.key, self.net, self.progress = spec, key, net, progress
        self.epochs = set(snapshot_epochs(spec, key.model))
        self.rows = per_class_rows(labels.numpy(), SNAPSHOT_PROBE_PER_CLASS, ANALYSIS_SEED)
        self.images, self.labels = images[self.rows], labels[self.rows]
        self.captures: list[tuple[int, int, float, float, np.ndarray]] = []

    def __call__(self, event: TrainingProgress) -> None:
        if self.progress is not None:
            self.progress(event)
        if event.epoch in self.epochs:
            self.capture(event)

    @torch.no_grad()
    def capture(self, event: TrainingProgress) -> None:
        net = self.net
        labels = self.labels.numpy()
        if isinstance(net, BPClassifier):
            predictions, layers = bp_predict_and_represent(net, self.images)
            trained = range(len(layers))
        else:
            layers = goodness_representations(net, self.images, self.labels)
            scores = label_goodness(net, self.images).numpy()
            # FF trains one layer at a time: the layers up to it predict, and it alone is captured.
            upto = len(layers) if event.layer is None else event.layer + 1
            predictions = PREDICTION_RULES[self.spec.prediction](scores[:, :, :upto]).argmax(axis=1)
            trained = range(len(layers)) if event.layer is None else [event.layer]
        accuracy = float((np.asarray(predictions) == labels).mean())
        for index in trained:
            weights = net.layers[index].weight.detach().cpu().numpy()
            self.captures.append((index + 1, event.epoch, accuracy, fraction_positive_weights(weights),
                                  layers[index].numpy().astype(np.float16)))

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        arrays = {f"layer{layer}_epoch{epoch}": rep for layer, epoch, _, _, rep in self.captures}
        meta = np.array([[layer, epoch, accuracy, positive] for layer, epoch, accuracy, positive, _ in self.captures],
                        dtype=np.float64).reshape(-1, 4)
        np.savez_compressed(run_dir / SNAPSHOT_FILE, rows=self.rows, meta=meta, **arrays)


def snapshot_recorder(spec: ExperimentSpec, key: RunKey, images: torch.Tensor, labels: torch.Tensor,
                      net: torch.nn.Module, progress: ProgressCallback | None) -> SnapshotRecorder | None:
    """A recorder for the run, or None when it takes no snapshot (no cost at all)."""
    if not snapshot_epochs(spec, key.model):
        return None
    return SnapshotRecorder(spec, key, images, labels, net, progress)


# --------------------------------------------------------------------------- inputs


def load_network(spec: ExperimentSpec, key: RunKey, run_dir: Path) -> GoodnessNetwork | BPClassifier:
    """The trained network on the CPU, in eval mode."""
    net = MODELS.lookup(key.model).build(spec.network)
    net.load_state_dict(torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True))
    return net.eval()


def _identity(key: RunKey) -> dict:
    return {"run_id": key.run_id, "model": key.model, "dataset": key.dataset, "seed": key.seed,
            "unseen_class": key.unseen_class}


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _finite_list(values) -> list[float | None]:
    return [_finite(v) for v in np.asarray(values, dtype=float).ravel()]


def table_ensembles(run_dir: Path) -> tuple[float, dict[int, dict[int, np.ndarray]]]:
    """The run's Method 1 ensembles at the table quantile: (quantile, {layer: {class: units}})."""
    document = RunEnsembles.model_validate_json((run_dir / "ensembles.json").read_text())
    quantile = document.analysis.table_quantile
    found: dict[int, dict[int, np.ndarray]] = {}
    for record in document.ensembles:
        if record.method == "method1" and record.quantile == quantile:
            found.setdefault(record.layer, {})[record.class_index] = np.asarray(record.units, dtype=int)
    return quantile, found


# --------------------------------------------------------------------------- analyses


def layer_accuracy(spec: ExperimentSpec, key: RunKey, stored: dict[str, np.ndarray], net, test_images: torch.Tensor,
                   train_images: torch.Tensor, train_labels: torch.Tensor) -> RunLayerAccuracy:
    labels = stored["labels"]
    goodness = []
    if "label_goodness" in stored:
        result = goodness_accuracy(stored["label_goodness"], labels, spec.prediction)
        goodness = [
            LayerGoodnessAccuracy(
                layer=layer + 1, accuracy=result.per_layer[layer], cumulative_accuracy=result.cumulative[layer],
                per_class=_finite_list(result.per_layer_per_class[layer]),
                cumulative_per_class=_finite_list(result.cumulative_per_class[layer]),
            )
            for layer in range(result.per_layer.size)
        ]
    train_rows = per_class_rows(train_labels.numpy(), PROBE_TRAIN_IMAGES // N_CLASSES, ANALYSIS_SEED)
    test_rows = per_class_rows(labels, PROBE_TEST_IMAGES // N_CLASSES, ANALYSIS_SEED)
    train_layers = neutral_representations(net, train_images[train_rows])
    test_layers = neutral_representations(net, test_images[test_rows])
    probes = []
    for layer, (train_x, test_x) in enumerate(zip(train_layers, test_layers), start=1):
        fit = linear_probe(train_x.numpy(), train_labels.numpy()[train_rows], test_x.numpy(), labels[test_rows],
                           N_CLASSES, PROBE_REGULARIZATION, PROBE_MAX_ITER)
        probes.append(LayerProbe(layer=layer, train_accuracy=fit.train_accuracy, test_accuracy=fit.test_accuracy,
                                 per_class=_finite_list(fit.test_per_class), iterations=fit.iterations,
                                 converged=fit.converged))
    return RunLayerAccuracy(
        **_identity(key), prediction_rule=None if key.model == "bp" else spec.prediction, goodness=goodness,
        probe=ProbeSettings(regularization=PROBE_REGULARIZATION, max_iter=PROBE_MAX_ITER,
                            input="hidden" if key.model == "bp" else "neutral_label",
                            n_train=int(train_rows.size), n_test=int(test_rows.size), subset_seed=ANALYSIS_SEED),
        probes=probes,
    )


def dynamics(key: RunKey, run_dir: Path, stored: dict[str, np.ndarray], quantile: float) -> RunDynamics:
    labels_all = stored["labels"]
    n_layers = runner.layer_count(stored)
    classes = list(range(N_CLASSES))
    path = run_dir / SNAPSHOT_FILE
    points, epochs, n_probe = [], set(), 0
    final_sizes = []
    rows = None
    if path.is_file():
        with np.load(path) as snapshots:
            rows, meta = snapshots["rows"], snapshots["meta"]
            captured = {name: snapshots[name] for name in snapshots.files if name.startswith("layer")}
        n_probe = int(rows.size)
    for layer in range(1, n_layers + 1):
        if rows is None:
            final_sizes.append([])
            continue
        entries = [m for m in meta if int(m[0]) == layer]
        # Snapshots are stored in float16: the final representations are compared at the same precision.
        final = stored[f"layer{layer}"][rows].astype(np.float16).astype(np.float32)
        trajectory = ensemble_trajectory(
            [captured[f"layer{layer}_epoch{int(m[1])}"].astype(np.float32) for m in entries],
            final, labels_all[rows], quantile, classes,
        )
        final_sizes.append(trajectory.final_sizes.tolist())
        for s, m in enumerate(entries):
            epochs.add(int(m[1]))
            points.append(DynamicsPoint(
                layer=layer, epoch=int(m[1]), accuracy=float(m[2]), fraction_positive=float(m[3]),
                sizes=trajectory.sizes[s].tolist(), jaccard=trajectory.jaccard[s].tolist(),
                mean_size=float(trajectory.sizes[s].mean()), mean_jaccard=float(trajectory.jaccard[s].mean()),
            ))
    return RunDynamics(**_identity(key), epochs=sorted(epochs), n_probe_images=n_probe, quantile=quantile,
                       points=points, final_sizes=final_sizes)


def lesions(spec: ExperimentSpec, key: RunKey, stored: dict[str, np.ndarray], net, test_images: torch.Tensor,
            quantile: float, ensembles: dict[int, dict[int, np.ndarray]]) -> RunLesions:
    labels_all = stored["labels"]
    rows = per_class_rows(labels_all, LESION_IMAGES_PER_CLASS, ANALYSIS_SEED)
    images, labels = test_images[rows], labels_all[rows]
    rng = np.random.default_rng(ANALYSIS_SEED)
    intact = lesioned_predictions(net, images, 1, [[]], spec.prediction)[0].numpy()
    keep = runner.analysed_rows(stored, key.unseen_class, spec.analysis.correct_only)
    records = []
    for layer in sorted(ensembles):
        X, analysed_labels = stored[f"layer{layer}"][keep], labels_all[keep]
        for c in sorted(ensembles[layer]):
            units = ensembles[layer][c]
            if units.size == 0 or not (labels == c).any():
                continue
            class_rows = X[analysed_labels == c]
            activity = class_rows.mean(axis=0) if len(class_rows) else np.zeros(X.shape[1])
            random_sets, most_active = control_unit_sets(units, activity, LESION_RANDOM_DRAWS, rng)
            sets = [units, most_active, *random_sets] if most_active.size else [units]
            predicted = lesioned_predictions(net, images, layer, sets, spec.prediction)
            drops = [accuracy_drop(intact, p.numpy(), labels, c) for p in predicted]
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
    return RunLesions(**_identity(key), quantile=quantile, images_per_class=LESION_IMAGES_PER_CLASS,
                      random_draws=LESION_RANDOM_DRAWS, subsample_seed=ANALYSIS_SEED,
                      intact_accuracy=float((intact == labels).mean()), lesions=records)


def selectivity(key: RunKey, stored: dict[str, np.ndarray], net, test_images: torch.Tensor, quantile: float,
                ensembles: dict[int, dict[int, np.ndarray]]) -> RunSelectivity:
    if key.model == "bp":
        return RunSelectivity(**_identity(key), applicable=False, quantile=quantile,
                              images_per_class=SELECTIVITY_IMAGES_PER_CLASS, layers=[])
    rows = per_class_rows(stored["labels"], SELECTIVITY_IMAGES_PER_CLASS, ANALYSIS_SEED)
    images, labels = test_images[rows], stored["labels"][rows]
    per_label = [representations_with_label(net, images, k) for k in range(N_CLASSES)]  # [label][layer]
    layers = []
    for layer in sorted(ensembles):
        by_label = np.stack([per_label[k][layer - 1].numpy() for k in range(N_CLASSES)])
        result = label_selectivity(by_label, labels, ensembles[layer], list(range(N_CLASSES)))
        layers.append(LayerSelectivity(
            layer=layer, activity=[_finite_list(row) for row in result.activity],
            true_label=_finite_list(result.true_label), wrong_labels=_finite_list(result.wrong_labels),
            index=_finite_list(result.index),
        ))
    return RunSelectivity(**_identity(key), applicable=True, quantile=quantile,
                          images_per_class=SELECTIVITY_IMAGES_PER_CLASS, layers=layers)


def intrinsic_dimension(spec: ExperimentSpec, key: RunKey, stored: dict[str, np.ndarray], quantile: float,
                        ensembles: dict[int, dict[int, np.ndarray]]) -> RunIntrinsicDimension:
    keep = runner.analysed_rows(stored, key.unseen_class, spec.analysis.correct_only)
    labels = stored["labels"][keep]
    overall_rows = per_class_rows(labels, TWO_NN_MAX_POINTS // N_CLASSES, ANALYSIS_SEED)
    class_rows = per_class_rows(labels, TWO_NN_MAX_POINTS, ANALYSIS_SEED)
    layers = []
    for layer in range(1, runner.layer_count(stored) + 1):
        X = stored[f"layer{layer}"][keep]
        per_class, counts = [], []
        for c in range(N_CLASSES):
            rows = class_rows[labels[class_rows] == c]
            result = two_nn(X[rows], TWO_NN_DISCARD)
            per_class.append(_finite(result.dimension))
            counts.append(result.n_points)
        sizes = ensembles.get(layer, {})
        layers.append(LayerIntrinsicDimension(
            layer=layer, dimension=_finite(two_nn(X[overall_rows], TWO_NN_DISCARD).dimension),
            per_class=per_class, n_points=counts,
            ensemble_sizes=[int(sizes[c].size) if c in sizes and (labels == c).any() else None
                            for c in range(N_CLASSES)],
        ))
    return RunIntrinsicDimension(**_identity(key), discard=TWO_NN_DISCARD, max_points=TWO_NN_MAX_POINTS,
                                 subsample_seed=ANALYSIS_SEED, quantile=quantile, layers=layers)


def subensembles(spec: ExperimentSpec, key: RunKey, stored: dict[str, np.ndarray], quantile: float) -> RunSubEnsembles:
    keep = runner.analysed_rows(stored, key.unseen_class, spec.analysis.correct_only)
    labels = stored["labels"][keep]
    rows = per_class_rows(labels, SUBENSEMBLE_MAX_IMAGES, ANALYSIS_SEED)
    records = []
    for layer in range(1, runner.layer_count(stored) + 1):
        X = stored[f"layer{layer}"][keep]
        for c in range(N_CLASSES):
            class_rows = rows[labels[rows] == c]
            if class_rows.size < 3:
                continue
            result = sub_ensembles(X[class_rows], quantile=quantile, max_clusters=SUBENSEMBLE_MAX_CLUSTERS,
                                   min_silhouette=SUBENSEMBLE_MIN_SILHOUETTE,
                                   min_group_fraction=SUBENSEMBLE_MIN_GROUP_FRACTION)
            records.append(SubEnsembleRecord(
                layer=layer, class_index=c, n_images=int(class_rows.size), n_subensembles=len(result.image_counts),
                image_counts=result.image_counts, sizes=[int(u.size) for u in result.units],
                units=[u.tolist() for u in result.units], silhouette=result.silhouette, threshold=result.threshold,
            ))
    return RunSubEnsembles(**_identity(key), quantile=quantile, max_clusters=SUBENSEMBLE_MAX_CLUSTERS,
                           min_silhouette=SUBENSEMBLE_MIN_SILHOUETTE,
                           min_group_fraction=SUBENSEMBLE_MIN_GROUP_FRACTION, max_images=SUBENSEMBLE_MAX_IMAGES,
                           subsample_seed=ANALYSIS_SEED, records=records)


@contextmanager
def one_thread():
    """Torch, BLAS and OpenMP on one thread. These analyses are many small
    operations; on a loaded machine each parallel region of a small operation
    can wait a scheduler time slice for its second thread (L-BFGS steps of 8 ms
    instead of well under 1, measured on two shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def analyse_run(spec: ExperimentSpec, key: RunKey, run_dir: Path) -> dict[str, float]:
    """Write the six documents of a trained and analysed run (``runner.analyse_run``
    first); return the seconds each analysis took."""
    with one_thread():
        return _analyse_run(spec, key, run_dir)


def _analyse_run(spec: ExperimentSpec, key: RunKey, run_dir: Path) -> dict[str, float]:
    stored = runner.load_representations(run_dir)
    quantile, ensembles = table_ensembles(run_dir)
    net = load_network(spec, key, run_dir)
    test = load_split(key.dataset, False, spec.data.test_subset, seed=runner.DATA_SEED)
    if not np.array_equal(test.labels.numpy(), stored["labels"]):
        raise ValueError(f"run {key.run_id}: the test subset does not match the stored representations")
    excluded = () if key.unseen_class is None else (key.unseen_class,)
    seconds: dict[str, float] = {}

    def timed(name: str, compute: Callable[[], object]) -> None:
        started = time.perf_counter()
        document = compute()
        document.seconds = seconds[name] = time.perf_counter() - started
        write_document(document, run_dir / f"{name}.json")

    def per_layer_accuracy():
        train = load_split(key.dataset, True, spec.data.train_subset, excluded, seed=runner.DATA_SEED)
        return layer_accuracy(spec, key, stored, net, test.images, train.images, train.labels)

    timed("layer_accuracy", per_layer_accuracy)
    timed("dynamics", lambda: dynamics(key, run_dir, stored, quantile))
    timed("lesions", lambda: lesions(spec, key, stored, net, test.images, quantile, ensembles))
    timed("selectivity", lambda: selectivity(key, stored, net, test.images, quantile, ensembles))
    timed("intrinsic_dimension", lambda: intrinsic_dimension(spec, key, stored, quantile, ensembles))
    timed("subensembles", lambda: subensembles(spec, key, stored, quantile))
    return seconds


def folder_documents(experiment_dir: Path, name: str, model: str | None = None, dataset: str | None = None,
                     layer: int | None = None, run_id: str | None = None) -> dict:
    """What the service's endpoint of document ``name`` answers, from a local results
    folder: {"experiment": folder, "runs": [document, ...]} for the runs that have it."""
    if name not in RUN_ANALYSIS_DOCUMENTS:
        raise ValueError(f"name must be one of {', '.join(RUN_ANALYSIS_DOCUMENTS)}; got {name!r}")
    spec = runner.read_spec(experiment_dir)
    documents = []
    for key in spec.runs():
        if (model or key.model) != key.model or (dataset or key.dataset) != key.dataset:
            continue
        if run_id is not None and run_id != key.run_id:
            continue
        document = read_run_document(runner.run_dir_of(experiment_dir, key), name)
        if document is not None:
            documents.append(only_layer(document.model_dump(mode="json"), name, layer))
    return {"experiment": str(experiment_dir), "runs": documents}


# --------------------------------------------------------------------------- figures


def read_run_document(run_dir: Path, name: str):
    """The run's ``name`` document, or None when it has none (a run trained before
    these analyses existed)."""
    path = run_dir / f"{name}.json"
    if not path.is_file():
        return None
    return RUN_ANALYSIS_DOCUMENTS[name].model_validate_json(path.read_text())


def write_figures(spec: ExperimentSpec, experiment_dir: Path) -> list[str]:
    """The figures of these analyses, from the runs that have their documents:
    per-layer accuracy over seeds, intrinsic dimension against ensemble size, and
    for the first seed of each model on the first data set, dynamics, lesions and
    selectivity. Returns the PNG names written under figures/."""
    from fflab import analysis_figures, figures

    out = experiment_dir / "figures"
    dataset = spec.datasets[0]
    names = figures.class_names(dataset)
    keys = [key for key in spec.runs() if key.dataset == dataset and key.unseen_class is None]
    written: list[str] = []

    def save(fig, name: str) -> None:
        figures.save_png(fig, out / f"{name}.png")
        written.append(f"{name}.png")

    accuracy: dict[str, dict[str, list]] = {}
    dimension_points: dict[str, tuple[list, list, list]] = {}
    for key in keys:
        run_dir = runner.run_dir_of(experiment_dir, key)
        document = read_run_document(run_dir, "layer_accuracy")
        if document is not None:
            readouts = accuracy.setdefault(key.model, {})
            if document.goodness:
                readouts.setdefault("goodness", []).append([g.accuracy for g in document.goodness])
                readouts.setdefault("cumulative", []).append([g.cumulative_accuracy for g in document.goodness])
            readouts.setdefault("probe", []).append([p.test_accuracy for p in document.probes])
        document = read_run_document(run_dir, "intrinsic_dimension")
        if document is not None:
            sizes, dims, layers = dimension_points.setdefault(key.model, ([], [], []))
            for layer in document.layers:
                for size, dim in zip(layer.ensemble_sizes, layer.per_class):
                    sizes.append(np.nan if size is None else size)
                    dims.append(np.nan if dim is None else dim)
                    layers.append(layer.layer)
    if accuracy:
        save(analysis_figures.layer_accuracy_figure(
            {model: {r: np.array(v, dtype=float) for r, v in readouts.items()} for model, readouts in accuracy.items()}
        ), "layer_accuracy")
    if dimension_points:
        save(analysis_figures.intrinsic_dimension_figure(
            {model: tuple(np.array(a, dtype=float) for a in arrays) for model, arrays in dimension_points.items()}
        ), "intrinsic_dimension")

    for model in spec.models:
        run_dir = runner.run_dir_of(experiment_dir, RunKey(model, dataset, spec.seeds[0]))
        label = f"{figures.model_display_name(model)}, {dataset}, seed {spec.seeds[0]}"
        document = read_run_document(run_dir, "dynamics")
        if document is not None and document.points:
            curves: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
            for layer in sorted({p.layer for p in document.points}):
                points = sorted((p for p in document.points if p.layer == layer), key=lambda p: p.epoch)
                curves[layer] = {q: (np.array([p.epoch for p in points]), np.array([getattr(p, q) for p in points]))
                                 for q, _ in analysis_figures.DYNAMICS_QUANTITIES}
            save(analysis_figures.dynamics_figure(curves, f"Ensemble dynamics ({label})"), f"dynamics_{model}")
        document = read_run_document(run_dir, "lesions")
        if document is not None and document.lesions:
            per_layer: dict[int, dict[str, np.ndarray]] = {}
            for record in document.lesions:
                values = per_layer.setdefault(record.layer, {
                    name: np.full(len(names), np.nan) for name in ("ensemble", "random", "random_se", "most_active")
                })
                values["ensemble"][record.class_index] = record.ensemble.target
                if record.random is not None:
                    values["random"][record.class_index] = record.random.target
                    values["random_se"][record.class_index] = record.random.target_se or 0.0
                if record.most_active is not None:
                    values["most_active"][record.class_index] = record.most_active.target
            for values in per_layer.values():
                values["random_se"] = np.nan_to_num(values["random_se"])
            save(analysis_figures.lesion_figure(per_layer, names, f"Lesions ({label})"), f"lesions_{model}")
        document = read_run_document(run_dir, "selectivity")
        if document is not None and document.applicable and document.layers:
            save(analysis_figures.selectivity_figure(
                {layer.layer: np.array([[np.nan if v is None else v for v in row] for row in layer.activity])
                 for layer in document.layers},
                names, f"Label selectivity of the ensembles ({label})",
            ), f"selectivity_{model}")
    return written
