"""A run's documents: one registry entry each, ``RUN_DOCUMENTS``.

A run document is a versioned JSON file in the run's folder
(``runs/<run_id>/<name>.json``), with its pydantic model (whose JSON Schema is
committed under fflab/schemas/), computed from what training stored:

- ``metrics`` is written by training (fflab.pipeline.train); the others by
  their ``analyse`` function, in registry order, each seeing the documents
  computed before it (``RunAnalysisInput.documents``);
- a document may have a ``figure`` recipe: drawn once per experiment into
  ``figures/<name>.png`` and ``figures/<name>.svg`` by the aggregation;
- the service stores every run document as an artifact and serves it at
  ``GET /v1/experiments/{id}/runs/{run_id}/documents/{name}`` (no migration).

The per-run analyses beyond the paper are ``RunAnalysis`` entries
(``fflab.pipeline.run_document``), each defined in its own module of
``fflab.pipeline.run_analyses`` (document model, step, figure, entry);
``run_analyses()`` lists them for the service's endpoints, the client, the CLI
and the web UI. Adding one is its module plus its line at the end of the
registry below (README.md, "Extending fflab").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fflab.pipeline import folders, paper_analyses
from fflab.pipeline.folders import TRAINED_FILES
from fflab.pipeline.run_analyses import (
    dominance,
    dynamics,
    intrinsic_dimension,
    layer_accuracy,
    lesions,
    selectivity,
    subensembles,
)
from fflab.pipeline.run_document import NO_NEEDS, WEIGHTS, DocumentFigure, RunAnalysis, RunAnalysisInput, RunDocument
from fflab.pipeline.train import METRICS_FILE
from fflab.registry import Registry
from fflab.representations import REPRESENTATIONS_KIND, experiment_kind
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

__all__ = ["DOCUMENTS", "RUN_DOCUMENTS", "DocumentFigure", "RunAnalysis", "RunAnalysisInput", "RunDocument",
           "analyse_run", "document_figures", "folder_documents", "run_analyses", "write_analyses"]


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


def analyse_run(spec: ExperimentSpec, key: RunKey, run_dir: Path, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Compute and write every registered analysis document of one trained run
    (only those in ``names``, if given), then return the run's summary record
    (paper_analyses.run_record). ``spec`` is the experiment's; the analyses see
    the run's grid point's (``spec.at``)."""
    started = time.perf_counter()
    write_analyses(RunAnalysisInput(spec.at(key.point), key, run_dir), names)
    metrics = read_document(RunMetrics, run_dir / METRICS_FILE)
    metrics.timings.analyse_seconds = time.perf_counter() - started
    write_document(metrics, run_dir / METRICS_FILE)
    return paper_analyses.run_record(run_dir)


def write_analyses(inputs: RunAnalysisInput, names: Iterable[str] | None = None) -> list[str]:
    """Compute every registered analysis document that applies to ``inputs`` (a
    recorded run's: those whose ``needs`` it meets), in registry order, each seeing
    those before it, and write each into ``inputs.run_dir``; only those in
    ``names``, if given. Returns the names written."""
    wanted = None if names is None else set(names)
    written = []
    for document in RUN_DOCUMENTS.values():
        if document.analyse is not None and document.applies_to(inputs) and (wanted is None or document.name in wanted):
            inputs.documents[document.name] = document.analyse(inputs)
            write_document(inputs.documents[document.name], inputs.run_dir / document.file)
            written.append(document.name)
    return written


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
                analyse=paper_analyses.ensembles_document, needs=NO_NEEDS),
    RunDocument("shared_units", RunSharedUnits,
                "Units shared by each pair of classes' ensembles, per layer and method.",
                analyse=paper_analyses.shared_units_document, needs=NO_NEEDS),
    RunDocument("weight_stats", RunWeightStats,
                "Fraction of positive weights per layer and of negative incoming weights per unit.",
                analyse=paper_analyses.weight_stats_document, needs=frozenset({WEIGHTS})),
    # The analyses beyond the paper: one module each (fflab.pipeline.run_analyses, docs/science.md).
    layer_accuracy.ANALYSIS,
    dynamics.ANALYSIS,
    lesions.ANALYSIS,
    selectivity.ANALYSIS,
    intrinsic_dimension.ANALYSIS,
    subensembles.ANALYSIS,
    dominance.ANALYSIS,
)})


def run_analyses() -> dict[str, RunAnalysis]:
    """The registered per-run analyses beyond the paper, by name, in registry order
    (what the service's analysis endpoints, the client, the CLI and the web UI list)."""
    return {name: entry for name, entry in RUN_DOCUMENTS.items() if isinstance(entry, RunAnalysis)}


def run_analysis(name: str) -> RunAnalysis:
    """The analysis ``name`` (underscores or dashes); ValueError naming the registered ones."""
    analyses = run_analyses()
    found = analyses.get(str(name).replace("-", "_"))
    if found is None:
        raise ValueError(f"analysis must be one of {', '.join(a.path for a in analyses.values())}; got {name!r}")
    return found


def spec_layers(spec: ExperimentSpec | Mapping[str, Any]) -> int:
    """How many hidden layers the experiment's deepest network has (over its sweep);
    for uploaded representations (kind ``representations``), the file's layers."""
    data = spec.model_dump(mode="json") if isinstance(spec, ExperimentSpec) else spec
    if experiment_kind(data) == REPRESENTATIONS_KIND:
        return len(data.get("layers") or [])
    swept = (data.get("sweep") or {}).get("network.layers") or []
    return max([int((data.get("network") or {}).get("layers") or 0), *(int(v) for v in swept)])


def check_layer(analysis: RunAnalysis, layer: int, layers: int) -> None:
    """ValueError unless ``analysis`` is per layer and ``layer`` is one of 1..``layers``."""
    if not analysis.per_layer:
        raise ValueError(f"analysis {analysis.path} is not per layer: leave out the layer filter")
    if not 1 <= layer <= layers:
        raise ValueError(f"layer {layer} is not a layer of this experiment's networks: "
                         f"allowed layers are 1 to {layers}")


def folder_documents(experiment_dir: Path, name: str, model: str | None = None, dataset: str | None = None,
                     layer: int | None = None, run_id: str | None = None) -> dict[str, Any]:
    """What the service's endpoint of analysis ``name`` answers, from a local results
    folder: {"experiment": folder, "runs": [document, ...]} for the runs that have it.
    A layer the experiment's networks do not have raises ValueError naming theirs."""
    analysis = run_analysis(name)
    spec = folders.read_spec(experiment_dir)
    if layer is not None:
        check_layer(analysis, layer, spec_layers(spec))
    documents = []
    for key in spec.runs():
        if (model or key.model) != key.model or (dataset or key.dataset) != key.dataset:
            continue
        if run_id is not None and run_id != key.run_id:
            continue
        path = folders.run_dir_of(experiment_dir, key) / analysis.file
        if path.is_file():
            document = analysis.model.model_validate_json(path.read_text())
            documents.append(analysis.only_layer(document.model_dump(mode="json"), layer))
    return {"experiment": str(experiment_dir), "runs": documents}


class _SchemaDocuments(Mapping[str, type[Document]]):
    """Every document with a committed JSON Schema (fflab schemas --write): the run
    documents as registered now, then the experiment's."""

    def _all(self) -> dict[str, type[Document]]:
        return {**{name: document.model for name, document in RUN_DOCUMENTS.items()},
                "results": ExperimentResults, "paper_comparison": PaperComparison}

    def __getitem__(self, name: str) -> type[Document]:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


DOCUMENTS: Mapping[str, type[Document]] = _SchemaDocuments()


def json_schema(name: str) -> dict[str, Any]:
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
