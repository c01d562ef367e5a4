"""The JSON documents an experiment writes, as versioned pydantic models.

These documents are what other tools fetch (from a results folder or the
service), so their shape is a contract: each carries ``schema_version``, and
the JSON Schemas generated from these models are committed under
``shared/fflab/schemas/`` (``fflab schemas --write`` regenerates them; a test
fails when they drift). Bump ``SCHEMA_VERSION`` on any incompatible change; a
document that changed on its own carries its own version (metrics.json, ensembles.json and
weight_stats.json: 1.1), and its model still reads the earlier versions. results.json is at version 1.1 when it
has a ``sweep`` section (a 1.0 reader would reject the new field) and is written
exactly as 1.0 otherwise.

Layout of a results folder::

    <experiment>/spec.json                       the validated ExperimentSpec
    <experiment>/runs/<run_id>/metrics.json      RunMetrics
    <experiment>/runs/<run_id>/ensembles.json    RunEnsembles
    <experiment>/runs/<run_id>/shared_units.json RunSharedUnits
    <experiment>/runs/<run_id>/weight_stats.json RunWeightStats
    <experiment>/runs/<run_id>/representations.npz  per-layer test representations
    <experiment>/runs/<run_id>/weights.pt        the trained state dict
    <experiment>/tables/table{1,2,3}.{json,md,csv}   (with a sweep: rows per grid point)
    <experiment>/tables/sweep.{json,md,csv}        with a sweep: its key numbers
    <experiment>/figures/*.png, *.svg
    <experiment>/results.json                    ExperimentResults
    <experiment>/tables/paper_comparison.{json,md,csv}  PaperComparison
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from fflab.spec import AnalysisSpec, DatasetName, ModelName

SCHEMA_VERSION: Final = "1.0"
SWEEP_SCHEMA_VERSION: Final = "1.1"  # results.json with a sweep section
SCHEMA_DIR = Path(__file__).parent / "schemas"


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["1.0"] = SCHEMA_VERSION


# A recorded run (fflab.representations: a network trained elsewhere, or recorded
# activity) is named by these in place of a model and a data set of fflab's.
EXTERNAL_MODEL = "external"
EXTERNAL_DATASET = "recorded"


class RunIdentity(Document):
    run_id: str
    model: ModelName | Literal["external"] = Field(
        description="The model type; external: representations recorded elsewhere (docs/representations.md).")
    dataset: DatasetName | Literal["recorded"] = Field(
        description="The data set; recorded: the images of a representations file.")
    seed: int
    unseen_class: int | None = Field(None, description="Class left out of training, if any.")


class Timings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train_seconds: float
    evaluate_seconds: float
    analyse_seconds: float = 0.0


class RunDevice(BaseModel):
    """The device a run trained on (fflab.gpu.describe_device)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["cuda", "cpu"]
    name: str = Field(description="GPU name (e.g. NVIDIA H100 80GB HBM3), or the CPU's model name.")
    index: int | None = Field(description="The GPU's index as nvidia-smi numbers it; null for the CPU.")
    total_memory_bytes: int = Field(description="The GPU's memory, or the machine's RAM for the CPU.")


# metrics.json's own version: 1.1 added device_info (1.0 documents, without it, still read).
METRICS_SCHEMA_VERSION: Final = "1.1"


class RunMetrics(RunIdentity):
    """metrics.json: accuracy and training record of one run."""

    schema_version: Literal["1.0", "1.1"] = METRICS_SCHEMA_VERSION  # type: ignore[assignment]  # a document widens the versions it reads
    accuracy: float = Field(description="Test accuracy over all evaluated images.")
    per_class_accuracy: list[float | None] = Field(
        description="Accuracy per class 0..9; null for a class with no test images."
    )
    n_train: int
    n_test: int
    loss_history: list[list[float]] = Field(
        description="Loss per epoch; one list per layer for FF, a single list otherwise."
    )
    device: str
    device_info: RunDevice | None = Field(
        None, description="The device it trained on: name, index, memory (schema 1.1; null in 1.0)."
    )
    timings: Timings


class EnsembleRecord(BaseModel):
    """One class's ensemble in one layer by one method."""

    model_config = ConfigDict(extra="forbid")

    layer: int = Field(description="Hidden layer, counted from 1.")
    class_index: int
    class_name: str
    method: Literal["method1", "method2"]
    quantile: float | None = Field(None, description="Method 1 quantile.")
    threshold: float | None = Field(None, description="Method 1 activation threshold.")
    epsilon: float | None = Field(None, description="Method 2 density radius.")
    rho_cut: float | None = Field(None, description="Method 2 density cut used.")
    nh_cut: float | None = Field(None, description="Method 2 n_h cut used.")
    n_images: int = Field(description="Images of the class that were analysed.")
    units: list[int] = Field(description="Indices of the ensemble's units.")
    size: int


class LayerSparseness(BaseModel):
    """One layer's sparseness by each measure of fflab.analysis.SPARSENESS_MEASURES. Per image
    (``hoyer``, ``treves_rolls``): each analysed image's activity vector, averaged over images
    (all-zero vectors left out), the authors' convention; of the class mean: each class's mean
    activity vector. Reads documents of schema 1.0, whose ``per_class`` and ``hoyer_per_class``
    were the class-mean measures (the per-image ones are then null or empty)."""

    model_config = ConfigDict(extra="forbid")

    layer: int
    hoyer: float | None = Field(
        None, description="Hoyer's sparseness of each analysed image, averaged over all the layer's analysed "
        "images (the authors' measure: their nanmean over images); null in 1.0 documents."
    )
    treves_rolls: float | None = Field(
        None, description="Treves-Rolls (population) sparseness of each analysed image, averaged over all the "
        "layer's analysed images; null in 1.0 documents."
    )
    hoyer_by_class: list[float | None] = Field(
        default_factory=list, description="Per class, Hoyer's sparseness of each of its images, averaged over "
        "them; empty in 1.0 documents."
    )
    treves_rolls_by_class: list[float | None] = Field(
        default_factory=list, description="Per class, Treves-Rolls sparseness of each of its images, averaged "
        "over them; empty in 1.0 documents."
    )
    treves_rolls_of_class_mean: list[float | None] = Field(
        description="Per class, Treves-Rolls sparseness of the class's mean activation vector (1.0: per_class)."
    )
    hoyer_of_class_mean: list[float | None] = Field(
        default_factory=list,
        description="Per class, Hoyer's sparseness of the class's mean activation vector (1.0: "
        "hoyer_per_class; empty in documents written before it was added).",
    )

    @model_validator(mode="before")
    @classmethod
    def _read_schema_1_0(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("per_class" in data or "hoyer_per_class" in data):
            data = dict(data)
            if "per_class" in data:
                data["treves_rolls_of_class_mean"] = data.pop("per_class")
            if "hoyer_per_class" in data:
                data["hoyer_of_class_mean"] = data.pop("hoyer_per_class")
        return data


class UnseenClassSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int
    unseen_class: int
    units: list[int] = Field(description="Method 2 ensemble of the unseen class.")
    unseen_mean_activity: float | None
    seen_mean_activity: float | None


# ensembles.json's own version: 1.1 measures sparseness per image (LayerSparseness) and adds
# method2_sizes_by_cut_rule (1.0 documents still read).
ENSEMBLES_SCHEMA_VERSION: Final = "1.1"


class RunEnsembles(RunIdentity):
    """ensembles.json: every class's ensemble, per layer and method."""

    schema_version: Literal["1.0", "1.1"] = ENSEMBLES_SCHEMA_VERSION  # type: ignore[assignment]  # a document widens the versions it reads
    analysis: AnalysisSpec
    n_units: int
    ensembles: list[EnsembleRecord]
    sparseness: list[LayerSparseness]
    unseen: list[UnseenClassSummary] = Field(
        default_factory=list, description="Per layer, for runs trained without a class."
    )
    method2_sizes_by_cut_rule: dict[str, list[list[int | None]]] = Field(
        default_factory=dict,
        description="Per Method 2 cut rule (fflab.analysis.METHOD2_CUTS), per layer, the size of each class's "
        "Method 2 ensemble under that rule (null: the class has no analysed image); the ensembles' records "
        "follow analysis.method2_cut. Empty in 1.0 documents.",
    )


class SharedUnitsMatrix(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int
    method: Literal["method1", "method2"]
    quantile: float | None = None
    classes: list[int]
    matrix: list[list[int]] = Field(description="[i][j] = units shared by classes i and j.")


class RunSharedUnits(RunIdentity):
    """shared_units.json: |E_c intersect E_c'| per layer and method."""

    matrices: list[SharedUnitsMatrix]


class LayerWeightStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int
    fraction_positive: float = Field(description="Fraction of weights > 0 (Table 3).")
    fraction_negative_incoming: list[float] = Field(
        description="Per unit, the fraction of its incoming weights < 0 (Figure 7)."
    )
    units_all_negative: int | None = Field(
        None, description="Units whose incoming weights are all < 0 (Figure 7: FF, 775 of 784 in layer 2; BP "
        "about 100); null in 1.0 documents."
    )
    fraction_units_all_negative: float | None = Field(
        None, description="units_all_negative over the layer's units; null in 1.0 documents."
    )
    fraction_units_three_quarters_negative: float | None = Field(
        None, description="Fraction of the units whose fraction of negative incoming weights is within 0.05 of "
        "0.75, edges included (Figure 7: BP/FF about 3/8); null in 1.0 documents."
    )


# weight_stats.json's own version: 1.1 adds Figure 7's counts per layer (1.0 documents still read).
WEIGHT_STATS_SCHEMA_VERSION: Final = "1.1"


class RunWeightStats(RunIdentity):
    """weight_stats.json: excitatory/inhibitory weight statistics per hidden layer."""

    schema_version: Literal["1.0", "1.1"] = WEIGHT_STATS_SCHEMA_VERSION  # type: ignore[assignment]  # a document widens the versions it reads
    layers: list[LayerWeightStats]


class SizeFit(BaseModel):
    """A least-squares line of Method 1 size (y) on Method 2 size (x)."""

    model_config = ConfigDict(extra="forbid")

    slope: float
    intercept: float
    r2: float | None
    n_points: int


class CutRuleFit(BaseModel):
    """Figure 8B's fits with Method 2's sizes under one cut rule."""

    model_config = ConfigDict(extra="forbid")

    slope: float | None = Field(description="The fit over every point, as in the paper; null: undefined.")
    intercept: float | None
    r2: float | None
    n_points: int
    both_found: SizeFit | None = Field(description="The fit where both methods find an ensemble.")
    left_out: int = Field(description="Points left out of both_found.")
    per_model: dict[str, SizeFit | None] = Field(description="The fit over each model's points.")


class MethodComparison(BaseModel):
    """Figure 8B's regression. ``slope``, ``intercept``, ``r2`` and ``n_points``
    are the fit over every point, as in the paper (null where undefined)."""

    model_config = ConfigDict(extra="forbid")

    quantile: float
    epsilon: float
    slope: float | None
    intercept: float | None
    r2: float | None
    n_points: int
    both_found: SizeFit | None = Field(
        None, description="The fit over the points where both methods find an ensemble."
    )
    left_out: int | None = Field(
        None, description="Points left out of both_found: one method or both found none."
    )
    per_model: dict[str, SizeFit | None] = Field(
        default_factory=dict, description="The fit over each model's points (null: undefined)."
    )
    by_cut_rule: dict[str, CutRuleFit] = Field(
        default_factory=dict,
        description="Per Method 2 cut rule (fflab.analysis.METHOD2_CUTS), the same fits with Method 2's sizes "
        "under that rule (the fields above follow analysis.method2_cut); left out when empty.",
    )

    @model_serializer(mode="wrap")
    def _without_empty_cut_rules(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.by_cut_rule:
            data.pop("by_cut_rule", None)
        return data


class SweepEstimate(BaseModel):
    """A mean over seeds with its standard error."""

    model_config = ConfigDict(extra="forbid")

    mean: float | None = Field(description="Null: no run has the value.")
    se: float | None = Field(description="Standard error of the mean; null with fewer than two runs.")
    n: int = Field(description="Runs behind the estimate.")


class SweepCell(BaseModel):
    """The key numbers of one (grid point, model, data set), over the runs trained
    on every class."""

    model_config = ConfigDict(extra="forbid")

    point: int
    model: ModelName
    dataset: DatasetName
    accuracy: SweepEstimate
    ensemble_size: list[SweepEstimate] = Field(
        description="Per layer: each run's mean Method 1 ensemble size over the analysed classes "
        "(at ensemble_quantile, as Table 2), then mean and SE over runs."
    )
    fraction_positive_weights: list[SweepEstimate] = Field(description="Per layer, as Table 3.")


class SweepPointValues(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="The grid point, as in run ids (-p<index>) and run records (point).")
    values: dict[str, Any] = Field(description="Each swept setting's value, by dotted path.")


class SweepResults(BaseModel):
    """results.json's sweep section: the grid and the key numbers per grid point."""

    model_config = ConfigDict(extra="forbid")

    fields: list[str] = Field(description="The swept settings, by dotted path (spec.sweep).")
    points: list[SweepPointValues]
    paper_point: int = Field(
        description="The grid point shown by the paper's figures, method_comparison and the "
        "comparison with the paper."
    )
    ensemble_quantile: float = Field(description="The Method 1 quantile of ensemble_size.")
    cells: list[SweepCell] = Field(description="Per grid point, model and data set.")


class MissingRun(BaseModel):
    """A run of the experiment left out of partial results, and why."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    status: Literal["cancelled", "failed"] = Field(
        description="How the run ended: cancelled (the experiment was cancelled) or failed.")
    error: str | None = Field(None, description="A failed run's reason.")


class ExperimentResults(Document):
    """results.json: the experiment's tables, figures and cross-run summaries."""

    schema_version: Literal["1.0", "1.1"] = SCHEMA_VERSION  # type: ignore[assignment]  # a document widens the versions it reads
    name: str
    runs: list[dict[str, Any]] = Field(
        description="One summary record per run; with a sweep, each has its grid point (point) "
        "and the swept values there (sweep_values)."
    )
    tables: dict[str, dict[str, Any]] = Field(
        description="Tables 1-3 (table1..table3) and the other aggregates over runs, as Table.to_dict(); "
        "with a sweep, each with a row per grid point and model, and the sweep table."
    )
    figures: list[str]
    method_comparison: MethodComparison | None = None
    sweep: SweepResults | None = Field(
        None, description="Since 1.1, with a sweep only: the grid and the key numbers per grid point."
    )
    partial: bool = Field(
        False, description="True when some runs did not succeed (the experiment was cancelled, or runs "
        "failed): the tables, figures and fits are of runs_included only. Written only when true.")
    runs_included: list[str] | None = Field(
        None, description="With partial: the run ids aggregated (those of runs).")
    runs_missing: list[MissingRun] | None = Field(
        None, description="With partial: every run left out, with its status and a failed run's reason.")

    @property
    def partial_note(self) -> str:
        """``"partial: 3 of 4 runs"``, or "" for complete results."""
        return partial_note(len(self.runs_included or ()), len(self.runs_missing or ())) if self.partial else ""

    @model_validator(mode="after")
    def _version_follows_the_shape(self) -> ExperimentResults:
        self.schema_version = SCHEMA_VERSION if self.sweep is None else SWEEP_SCHEMA_VERSION
        return self

    @model_serializer(mode="wrap")
    def _without_an_absent_sweep(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.sweep is None:
            data.pop("sweep", None)
        if not self.partial:  # complete results are as before partial ones existed
            for name in ("partial", "runs_included", "runs_missing"):
                data.pop(name, None)
        return data


def partial_note(included: int, missing: int) -> str:
    """What a partial aggregation's tables and figures say: ``"partial: 3 of 4 runs"``."""
    return f"partial: {included} of {included + missing} runs"


class ProtocolDifference(BaseModel):
    """One setting where an experiment differs from the paper's protocol."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="Dotted spec field, e.g. data.train_subset.")
    paper: Any = Field(description="The paper preset's value.")
    experiment: Any = Field(description="This experiment's value.")
    source: str = Field("", description="Which results folder, where several are compared.")


class CellComparison(BaseModel):
    """One published number against this experiment's estimate."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="e.g. table2/ff/mnist/layer1.")
    source: str = Field(description="Where the paper reports it.")
    quantity: str
    model: str | None
    dataset: str | None
    layer: int | None
    paper_mean: float
    paper_se: float | None = Field(description="Null where the paper gives none.")
    paper_n: int | None = Field(description="Runs behind the published value; null: not stated.")
    paper_resolution: float | None = Field(
        None, description="The unit of the last digit the paper prints its mean with (0.01 for 0.93); its "
                          "rounding counts in combined_se as resolution / sqrt(12).")
    mean: float | None = Field(description="This experiment's mean over runs; null: no value.")
    se: float | None = Field(description="Its standard error; null with one run.")
    n: int = Field(description="Runs behind it (runs at chance level are left out of what they cannot show).")
    difference: float | None = Field(None, description="mean - paper_mean.")
    combined_se: float | None = Field(
        None, description="Standard uncertainty of the difference: the run-to-run variance pooled over the "
                          "paper's runs and ours, times 1/paper_n + 1/n, and the paper's rounding.")
    df: float | None = Field(None, description="Welch-Satterthwaite degrees of freedom of combined_se.")
    t: float | None = Field(None, description="difference / combined_se (Student's t with df).")
    p: float | None = Field(None, description="Two-sided p-value of t.")
    ci_low: float | None = Field(None, description="Lower end of the difference's 95% confidence interval.")
    ci_high: float | None = Field(None, description="Upper end of the difference's 95% confidence interval.")
    relative_gap: float | None = Field(None, description="difference / |paper_mean|.")
    within_rounding: bool | None = Field(
        None, description="Whether mean lies inside the interval the paper's printed digits stand for.")
    z: float | None = Field(None, description="Schema 1.0-1.1 only: the former z score (now t).")
    verdict: Literal["consistent", "differs", "descriptive", "did not learn", "not comparable"] = Field(
        description="consistent / differs: p >= 0.05 / p < 0.05 (cells with a published error); descriptive: "
                    "the paper prints no error, no test; did not learn: every run at chance level; not "
                    "comparable: no value here."
    )
    note: str


# paper_comparison.json's own version: 1.1 added each cell's paper_resolution; 1.2
# replaced z by Student's t with df, p and the confidence interval, and added the
# descriptive and did-not-learn verdicts (1.0 and 1.1 documents still read).
PAPER_COMPARISON_SCHEMA_VERSION: Final = "1.2"


class PaperComparison(Document):
    """paper_comparison.json: every number of the paper against this experiment's."""

    schema_version: Literal["1.0", "1.1", "1.2"] = PAPER_COMPARISON_SCHEMA_VERSION  # type: ignore[assignment]  # a document widens the versions it reads
    experiment: str
    reproduction: bool = Field(description="True when no protocol setting differs from the paper's.")
    protocol: list[ProtocolDifference]
    open_choices: dict[str, Any] = Field(
        description="The experiment's value of each setting the paper does not give."
    )
    cells: list[CellComparison]
    summary: dict[str, int] = Field(description="Cells per verdict.")


# The tables an experiment's aggregation writes (tables/<name>.{json,md,csv}):
# the paper's Tables 1-3, then the other aggregates over runs; "unseen_class" only
# where the experiment has unseen-class runs, "sweep" only where it has a sweep.
PAPER_TABLES = ("table1", "table2", "table3")
# One sparseness table per measure of fflab.analysis.SPARSENESS_MEASURES (a test holds them together).
TABLES = PAPER_TABLES + ("sparseness_treves_rolls", "sparseness_hoyer", "sparseness_treves_rolls_of_class_mean",
                         "sparseness_hoyer_of_class_mean", "shared_units", "unseen_class", "sweep")


def finite_or_none(value: float) -> float | None:
    """A number for a document: JSON has no NaN or infinity, so those become null."""
    value = float(value)
    return value if math.isfinite(value) else None


def write_document(document: Document, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document.model_dump_json(indent=2) + "\n")


DocumentT = TypeVar("DocumentT", bound=Document)


def read_document(cls: type[DocumentT], path: Path) -> DocumentT:
    return cls.model_validate_json(path.read_text())
