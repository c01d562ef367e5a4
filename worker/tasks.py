"""Celery tasks: one per run, one aggregation per experiment, one per re-analysis.

Each task trains or analyses in a temporary folder laid out like a results folder
(fflab.results), then copies the files to artifact storage and their documents to
the database. The database is the source of truth: a task whose run or experiment
was cancelled or deleted meanwhile ends without effect.
"""

from __future__ import annotations

import json
import logging
import math
import mimetypes
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Task
from sqlalchemy import delete, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from fflab import jobs, runner
from fflab.db import (
    ACTIVE_STATUSES,
    Analysis,
    Artifact,
    Ensemble,
    Experiment,
    Result,
    Run,
    get_sessionmaker,
    session_scope,
    utcnow,
)
from fflab.models.common import Cancelled, FileCheckpoint, TrainingProgress, describe_resume_point
from fflab.processes import process_alive
from fflab.settings import Settings, get_settings
from fflab.spec import AnalysisSpec, ExperimentSpec, RunKey
from fflab.storage import Storage, StorageError, StoredObject, experiment_prefix, get_storage
from worker import gpu_runs
from worker.celery_app import (
    AGGREGATE_TASK,
    ANALYSIS_ID_PREFIX,
    ANALYSIS_TASK,
    RUN_TASK,
    app,
    dispatcher,
    experiment_of_aggregate_task,
    redis_task_ids,
    subject_of_task,
)

log = logging.getLogger(__name__)

# Infrastructure errors worth another delivery; anything else fails the run at once.
TRANSIENT = (OperationalError, StorageError, ConnectionError)
DOCUMENT_COLUMNS = {
    "metrics.json": "metrics",
    "shared_units.json": "shared_units",
    "weight_stats.json": "weight_stats",
}
RUN_JSON_FILES = tuple(name for name in runner.RUN_FILES if name.endswith(".json"))
CONTENT_TYPES = {".md": "text/markdown", ".csv": "text/csv", ".json": "application/json"}


def database_url() -> str:
    return get_settings().resolved_database_url


def dispatch_waiting() -> None:
    with get_sessionmaker(database_url())() as session:  # dispatch commits on its own
        jobs.dispatch(session, get_settings(), dispatcher)


def send_aggregation(experiment_id: str) -> None:
    try:
        dispatcher.send_aggregate(experiment_id, get_settings().queue_name("cpu"))
    except Exception:
        with session_scope(database_url()) as session:  # the sweep sends it again
            experiment = session.get(Experiment, experiment_id)
            if experiment is not None:
                experiment.aggregation_queued_at = None
        raise


def requeue_lost() -> None:
    """Runs whose worker vanished (stale heartbeat) and, on Redis, runs and
    aggregations whose messages the broker lost, back to waiting for a send."""
    settings = get_settings()
    with get_sessionmaker(database_url())() as session:  # these commit on their own
        requeued, failed = jobs.reap_lost_runs(session, settings)
    if requeued or failed:
        log.warning("sweep: %d runs lost their worker and were requeued, %d failed for good", requeued, failed)
    in_broker = redis_task_ids(settings.resolved_broker_url,
                               [settings.queue_name(kind) for kind in ("cpu", "gpu")])
    if in_broker is None:
        return
    with get_sessionmaker(database_url())() as session:
        runs = jobs.requeue_lost_messages(session, settings, in_broker)
        aggregations = jobs.requeue_lost_aggregations(
            session, settings, {experiment_of_aggregate_task(task_id) for task_id in in_broker} - {None})
        analyses = jobs.lost_analyses(
            session, settings, {subject_of_task(ANALYSIS_ID_PREFIX, task_id) for task_id in in_broker} - {None})
    for analysis_id in analyses:
        dispatcher.send_analysis(analysis_id, settings.queue_name("cpu"))
    if runs or aggregations or analyses:
        log.warning("sweep: the broker lost %d runs, %d aggregations and %d analyses; sending them again",
                    runs, aggregations, len(analyses))


def sweep() -> None:
    """What a lost worker, a lost broker message or a failed send left behind:
    running runs without a heartbeat, waiting runs, unsent aggregations."""
    requeue_lost()
    dispatch_waiting()
    with session_scope(database_url()) as session:
        experiment_ids = jobs.unsent_aggregations(session)
    for experiment_id in experiment_ids:
        send_aggregation(experiment_id)


def sweep_forever() -> None:
    while True:
        try:
            sweep()
        except Exception:
            log.warning("sweep failed; retrying in %s s", get_settings().sweep_interval_s, exc_info=True)
        time.sleep(get_settings().sweep_interval_s)


class WorkerPresence:
    """This worker process in the ``workers`` table: registered as it starts, its
    heartbeat refreshed by a thread (four beats per FFLAB_WORKER_HEARTBEAT_TIMEOUT_S),
    deleted as it stops. /readyz counts the workers heard from; the sweep requeues
    the running runs of a worker gone silent. Registering first forgets earlier
    workers of the same node name on this host whose process is gone (a worker
    killed and started again): their running runs are requeued at once."""

    def __init__(self, settings: Settings, name: str, queues: list[str], slots: int = 1):
        self.settings, self.name, self.queues, self.slots = settings, name, queues, slots
        self.devices = gpu_runs.worker_devices(settings, queues)
        self.id, self.hostname, self.pid = jobs.new_id(), socket.gethostname(), os.getpid()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="fflab-worker-heartbeat", daemon=True)

    def _register(self) -> None:
        with session_scope(database_url()) as session:
            jobs.register_worker(session, self.id, self.name, self.hostname, self.pid, self.queues,
                                 self.slots, self.devices)

    def start(self) -> None:
        with get_sessionmaker(database_url())() as session:  # forget_worker commits
            for earlier in jobs.workers_named(session, self.name, self.hostname):
                if earlier.pid == self.pid or not process_alive(earlier.pid):
                    requeued, failed = jobs.forget_worker(
                        session, self.settings, earlier.id, f"its worker {self.name} (pid {earlier.pid}) ended")
                    log.warning("worker %s (pid %d) had ended: %d runs it held were requeued, %d failed for good",
                                self.name, earlier.pid, requeued, failed)
        self._register()
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(heartbeat_interval(self.settings.worker_heartbeat_timeout_s)):
            try:
                with session_scope(database_url()) as session:
                    found = jobs.beat_worker(session, self.id)
                if not found:  # taken for dead while silent (its runs were requeued)
                    log.warning("worker %s was taken for gone; registering again", self.name)
                    self._register()
            except Exception:  # the database is down: the next beat tries again
                log.warning("heartbeat of worker %s failed", self.name, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        with get_sessionmaker(database_url())() as session:
            jobs.forget_worker(session, self.settings, self.id, f"its worker {self.name} stopped")


presence: WorkerPresence | None = None  # this worker process's (its pool children inherit it)


def start_presence(name: str, queues: list[str], slots: int = 1) -> None:
    global presence
    presence = WorkerPresence(get_settings(), name, queues, slots)
    presence.start()


def stop_presence() -> None:
    if presence is not None:
        try:
            presence.stop()
        except Exception:  # the sweep forgets it once its heartbeat is stale
            log.warning("could not unregister worker %s", presence.name, exc_info=True)


class RunOutcomeLogFilter(logging.Filter):
    """Drops Celery's "Task fflab.run[...] succeeded" line: it means the task
    returned, whatever the run's outcome (cancelled runs included); run_task logs
    the run's outcome itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, dict) else {}
        return not (args.get("name") == RUN_TASK and "succeeded in" in str(record.msg))


class NonFiniteLoss(ArithmeticError):
    """Training diverged: the loss is NaN or infinite. Fails the run (not retried)."""


def check_loss(event: TrainingProgress) -> None:
    loss = event.loss
    if loss is None or math.isfinite(loss):
        return
    what = "NaN" if math.isnan(loss) else "infinite"
    where = f"layer {event.layer + 1} epoch {event.epoch}" if event.layer is not None else f"epoch {event.epoch}"
    raise NonFiniteLoss(f"{event.model}: loss became {what} at {where}; lower the learning rate or check the data")


class ProgressWriter:
    """TrainingProgress -> the run's progress column, at most every
    ``interval`` seconds, with an ETA from the elapsed time and the fraction done."""

    def __init__(self, run_pk: int, interval: float):
        self.run_pk, self.interval = run_pk, interval
        self.started = time.monotonic()
        self.last_write = float("-inf")
        self.resumed_from: str | None = None  # set when training resumed from a checkpoint

    def __call__(self, event: TrainingProgress) -> None:
        check_loss(event)
        now = time.monotonic()
        if now - self.last_write < self.interval:
            return
        self.last_write = now
        if event.layer is None:
            done = event.epoch / event.epochs
        else:
            done = (event.layer * event.epochs + event.epoch) / ((event.layers or 1) * event.epochs)
        elapsed = now - self.started
        progress = {
            "model": event.model,
            "layer": None if event.layer is None else event.layer + 1,
            "layers": event.layers,
            "epoch": event.epoch,
            "epochs": event.epochs,
            "loss": event.loss,
            "fraction_done": round(done, 4),
            "eta_seconds": round(elapsed * (1 - done) / done, 1) if done > 0 else None,
        }
        if self.resumed_from is not None:
            progress["resumed_from"] = self.resumed_from
        with session_scope(database_url()) as session:
            run = session.get(Run, self.run_pk)
            if run is not None and run.status == "running":
                run.progress, run.heartbeat_at = progress, utcnow()


class Heartbeat:
    """Refreshes the run's heartbeat_at every ``interval`` s while the task holds the
    run (training, evaluation, uploads), from a thread: a stale heartbeat tells the
    sweep that the worker is gone. Bounded: stops with the task."""

    def __init__(self, run_pk: int, task_id: str, interval: float):
        self.run_pk, self.task_id, self.interval = run_pk, task_id, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"fflab-heartbeat-{run_pk}", daemon=True)

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with session_scope(database_url()) as session:
                    session.execute(update(Run).where(Run.id == self.run_pk, Run.status == "running",
                                                     Run.task_id == self.task_id)
                                    .values(heartbeat_at=utcnow()))
            except Exception:  # the database is down: the next beat tries again
                log.warning("heartbeat of run %s failed", self.run_pk, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


class StopCheck:
    """should_stop for the runner: reads the run's status, at most every ``interval`` s.
    True once the run is cancelled, or requeued (as lost) for another task."""

    def __init__(self, run_pk: int, task_id: str, interval: float):
        self.run_pk, self.task_id, self.interval = run_pk, task_id, interval
        self.last_check = float("-inf")
        self.stop = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.stop and now - self.last_check >= self.interval:
            self.last_check = now
            with session_scope(database_url()) as session:
                self.stop = jobs.should_stop(session, self.run_pk, self.task_id)
        return self.stop


def checkpoint_key(experiment_id: str, run_id: str) -> str:
    return f"{experiment_prefix(experiment_id)}/runs/{run_id}/checkpoint.pt"


class StoredCheckpoint:
    """The run's training checkpoint (fflab.models.common.Checkpoint): a file in the
    task's temporary folder, copied to artifact storage at every save so that any
    worker that gets the run again resumes from it. Best effort: a checkpoint that
    cannot be fetched, read or stored costs retraining, never the run."""

    def __init__(self, storage: Storage, experiment_id: str, key: RunKey, path: Path,
                 progress: ProgressWriter | None = None):
        self.storage, self.experiment_id, self.run_key = storage, experiment_id, key
        self.key = checkpoint_key(experiment_id, key.run_id)
        self.file, self.progress = FileCheckpoint(path), progress

    def fetch(self) -> bool:
        """Download the stored checkpoint, if any (at the start of a delivery)."""
        try:
            if not self.storage.exists(self.key):
                return False
            self.storage.download(self.key, self.file.path)
            return True
        except Exception:
            log.warning("run %s of experiment %s: could not fetch its checkpoint; training from the start",
                        self.run_key.run_id, self.experiment_id, exc_info=True)
            self.file.path.unlink(missing_ok=True)
            return False

    def load(self) -> dict[str, Any] | None:
        try:
            state = self.file.load()
        except Exception:
            log.warning("run %s of experiment %s: its checkpoint is unreadable; training from the start",
                        self.run_key.run_id, self.experiment_id, exc_info=True)
            return None
        if state is not None and state.get("trainer") == self.run_key.model:
            where = describe_resume_point(state)
            log.info("resumed run %s of experiment %s from %s", self.run_key.run_id, self.experiment_id, where)
            if self.progress is not None:
                self.progress.resumed_from = where
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.file.save(state)
        try:
            self.storage.put_file(self.key, self.file.path)
        except Exception:
            log.warning("run %s of experiment %s: could not store its checkpoint", self.run_key.run_id,
                        self.experiment_id, exc_info=True)


def delete_checkpoint(experiment_id: str, run_id: str) -> None:
    try:
        get_storage(get_settings()).delete(checkpoint_key(experiment_id, run_id))
    except Exception:  # deleted with the experiment at the latest
        log.warning("could not delete the checkpoint of run %s of experiment %s", run_id, experiment_id,
                    exc_info=True)


@dataclass(frozen=True)
class StoredFile:
    name: str
    stored: StoredObject
    content_type: str


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def put_files(storage: Storage, experiment_id: str, base: Path, names: list[str]) -> list[StoredFile]:
    """Copy ``base/<name>`` to storage (before any database transaction: uploads can be slow)."""
    prefix = experiment_prefix(experiment_id)
    return [
        StoredFile(name, storage.put_file(f"{prefix}/{name}", base / name), content_type(base / name))
        for name in names
    ]


class ArtifactsNotStored(RuntimeError):
    """Every try to upload a run's artifacts failed (storage unreachable)."""


def put_files_retrying(storage: Storage, experiment_id: str, base: Path, names: list[str],
                       attempts: int, backoff_s: float) -> list[StoredFile]:
    """put_files, tried ``attempts`` times with exponential backoff (backoff_s, 2x, 4x, ...).
    Each try uploads every file again (a put is idempotent), so a success stores them all."""
    for attempt in range(1, attempts + 1):
        try:
            return put_files(storage, experiment_id, base, names)
        except (StorageError, ConnectionError, OSError) as error:
            if attempt == attempts:
                raise ArtifactsNotStored(
                    f"could not store artifacts: {attempts} tries failed on {storage.describe()}; "
                    f"last error: {error}"
                ) from error
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning("upload of %d artifacts of experiment %s failed (try %d of %d); retrying in %.1f s: %s",
                        len(names), experiment_id, attempt, attempts, wait, error)
            time.sleep(wait)
    raise AssertionError("unreachable")


def record_artifacts(session: Session, experiment_id: str, files: list[StoredFile]) -> None:
    for file in files:
        artifact = session.scalar(
            select(Artifact).where(Artifact.experiment_id == experiment_id, Artifact.name == file.name)
        )
        if artifact is None:
            artifact = Artifact(experiment_id=experiment_id, name=file.name)
            session.add(artifact)
        artifact.key, artifact.size, artifact.sha256 = file.stored.key, file.stored.size, file.stored.sha256
        artifact.content_type, artifact.created_at = file.content_type, utcnow()


def files_under(folder: Path, base: Path) -> list[str]:
    return sorted(p.relative_to(base).as_posix() for p in folder.rglob("*") if p.is_file())


def store_run_documents(session: Session, run: Run, run_dir: Path, record: dict[str, Any]) -> None:
    """The run's JSON documents into its row, its ensembles into Ensemble rows."""
    run.record = record
    for file_name, column in DOCUMENT_COLUMNS.items():
        setattr(run, column, json.loads((run_dir / file_name).read_text()))
    ensembles = json.loads((run_dir / "ensembles.json").read_text())
    records = ensembles.pop("ensembles")
    run.ensemble_summary = ensembles
    session.execute(delete(Ensemble).where(Ensemble.experiment_id == run.experiment_id, Ensemble.run_id == run.run_id))
    session.add_all(
        Ensemble(
            experiment_id=run.experiment_id, run_id=run.run_id, model=run.model, dataset=run.dataset,
            seed=run.seed, unseen_class=run.unseen_class, **item,
        )
        for item in records
    )


def end_run(run_pk: int, status: str, error: str | None = None, task_id: str | None = None) -> None:
    """finish_run, then the aggregation if it was the last, then refill the queue.
    A run already final is left as it is (a task giving up after its run ended), and
    so is a run now held by another task than ``task_id`` (the sweep requeued it while
    this task was thought lost: the newer delivery ends it). Once
    the run's end is committed, a broker that cannot be reached does not fail the
    task: the sweep sends the aggregation and the waiting runs later."""
    with session_scope(database_url()) as session:
        run = session.get(Run, run_pk)  # finish_run locks the experiment first, then writes the run
        aggregate_id, ended = None, None
        if run is not None and (task_id is None or run.task_id == task_id):
            if run.status in ACTIVE_STATUSES:
                aggregate_id = jobs.finish_run(session, run, status, error)
            ended = (run.experiment_id, run.run_id)
    if ended is not None:  # the run is over: its checkpoint is of no more use
        delete_checkpoint(*ended)
    if aggregate_id is not None:
        try:
            send_aggregation(aggregate_id)
        except Exception:
            log.warning("could not send the aggregation of experiment %s; the sweep will", aggregate_id,
                        exc_info=True)
    dispatch_or_leave_to_sweep()


def dispatch_or_leave_to_sweep() -> None:
    try:
        dispatch_waiting()
    except Exception:
        log.warning("could not dispatch waiting runs; the sweep will", exc_info=True)


def run_key(run: Run) -> RunKey:
    return RunKey(run.model, run.dataset, run.seed, run.unseen_class)


class RetryingTask(Task):
    """Retries on infrastructure errors; ``give_up`` records the final failure."""

    autoretry_for = TRANSIENT
    retry_backoff = True
    max_retries = get_settings().task_max_attempts - 1

    def give_up(self, argument: Any, error: str, task_id: str) -> None:
        raise NotImplementedError

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        try:
            self.give_up(args[0], f"gave up after {self.max_retries} retries: {type(exc).__name__}: {exc}",
                         task_id)
        except Exception:
            log.exception("could not record the failure of task %s", task_id)


class RunTask(RetryingTask):
    def give_up(self, run_pk: int, error: str, task_id: str) -> None:
        end_run(run_pk, "failed", error, task_id)


class AggregateTask(RetryingTask):
    def give_up(self, experiment_id: str, error: str, task_id: str) -> None:
        fail_experiment(experiment_id, error)


class AnalysisTask(RetryingTask):
    def give_up(self, analysis_id: str, error: str, task_id: str) -> None:
        fail_analysis(analysis_id, error)


@app.task(name=RUN_TASK, bind=True, base=RunTask)
def run_task(self, run_pk: int) -> str | None:
    """Returns how the run ended, as it was recorded (None when this delivery did
    not hold the run to its end). A GPU run starts once its memory is admitted
    (worker.gpu_runs)."""
    with gpu_runs.admitted_run(get_settings(), run_pk, self.request.id, end_run, dispatch_or_leave_to_sweep) as go:
        return claim_and_train(self, run_pk) if go else None


def claim_and_train(self, run_pk: int) -> str | None:
    settings = get_settings()
    with session_scope(database_url()) as session:
        run = jobs.claim_run(session, settings, run_pk, self.request.id, presence.id if presence else None)
        if run is not None:
            spec = ExperimentSpec.model_validate(run.experiment.spec)
            key, experiment_id = run_key(run), run.experiment_id
    dispatch_or_leave_to_sweep()  # this run left the broker: a slot is free
    if run is None:
        log.info("task %s: its run is no longer waiting for it (cancelled, ended or requeued)", self.request.id)
        return None
    log.info("run %s of experiment %s started", key.run_id, experiment_id)
    started = time.monotonic()
    with Heartbeat(run_pk, self.request.id, heartbeat_interval(settings.run_heartbeat_timeout_s)):
        outcome = train_and_store(settings, run_pk, self.request.id, spec, key, experiment_id)
    if outcome is not None:
        end_run(run_pk, outcome, task_id=self.request.id)
    recorded = recorded_outcome(run_pk, self.request.id)
    log.info("run %s of experiment %s ended %s after %.1f s", key.run_id, experiment_id,
             recorded or "elsewhere (requeued or deleted meanwhile)", time.monotonic() - started)
    return recorded


def recorded_outcome(run_pk: int, task_id: str) -> str | None:
    """The run's final status if this task's delivery ended it, else None."""
    with session_scope(database_url()) as session:
        row = session.execute(select(Run.status, Run.task_id).where(Run.id == run_pk)).first()
    if row is None or row.task_id != task_id or row.status in ACTIVE_STATUSES:
        return None
    return row.status


def heartbeat_interval(timeout_s: float) -> float:
    """Four beats per timeout, so that one slow write does not look like a lost worker."""
    return max(0.05, min(30.0, timeout_s / 4))


def train_and_store(settings: Settings, run_pk: int, task_id: str, spec: ExperimentSpec, key: RunKey, experiment_id: str) -> str | None:
    """Train, upload and record a claimed run; returns the status to end it with
    ("succeeded" or "cancelled"), or None when it was ended here already (failed,
    cancelled while training), deleted, or requeued for another task meanwhile."""
    with tempfile.TemporaryDirectory(prefix="fflab-run-") as tmp:
        base = Path(tmp)
        run_dir = base / "runs" / key.run_id
        progress = ProgressWriter(run_pk, settings.progress_interval_s)
        # Outside run_dir: the checkpoint is not one of the run's artifacts.
        checkpoint = StoredCheckpoint(get_storage(settings), experiment_id, key, base / "checkpoint.pt", progress)
        checkpoint.fetch()
        try:
            record = runner.execute_run(
                spec, key, run_dir,
                progress=progress,
                should_stop=StopCheck(run_pk, task_id, settings.stop_check_interval_s),
                checkpoint=checkpoint,
                checkpoint_every=settings.checkpoint_every_epochs,
            )
        except Cancelled:
            end_run(run_pk, "cancelled", task_id=task_id)
            return None
        except TRANSIENT:
            raise
        except Exception as error:
            if gpu_runs.is_out_of_memory(error):  # requeued with its reason, or failed after the last try
                gpu_runs.requeue_out_of_memory(settings, run_pk, task_id, error)
                dispatch_or_leave_to_sweep()
                return None
            log.exception("run %s of experiment %s failed", key.run_id, experiment_id)
            end_run(run_pk, "failed", f"{type(error).__name__}: {error}", task_id)
            return None
        storage = get_storage(settings)
        try:  # the run stays "running" until every artifact is stored
            files = put_files_retrying(storage, experiment_id, base, files_under(run_dir, base),
                                       settings.upload_attempts, settings.upload_backoff_s)
        except ArtifactsNotStored as error:
            log.error("run %s of experiment %s: %s", key.run_id, experiment_id, error)
            end_run(run_pk, "failed", str(error), task_id)
            return None
        with session_scope(database_url()) as session:
            run = session.get(Run, run_pk)
            if run is None:
                outcome = "deleted"
            elif run.task_id != task_id:  # requeued as lost meanwhile: the newer delivery records it
                return None
            elif jobs.should_stop(session, run_pk, task_id):
                outcome = "cancelled"
            else:
                outcome = "succeeded"
                record_artifacts(session, experiment_id, files)
                store_run_documents(session, run, run_dir, record)
    if outcome == "deleted":  # while training: leave nothing behind
        storage.delete_prefix(f"{experiment_prefix(experiment_id)}/runs/{key.run_id}")
        return None
    return outcome


def fetch_runs(storage: Storage, experiment_id: str, runs: list[Run], base: Path,
               all_files: bool, representations_of: set[str]) -> None:
    """Download the runs' JSON documents, their representations for the runs in
    ``representations_of``, and everything they have if ``all_files``."""
    prefix = experiment_prefix(experiment_id)
    for run in runs:
        wanted = set(runner.RUN_FILES if all_files else RUN_JSON_FILES)
        if run.run_id in representations_of:
            wanted.add("representations.npz")
        for file_name in sorted(wanted):
            name = f"runs/{run.run_id}/{file_name}"
            storage.download(f"{prefix}/{name}", base / name)


def put_aggregate(storage: Storage, experiment_id: str, base: Path) -> list[StoredFile]:
    """Upload tables, figures and results.json; figures of an earlier analysis go first."""
    storage.delete_prefix(f"{experiment_prefix(experiment_id)}/figures")
    names = files_under(base / "tables", base) + files_under(base / "figures", base) + ["results.json"]
    return put_files(storage, experiment_id, base, names)


def record_aggregate(session: Session, experiment: Experiment, base: Path, files: list[StoredFile],
                     results: dict[str, Any], analysis_id: str | None) -> None:
    """Artifacts and the Result row of an aggregation."""
    session.execute(
        delete(Artifact).where(Artifact.experiment_id == experiment.id, Artifact.name.like("figures/%"))
    )
    record_artifacts(session, experiment.id, files)
    tables = {
        name: {fmt: (base / "tables" / f"{name}.{fmt}").read_text() for fmt in ("md", "csv")}
        for name in results["tables"]
    }
    result = session.get(Result, experiment.id) or Result(experiment_id=experiment.id)
    result.analysis_id, result.tables, result.results, result.updated_at = analysis_id, tables, results, utcnow()
    session.add(result)


@app.task(name=AGGREGATE_TASK, bind=True, base=AggregateTask)
def aggregate_task(self, experiment_id: str) -> None:
    settings = get_settings()
    storage = get_storage(settings)
    with session_scope(database_url()) as session:
        experiment = session.get(Experiment, experiment_id)
        if experiment is None or experiment.status not in ACTIVE_STATUSES:
            return
        spec = ExperimentSpec.model_validate(experiment.spec)
        runs = list(experiment.runs)
    with tempfile.TemporaryDirectory(prefix="fflab-aggregate-") as tmp:
        base = Path(tmp)
        try:
            fetch_runs(storage, experiment_id, runs, base, False, {k.run_id for k in runner.figure_runs(spec)})
            results = runner.aggregate(spec, base)
        except TRANSIENT:
            raise
        except Exception as error:
            log.exception("aggregation of experiment %s failed", experiment_id)
            fail_experiment(experiment_id, f"aggregation failed: {type(error).__name__}: {error}")
            return
        files = put_aggregate(storage, experiment_id, base)
        with session_scope(database_url()) as session:
            experiment = session.get(Experiment, experiment_id, with_for_update=True)
            if experiment is not None and experiment.status in ACTIVE_STATUSES:
                record_aggregate(session, experiment, base, files, results, None)
                experiment.status, experiment.finished_at = "succeeded", utcnow()
    if experiment is None:  # deleted meanwhile: leave nothing behind
        storage.delete_prefix(experiment_prefix(experiment_id))


def fail_experiment(experiment_id: str, error: str) -> None:
    with session_scope(database_url()) as session:
        experiment = session.get(Experiment, experiment_id)
        if experiment is not None and experiment.status in ACTIVE_STATUSES:
            experiment.status, experiment.finished_at, experiment.error = "failed", utcnow(), error


@app.task(name=ANALYSIS_TASK, bind=True, base=AnalysisTask)
def analysis_task(self, analysis_id: str) -> None:
    settings = get_settings()
    storage = get_storage(settings)
    with session_scope(database_url()) as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None or analysis.status not in ACTIVE_STATUSES:
            return
        analysis.status, analysis.started_at = "running", utcnow()
        experiment = session.get(Experiment, analysis.experiment_id)
        spec = ExperimentSpec.model_validate(experiment.spec).model_copy(
            update={"analysis": AnalysisSpec.model_validate(analysis.spec)}
        )
        experiment_id, runs = experiment.id, list(experiment.runs)
    with tempfile.TemporaryDirectory(prefix="fflab-analysis-") as tmp:
        base = Path(tmp)
        try:
            fetch_runs(storage, experiment_id, runs, base, True, set())
            records = {run.run_id: runner.analyse_run(spec, run_key(run), base / "runs" / run.run_id)
                       for run in runs}
            results = runner.aggregate(spec, base)
            files = put_files(storage, experiment_id, base, [
                f"runs/{run.run_id}/{name}" for run in runs for name in RUN_JSON_FILES
            ]) + put_aggregate(storage, experiment_id, base)
        except TRANSIENT:
            raise
        except Exception as error:
            log.exception("analysis %s failed", analysis_id)
            fail_analysis(analysis_id, f"{type(error).__name__}: {error}")
            return
        with session_scope(database_url()) as session:
            experiment = session.get(Experiment, experiment_id, with_for_update=True)
            analysis = session.get(Analysis, analysis_id)
            if experiment is not None and analysis is not None and analysis.status == "running":
                for run in experiment.runs:
                    store_run_documents(session, run, base / "runs" / run.run_id, records[run.run_id])
                record_aggregate(session, experiment, base, files, results, analysis_id)
                experiment.spec = spec.model_dump(mode="json")
                analysis.status, analysis.finished_at = "succeeded", utcnow()
    if experiment is None:  # deleted meanwhile: leave nothing behind
        storage.delete_prefix(experiment_prefix(experiment_id))


def fail_analysis(analysis_id: str, error: str) -> None:
    with session_scope(database_url()) as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is not None and analysis.status in ACTIVE_STATUSES:
            analysis.status, analysis.finished_at, analysis.error = "failed", utcnow(), error
