"""What a worker needs around a run, apart from the state machine: its presence
in the ``workers`` table, the run's progress, heartbeat, stop check and
checkpoint in storage, and uploads with retries. Each piece talks to the
database through fflab.jobs or a single row update, and to storage through
fflab.storage; none decides a state transition (fflab.jobs does)."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import tenacity
from sqlalchemy import select, update

from fflab import jobs, queueing
from fflab.db import Run, get_sessionmaker, session_scope, utcnow
from fflab.models.common import FileCheckpoint, TrainingProgress, describe_resume_point
from fflab.processes import process_alive
from fflab.settings import Settings
from fflab.spec import RunKey
from fflab.storage import Storage, StorageError, StoredObject, check_disk, experiment_prefix, is_disk_full
from fflab.storage import content_type as storage_content_type
from worker import gpu_runs
from worker.dispatch import RUN_TASK

log = logging.getLogger(__name__)



def heartbeat_interval(timeout_s: float) -> float:
    """Four beats per timeout, so that one slow write does not look like a lost worker."""
    return max(0.05, min(30.0, timeout_s / 4))


class WorkerPresence:
    """This worker process in the ``workers`` table: registered as it starts, its
    heartbeat refreshed by a thread (four beats per FFLAB_WORKER_HEARTBEAT_TIMEOUT_S),
    deleted as it stops. /readyz counts the workers heard from; the sweep requeues
    the running runs of a worker gone silent. Registering first forgets earlier
    workers of the same node name on this host whose process is gone (a worker
    killed and started again): their running runs are requeued at once. It
    registers its concurrency (its slots in dispatch; FFLAB_RUNS_PER_GPU for a GPU
    worker) and the GPUs it holds (nvidia-smi), which /readyz and /metrics show."""

    def __init__(self, settings: Settings, name: str, queues: list[str], concurrency: int = 1):
        self.settings, self.name, self.queues, self.concurrency = settings, name, queues, concurrency
        self.devices = gpu_runs.worker_devices(settings, queues)
        self.database_url = settings.resolved_database_url
        self.id, self.hostname, self.pid = jobs.new_id(), socket.gethostname(), os.getpid()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="fflab-worker-heartbeat", daemon=True)

    def _register(self) -> None:
        with session_scope(self.database_url) as session:
            jobs.register_worker(session, self.id, self.name, self.hostname, self.pid, self.queues,
                                 self.concurrency, self.devices)

    def start(self) -> None:
        with get_sessionmaker(self.database_url)() as session:  # forget_worker commits
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
                with session_scope(self.database_url) as session:
                    found = jobs.beat_worker(session, self.id)
                if not found:  # taken for dead while silent (its runs were requeued)
                    log.warning("worker %s was taken for gone; registering again", self.name)
                    self._register()
            except Exception:  # the database is down: the next beat tries again
                log.warning("heartbeat of worker %s failed", self.name, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        with get_sessionmaker(self.database_url)() as session:
            jobs.forget_worker(session, self.settings, self.id, f"its worker {self.name} stopped")


presence: WorkerPresence | None = None  # this worker process's (its pool children inherit it)


def start_presence(settings: Settings, name: str, queues: list[str], concurrency: int = 1) -> None:
    global presence
    presence = WorkerPresence(settings, name, queues, concurrency)
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


# Time to evaluate and analyse a run, per second of its training, until a run of the
# same model in the experiment has measured it (metrics.json's timings).
DEFAULT_ANALYSIS_RATIO = 1.0


def is_last_epoch(event: TrainingProgress) -> bool:
    """The last epoch of the last stage: training ends, evaluation and analysis follow."""
    return event.epoch == event.epochs and (event.layer is None or event.layer + 1 == (event.layers or 1))


def analysis_ratio(database_url: str, run_pk: int) -> float:
    """Seconds of evaluation and analysis per second of training, measured on the
    succeeded runs of the same model in the run's experiment (their mean); the
    DEFAULT_ANALYSIS_RATIO before any has."""
    with session_scope(database_url) as session:
        run = session.get(Run, run_pk)
        if run is None:
            return DEFAULT_ANALYSIS_RATIO
        done: Sequence[dict[str, Any] | None] = session.scalars(select(Run.metrics).where(
            Run.experiment_id == run.experiment_id, Run.model == run.model, Run.status == "succeeded")
            .limit(20)).all()
    ratios = []
    for metrics in done:
        timings = (metrics or {}).get("timings") or {}
        train = timings.get("train_seconds") or 0.0
        after = (timings.get("evaluate_seconds") or 0.0) + (timings.get("analyse_seconds") or 0.0)
        if train > 0 and after > 0:
            ratios.append(after / train)
    return sum(ratios) / len(ratios) if ratios else DEFAULT_ANALYSIS_RATIO


class ProgressWriter:
    """TrainingProgress -> the run's progress column, at most every ``interval``
    seconds and at the last epoch, with an ETA that covers the evaluation and
    analysis after training (``analysis_ratio``): ``phase`` is "training", then
    "analysing" from the last epoch on; ``ends_at`` is the estimated end (readers
    count down to it); ``fraction_done`` is training's share done, ``run_fraction_done``
    the whole run's."""

    def __init__(self, database_url: str, run_pk: int, interval: float):
        self.database_url, self.run_pk, self.interval = database_url, run_pk, interval
        self.started = time.monotonic()
        self.last_write = float("-inf")
        self.resumed_from: str | None = None  # set when training resumed from a checkpoint
        self.ratio: float | None = None

    def __call__(self, event: TrainingProgress) -> None:
        check_loss(event)
        now = time.monotonic()
        last = is_last_epoch(event)
        if not last and now - self.last_write < self.interval:
            return
        self.last_write = now
        if self.ratio is None:
            self.ratio = analysis_ratio(self.database_url, self.run_pk)
        if event.layer is None:
            done = event.epoch / event.epochs
        else:
            done = (event.layer * event.epochs + event.epoch) / ((event.layers or 1) * event.epochs)
        elapsed = now - self.started
        eta = None
        if done > 0:
            training_total = elapsed / done
            eta = training_total - elapsed + self.ratio * training_total
        progress = {
            "model": event.model,
            "layer": None if event.layer is None else event.layer + 1,
            "layers": event.layers,
            "epoch": event.epoch,
            "epochs": event.epochs,
            "loss": event.loss,
            "phase": "analysing" if last else "training",
            "fraction_done": round(done, 4),
            "run_fraction_done": round(elapsed / (elapsed + eta), 4) if eta is not None and elapsed + eta > 0 else 0.0,
            "eta_seconds": None if eta is None else round(eta, 1),
            "ends_at": None if eta is None else (utcnow() + timedelta(seconds=eta)).isoformat(),
        }
        if self.resumed_from is not None:
            progress["resumed_from"] = self.resumed_from
        with session_scope(self.database_url) as session:
            run = session.get(Run, self.run_pk)
            if run is not None and run.status == "running":
                run.progress, run.heartbeat_at = progress, utcnow()


class Heartbeat:
    """Refreshes the run's heartbeat_at every ``interval`` s while the task holds the
    run (training, evaluation, uploads), from a thread: a stale heartbeat tells the
    sweep that the worker is gone. Bounded: stops with the task."""

    def __init__(self, database_url: str, run_pk: int, task_id: str, interval: float):
        self.database_url, self.run_pk, self.task_id, self.interval = database_url, run_pk, task_id, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"fflab-heartbeat-{run_pk}", daemon=True)

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with session_scope(self.database_url) as session:
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
    """should_stop for training: reads the run's status, at most every ``interval`` s.
    True once the run is cancelled, or requeued (as lost) for another task. With
    ``disk`` (a DiskCheck), also raises fflab.storage.LowDisk when the disk runs
    short while the run trains (training calls it between epochs and batches)."""

    def __init__(self, database_url: str, run_pk: int, task_id: str, interval: float,
                 disk: DiskCheck | None = None):
        self.database_url, self.run_pk, self.task_id, self.interval = database_url, run_pk, task_id, interval
        self.last_check = float("-inf")
        self.stop = False
        self.disk = disk

    def __call__(self) -> bool:
        if self.disk is not None:
            self.disk()
        now = time.monotonic()
        if not self.stop and now - self.last_check >= self.interval:
            self.last_check = now
            with session_scope(self.database_url) as session:
                self.stop = jobs.should_stop(session, self.run_pk, self.task_id)
        return self.stop


class DiskCheck:
    """Raises LowDisk (fflab.storage.check_disk) when a folder the service writes to
    is below FFLAB_MIN_FREE_DISK_BYTES; looks at most every ``interval`` s."""

    def __init__(self, settings: Settings, interval: float):
        self.settings, self.interval = settings, interval
        self.last_check = float("-inf")

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last_check >= self.interval:
            self.last_check = now
            check_disk(self.settings, "while the run trained")


def checkpoint_key(experiment_id: str, run_id: str) -> str:
    return f"{experiment_prefix(experiment_id)}/runs/{run_id}/checkpoint.pt"


class StoredCheckpoint:
    """The run's training checkpoint (fflab.models.common.Checkpoint): a file in the
    task's temporary folder, copied to artifact storage at every save so that any
    worker that gets the run again resumes from it. Best effort: a checkpoint that
    cannot be fetched, read or stored costs retraining, never the run. Once one is
    stored, ``stored`` is called (the preemption check: it may raise
    fflab.queueing.Preempted)."""

    def __init__(self, storage: Storage, experiment_id: str, key: RunKey, path: Path,
                 progress: ProgressWriter | None = None, stored: Callable[[], None] | None = None):
        self.storage, self.experiment_id, self.run_key = storage, experiment_id, key
        self.key = checkpoint_key(experiment_id, key.run_id)
        self.file, self.progress, self.stored = FileCheckpoint(path), progress, stored

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
            return
        if self.stored is not None:
            self.stored()


def preemption_check(database_url: str, run_pk: int, task_id: str) -> Callable[[], None]:
    """Raises Preempted when the dispatcher asked this delivery to stop (checked
    after each stored checkpoint, so the run resumes from there)."""

    def check() -> None:
        with session_scope(database_url) as session:
            if jobs.preemption_requested(session, run_pk, task_id):
                raise queueing.Preempted(f"run {run_pk} preempted at its checkpoint")

    return check


def delete_checkpoint(storage: Storage, experiment_id: str, run_id: str) -> None:
    try:
        storage.delete(checkpoint_key(experiment_id, run_id))
    except Exception:  # deleted with the experiment at the latest
        log.warning("could not delete the checkpoint of run %s of experiment %s", run_id, experiment_id,
                    exc_info=True)


@dataclass(frozen=True)
class StoredFile:
    name: str
    stored: StoredObject
    content_type: str


def content_type(path: Path) -> str:
    return storage_content_type(path.name)


def put_files(storage: Storage, experiment_id: str, base: Path, names: list[str]) -> list[StoredFile]:
    """Copy ``base/<name>`` to storage (before any database transaction: uploads can be slow)."""
    prefix = experiment_prefix(experiment_id)
    return [
        StoredFile(name, storage.put_file(f"{prefix}/{name}", base / name), content_type(base / name))
        for name in names
    ]


class ArtifactsNotStored(RuntimeError):
    """Every try to upload a run's artifacts failed (storage unreachable)."""


UPLOAD_ERRORS = (StorageError, ConnectionError, OSError)


def put_files_retrying(storage: Storage, experiment_id: str, base: Path, names: list[str],
                       attempts: int, backoff_s: float) -> list[StoredFile]:
    """put_files, tried ``attempts`` times with exponential backoff (backoff_s, 2x, 4x, ...).
    Each try uploads every file again (a put is idempotent), so a success stores them all.
    A full disk is not retried: it stays full."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=backoff_s, exp_base=2),
        retry=tenacity.retry_if_exception(lambda error: isinstance(error, UPLOAD_ERRORS)
                                          and not is_disk_full(error)),
        before_sleep=lambda state: log.warning(
            "upload of %d artifacts of experiment %s failed (try %d of %d); retrying in %.1f s: %s",
            len(names), experiment_id, state.attempt_number, attempts, state.upcoming_sleep,
            state.outcome.exception() if state.outcome else None),
        reraise=True,
    )
    try:
        return retrying(put_files, storage, experiment_id, base, names)
    except UPLOAD_ERRORS as error:
        tries = retrying.statistics.get("attempt_number", attempts)
        what = "the disk is full" if is_disk_full(error) else f"{tries} tries failed"
        raise ArtifactsNotStored(f"could not store artifacts: {what} on {storage.describe()}; "
                                 f"last error: {error}") from error


def files_under(folder: Path, base: Path) -> list[str]:
    return sorted(p.relative_to(base).as_posix() for p in folder.rglob("*") if p.is_file())
