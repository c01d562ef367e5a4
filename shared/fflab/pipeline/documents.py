"""A run's documents: one registry entry each, ``RUN_DOCUMENTS``.

A run document is a versioned JSON file in the run's folder
(``runs/<run_id>/<name>.json``), with its pydantic model (whose JSON Schema is
committed under fflab/schemas/), computed from what training stored:

- ``metrics`` is written by training (fflab.pipeline.train); the others by
  their ``analyse`` function, in registry order, each seeing the documents
  computed before it (``RunAnalysisInput.documents``);
- a document may have a ``figure`` recipe: drawn once per experiment into
  ``figures/<name>.png`` by the aggregation;
- the service stores every run document as an artifact and serves it at
  ``GET /v1/experiments/{id}/runs/{run_id}/documents/{name}`` (no migration).

Adding a per-run analysis is a module with its document model and its
``analyse`` (and ``figure``) functions, plus its entry at the end of this file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from fflab.analysis_results import (
    RunDynamics,
    RunIntrinsicDimension,
    RunLayerAccuracy,
    RunLesions,
    RunSelectivity,
    RunSubEnsembles,
)
from fflab.data import Split, load_split
from fflab.pipeline import dominance, further_analyses, paper_analyses
from fflab.pipeline.folders import (
    TRAINED_FILES,
    analysed_rows,
    load_network,
    load_representations,
    load_weight_matrices,
)
from fflab.pipeline.train import DATA_SEED, METRICS_FILE
from fflab.registry import Registry
from fflab.results import (
    SCHEMA_DIR,
    Document,
    ExperimentResults,
    PaperComparison,
    RunEnsembles,
    RunMetrics,
    RunSharedUnits,
    RunWeightStats,
    read_document,
    write_document,
)
from fflab.spec import ExperimentSpec, RunKey


@dataclass
class RunAnalysisInput:
    """What an ``analyse`` function gets: the experiment's spec, the run's key and
    folder, the documents computed so far, and the stored arrays, loaded on first use."""

    spec: ExperimentSpec
    key: RunKey
    run_dir: Path
    documents: dict[str, Document] = field(default_factory=dict)

    @cached_property
    def representations(self) -> dict[str, np.ndarray]:
        """labels, predictions, correct, layer1..layerL (N, width), ... (folders.load_representations)."""
        return load_representations(self.run_dir)

    @cached_property
    def analysed(self) -> np.ndarray:
        """(N,) mask of the test images the analyses use (folders.analysed_rows)."""
        return analysed_rows(self.representations, self.key.unseen_class, self.spec.analysis.correct_only)

    @cached_property
    def weights(self) -> list[np.ndarray]:
        """The hidden layers' (out, in) weight matrices."""
        return load_weight_matrices(self.run_dir)

    @cached_property
    def network(self) -> torch.nn.Module:
        """The trained network, on the CPU, in eval mode."""
        return load_network(self.spec, self.key, self.run_dir)

    @cached_property
    def test_split(self) -> Split:
        """The run's test images, reloaded (same subset and seed as training); their
        labels must be the stored ones."""
        test = load_split(self.key.dataset, False, self.spec.data.test_subset, seed=DATA_SEED)
        if not np.array_equal(test.labels.numpy(), self.representations["labels"]):
            raise ValueError(f"run {self.key.run_id}: the reloaded test subset does not match its stored labels")
        return test

    @cached_property
    def train_split(self) -> Split:
        """The run's training images, reloaded (same subset, classes and seed)."""
        excluded = () if self.key.unseen_class is None else (self.key.unseen_class,)
        return load_split(self.key.dataset, True, self.spec.data.train_subset, excluded, seed=DATA_SEED)


# A figure recipe: the experiment's spec and a reader of this document for any of its
# runs -> one figure for the experiment (None: nothing to draw for this experiment).
DocumentFigure = Callable[[ExperimentSpec, Callable[[RunKey], Document]], Figure | None]


@dataclass(frozen=True)
class RunDocument:
    name: str
    model: type[Document]
    description: str
    analyse: Callable[[RunAnalysisInput], Document] | None = None  # None: written by training
    figure: DocumentFigure | None = None

    @property
    def file(self) -> str:
        return f"{self.name}.json"


def analysed_run_files() -> tuple[str, ...]:
    """The JSON files of an analysed run, in registry order."""
    return tuple(document.file for document in RUN_DOCUMENTS.values())


def run_files() -> tuple[str, ...]:
    """Everything a trained and analysed run's folder holds."""
    return analysed_run_files() + TRAINED_FILES


def is_analysed(run_dir: Path) -> bool:
    """Whether the run has the documents its summary record reads (those registered
    later, which a re-analysis computes, are not required)."""
    return all((run_dir / RUN_DOCUMENTS[name].file).is_file() for name in paper_analyses.RECORD_DOCUMENTS)


def analyse_run(spec: ExperimentSpec, key: RunKey, run_dir: Path, names: Iterable[str] | None = None) -> dict:
    """Compute and write every registered analysis document of one trained run
    (only those in ``names``, if given), then return the run's summary record
    (paper_analyses.run_record). ``spec`` is the experiment's; the analyses see
    the run's grid point's (``spec.at``)."""
    started = time.perf_counter()
    inputs = RunAnalysisInput(spec.at(key.point), key, run_dir)
    for document in RUN_DOCUMENTS.values():
        if document.analyse is not None and (names is None or document.name in names):
            inputs.documents[document.name] = document.analyse(inputs)
            write_document(inputs.documents[document.name], run_dir / document.file)
    metrics = read_document(RunMetrics, run_dir / METRICS_FILE)
    metrics.timings.analyse_seconds = time.perf_counter() - started
    write_document(metrics, run_dir / METRICS_FILE)
    return paper_analyses.run_record(run_dir)


def document_figures(spec: ExperimentSpec, experiment_dir: Path) -> dict[str, Figure]:
    """Each registered document's figure for the experiment, by document name; none
    for a document some run lacks (trained before the document was registered:
    re-analysing the experiment computes it). With a sweep, a recipe sees its first
    grid point: the spec there, and run keys without a point are read at it
    (``ExperimentSpec.paper_point``)."""
    drawn = {}
    point = spec.paper_point()
    for document in RUN_DOCUMENTS.values():
        if document.figure is None:
            continue

        def read(key: RunKey, document: RunDocument = document) -> Document:
            run_id = replace(key, point=point).run_id if key.point is None else key.run_id
            return read_document(document.model, experiment_dir / "runs" / run_id / document.file)

        try:
            figure = document.figure(spec.at(point), read)
        except FileNotFoundError:
            continue
        if figure is not None:
            drawn[document.name] = figure
    return drawn


# --------------------------------------------------------------------------- the registry

RUN_DOCUMENTS: Registry[RunDocument] = Registry("run document", {d.name: d for d in (
    RunDocument("metrics", RunMetrics, "Accuracy, loss history, timings and device of the run."),
    RunDocument("ensembles", RunEnsembles,
                "Ensembles per layer and class (Methods 1 and 2), sparseness, the unseen class.",
                analyse=paper_analyses.ensembles_document),
    RunDocument("shared_units", RunSharedUnits,
                "Units shared by each pair of classes' ensembles, per layer and method.",
                analyse=paper_analyses.shared_units_document),
    RunDocument("weight_stats", RunWeightStats,
                "Fraction of positive weights per layer and of negative incoming weights per unit.",
                analyse=paper_analyses.weight_stats_document),
    # The analyses beyond the paper (fflab.pipeline.further_analyses, docs/science.md).
    RunDocument("layer_accuracy", RunLayerAccuracy,
                "Accuracy per layer: its goodness alone, layers up to it, and a linear probe.",
                analyse=further_analyses.layer_accuracy_document, figure=further_analyses.layer_accuracy_figure),
    RunDocument("dynamics", RunDynamics,
                "Ensembles, accuracy and positive weights at the training snapshots, against the final ones.",
                analyse=further_analyses.dynamics_document, figure=further_analyses.dynamics_figure),
    RunDocument("lesions", RunLesions,
                "Accuracy lost when a class's ensemble is silenced, against random and most active units.",
                analyse=further_analyses.lesions_document, figure=further_analyses.lesions_figure),
    RunDocument("selectivity", RunSelectivity,
                "Activity of each class's ensemble with the true label vs each wrong label.",
                analyse=further_analyses.selectivity_document, figure=further_analyses.selectivity_figure),
    RunDocument("intrinsic_dimension", RunIntrinsicDimension,
                "TwoNN intrinsic dimension per layer and class, with the ensemble sizes.",
                analyse=further_analyses.intrinsic_dimension_document,
                figure=further_analyses.intrinsic_dimension_figure),
    RunDocument("subensembles", RunSubEnsembles,
                "Each class's images clustered by their sets of active units.",
                analyse=further_analyses.subensembles_document),
    RunDocument("dominance", dominance.RunDominance,
                "Per layer, the units that are the most active on an image, and how often.",
                analyse=dominance.dominance_document, figure=dominance.dominance_figure),
)})

# Every document with a committed JSON Schema (fflab schemas --write): the run
# documents, then the experiment's.
DOCUMENTS: dict[str, type[Document]] = {
    **{name: document.model for name, document in RUN_DOCUMENTS.items()},
    "results": ExperimentResults,
    "paper_comparison": PaperComparison,
}


def json_schema(name: str) -> dict:
    return DOCUMENTS[name].model_json_schema()


def write_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    """Write ``<name>.schema.json`` of every document into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DOCUMENTS:
        path = folder / f"{name}.schema.json"
        path.write_text(json.dumps(json_schema(name), indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
