"""The documents of the per-run analyses beyond the paper, as versioned pydantic models.

The paper ends with open questions (how ensembles form, whether they are
causally necessary, how they relate to the representations' intrinsic
dimension, what structure lies within a class), and users of FF code ask for
per-layer accuracy. Each answer is one JSON document per run, written next to
the paper's (``fflab.results``) in ``runs/<run_id>/``:

    layer_accuracy.json       RunLayerAccuracy       goodness per layer, cumulative, linear probe
    dynamics.json             RunDynamics            ensembles at training snapshots
    lesions.json              RunLesions             silencing ensembles vs controls
    selectivity.json          RunSelectivity         ensemble activity with true vs wrong labels
    intrinsic_dimension.json  RunIntrinsicDimension  TwoNN per layer and class, with ensemble sizes
    subensembles.json         RunSubEnsembles        clusters of a class's images by active units

Like the paper's documents they carry ``schema_version``, are registered in
``fflab.pipeline.documents.RUN_DOCUMENTS`` and their JSON Schemas are
committed under ``shared/fflab/schemas/`` (``fflab schemas --write``). Every
document records the settings it was computed with (subsample sizes, seeds,
regularisation, quantile) and the seconds it took.
``fflab.pipeline.further_analyses`` computes them; docs/science.md says what
each measures.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fflab.results import RunIdentity


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunAnalysis(RunIdentity):
    seconds: float = Field(0.0, description="Wall-clock time the analysis took.")


# ------------------------------------------------------------------ layer accuracy


class LayerGoodnessAccuracy(_Part):
    layer: int
    accuracy: float = Field(description="Accuracy of the label with the highest goodness in this layer alone.")
    cumulative_accuracy: float = Field(
        description="Accuracy of layers 1..layer combined by the prediction rule (last layer: the network's).")
    per_class: list[float | None]
    cumulative_per_class: list[float | None]


class ProbeSettings(_Part):
    solver: Literal["lbfgs"] = "lbfgs"
    regularization: float = Field(description="scikit-learn's C (inverse L2 strength).")
    max_iter: int
    standardized: bool = Field(True, description="Features scaled by the probe-training set's mean and std.")
    input: Literal["neutral_label", "hidden"] = Field(
        description="neutral_label: FF and BP/FF layers with every label pixel at a tenth of the label "
        "value (the true label would give the answer away); hidden: BP's hidden outputs.")
    n_train: int = Field(description="Training images the probe is fitted on (a stratified subset).")
    n_test: int = Field(description="Test images it is scored on.")
    subset_seed: int


class LayerProbe(_Part):
    layer: int
    train_accuracy: float
    test_accuracy: float
    per_class: list[float | None]
    iterations: int
    converged: bool


class RunLayerAccuracy(RunAnalysis):
    """layer_accuracy.json: what each layer knows about the class."""

    prediction_rule: str | None = Field(description="How layers' goodness is combined; null without goodness (BP).")
    goodness: list[LayerGoodnessAccuracy] = Field(
        description="Per layer; empty for a model that does not predict by goodness (BP).")
    probe: ProbeSettings
    probes: list[LayerProbe]


# ------------------------------------------------------------------ dynamics


class DynamicsPoint(_Part):
    layer: int
    epoch: int = Field(description="Epochs done (for FF: of this layer's training).")
    accuracy: float = Field(
        description="Accuracy on the probe images at the snapshot (FF: goodness of layers 1..layer).")
    fraction_positive: float = Field(description="Fraction of this layer's weights > 0 at the snapshot.")
    sizes: list[int] = Field(description="Ensemble size per class (Method 1).")
    jaccard: list[float] = Field(description="Per class, overlap with the final ensemble.")
    mean_size: float
    mean_jaccard: float


class RunDynamics(RunAnalysis):
    """dynamics.json: the ensembles at the training snapshots, against the final ones."""

    epochs: list[int] = Field(description="Snapshot epochs captured (empty: snapshots were off).")
    n_probe_images: int = Field(description="Fixed probe set: a stratified subset of the test images.")
    quantile: float = Field(description="Method 1 quantile (the table quantile).")
    points: list[DynamicsPoint]
    final_sizes: list[list[int]] = Field(description="Per layer, per class: the final ensemble sizes.")


# ------------------------------------------------------------------ lesions


class LesionEffect(_Part):
    target: float = Field(description="Accuracy drop on the lesioned class (intact - lesioned).")
    others: float = Field(description="Accuracy drop on the other classes.")
    target_se: float | None = Field(None, description="Standard error over draws (random controls).")
    others_se: float | None = None


class LesionRecord(_Part):
    layer: int
    class_index: int
    n_units: int = Field(description="Units silenced (the ensemble's size).")
    ensemble: LesionEffect
    random: LesionEffect | None = Field(description="Mean over random draws outside the ensemble.")
    most_active: LesionEffect | None = Field(description="The class's most active units outside the ensemble.")


class RunLesions(RunAnalysis):
    """lesions.json: accuracy lost when a class's ensemble is silenced, against controls."""

    quantile: float = Field(description="Ensembles: Method 1 at this quantile (as in ensembles.json).")
    images_per_class: int = Field(description="Test images per class the accuracies are measured on.")
    random_draws: int
    subsample_seed: int = Field(description="Seed of the image subset and the random draws.")
    intact_accuracy: float
    lesions: list[LesionRecord] = Field(description="Per layer and class with a non-empty ensemble.")


# ------------------------------------------------------------------ selectivity


class LayerSelectivity(_Part):
    layer: int
    activity: list[list[float | None]] = Field(
        description="[c][k]: mean activity of class c's ensemble units on class c's images with label k.")
    true_label: list[float | None]
    wrong_labels: list[float | None] = Field(description="Mean over the nine wrong labels.")
    index: list[float | None] = Field(description="(true - wrong) / (true + wrong).")


class RunSelectivity(RunAnalysis):
    """selectivity.json: ensemble activity with the true label vs each wrong label."""

    applicable: bool = Field(description="False for a model whose input carries no label (BP).")
    quantile: float
    images_per_class: int
    layers: list[LayerSelectivity]


# ------------------------------------------------------------------ intrinsic dimension


class LayerIntrinsicDimension(_Part):
    layer: int
    dimension: float | None = Field(description="TwoNN over the analysed images of every class.")
    per_class: list[float | None]
    n_points: list[int] = Field(description="Per class, points the fit used.")
    n_duplicates: list[int] | None = Field(
        None, description="Per class, images dropped as exact copies of another image's representation "
                          "before the fit (null in documents written before it was recorded).")
    ensemble_sizes: list[int | None] = Field(description="Method 1 sizes (table quantile), to set against.")


class RunIntrinsicDimension(RunAnalysis):
    """intrinsic_dimension.json: TwoNN estimates per layer and class."""

    discard: float = Field(description="Fraction of the largest r2/r1 ratios left out of the fit.")
    max_points: int = Field(description="Images per class (and overall) subsampled at most.")
    subsample_seed: int
    quantile: float
    layers: list[LayerIntrinsicDimension]


# ------------------------------------------------------------------ sub-ensembles


class SubEnsembleRecord(_Part):
    layer: int
    class_index: int
    n_images: int
    n_subensembles: int
    image_counts: list[int] = Field(description="Images per sub-ensemble, largest first.")
    sizes: list[int] = Field(description="Units per sub-ensemble.")
    units: list[list[int]]
    silhouette: float | None = Field(description="Mean silhouette of the chosen clustering; null for one group.")
    threshold: float


class RunSubEnsembles(RunAnalysis):
    """subensembles.json: each class's images clustered by their sets of active units."""

    quantile: float = Field(description="Active: at or above the class's quantile of activations.")
    linkage: Literal["average"] = "average"
    max_clusters: int
    min_silhouette: float
    min_group_fraction: float = Field(description="Smallest group allowed, as a fraction of the class's images.")
    max_images: int = Field(description="Images per class subsampled at most.")
    subsample_seed: int
    records: list[SubEnsembleRecord]


RUN_ANALYSIS_DOCUMENTS = {
    "layer_accuracy": RunLayerAccuracy,
    "dynamics": RunDynamics,
    "lesions": RunLesions,
    "selectivity": RunSelectivity,
    "intrinsic_dimension": RunIntrinsicDimension,
    "subensembles": RunSubEnsembles,
}
# Each document's lists of per-layer entries (what a layer filter keeps).
LAYER_FIELDS = {
    "layer_accuracy": ("goodness", "probes"),
    "dynamics": ("points",),
    "lesions": ("lesions",),
    "selectivity": ("layers",),
    "intrinsic_dimension": ("layers",),
    "subensembles": ("records",),
}


def only_layer(document: dict, name: str, layer: int | None) -> dict:
    """A document (as JSON) with only the per-layer entries of ``layer`` (all: None)."""
    if layer is None:
        return document
    return {**document, **{field: [item for item in document[field] if item["layer"] == layer]
                           for field in LAYER_FIELDS[name]}}
