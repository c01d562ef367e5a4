"""Request and response bodies of the API (the database models are in fflab.db)."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, create_model, model_validator

from fflab.results import RunEnsembles, RunMetrics, RunSharedUnits, RunWeightStats
from fflab.spec import PRESETS, ExperimentSpec, build_spec, validate_naming_nearest_fields

# "cancelling": experiments only, from their cancellation until their last running run stops.
Status = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
Visibility = Literal["private", "lab"]
MAX_TAGS, MAX_TAG_LENGTH = 16, 32
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
Priority = Literal["low", "normal", "high"]  # fflab.scheduling.PRIORITIES


def stored_status(value: str) -> Status:
    """A status column's value as the Literal: the database's status columns (plain
    strings there) hold only these values."""
    return cast(Status, value)


def stored_priority(value: str) -> Priority:
    """A priority column's value as the Literal (the columns hold only these)."""
    return cast(Priority, value)


def _preset_values(path: tuple[str, ...]) -> str:
    """'quick: 0.3, paper: 0.5': the value of a spec field in each preset."""
    values = []
    for preset in PRESETS:
        value: Any = build_spec(preset).model_dump(mode="json")
        for part in path:
            value = value[part]
        values.append(f"{preset}: {json.dumps(value)}")
    return ", ".join(values)


def overrides_model(model: type[BaseModel], path: tuple[str, ...] = ()) -> type[BaseModel]:
    """``model`` (a spec model of fflab.spec) with every field optional: a field left
    out keeps the preset's value. Types, bounds, enums and descriptions are the
    spec's own (one source of truth); each description also gives the presets'
    values. The spec's cross-field checks run on the merged spec (build_spec)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        field = copy.copy(info)
        field.default, field.default_factory = None, None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation = overrides_model(annotation, (*path, name))
        else:
            described = (info.description or "").rstrip()
            field.description = (f"{described} " if described else "") + f"Presets: {_preset_values((*path, name))}."
        fields[name] = (annotation, field)
    name = "".join(part.title() for part in path) or model.__name__.removesuffix("Spec")
    return create_model(f"{name}Overrides", __config__=model.model_config,
                        __doc__=f"{model.__doc__ or model.__name__} Every field optional: the preset's value "
                                "where left out.", **fields)


Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_LENGTH, pattern=TAG_PATTERN)]
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS, description=f"Labels to filter by (at most {MAX_TAGS}: "
                                                                   "letters, digits, '_', '.', ':', '-').")]


class ExperimentSubmit(overrides_model(ExperimentSpec)):  # type: ignore[misc]
    """``preset`` plus any fields of the spec as overrides (merged by
    fflab.spec.build_spec), or a complete spec without a preset. ``visibility`` and
    ``tags`` and ``priority`` are not part of the spec. Without ``name``, the experiment is named after
    what it runs and when (quick-ff.bp-mnist-s3-20261128T061500)."""

    preset: Literal[tuple(PRESETS)] | None = Field(  # type: ignore[valid-type]
        None, description="The preset the fields given override: quick (minutes on a CPU) or paper "
                          "(the paper's settings; hours on a GPU).")
    visibility: Visibility = Field("private", description="lab: every user may read and list it.")
    tags: Tags = []
    priority: Priority = Field(
        "normal", description="Goes ahead within the fair-share order (high counts its owner's usage at "
                              "half, low at double); at most the owner's max_priority (403 above).")

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_nearest_field(cls, data: Any, handler: ModelWrapValidatorHandler[ExperimentSubmit]
                                ) -> ExperimentSubmit:
        return validate_naming_nearest_fields(cls, data, handler)

    @model_validator(mode="after")
    def _preset_or_complete_spec(self) -> ExperimentSubmit:
        """Without a preset, every field of the spec must be given: an empty or partial
        body would otherwise train the defaults (the whole paper sweep)."""
        if self.preset is None:
            missing = [name for name in ExperimentSpec.model_fields if name not in self.model_fields_set]
            if missing:
                raise ValueError(
                    f"name a preset ({' or '.join(PRESETS)}) to start from, or give a complete spec "
                    f"(`fflab spec --preset paper` prints one); missing: {', '.join(missing)}"
                )
        return self

    def overrides(self) -> dict[str, Any]:
        """The spec fields given, nested (what build_spec merges over the preset)."""
        overrides: dict[str, Any] = self.model_dump(exclude_unset=True,
                                                    exclude={"preset", "visibility", "tags", "priority"})
        return overrides


SUBMIT_EXAMPLES = {
    **{name: {"summary": f"The {name} preset, as is",
              "description": ("The fields this preset sets over the spec's defaults (the paper's settings): "
                              + json.dumps({k: v for k, v in preset.items() if k != "name"})
                              if len(preset) > 1 else "The spec's defaults: the paper's settings."),
              "value": {"preset": name}}
       for name, preset in PRESETS.items()},
    "quick, overridden": {"summary": "The quick preset with a few fields overridden, shared with the lab",
                          "value": {"preset": "quick", "models": ["ff"], "ff": {"epochs": 3},
                                    "network": {"threshold": 0.5}, "data": {"train_subset": 2000},
                                    "visibility": "lab", "tags": ["threshold-sweep"]}},
}


class ExperimentPatch(BaseModel):
    """What may change after submission; fields left out are unchanged."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "theta-0.5",
                                                                               "tags": ["sweep"]}]})

    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    tags: Tags | None = Field(None, description="Replaces the tags.")
    visibility: Visibility | None = None


class Link(BaseModel):
    id: str
    url: str
    status: Status


class ExperimentCreated(Link):
    runs_total: int
    name: str


class RunningRun(BaseModel):
    run_id: str
    model: str
    layer: int | None = Field(description="Layer being trained (from 1); null when trained end to end.")
    layers: int | None
    epoch: int
    epochs: int
    eta_seconds: float | None = Field(description="Seconds to the run's estimated end: training, then evaluation "
                                                  "and analysis (estimated from the experiment's finished runs).")
    phase: Literal["training", "analysing"] = Field(
        "training", description="analysing: training has ended; the run is evaluated and analysed.")
    run_fraction_done: float | None = Field(
        None, description="The estimated share of the whole run done (training and analysis), 0-1.")
    heartbeat_age_seconds: float | None = Field(
        None, description="Seconds since the run's worker last reported on it; past "
                          "FFLAB_WORKER_HEARTBEAT_TIMEOUT_S its worker is taken for gone and the run is requeued.")


class Progress(BaseModel):
    runs_total: int
    runs_done: int = Field(description="Runs that ended: succeeded, failed or cancelled.")
    runs_by_status: dict[str, int]
    running: list[RunningRun] = []


class ExperimentTimings(BaseModel):
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queued_seconds: float | None = Field(description="From submission to the first run's start.")
    elapsed_seconds: float | None = Field(description="From the first run's start to the end (or now).")


class ExperimentSummary(BaseModel):
    id: str
    url: str
    name: str
    kind: Literal["training", "representations"] = Field(
        "training", description="training: a spec trained by fflab (POST /v1/experiments); representations: an "
                                "uploaded representations file, analysed (POST /v1/representations).")
    owner: str
    visibility: Visibility
    tags: list[str]
    status: Status
    error: str | None
    progress: Progress
    timings: ExperimentTimings


class QueuePlace(BaseModel):
    queue: str
    position: int = Field(description="1: the next of the queue to start (or handed to a worker already).")
    runs_ahead: int = Field(description="Waiting runs (of every user) that start before its next run.")
    estimated_start: datetime | None = Field(
        description="If nothing else is submitted: each busy slot frees after the queue's expected run "
                    "length (median of recent runs). Null when no worker serves the queue.")


class ResultsState(BaseModel):
    url: str = Field(description="GET it for results.json, a table, or Tables 1-3 as markdown.")
    partial: bool = Field(description="Of only some of its runs: the others were cancelled or failed "
                                      "(results.json's runs_missing says which, and why).")
    runs_included: int = Field(description="The runs aggregated: those that succeeded.")
    runs_total: int
    analysis_id: str | None = Field(description="The re-analysis they are of; null: the training's own aggregation.")


class Experiment(ExperimentSummary):
    priority: Priority
    queue: QueuePlace | None = Field(None, description="While a run of it waits: where it stands.")
    results: ResultsState | None = Field(
        None, description="Once its results are written: whether they are partial (a cancelled experiment, or "
                          "failed runs: of its succeeded runs only).")
    spec: dict[str, Any]


class ExperimentPage(BaseModel):
    items: list[ExperimentSummary]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")
    total: int = Field(description="Experiments matching the filters, over all pages.")


class Run(BaseModel):
    run_id: str
    model: str
    dataset: str
    seed: int
    unseen_class: int | None
    status: Status
    queue: str
    attempts: int
    progress: dict[str, Any] | None = Field(description="model, layer, epoch, ETA while running.")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None = Field(None, description="While running: its worker's last report on it.")
    heartbeat_age_seconds: float | None = Field(None, description="While running: seconds since heartbeat_at.")
    accuracy: float | None
    code_version: dict[str, Any] | None = Field(
        None, description="What trained it: fflab, git_commit (where known), torch, numpy, python, device.")


class RunDetail(Run):
    record: dict[str, Any] | None = Field(description="The run's summary record (input of the tables).")
    metrics: RunMetrics | None


class RunList(BaseModel):
    items: list[Run]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")
    experiment_status: Status = Field(description="While queued or running, more items may come.")


class DocumentOut(BaseModel):
    name: str = Field(description="A run document of fflab.pipeline.documents.RUN_DOCUMENTS.")
    description: str
    available: bool = Field(description="Whether the run has it (an analysed run has them all).")
    url: str


class DocumentList(BaseModel):
    items: list[DocumentOut]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")


class EnsemblesOut(BaseModel):
    """Per run, its ensembles.json document restricted to the filters."""

    experiment_id: str
    experiment_status: Status = Field(description="While queued or running, more items may come.")
    quantiles: list[float] = Field(description="The Method 1 quantiles computed (filter values of quantile).")
    runs: list[RunEnsembles]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")


class SharedUnitsOut(BaseModel):
    experiment_id: str
    experiment_status: Status = Field(description="While queued or running, more items may come.")
    runs: list[RunSharedUnits]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")


class WeightsOut(BaseModel):
    experiment_id: str
    experiment_status: Status = Field(description="While queued or running, more items may come.")
    runs: list[RunWeightStats]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")


class ArtifactOut(BaseModel):
    name: str = Field(description="What this collection's GET /{name} takes (figures: figure1a.png; "
                                  "artifacts: figures/figure1a.png, runs/<run_id>/weights.pt).")
    url: str
    size: int
    sha256: str
    content_type: str


class ArtifactList(BaseModel):
    items: list[ArtifactOut]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")
    experiment_status: Status = Field(description="While queued or running, more items may come.")


class AnalysisOut(BaseModel):
    id: str
    experiment_id: str
    url: str
    results_url: str | None = Field(None, description="Once it succeeded: its own results, kept after later "
                                                       "re-analyses (the experiment's results are the latest's).")
    status: Status
    spec: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AnalysisList(BaseModel):
    items: list[AnalysisOut]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Literal["admin", "member"]
    share_weight: float = Field(description="Fair share: the user's usage counts divided by this.")
    max_priority: Priority = Field(description="The highest priority the user's experiments may ask for.")
    created_at: datetime


class UserList(BaseModel):
    items: list[UserOut]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")


class KeyOut(BaseModel):
    """An API key as listed: never the key itself."""

    model_config = ConfigDict(from_attributes=True)

    prefix: str = Field(description="The key's first 14 characters (what revocation takes).")
    created_at: datetime
    revoked_at: datetime | None
    current: bool = Field(False, description="The key this request was made with.")


class KeyList(BaseModel):
    items: list[KeyOut]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")


class KeyRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revoke_current: bool = Field(True, description="Revoke the key this request is made with.")


class LossSeries(BaseModel):
    layer: int | None = Field(description="The hidden layer (from 1) of a model trained layer by layer (FF); "
                                          "null for a network trained in one stage (BP/FF, BP, a one-layer FF).")
    epochs: list[int] = Field(description="1, 2, ...: the epoch of each loss.")
    loss: list[float] = Field(description="Training loss at the end of each epoch.")
    recorded_at: list[datetime] | None = Field(
        None, description="When the worker reported each loss (null for runs trained before it reported them).")


class RunMetricsOut(BaseModel):
    """A run's training history and measured accuracy: while it trains, the losses
    its worker has reported so far; once it has succeeded, its metrics.json."""

    run_id: str
    model: str
    dataset: str
    seed: int
    unseen_class: int | None
    status: Status
    loss: list[LossSeries] = Field(description="The losses at positions since..next_since-1, per stage.")
    accuracy: float | None = Field(description="Test accuracy after training (the only accuracy measured); "
                                               "null until the run has succeeded.")
    per_class_accuracy: list[float | None] | None
    n_train: int | None
    n_test: int | None
    train_seconds: float | None
    since: int = Field(0, description="The first position given (the query's since).")
    next_since: int = Field(0, description="Pass it as since to get only the losses reported after these "
                                           "(positions count every epoch of every stage, the stages in order).")
    final: bool = Field(False, description="The run has ended: no more losses will come.")


class RunLogOut(BaseModel):
    """What the worker logged while it held the run: its records and warnings, the
    traceback of a failure; API keys, secrets and URL passwords redacted."""

    run_id: str
    status: Status
    text: str = Field(description="The log, UTF-8; when longer than FFLAB_RUN_LOG_MAX_BYTES, its first and last "
                                  "halves with a line saying how much was cut.")
    dropped_bytes: int = Field(description="Bytes cut from the middle (0: the whole log).")
    updated_at: datetime | None = Field(description="Its last write; null when the run has not started.")
    final: bool = Field(description="The run has ended: the log is complete.")


class UserShareUpdate(BaseModel):
    """What an admin sets of a user's fair share; fields left out are unchanged."""

    model_config = ConfigDict(extra="forbid")

    share_weight: float | None = Field(None, gt=0, le=1000, allow_inf_nan=False)
    max_priority: Priority | None = None


class QueueUser(BaseModel):
    name: str
    share_weight: float
    max_priority: Priority
    usage_seconds: float = Field(description="Run-time on the queue, decayed with FFLAB_FAIR_SHARE_HALF_LIFE_S.")
    share: float = Field(description="Its fraction of all users' usage.")
    target_share: float = Field(description="Its weight over the weights of users with usage or waiting runs.")
    running: int
    waiting: int
    oldest_wait_seconds: float | None


class QueuedExperiment(BaseModel):
    id: str
    name: str
    owner: str
    priority: Priority
    position: int
    runs_waiting: int
    estimated_start: datetime | None


class QueueOut(BaseModel):
    queue: str
    slots: int = Field(description="Runs the live workers of this queue take at once.")
    free_slots: int
    running_cap: int = Field(description="Most runs one user may have running (FFLAB_MAX_RUNNING_FRACTION).")
    expected_run_seconds: float
    users: list[QueueUser]
    experiments: list[QueuedExperiment] = Field(description="Active experiments with waiting runs, in queue order.")


class QueuesOut(BaseModel):
    queues: list[QueueOut]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    role: Literal["admin", "member"] = "member"


class NewKey(BaseModel):
    user: UserOut
    api_key: str = Field(description="Shown once; only its hash is stored.")


class WorkerGpu(BaseModel):
    """A GPU held by a live worker."""

    worker: str = Field(description="The worker's Celery node name.")
    hostname: str
    slots: int = Field(description="Runs the worker trains at once (FFLAB_RUNS_PER_GPU for a GPU worker).")
    index: int | None = Field(description="The GPU's index as nvidia-smi numbers it on its host.")
    name: str
    total_memory_bytes: int


class DiskSpace(BaseModel):
    """A folder of the API's machine the service writes to (one per file system)."""

    path: str
    free_bytes: int
    min_free_bytes: int = Field(description="FFLAB_MIN_FREE_DISK_BYTES: below it, /readyz answers 503.")
    write: str = Field(description="'ok', or why a small write (written, fsynced, removed) failed.")


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
    gpus: list[WorkerGpu] = Field(default_factory=list, description="The GPUs the live workers hold.")
    disk: dict[str, DiskSpace] = Field(default_factory=dict, description=(
        "Free space of the var dir, the temporary folder and the local artifact folder, by role."))


class UsageOut(BaseModel):
    """A user's storage and compute against this server's per-user limits (fflab.usage)."""

    user: str
    stored_bytes: int = Field(description="The user's experiments' stored artifacts (runs' files, tables, figures).")
    pending_bytes: int = Field(description="Estimated bytes their waiting and running runs will still store.")
    storage_quota_bytes: int | None = Field(
        description="FFLAB_STORAGE_QUOTA_BYTES_PER_USER; null: no quota. A submission that would take "
                    "stored + pending + its estimate over it is refused (429).")
    active_runs: int = Field(description="Runs waiting or running.")
    active_run_hours: float = Field(description="Their estimated run-hours (fflab.usage.estimate_run_seconds).")
    max_active_run_hours: float | None = Field(
        description="FFLAB_MAX_QUEUED_RUN_HOURS_PER_USER; null: no limit. A submission that would take "
                    "active_run_hours over it is refused (429).")


class UsageList(BaseModel):
    items: list[UsageOut]
    next_page_token: str | None = Field(description="Pass it as page_token for the next page; null on the last.")
