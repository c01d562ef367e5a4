"""What the run-document registry (``fflab.pipeline.documents.RUN_DOCUMENTS``)
holds: ``RunDocument`` entries, ``RunAnalysis`` entries for the per-run analyses
beyond the paper, and ``RunAnalysisInput``, what an ``analyse`` step gets.

An entry's ``needs`` says what its step reads beyond a run's activities and
labels: ``TRAINED_RUN`` (the default: the network, the images, the spec's model
settings), or only ``WEIGHTS`` or ``SNAPSHOTS`` (what a representations file may
give), or nothing. A recorded run (fflab.pipeline.recorded: representations
from elsewhere) gets the entries whose needs it meets.

A ``RunAnalysis`` is everything the rest of fflab needs to know about an
analysis (its name, descriptions, document model, step, figure and which of its
document's fields list per-layer entries): the service's endpoint, the
client's and the CLI's choices, the JSON Schemas and the web UI's run page are
derived from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from matplotlib.figure import Figure

from fflab.data import DATASETS, Split, load_split
from fflab.models.components import ACTIVATIONS
from fflab.pipeline.folders import analysed_rows, load_network, load_representations, load_weight_matrices
from fflab.pipeline.train import DATA_SEED
from fflab.results import Document, RunEnsembles
from fflab.spec import AnalysisSpec, ExperimentSpec, RunKey

if TYPE_CHECKING:
    from fflab.models.bp import BPClassifier
    from fflab.models.common import GoodnessNetwork

# What an analysis step may need beyond a run's activities and labels (``RunDocument.needs``).
TRAINED_RUN, WEIGHTS, SNAPSHOTS = "trained_run", "weights", "snapshots"
NO_NEEDS: frozenset[str] = frozenset()


@dataclass
class RunAnalysisInput:
    """What an ``analyse`` function gets: the experiment's spec, the run's key and
    folder, the documents computed so far, and the stored arrays, loaded on first use."""

    spec: ExperimentSpec
    key: RunKey
    run_dir: Path
    documents: dict[str, Document] = field(default_factory=dict)

    # What the inputs hold: a trained run has all of it.
    provides: frozenset[str] = frozenset({TRAINED_RUN, WEIGHTS, SNAPSHOTS})

    @property
    def settings(self) -> AnalysisSpec:
        """The analysis settings (quantiles, epsilon, cuts, correct_only)."""
        return self.spec.analysis

    @property
    def classes(self) -> list[int]:
        """The class indices, 0..classes-1 (the data set's: 10, 26 or 47)."""
        return list(range(DATASETS[self.key.dataset].n_classes))

    @property
    def class_names(self) -> list[str]:
        return list(DATASETS[self.key.dataset].class_names)

    @property
    def upper_bound(self) -> float | None:
        """The activation's upper bound (Method 2's saturation), None if unbounded."""
        return ACTIVATIONS.lookup(self.spec.network.activation).upper_bound

    @property
    def n_units(self) -> int:
        """Units of the widest layer."""
        return self.spec.network.width

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

    @property
    def ensembles(self) -> RunEnsembles:
        """The run's ensembles document (computed before every analysis that reads it)."""
        return cast(RunEnsembles, self.documents["ensembles"])

    @cached_property
    def network(self) -> GoodnessNetwork | BPClassifier:
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
    """A run's JSON document: ``runs/<run_id>/<name>.json``, validated by ``model``."""

    name: str
    model: type[Document]
    description: str
    analyse: Callable[[RunAnalysisInput], Document] | None = None  # None: written by training
    figure: DocumentFigure | None = None
    needs: frozenset[str] = frozenset({TRAINED_RUN})  # what ``analyse`` reads besides activities and labels

    def applies_to(self, inputs: RunAnalysisInput) -> bool:
        """Whether ``analyse`` can run on these inputs (a recorded run lacks a trained network)."""
        return self.analyse is not None and self.needs <= inputs.provides

    @property
    def file(self) -> str:
        return f"{self.name}.json"


@dataclass(frozen=True)
class RunAnalysis(RunDocument):
    """A per-run analysis beyond the paper: a run document the service also serves,
    for every finished run, at ``GET /v1/experiments/{id}/<path>``.

    ``layer_fields`` names the document's lists of per-layer entries (each entry
    has a ``layer``): what the layer filter keeps; empty: not per layer (the
    filter is refused). ``details`` is the endpoint's description (default: the
    document's)."""

    layer_fields: tuple[str, ...] = ()
    details: str = ""

    def __post_init__(self) -> None:
        if self.analyse is None:
            raise ValueError(f"analysis {self.name!r} needs its analyse step")
        unknown = [name for name in self.layer_fields if name not in self.model.model_fields]
        if unknown:
            raise ValueError(f"analysis {self.name!r}: {', '.join(unknown)} is not a field of "
                             f"{self.model.__name__} (its fields: {', '.join(self.model.model_fields)})")

    @property
    def path(self) -> str:
        """Its name as the endpoint, the client and the CLI spell it (dashes)."""
        return self.name.replace("_", "-")

    @property
    def per_layer(self) -> bool:
        return bool(self.layer_fields)

    @property
    def summary(self) -> str:
        return self.details or self.description

    def layers(self, document: dict[str, Any]) -> set[int]:
        """The layers a document (as JSON) has entries for."""
        return {item["layer"] for name in self.layer_fields for item in document[name]}

    def only_layer(self, document: dict[str, Any], layer: int | None) -> dict[str, Any]:
        """A document (as JSON) with only the per-layer entries of ``layer`` (all: None)."""
        if layer is None:
            return document
        return {**document, **{name: [item for item in document[name] if item["layer"] == layer]
                               for name in self.layer_fields}}
