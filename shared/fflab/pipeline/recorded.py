"""Analysing representations recorded elsewhere (a representations file,
fflab.representations): the same run documents, tables and figures as a trained
run's, from the file's arrays instead of a trained network.

The file becomes a results folder of one run, ``runs/external-recorded-seed0``,
laid out as a trained run's (``representations.npz`` with labels, predictions,
correct and layer1..layerL; ``weights.npz``; ``snapshots.npz`` in the training
snapshots' layout; ``metrics.json`` when the file has predictions), and
``recording.json`` (what the file held). Its documents are the registry's
(``RUN_DOCUMENTS``) whose ``needs`` a recorded run meets: the ensembles (Methods 1
and 2, sparseness), the shared units, the weight statistics where weights are
given, the ensemble dynamics where snapshots are, and every further analysis that
reads only activities and labels. The unseen class and the comparison with the
paper do not apply (a network that is not the paper's is not judged against it);
nor do the analyses that need the trained network or its images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from fflab import figures
from fflab.analysis import VERDICTS
from fflab.pipeline.documents import RUN_DOCUMENTS, write_analyses
from fflab.pipeline.experiment import experiment_tables, method_comparison, write_tables
from fflab.pipeline.folders import REPRESENTATIONS_FILE, analysed_rows, write_representations
from fflab.pipeline.paper_analyses import run_record
from fflab.pipeline.run_document import SNAPSHOTS, WEIGHTS, RunAnalysisInput
from fflab.pipeline.snapshots import SNAPSHOT_FILE
from fflab.pipeline.train import METRICS_FILE, run_identity
from fflab.representations import REPRESENTATIONS_KIND, Representations
from fflab.results import (
    EXTERNAL_DATASET,
    EXTERNAL_MODEL,
    Document,
    ExperimentResults,
    PaperComparison,
    ProtocolDifference,
    RunEnsembles,
    RunMetrics,
    RunSharedUnits,
    RunWeightStats,
    Timings,
    write_document,
)
from fflab.spec import AnalysisSpec, ExperimentSpec, RunKey

RECORDED_KEY = RunKey(EXTERNAL_MODEL, EXTERNAL_DATASET, 0)
RECORDING_FILE = "recording.json"
WEIGHTS_FILE = "weights.npz"
PAPER_COMPARISON_NOTE = ("The comparison with the paper does not apply: these representations come from a network "
                         "that fflab did not train, so they are not judged against the paper's numbers.")


class RecordedLayer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int = Field(description="Position, counted from 1 (the documents' layer).")
    name: str = Field(description="The layer's name in the file.")
    units: int
    weights: bool = Field(description="Whether the file gave its incoming weights.")


class Recording(Document):
    """recording.json: what a representations file held and what was analysed."""

    name: str
    run_id: str
    layers: list[RecordedLayer]
    class_names: list[str]
    n_images: int
    predictions: bool
    snapshot_epochs: list[int]
    description: dict[str, Any]
    analysis: AnalysisSpec
    documents: list[str] = Field(description="The run documents computed.")
    not_applicable: list[str] = Field(description="The registered analyses that need a trained network.")
    paper_comparison: str = Field(description="Why there is no comparison with the paper.")


class UploadedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(description="Bytes of the uploaded file.")
    sha256: str = Field(description="The uploaded file's sha256 (hex).")


class RepresentationsSpec(BaseModel):
    """The spec of a service experiment of kind ``representations``: an uploaded
    representations file (POST /v1/representations) analysed as one recorded run.
    It is what ``GET /v1/experiments/{id}`` shows as ``spec``: the file's shape
    (layers, classes, images) and the analysis settings (a re-analysis replaces
    ``analysis``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["representations"] = REPRESENTATIONS_KIND
    name: str
    file: UploadedFile
    layers: list[RecordedLayer]
    class_names: list[str]
    n_images: int
    predictions: bool
    snapshot_epochs: list[int]
    description: dict[str, Any]
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)


def representations_spec(representations: Representations, name: str, size: int, sha256: str,
                         settings: AnalysisSpec | None = None) -> RepresentationsSpec:
    """The spec of an experiment made from the uploaded file ``representations``."""
    recording = recording_of(representations, name, settings or AnalysisSpec())
    return RepresentationsSpec(
        name=name, file=UploadedFile(size=size, sha256=sha256), layers=recording.layers,
        class_names=recording.class_names, n_images=recording.n_images, predictions=recording.predictions,
        snapshot_epochs=recording.snapshot_epochs, description=recording.description, analysis=recording.analysis)


def settings_spec(settings: AnalysisSpec) -> ExperimentSpec:
    """The spec that carries the analysis settings to the pipeline's steps. Only its
    ``analysis`` is read: the steps that read more need a trained run (``needs``)."""
    return ExperimentSpec(analysis=settings)


@dataclass
class RecordedRunInput(RunAnalysisInput):
    """A recorded run's inputs: its folder's arrays and recording.json, no network."""

    recording: Recording | None = None
    provides: frozenset[str] = field(default_factory=frozenset)

    @property
    def _recording(self) -> Recording:
        if self.recording is None:
            raise ValueError("a recorded run's inputs need its recording")
        return self.recording

    @property
    def classes(self) -> list[int]:
        return list(range(len(self._recording.class_names)))

    @property
    def class_names(self) -> list[str]:
        return list(self._recording.class_names)

    @property
    def upper_bound(self) -> float | None:
        return None  # the activation is unknown: no saturation bound

    @property
    def n_units(self) -> int:
        return max(layer.units for layer in self._recording.layers)

    @cached_property
    def weights(self) -> list[np.ndarray]:
        with np.load(self.run_dir / WEIGHTS_FILE, allow_pickle=False) as stored:
            return [stored[f"layer{layer.layer}"] for layer in self._recording.layers]


def run_dir_of(out_dir: Path) -> Path:
    return out_dir / "runs" / RECORDED_KEY.run_id


def write_run_folder(representations: Representations, run_dir: Path) -> None:
    """The file's arrays in a trained run's layout (folders.write_representations,
    the training snapshots' snapshots.npz), plus weights.npz when every layer has
    weights, and metrics.json (accuracy) when it has predictions."""
    labels = representations.labels
    predictions = representations.predictions
    correct = np.ones_like(labels, dtype=bool) if predictions is None else predictions == labels
    arrays = {"labels": labels, "correct": correct,
              **{f"layer{i}": layer for i, layer in enumerate(representations.layers, start=1)}}
    if predictions is not None:
        arrays["predictions"] = predictions
    write_representations(run_dir, arrays)
    given = [w for w in representations.weights if w is not None]
    if given and len(given) == len(representations.layers):
        np.savez_compressed(run_dir / WEIGHTS_FILE, **{f"layer{i}": w for i, w in enumerate(given, start=1)})  # type: ignore[arg-type]
    snapshots = representations.snapshots
    if snapshots is not None:
        accuracy = snapshots.accuracy if snapshots.accuracy is not None else np.full(snapshots.epochs.size, np.nan)
        meta, captured = [], {}
        for layer, activity in enumerate(snapshots.layers, start=1):
            for s, epoch in enumerate(snapshots.epochs):
                meta.append([layer, int(epoch), accuracy[s], np.nan])
                captured[f"layer{layer}_epoch{int(epoch)}"] = activity[s].astype(np.float16)
        np.savez_compressed(run_dir / SNAPSHOT_FILE, rows=snapshots.rows, meta=np.array(meta, dtype=np.float64),
                            **captured)
    if predictions is not None:
        per_class: list[float | None] = [float(correct[labels == c].mean()) for c in range(representations.n_classes)]
        write_document(RunMetrics(
            **run_identity(RECORDED_KEY), accuracy=float(correct.mean()), per_class_accuracy=per_class,
            n_train=0, n_test=int(labels.size), loss_history=[], device="external",
            timings=Timings(train_seconds=0.0, evaluate_seconds=0.0)), run_dir / METRICS_FILE)


def recording_of(representations: Representations, name: str, settings: AnalysisSpec) -> Recording:
    weights = representations.weights or [None] * len(representations.layers)
    return Recording(
        name=name, run_id=RECORDED_KEY.run_id,
        layers=[RecordedLayer(layer=i, name=layer_name, units=units, weights=w is not None)
                for i, (layer_name, units, w) in enumerate(zip(representations.layer_names, representations.units,
                                                               weights, strict=True), start=1)],
        class_names=representations.class_names, n_images=representations.n_images,
        predictions=representations.predictions is not None,
        snapshot_epochs=[] if representations.snapshots is None else representations.snapshots.epochs.tolist(),
        description=representations.description, analysis=settings, documents=[], not_applicable=[],
        paper_comparison=PAPER_COMPARISON_NOTE,
    )


def inputs_of(out_dir: Path, recording: Recording) -> RecordedRunInput:
    run_dir = run_dir_of(out_dir)
    provides = frozenset({WEIGHTS} if (run_dir / WEIGHTS_FILE).is_file() else set()) | frozenset(
        {SNAPSHOTS} if (run_dir / SNAPSHOT_FILE).is_file() else set())
    return RecordedRunInput(settings_spec(recording.analysis), RECORDED_KEY, run_dir, provides=provides,
                            recording=recording)


def analyse_representations(representations: Representations, out_dir: Path, name: str = "representations",
                            settings: AnalysisSpec | None = None) -> dict[str, Any]:
    """Write ``representations`` into the results folder ``out_dir`` and analyse it
    (``analyse_recorded``); returns results.json's content."""
    write_recorded(representations, out_dir, name, settings)
    return analyse_recorded(out_dir)


def write_recorded(representations: Representations, out_dir: Path, name: str = "representations",
                   settings: AnalysisSpec | None = None) -> None:
    """Write ``representations`` into the results folder ``out_dir`` in a trained
    run's layout, with recording.json, ready for ``analyse_recorded``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_run_folder(representations, run_dir_of(out_dir))
    write_document(recording_of(representations, name, settings or AnalysisSpec()), out_dir / RECORDING_FILE)


def analyse_recorded(out_dir: Path, settings: AnalysisSpec | None = None) -> dict[str, Any]:
    """Compute the recorded run's documents, the tables, the figures and results.json
    in ``out_dir`` (with ``settings``: a re-analysis with other analysis settings)."""
    started = time.perf_counter()
    analyse_recorded_run(out_dir, settings)
    output = aggregate_recorded(out_dir)
    output["seconds"] = time.perf_counter() - started
    return output


def analyse_recorded_run(out_dir: Path, settings: AnalysisSpec | None = None) -> dict[str, Any]:
    """The run's part of ``analyse_recorded``: its documents (the registry's that
    apply) in ``runs/<run_id>/`` and recording.json updated; returns the run's
    summary record (the service's worker step, as a trained run's)."""
    recording = Recording.model_validate_json((out_dir / RECORDING_FILE).read_text())
    if settings is not None:
        recording.analysis = settings
    inputs = inputs_of(out_dir, recording)
    recording.documents = write_analyses(inputs)
    recording.not_applicable = [name for name, entry in RUN_DOCUMENTS.items()
                                if entry.analyse is not None and not entry.applies_to(inputs)]
    write_document(recording, out_dir / RECORDING_FILE)
    return run_record(inputs.run_dir)


def aggregate_recorded(out_dir: Path) -> dict[str, Any]:
    """The experiment's part of ``analyse_recorded``, from the run's documents and
    recording.json: the tables (md, csv, json), the figures and results.json (the
    service's aggregation step); returns results.json's content."""
    recording = Recording.model_validate_json((out_dir / RECORDING_FILE).read_text())
    inputs = inputs_of(out_dir, recording)
    records = [run_record(inputs.run_dir)]
    spec = settings_spec(recording.analysis)
    tables = experiment_tables(spec, records)
    write_tables(tables, out_dir / "tables")
    comparison = method_comparison(spec, {RECORDED_KEY.run_id: inputs.run_dir}, records)[0]
    written = [path.name for figure_name, figure in recorded_figures(inputs, recording).items()
               for path in figures.save_figure(figure, out_dir / "figures" / figure_name)]  # PNG and SVG
    results = ExperimentResults(
        name=recording.name, runs=records, tables={name: table.to_dict() for name, table in tables.items()},
        figures=sorted(written), method_comparison=comparison,
    )
    write_document(results, out_dir / "results.json")
    output: dict[str, Any] = results.model_dump(mode="json")
    return output


def recorded_figures(inputs: RecordedRunInput, recording: Recording) -> dict[str, Figure]:
    """The paper's figures that a recorded run has the data for, drawn by
    fflab.figures from its arrays and documents: every layer's class-mean map
    (Figures 1C, 5, 6), layer 1's class means with its ensembles (1B), the ensemble
    sizes per class (2), the shared-units matrix (3B) and, with weights, the
    negative incoming weights (7). No training curve: nothing was trained here."""
    settings, names = recording.analysis, recording.class_names
    stored = inputs.representations
    keep = analysed_rows(stored, None, settings.correct_only)
    labels = stored["labels"][keep]
    ensembles = RunEnsembles.model_validate_json((inputs.run_dir / RUN_DOCUMENTS["ensembles"].file).read_text())
    shared = RunSharedUnits.model_validate_json((inputs.run_dir / RUN_DOCUMENTS["shared_units"].file).read_text())
    drawn: dict[str, Figure] = {}
    for layer in recording.layers:
        X = stored[f"layer{layer.layer}"][keep]
        drawn[f"activation_map_layer{layer.layer}"] = figures.activation_map(X, labels, names, layer=layer.layer)
        units = {record.class_index: np.asarray(record.units, dtype=int) for record in ensembles.ensembles
                 if record.layer == layer.layer and record.method == "method1"
                 and record.quantile == settings.figure_quantile}
        if layer.layer == 1:
            drawn["figure1b"] = figures.figure1b_class_mean_activations(X, labels, units, names)
        sizes = np.array([[units[c].size if c in units else np.nan for c in range(len(names))]], dtype=float)
        drawn[f"figure2_layer{layer.layer}"] = figures.figure2_ensemble_sizes(
            {EXTERNAL_MODEL: sizes}, names,
            title=f"Layer-{layer.layer} ensemble size per class (Method 1, quantile {settings.figure_quantile})")
    for matrix in shared.matrices:
        if matrix.method == "method1" and matrix.quantile == settings.figure_quantile:
            drawn[f"figure3b_layer{matrix.layer}"] = figures.figure3b_shared_units_matrix(
                np.asarray(matrix.matrix), names, title=f"Units shared between ensembles, layer {matrix.layer}")
    if (inputs.run_dir / RUN_DOCUMENTS["weight_stats"].file).is_file():
        stats = RunWeightStats.model_validate_json((inputs.run_dir / RUN_DOCUMENTS["weight_stats"].file).read_text())
        for layer_stats in stats.layers:
            drawn[f"figure7_layer{layer_stats.layer}"] = figures.figure7_negative_weight_fraction(
                {EXTERNAL_MODEL: np.asarray(layer_stats.fraction_negative_incoming)}, layer=layer_stats.layer)
    return drawn


def paper_comparison_not_applicable(experiment: str) -> PaperComparison:
    """The comparison with the paper of recorded representations: it does not apply
    (``PAPER_COMPARISON_NOTE``): no cell, no verdict, and the one difference from the
    paper's protocol named (``kind``: representations recorded elsewhere, not trained)."""
    return PaperComparison(
        experiment=experiment, reproduction=False,
        protocol=[ProtocolDifference(field="kind", paper="training", experiment=REPRESENTATIONS_KIND,
                                     source=PAPER_COMPARISON_NOTE)],
        open_choices={}, cells=[], summary={verdict: 0 for verdict in VERDICTS})


def paper_comparison_markdown(experiment: str) -> str:
    return f"# Comparison with the paper: {experiment}\n\n{PAPER_COMPARISON_NOTE}\n"


def is_recorded(out_dir: Path) -> bool:
    """Whether ``out_dir`` is a recorded run's results folder."""
    return (out_dir / RECORDING_FILE).is_file() and (run_dir_of(out_dir) / REPRESENTATIONS_FILE).is_file()


__all__ = ["PAPER_COMPARISON_NOTE", "RECORDED_KEY", "Recording", "RecordedRunInput", "RepresentationsSpec",
           "aggregate_recorded", "analyse_recorded", "paper_comparison_markdown",
           "paper_comparison_not_applicable", "analyse_recorded_run", "analyse_representations", "is_recorded",
           "representations_spec", "run_dir_of", "write_recorded"]
