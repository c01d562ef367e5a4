"""Request and response bodies of the API (the database models are in fflab.db)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fflab.results import RunEnsembles, RunMetrics, RunSharedUnits, RunWeightStats
from fflab.spec import PRESETS, ExperimentSpec

# "cancelling": experiments only, from their cancellation until their last running run stops.
Status = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
Visibility = Literal["private", "lab"]
Priority = Literal["low", "normal", "high"]  # fflab.scheduling.PRIORITIES


class ExperimentSubmit(BaseModel):
    """A full ExperimentSpec, or ``preset`` plus any spec fields as overrides
    (merged by fflab.spec.build_spec). ``visibility`` is not part of the spec."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"preset": "quick"},
                {"preset": "quick", "models": ["ff"], "ff": {"epochs": 3}, "visibility": "lab"},
            ]
        },
    )

    preset: str | None = Field(None, description="A preset name: quick or paper.")
    visibility: Visibility = Field("private", description="lab: every user may read it.")
    priority: Priority = Field(
        "normal", description="Goes ahead within the fair-share order (high counts its owner's usage at "
                              "half, low at double); at most the owner's max_priority (403 above).")

    @model_validator(mode="after")
    def _preset_or_complete_spec(self) -> ExperimentSubmit:
        """Without a preset, every field of the spec must be given: an empty or partial
        body would otherwise train the defaults (the whole paper sweep)."""
        if self.preset is None:
            missing = [name for name in ExperimentSpec.model_fields if name not in (self.model_extra or {})]
            if missing:
                raise ValueError(
                    f"name a preset ({' or '.join(PRESETS)}) to start from, or give a complete spec "
                    f"(`fflab spec --preset paper` prints one); missing: {', '.join(missing)}"
                )
        return self


class Link(BaseModel):
    id: str
    url: str
    status: Status


class ExperimentCreated(Link):
    runs_total: int


class RunningRun(BaseModel):
    run_id: str
    model: str
    layer: int | None = Field(description="Layer being trained (from 1); null when trained end to end.")
    layers: int | None
    epoch: int
    epochs: int
    eta_seconds: float | None = Field(description="Estimated when the progress was reported.")
    heartbeat_age_seconds: float | None = Field(
        None, description="Seconds since the run's worker last reported on it; past "
                          "FFLAB_WORKER_HEARTBEAT_TIMEOUT_S its worker is taken for gone and the run is requeued.")


class Progress(BaseModel):
    runs_total: int
    runs_done: int = Field(description="Runs that ended: succeeded, failed or cancelled.")
    runs_by_status: dict[str, int]
    running: list[RunningRun] = []


class Timings(BaseModel):
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queued_seconds: float | None = Field(description="From submission to the first run's start.")
    elapsed_seconds: float | None = Field(description="From the first run's start to the end (or now).")


class ExperimentSummary(BaseModel):
    id: str
    url: str
    name: str
    owner: str
    visibility: Visibility
    status: Status
    error: str | None
    progress: Progress
    timings: Timings


class QueuePlace(BaseModel):
    queue: str
    position: int = Field(description="1: the next of the queue to start (or handed to a worker already).")
    runs_ahead: int = Field(description="Waiting runs (of every user) that start before its next run.")
    estimated_start: datetime | None = Field(
        description="If nothing else is submitted: each busy slot frees after the queue's expected run "
                    "length (median of recent runs). Null when no worker serves the queue.")


class Experiment(ExperimentSummary):
    priority: Priority
    queue: QueuePlace | None = Field(None, description="While a run of it waits: where it stands.")
    spec: dict[str, Any]


class ExperimentPage(BaseModel):
    items: list[ExperimentSummary]
    total: int
    limit: int
    offset: int


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


class RunDetail(Run):
    record: dict[str, Any] | None = Field(description="The run's summary record (input of the tables).")
    metrics: RunMetrics | None


class RunList(BaseModel):
    items: list[Run]


class DocumentOut(BaseModel):
    name: str = Field(description="A run document of fflab.pipeline.documents.RUN_DOCUMENTS.")
    description: str
    available: bool = Field(description="Whether the run has it (an analysed run has them all).")
    url: str


class DocumentList(BaseModel):
    items: list[DocumentOut]


class EnsemblesOut(BaseModel):
    """Per run, its ensembles.json document restricted to the filters."""

    experiment_id: str
    runs: list[RunEnsembles]


class SharedUnitsOut(BaseModel):
    experiment_id: str
    runs: list[RunSharedUnits]


class WeightsOut(BaseModel):
    experiment_id: str
    runs: list[RunWeightStats]


class ArtifactOut(BaseModel):
    name: str
    url: str
    size: int
    sha256: str
    content_type: str


class ArtifactList(BaseModel):
    items: list[ArtifactOut]


class AnalysisOut(BaseModel):
    id: str
    experiment_id: str
    url: str
    status: Status
    spec: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AnalysisList(BaseModel):
    items: list[AnalysisOut]


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Literal["admin", "member"]
    share_weight: float = Field(description="Fair share: the user's usage counts divided by this.")
    max_priority: Priority = Field(description="The highest priority the user's experiments may ask for.")
    created_at: datetime


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


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
    gpus: list[WorkerGpu] = Field(default_factory=list, description="The GPUs the live workers hold.")
