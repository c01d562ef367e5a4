"""SQLAlchemy models of the service: users and keys, experiments and their runs,
results, ensembles, analyses and stored artifacts.

Statuses are plain strings (``STATUSES``); timestamps are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# An experiment is "cancelling" from its cancellation until its last running run has
# stopped; runs and analyses never are (fflab.jobs).
STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "running")
ROLES = ("admin", "member")
VISIBILITIES = ("private", "lab")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, also on SQLite (which returns naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Fair share (fflab.scheduling), set by an admin: the user's usage counts divided
    # by this weight; the highest priority their experiments may ask for.
    share_weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    max_priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")

    keys: Mapped[list[ApiKey]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The first characters of the token, shown in listings and accepted by revoke.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="keys")


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (Index(None, "owner_id", "status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(64))
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # The effective spec; a re-analysis replaces its "analysis" part.
    spec: Mapped[dict[str, Any]]
    runs_total: Mapped[int] = mapped_column(Integer)
    # low, normal or high (fflab.scheduling.PRIORITIES), at most the owner's max_priority.
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    aggregation_queued_at: Mapped[datetime | None]

    owner: Mapped[User] = relationship()
    runs: Mapped[list[Run]] = relationship(
        back_populates="experiment", cascade="all, delete-orphan", passive_deletes=True,
        order_by="Run.id",
    )


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("experiment_id", "run_id"),
        Index(None, "status", "queue"),
        Index(None, "finished_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int]
    unseen_class: Mapped[int | None]
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # Set when the run is handed to the broker; null while it waits for its turn.
    task_id: Mapped[str | None] = mapped_column(String(64))
    dispatched_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Refreshed by the worker while the run is running; a stale one means its worker
    # is gone (the sweep requeues the run).
    heartbeat_at: Mapped[datetime | None]
    # The worker (Worker.id) whose delivery holds the run while it is running.
    worker_id: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[dict[str, Any] | None]
    # Fair share: the run-time of its earlier deliveries (preempted, or lost with
    # their worker), counted as usage as if it ended at ``earlier_until``; when the
    # dispatcher asked it to stop at its next checkpoint (preemption), and how many
    # times it was preempted.
    earlier_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    earlier_until: Mapped[datetime | None]
    preempt_requested_at: Mapped[datetime | None]
    preemptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The run's documents (fflab.results): its summary record, metrics.json,
    # ensembles.json without the ensembles (rows of Ensemble), shared_units.json
    # and weight_stats.json.
    record: Mapped[dict[str, Any] | None]
    metrics: Mapped[dict[str, Any] | None]
    ensemble_summary: Mapped[dict[str, Any] | None]
    shared_units: Mapped[dict[str, Any] | None]
    weight_stats: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # What trained it (fflab.versions.code_version): fflab, git commit, torch, numpy,
    # Python and the device; set when a delivery starts training.
    code_version: Mapped[dict[str, Any] | None]

    experiment: Mapped[Experiment] = relationship(back_populates="runs")


class RunLoss(Base):
    """One epoch's training loss of a run, written by its worker while it trains (in
    batches at FFLAB_PROGRESS_INTERVAL_S). ``position`` orders a run's points (0, 1,
    ...: the stages one after the other, e.g. FF's layers); a delivery that trains
    again from an earlier point (a checkpoint, or the start) replaces the points from
    there. ``stage`` is the layer (from 1) of a model trained layer by layer, null
    for one trained end to end."""

    __tablename__ = "run_losses"

    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunLog(Base):
    """What the worker logged while it held a run (its records and warnings, and the
    traceback of a failure), keys and secrets redacted, capped at FFLAB_RUN_LOG_MAX_BYTES
    (its head and tail kept; ``dropped_bytes`` says how much was cut between)."""

    __tablename__ = "run_logs"

    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    text: Mapped[str] = mapped_column(Text, default="")
    dropped_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Result(Base):
    """The aggregated tables of an experiment (one row, replaced by re-analyses; each
    re-analysis keeps its own on its Analysis row)."""

    __tablename__ = "results"

    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    analysis_id: Mapped[str | None] = mapped_column(String(32))
    tables: Mapped[dict[str, Any]]
    results: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Ensemble(Base):
    """One ensemble: a run's units of one class in one layer found by one method
    (an EnsembleRecord of the run's ensembles.json)."""

    __tablename__ = "ensembles"
    __table_args__ = (Index(None, "experiment_id", "model", "dataset", "layer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int]
    unseen_class: Mapped[int | None]
    layer: Mapped[int]
    class_index: Mapped[int] = mapped_column("class", Integer)
    class_name: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))
    quantile: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    epsilon: Mapped[float | None] = mapped_column(Float)
    rho_cut: Mapped[float | None] = mapped_column(Float)
    nh_cut: Mapped[float | None] = mapped_column(Float)
    n_images: Mapped[int]
    size: Mapped[int]
    units: Mapped[list[int]] = mapped_column(JSON)


class Analysis(Base):
    """A re-analysis of stored representations with another AnalysisSpec: a version
    of the experiment's results, kept (``results``, ``tables``) after later ones."""

    __tablename__ = "analyses"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Once it succeeded: its results.json and tables, as the Result row held them then.
    results: Mapped[dict[str, Any] | None]
    tables: Mapped[dict[str, Any] | None]


class Worker(Base):
    """A worker process while it lives: registered when it starts, its heartbeat
    refreshed by a thread, deleted when it stops (or, once stale, by the sweep)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # one per process start
    name: Mapped[str] = mapped_column(String(255), index=True)  # the Celery node name
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    queues: Mapped[str] = mapped_column(String(255))  # comma-separated queue names
    # Runs it takes at once (its pool's concurrency; a GPU worker's FFLAB_RUNS_PER_GPU):
    # its slots in fair-share dispatch.
    concurrency: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # The GPUs it holds (fflab.gpu.DeviceInfo.as_dict() each; empty for a CPU worker).
    devices: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """A file in artifact storage; ``name`` is relative to the experiment."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ExperimentTag(Base):
    """A label its owner put on an experiment (to filter lists by); deleted with it."""

    __tablename__ = "experiment_tags"

    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)


class UiSession(Base):
    """A web UI sign-in (api.ui.security): the browser's cookie holds a random id,
    this row its sha256. Signing out deletes it; it ends with the key it was opened
    with (revoked: the join in ``ui_session_user`` no longer finds it) and at
    ``expires_at``."""

    __tablename__ = "ui_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` of POST /v1/experiments: the experiment the first
    request with it created, and the sha256 of that request's body, for 24 h."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    body_sha256: Mapped[str] = mapped_column(String(64))
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    response: Mapped[dict[str, Any]]  # the body the first request was answered with
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
