"""The per-run analyses beyond the paper: their ``analyse`` functions and figure
recipes for the run-document registry (``fflab.pipeline.documents``), and the
training snapshots the dynamics analysis reads.

Once a run is trained, the registry computes six documents after the paper's
(``fflab.analysis_results``): per-layer accuracy, ensemble dynamics, lesions,
label selectivity, intrinsic dimension and sub-ensembles. They read the stored
test representations, ``label_goodness``, the run's ``ensembles`` document
(Method 1 at the table quantile) and, for the analyses that need forward
passes (the linear probe's neutral-label representations, lesions,
selectivity), the trained network on the CPU and the run's test and training
subsets, reloaded with the fixed seed they were drawn with
(``RunAnalysisInput.network``, ``.test_split``, ``.train_split``). A re-analysis
with other settings recomputes them.

Every analysis works on subsamples small enough to take seconds on the quick
preset's sizes (10000 test images x 784 units) on one CPU thread; the sizes and
seeds are constants below, recorded in each document with the seconds it took.

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
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from fflab.analysis.dynamics import default_snapshot_epochs, ensemble_trajectory
from fflab.analysis.ensembles import method1_threshold
from fflab.analysis.intrinsic_dimension import two_nn
from fflab.analysis.layer_accuracy import PREDICTION_RULES, goodness_accuracy, linear_probe
from fflab.analysis.lesions import accuracy_drop, control_unit_sets, mean_and_se
from fflab.analysis.selectivity import label_selectivity
from fflab.analysis.subensembles import sub_ensembles
from fflab.analysis.weights import fraction_positive_weights
from fflab.analysis_results import (  # noqa: I001
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
from fflab.data import N_CLASSES
from fflab.figures import class_names
from fflab.models.bp import BPClassifier, bp_predict_and_represent
from fflab.models.common import ProgressCallback, TrainingProgress, goodness_representations, label_goodness
from fflab.models.probing import lesioned_predictions, neutral_representations, representations_with_label
from fflab.pipeline import folders
from fflab.results import Document, RunEnsembles, finite_or_none
from fflab.spec import ExperimentSpec, RunKey

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fflab.pipeline.documents import RunAnalysisInput

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


# --------------------------------------------------------------------------- helpers


def run_identity(key: RunKey) -> dict:
    """The identity fields of a run document (as fflab.pipeline.train writes them)."""
    return {"run_id": key.run_id, "model": key.model, "dataset": key.dataset, "seed": key.seed,
            "unseen_class": key.unseen_class}


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


def timed_on_one_thread(analyse: Callable[[RunAnalysisInput], Document]) -> Callable[[RunAnalysisInput], Document]:
    """An ``analyse`` function run on one thread, its document's ``seconds`` set."""

    @wraps(analyse)
    def run(inputs: RunAnalysisInput) -> Document:
        started = time.perf_counter()
        with one_thread():
            document = analyse(inputs)
        document.seconds = time.perf_counter() - started
        return document

    return run


def _finite_list(values) -> list[float | None]:
    return [finite_or_none(v) for v in np.asarray(values, dtype=float).ravel()]


def table_ensembles(ensembles: RunEnsembles) -> tuple[float, dict[int, dict[int, np.ndarray]]]:
    """A run's Method 1 ensembles at the table quantile: (quantile, {layer: {class: units}})."""
    quantile = ensembles.analysis.table_quantile
    found: dict[int, dict[int, np.ndarray]] = {}
    for record in ensembles.ensembles:
        if record.method == "method1" and record.quantile == quantile:
            found.setdefault(record.layer, {})[record.class_index] = np.asarray(record.units, dtype=int)
    return quantile, found


# --------------------------------------------------------------------------- analyses


@timed_on_one_thread
def layer_accuracy_document(inputs: RunAnalysisInput) -> RunLayerAccuracy:
    spec, key, stored = inputs.spec, inputs.key, inputs.representations
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
    train = inputs.train_split
    train_rows = per_class_rows(train.labels.numpy(), PROBE_TRAIN_IMAGES // N_CLASSES, ANALYSIS_SEED)
    test_rows = per_class_rows(labels, PROBE_TEST_IMAGES // N_CLASSES, ANALYSIS_SEED)
    train_layers = neutral_representations(inputs.network, train.images[train_rows])
    test_layers = neutral_representations(inputs.network, inputs.test_split.images[test_rows])
    probes = []
    for layer, (train_x, test_x) in enumerate(zip(train_layers, test_layers), start=1):
        fit = linear_probe(train_x.numpy(), train.labels.numpy()[train_rows], test_x.numpy(), labels[test_rows],
                           N_CLASSES, PROBE_REGULARIZATION, PROBE_MAX_ITER)
        probes.append(LayerProbe(layer=layer, train_accuracy=fit.train_accuracy, test_accuracy=fit.test_accuracy,
                                 per_class=_finite_list(fit.test_per_class), iterations=fit.iterations,
                                 converged=fit.converged))
    return RunLayerAccuracy(
        **run_identity(key), prediction_rule=spec.prediction if goodness else None, goodness=goodness,
        probe=ProbeSettings(regularization=PROBE_REGULARIZATION, max_iter=PROBE_MAX_ITER,
                            input="neutral_label" if goodness else "hidden",
                            n_train=int(train_rows.size), n_test=int(test_rows.size), subset_seed=ANALYSIS_SEED),
        probes=probes,
    )


@timed_on_one_thread
def dynamics_document(inputs: RunAnalysisInput) -> RunDynamics:
    stored = inputs.representations
    settings = inputs.documents["ensembles"].analysis
    quantile = settings.table_quantile
    classes = list(range(N_CLASSES))
    path = inputs.run_dir / SNAPSHOT_FILE
    points, epochs, final_sizes, n_probe = [], set(), [], 0
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
                layer=layer, epoch=int(m[1]), accuracy=float(m[2]), fraction_positive=float(m[3]),
                sizes=trajectory.sizes[s].tolist(), jaccard=trajectory.jaccard[s].tolist(),
                mean_size=float(trajectory.sizes[s].mean()), mean_jaccard=float(trajectory.jaccard[s].mean()),
            ))
    return RunDynamics(**run_identity(inputs.key), epochs=sorted(epochs), n_probe_images=n_probe,
                       quantile=quantile, points=points, final_sizes=final_sizes)


@timed_on_one_thread
def lesions_document(inputs: RunAnalysisInput) -> RunLesions:
    spec, stored = inputs.spec, inputs.representations
    quantile, ensembles = table_ensembles(inputs.documents["ensembles"])
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


@timed_on_one_thread
def selectivity_document(inputs: RunAnalysisInput) -> RunSelectivity:
    quantile, ensembles = table_ensembles(inputs.documents["ensembles"])
    if "label_goodness" not in inputs.representations:  # a model without label input (BP)
        return RunSelectivity(**run_identity(inputs.key), applicable=False, quantile=quantile,
                              images_per_class=SELECTIVITY_IMAGES_PER_CLASS, layers=[])
    stored = inputs.representations
    rows = per_class_rows(stored["labels"], SELECTIVITY_IMAGES_PER_CLASS, ANALYSIS_SEED)
    images, labels = inputs.test_split.images[rows], stored["labels"][rows]
    per_label = [representations_with_label(inputs.network, images, k) for k in range(N_CLASSES)]  # [label][layer]
    layers = []
    for layer in sorted(ensembles):
        by_label = np.stack([per_label[k][layer - 1].numpy() for k in range(N_CLASSES)])
        result = label_selectivity(by_label, labels, ensembles[layer], list(range(N_CLASSES)))
        layers.append(LayerSelectivity(
            layer=layer, activity=[_finite_list(row) for row in result.activity],
            true_label=_finite_list(result.true_label), wrong_labels=_finite_list(result.wrong_labels),
            index=_finite_list(result.index),
        ))
    return RunSelectivity(**run_identity(inputs.key), applicable=True, quantile=quantile,
                          images_per_class=SELECTIVITY_IMAGES_PER_CLASS, layers=layers)


@timed_on_one_thread
def intrinsic_dimension_document(inputs: RunAnalysisInput) -> RunIntrinsicDimension:
    stored = inputs.representations
    quantile, ensembles = table_ensembles(inputs.documents["ensembles"])
    labels = stored["labels"][inputs.analysed]
    overall_rows = per_class_rows(labels, TWO_NN_MAX_POINTS // N_CLASSES, ANALYSIS_SEED)
    class_rows = per_class_rows(labels, TWO_NN_MAX_POINTS, ANALYSIS_SEED)
    layers = []
    for layer in range(1, folders.layer_count(stored) + 1):
        X = stored[f"layer{layer}"][inputs.analysed]
        per_class, counts, duplicates = [], [], []
        for c in range(N_CLASSES):
            result = two_nn(X[class_rows[labels[class_rows] == c]], TWO_NN_DISCARD)
            per_class.append(finite_or_none(result.dimension))
            counts.append(result.n_points)
            duplicates.append(result.n_duplicates)
        sizes = ensembles.get(layer, {})
        layers.append(LayerIntrinsicDimension(
            layer=layer, dimension=finite_or_none(two_nn(X[overall_rows], TWO_NN_DISCARD).dimension),
            per_class=per_class, n_points=counts, n_duplicates=duplicates,
            ensemble_sizes=[int(sizes[c].size) if c in sizes and (labels == c).any() else None
                            for c in range(N_CLASSES)],
        ))
    return RunIntrinsicDimension(**run_identity(inputs.key), discard=TWO_NN_DISCARD, max_points=TWO_NN_MAX_POINTS,
                                 subsample_seed=ANALYSIS_SEED, quantile=quantile, layers=layers)


@timed_on_one_thread
def subensembles_document(inputs: RunAnalysisInput) -> RunSubEnsembles:
    stored = inputs.representations
    settings = inputs.documents["ensembles"].analysis
    quantile = settings.table_quantile
    labels = stored["labels"][inputs.analysed]
    rows = per_class_rows(labels, SUBENSEMBLE_MAX_IMAGES, ANALYSIS_SEED)
    records = []
    for layer in range(1, folders.layer_count(stored) + 1):
        X = stored[f"layer{layer}"][inputs.analysed]
        for c in range(N_CLASSES):
            class_rows = rows[labels[rows] == c]
            if class_rows.size < 3:
                continue
            threshold = method1_threshold(X[class_rows], quantile, **settings.method1_options())
            result = sub_ensembles(X[class_rows], threshold, max_clusters=SUBENSEMBLE_MAX_CLUSTERS,
                                   min_silhouette=SUBENSEMBLE_MIN_SILHOUETTE,
                                   min_group_fraction=SUBENSEMBLE_MIN_GROUP_FRACTION)
            records.append(SubEnsembleRecord(
                layer=layer, class_index=c, n_images=int(class_rows.size), n_subensembles=len(result.image_counts),
                image_counts=result.image_counts, sizes=[int(u.size) for u in result.units],
                units=[u.tolist() for u in result.units], silhouette=result.silhouette, threshold=result.threshold,
            ))
    return RunSubEnsembles(**run_identity(inputs.key), quantile=quantile, max_clusters=SUBENSEMBLE_MAX_CLUSTERS,
                           min_silhouette=SUBENSEMBLE_MIN_SILHOUETTE,
                           min_group_fraction=SUBENSEMBLE_MIN_GROUP_FRACTION, max_images=SUBENSEMBLE_MAX_IMAGES,
                           subsample_seed=ANALYSIS_SEED, records=records)


def folder_documents(experiment_dir: Path, name: str, model: str | None = None, dataset: str | None = None,
                     layer: int | None = None, run_id: str | None = None) -> dict:
    """What the service's endpoint of document ``name`` answers, from a local results
    folder: {"experiment": folder, "runs": [document, ...]} for the runs that have it."""
    if name not in RUN_ANALYSIS_DOCUMENTS:
        raise ValueError(f"name must be one of {', '.join(RUN_ANALYSIS_DOCUMENTS)}; got {name!r}")
    spec = folders.read_spec(experiment_dir)
    documents = []
    for key in spec.runs():
        if (model or key.model) != key.model or (dataset or key.dataset) != key.dataset:
            continue
        if run_id is not None and run_id != key.run_id:
            continue
        path = folders.run_dir_of(experiment_dir, key) / f"{name}.json"
        if path.is_file():
            document = RUN_ANALYSIS_DOCUMENTS[name].model_validate_json(path.read_text())
            documents.append(only_layer(document.model_dump(mode="json"), name, layer))
    return {"experiment": str(experiment_dir), "runs": documents}


# --------------------------------------------------------------------------- figures
#
# Recipes of the registry (``DocumentFigure``): the spec and a reader of the
# document for any run -> one figure for the experiment, or None when no run of
# the experiment has the document (folders analysed before it existed).

Reader = Callable[[RunKey], Document]


def _documents(spec: ExperimentSpec, read: Reader, keys: list[RunKey]) -> list[tuple[RunKey, Document]]:
    found = []
    for key in keys:
        try:
            found.append((key, read(key)))
        except FileNotFoundError:
            continue
    return found


def _main_runs(spec: ExperimentSpec) -> list[RunKey]:
    """The runs trained on every class, on the first data set."""
    return [key for key in spec.runs() if key.dataset == spec.datasets[0] and key.unseen_class is None]


def _first_seed_runs(spec: ExperimentSpec) -> list[RunKey]:
    return [key for key in _main_runs(spec) if key.seed == spec.seeds[0]]


def layer_accuracy_figure(spec: ExperimentSpec, read: Reader) -> Figure | None:
    from fflab import analysis_figures

    series: dict[str, dict[str, list]] = {}
    for key, document in _documents(spec, read, _main_runs(spec)):
        readouts = series.setdefault(key.model, {})
        if document.goodness:
            readouts.setdefault("goodness", []).append([g.accuracy for g in document.goodness])
            readouts.setdefault("cumulative", []).append([g.cumulative_accuracy for g in document.goodness])
        readouts.setdefault("probe", []).append([p.test_accuracy for p in document.probes])
    if not series:
        return None
    return analysis_figures.layer_accuracy_figure(
        {model: {r: np.array(v, dtype=float) for r, v in readouts.items()} for model, readouts in series.items()})


def dynamics_figure(spec: ExperimentSpec, read: Reader) -> Figure | None:
    from fflab import analysis_figures

    per_model = {}
    for key, document in _documents(spec, read, _first_seed_runs(spec)):
        curves = {}
        for layer in sorted({p.layer for p in document.points}):
            points = sorted((p for p in document.points if p.layer == layer), key=lambda p: p.epoch)
            curves[layer] = {q: (np.array([p.epoch for p in points]), np.array([getattr(p, q) for p in points]))
                             for q, _ in analysis_figures.DYNAMICS_QUANTITIES}
        if curves:
            per_model[key.model] = curves
    if not per_model:
        return None
    return analysis_figures.dynamics_figure(per_model, f"{spec.datasets[0]}, seed {spec.seeds[0]}")


def lesions_figure(spec: ExperimentSpec, read: Reader) -> Figure | None:
    from fflab import analysis_figures

    per_model: dict[str, dict[str, dict[int, list[float]]]] = {}
    for key, document in _documents(spec, read, _main_runs(spec)):
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
    return analysis_figures.lesion_figure(per_model)


def selectivity_figure(spec: ExperimentSpec, read: Reader) -> Figure | None:
    from fflab import analysis_figures

    per_model = {}
    for key, document in _documents(spec, read, _first_seed_runs(spec)):
        if document.applicable and document.layers:
            per_model[key.model] = {
                layer.layer: np.array([[np.nan if v is None else v for v in row] for row in layer.activity])
                for layer in document.layers
            }
    if not per_model:
        return None
    return analysis_figures.selectivity_figure(per_model, class_names(spec.datasets[0]))


def intrinsic_dimension_figure(spec: ExperimentSpec, read: Reader) -> Figure | None:
    from fflab import analysis_figures

    points: dict[str, tuple[list, list, list]] = {}
    for key, document in _documents(spec, read, _main_runs(spec)):
        sizes, dims, layers = points.setdefault(key.model, ([], [], []))
        for layer in document.layers:
            for size, dim in zip(layer.ensemble_sizes, layer.per_class):
                sizes.append(np.nan if size is None else size)
                dims.append(np.nan if dim is None else dim)
                layers.append(layer.layer)
    if not points:
        return None
    return analysis_figures.intrinsic_dimension_figure(
        {model: tuple(np.array(a, dtype=float) for a in arrays) for model, arrays in points.items()})
