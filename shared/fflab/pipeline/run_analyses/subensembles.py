"""Sub-ensembles: each class's images clustered by their sets of active units.

``fflab.analysis.subensembles.sub_ensembles`` per layer and class on a
subsample of the analysed images. Its one home: the document
(``subensembles.json``), the step and ``ANALYSIS`` (no figure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fflab.analysis.ensembles import method1_threshold
from fflab.analysis.subensembles import sub_ensembles
from fflab.pipeline import folders
from fflab.pipeline.run_analyses.common import (
    ANALYSIS_SEED,
    AnalysisDocument,
    Part,
    per_class_rows,
    run_identity,
    timed_on_one_thread,
)
from fflab.pipeline.run_document import NO_NEEDS, RunAnalysis

if TYPE_CHECKING:
    from fflab.pipeline.run_document import RunAnalysisInput


SUBENSEMBLE_MAX_IMAGES = 300
SUBENSEMBLE_MAX_CLUSTERS = 6
SUBENSEMBLE_MIN_SILHOUETTE = 0.25
SUBENSEMBLE_MIN_GROUP_FRACTION = 0.05


# ------------------------------------------------------------------ the document


class SubEnsembleRecord(Part):
    layer: int
    class_index: int
    n_images: int
    n_subensembles: int
    image_counts: list[int] = Field(description="Images per sub-ensemble, largest first.")
    sizes: list[int] = Field(description="Units per sub-ensemble.")
    units: list[list[int]]
    silhouette: float | None = Field(description="Mean silhouette of the chosen clustering; null for one group.")
    threshold: float


class RunSubEnsembles(AnalysisDocument):
    """subensembles.json: each class's images clustered by their sets of active units."""

    quantile: float = Field(description="Active: at or above the class's quantile of activations.")
    linkage: Literal["average"] = "average"
    max_clusters: int
    min_silhouette: float
    min_group_fraction: float = Field(description="Smallest group allowed, as a fraction of the class's images.")
    max_images: int = Field(description="Images per class subsampled at most.")
    subsample_seed: int
    records: list[SubEnsembleRecord]


# ------------------------------------------------------------------ the step


@timed_on_one_thread
def analyse(inputs: RunAnalysisInput) -> RunSubEnsembles:
    stored = inputs.representations
    settings = inputs.ensembles.analysis
    quantile = settings.table_quantile
    labels = stored["labels"][inputs.analysed]
    rows = per_class_rows(labels, SUBENSEMBLE_MAX_IMAGES, ANALYSIS_SEED)
    records = []
    for layer in range(1, folders.layer_count(stored) + 1):
        X = stored[f"layer{layer}"][inputs.analysed]
        for c in inputs.classes:
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


ANALYSIS = RunAnalysis(
    "subensembles", RunSubEnsembles,
    "Each class's images clustered by their sets of active units.",
    analyse=analyse, layer_fields=("records",),
    details="Each class's images clustered by their sets of active units: the number of sub-ensembles "
            "and their sizes.",
    needs=NO_NEEDS,  # activities and labels only: also for recorded runs
)
