"""The life of experiments, runs and analyses in the database, shared by the API
and the workers: every state transition is a function here. Sending tasks is
left to a ``Dispatcher`` (the Celery one lives in worker/dispatch.py).

Statuses. A run: queued -> running -> succeeded | failed | cancelled. An
experiment: queued until its first run starts, running until the aggregation
step ends (succeeded). Cancelling ends its waiting runs at once; while runs still
train (they stop at their next epoch) the experiment is ``cancelling``, and it is
``cancelled`` (with its ``finished_at``) when the last of them has ended, and, if
some runs had succeeded, their partial aggregation has been recorded: an
experiment is final only once all its runs are. A run that fails for good keeps its
reason (e.g. "loss became NaN at layer 2 epoch 3") and does not stop the others:
once every run is final, an experiment with a failed run ends ``failed``, its error
naming each failed run and its reason, after the partial aggregation of its
succeeded runs if it has any. The last run to end triggers the aggregation, counted in the
database under a lock on the experiment row, so no chord (and no result backend)
is needed.

Fair share. Runs are not sent to the broker at submission: ``dispatch`` sends only
as many as the live workers have free slots, so the order is decided when a slot
frees (a run starts or ends, an experiment is submitted or cancelled, a worker
starts; and at every sweep). The next run comes from the user with the least
recent run-time on that queue per unit of their weight (fflab.scheduling, over the
state fflab.queueing reads); a user's runs go by priority, then in submission
order. A user may have at most ``max_queued_runs_per_user`` runs waiting and
``max_running_fraction`` of a queue's slots running. With ``preemption``, a run of
an over-served user is asked to stop at its next checkpoint when an under-served
user waited ``preempt_after_s`` for a busy queue; its worker stores the checkpoint
and ``requeue_preempted`` puts it back to waiting (its run-time so far counts as
usage; it is not a lost delivery).

Lost workers. Every worker process has a ``Worker`` row whose heartbeat a thread
refreshes (``beat_worker``), and a run it claims records it (``Run.worker_id``);
the run's own ``Run.heartbeat_at`` is refreshed while it runs (a thread, and every
progress write). ``reap_lost_runs`` (the workers' periodic sweep) requeues a
running run whose worker is gone (not heard from for ``worker_heartbeat_timeout_s``,
or its row deleted) or whose own heartbeat is older than ``run_heartbeat_timeout_s``,
under a new task id, so that a late redelivery of the old message is ignored;
``forget_worker`` does the same at once for a worker known to be dead (``fflab
serve`` saw its process end; a worker starting under the name of a dead one on the
same host). After ``task_max_attempts`` deliveries the run fails with "worker lost
N times". The requeued run resumes from its last checkpoint in the artifact
storage (after each FF layer, every FFLAB_CHECKPOINT_EVERY_EPOCHS otherwise).

Queues. Runs go to the queue of their spec.device (Settings.queue_for_device);
aggregations and re-analyses, which need no GPU, go to the cpu queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import delete, exists, func, select, text, update
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    import sqlite3

    from sqlalchemy import CursorResult, Result

from fflab import gpu, queueing, usage
from fflab.db import ACTIVE_STATUSES, FINAL_STATUSES, Analysis, Experiment, Run, User, Worker, utcnow
from fflab.results import EXTERNAL_DATASET, EXTERNAL_MODEL
from fflab.scheduling import PRIORITIES, priority_rank
from fflab.settings import Settings
from fflab.spec import ExperimentSpec, RunKey

# Any constant shared by every process; "FFDS" (fflab dispatch) in ASCII.
# The statuses of an experiment whose aggregation may be pending: active ones, and
# one being cancelled (its partial results are aggregated once no run is active).
AGGREGATED_STATUSES = (*ACTIVE_STATUSES, "cancelling")
DISPATCH_LOCK_ID = 0x4646_4453


class Dispatcher(Protocol):
    def send_run(self, run_pk: int, queue: str, task_id: str) -> None: ...
    def send_aggregate(self, experiment_id: str, queue: str) -> None: ...
    def send_analysis(self, analysis_id: str, queue: str) -> None: ...
    def revoke(self, task_ids: list[str]) -> None: ...


class CapacityError(Exception):
    """A per-user limit would be exceeded: the cap on waiting runs, the storage quota
    or the run-hours limit (fflab.usage)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConflictError(Exception):
    """The operation does not apply in the object's current status."""


class PriorityNotAllowed(Exception):
    """The experiment asks for a priority above its owner's ``max_priority``."""


class TooLarge(Exception):
    """A run of the experiment needs more memory (fflab.gpu.estimate_run_memory) than
    the largest worker that could take it has: it could never start."""

    loc: tuple[str, ...] = ("body",)


class NoGpuWorker(TooLarge):
    """The spec's device needs a GPU (device cuda, the gpu queue) and no GPU worker
    has registered on a deployment that does not say it runs them
    (FFLAB_GPUS_AVAILABLE): its runs could never start."""

    loc = ("body", "device")


def new_id() -> str:
    return uuid.uuid4().hex


def active_runs(session: Session, owner_id: int) -> int:
    return session.scalar(
        select(func.count(Run.id))
        .join(Experiment)
        .where(Experiment.owner_id == owner_id, Run.status.in_(ACTIVE_STATUSES))
    ) or 0


def queued_runs(session: Session, owner_id: int) -> int:
    return session.scalar(
        select(func.count(Run.id)).join(Experiment).where(Experiment.owner_id == owner_id, Run.status == "queued")
    ) or 0


def create_experiment(
    session: Session, settings: Settings, owner: User, spec: ExperimentSpec, visibility: str,
    priority: str = "normal",
) -> Experiment:
    keys = spec.runs()
    if priority_rank(priority) > priority_rank(owner.max_priority):
        raise PriorityNotAllowed(
            f"priority {priority!r} is above your highest allowed priority {owner.max_priority!r} "
            f"(an admin sets it: fflab admin set-share {owner.name} --max-priority ...); allowed: "
            f"{', '.join(PRIORITIES[:priority_rank(owner.max_priority) + 1])}")
    # Lock the owner's row until commit, so that concurrent submissions of one user
    # count waiting runs one after the other (the cap holds); other users are not held
    # up. On SQLite the lock is the database's write lock (fflab.db.session).
    session.execute(select(User.id).where(User.id == owner.id).with_for_update())
    queued = queued_runs(session, owner.id)
    cap = settings.max_queued_runs_per_user
    if queued + len(keys) > cap:
        raise CapacityError(
            f"this experiment has {len(keys)} runs and you have {queued} waiting to start; "
            f"the limit is {cap} per user (FFLAB_MAX_QUEUED_RUNS_PER_USER). Wait for runs to "
            f"start or cancel some.",
            settings.capacity_retry_after_s,
        )
    refusal = usage.submission_refusal(session, settings, owner.id, spec)  # storage quota, run-hours
    if refusal is not None:
        raise CapacityError(refusal, settings.capacity_retry_after_s)
    queue = settings.queue_for_device(spec.device)
    check_gpu_worker(session, settings, spec, queue)
    check_memory(session, settings, spec, keys, queue)
    experiment = Experiment(
        id=new_id(), owner=owner, name=spec.name, visibility=visibility, priority=priority,
        spec=spec.model_dump(mode="json"), runs_total=len(keys),
    )
    experiment.runs = [
        Run(run_id=key.run_id, model=key.model, dataset=key.dataset, seed=key.seed,
            unseen_class=key.unseen_class, queue=queue)
        for key in keys
    ]
    session.add(experiment)
    session.flush()
    return experiment


def create_representations_experiment(
    session: Session, settings: Settings, owner: User, experiment_id: str, spec: dict[str, Any], visibility: str,
    file_bytes: int,
) -> Experiment:
    """An experiment of kind ``representations`` (an uploaded representations file,
    stored under its id's prefix before this): one run, ``external-recorded-seed0``
    on the cpu queue, whose worker step analyses the file instead of training. The
    owner's cap on waiting runs, storage quota and run-hours limit apply as to a
    submission (CapacityError), counted under the lock on the owner's row."""
    session.execute(select(User.id).where(User.id == owner.id).with_for_update())
    queued = queued_runs(session, owner.id)
    cap = settings.max_queued_runs_per_user
    if queued + 1 > cap:
        raise CapacityError(
            f"you have {queued} runs waiting to start; the limit is {cap} per user "
            f"(FFLAB_MAX_QUEUED_RUNS_PER_USER). Wait for runs to start or cancel some.",
            settings.capacity_retry_after_s,
        )
    refusal = usage.representations_refusal(session, settings, owner.id, file_bytes, usage.spec_units(spec))
    if refusal is not None:
        raise CapacityError(refusal, settings.capacity_retry_after_s)
    key = RunKey(EXTERNAL_MODEL, EXTERNAL_DATASET, 0)
    experiment = Experiment(id=experiment_id, owner=owner, name=spec["name"], visibility=visibility,
                            priority="normal", spec=spec, runs_total=1)
    experiment.runs = [Run(run_id=key.run_id, model=key.model, dataset=key.dataset, seed=key.seed,
                           unseen_class=None, queue=settings.queue_name("cpu"))]
    session.add(experiment)
    session.flush()
    return experiment


def largest_memory(session: Session, settings: Settings, queue: str) -> tuple[int, str] | None:
    """The most memory one run may find on a live worker consuming ``queue``: the
    largest GPU (gpu queue) or RAM (cpu queue) the workers registered, with a name
    for messages; None when no live worker of the queue registered one."""
    kind = "cuda" if queue == settings.queue_name("gpu") else "cpu"
    largest: tuple[int, str] | None = None
    for worker in live_workers(session, settings):
        if queue not in worker.queues.split(","):
            continue
        for device in worker.devices or []:
            total = int(device.get("total_memory_bytes") or 0)
            if device.get("kind", "cuda") == kind and (largest is None or total > largest[0]):
                what = "GPU" if kind == "cuda" else "RAM"
                largest = (total, f"worker {worker.name} on {worker.hostname} ({what} of "
                                  f"{total / gpu.GIB:.1f} GiB)")
    return largest


def check_gpu_worker(session: Session, settings: Settings, spec: ExperimentSpec, queue: str) -> None:
    """NoGpuWorker when the runs would go to the gpu queue, no live worker of that
    queue has registered a GPU, and the deployment does not declare GPU workers
    (FFLAB_GPUS_AVAILABLE: then they wait for one, as the queue view says)."""
    if queue != settings.queue_name("gpu") or settings.gpus_available:
        return
    workers = [worker for worker in live_workers(session, settings) if queue in worker.queues.split(",")]
    if any(device.get("kind", "cuda") == "cuda" for worker in workers for device in worker.devices or []):
        return
    registered = "; ".join(
        f"{worker.name} on {worker.hostname} ("
        f"{', '.join(str(d.get('kind', 'cuda')) for d in worker.devices or []) or 'no devices'})"
        for worker in live_workers(session, settings)) or "none"
    raise NoGpuWorker(
        f"{spec.device!r} needs a GPU worker and none has registered on this server (workers: "
        f"{registered}); its runs could never start. Use device 'cpu' or 'auto', or start `fflab worker --gpu N` "
        f"on a machine with a GPU (a deployment whose GPU workers come and go sets FFLAB_GPUS_AVAILABLE=true "
        f"to queue such runs until one registers)")


def check_memory(session: Session, settings: Settings, spec: ExperimentSpec, keys: list[RunKey], queue: str) -> None:
    """TooLarge when a run's memory estimate exceeds, less FFLAB_GPU_MEMORY_MARGIN,
    the largest worker of its queue (GPU memory or RAM, as the workers registered
    them). Where no worker of the queue has registered yet: the cpu queue is
    compared against this machine's RAM (the embedded default's worker runs here),
    the gpu queue is not checked (its workers' GPUs are unknown)."""
    largest = largest_memory(session, settings, queue)
    if largest is None:
        if queue == settings.queue_name("gpu"):
            return
        total = gpu.machine_memory()[0]
        largest = (total, f"this machine's RAM of {total / gpu.GIB:.1f} GiB (no worker of the queue has "
                          f"registered yet)")
    total, where = largest
    usable = int(total * (1 - settings.gpu_memory_margin))
    shapes: dict[tuple[str, str], tuple[int, str]] = {}
    for key in keys:  # runs of one model at one grid point have the same estimate
        shape = (key.model, repr(getattr(key, "point", None)))
        if shape not in shapes:
            shapes[shape] = (gpu.estimate_run_memory(spec, key), key.run_id)
    estimate, run_id = max(shapes.values(), default=(0, ""))
    if estimate > usable:
        raise TooLarge(
            f"run {run_id} needs an estimated {estimate / gpu.GIB:.1f} GiB of memory (fflab.gpu."
            f"estimate_run_memory); the largest worker of queue {queue} is {where}: "
            f"{usable / gpu.GIB:.1f} GiB usable after the {settings.gpu_memory_margin:.0%} margin "
            f"(FFLAB_GPU_MEMORY_MARGIN). It could never start: lower data.train_subset, network.width "
            f"or network.layers, or set a batch_size")


def _lock_dispatch(session: Session) -> None:
    """One dispatcher at a time (the free slots and the running cap are counted under
    it): PostgreSQL's advisory lock, SQLite's write lock; both until commit."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": DISPATCH_LOCK_ID})
        return
    connection = session.connection()
    if not cast("sqlite3.Connection", connection.connection.dbapi_connection).in_transaction:  # SQLite here
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _changed(result: Result[Any]) -> CursorResult[Any]:
    """An UPDATE's result, whose ``rowcount`` is the rows it matched (Session.execute
    is typed as returning a plain Result)."""
    return cast("CursorResult[Any]", result)


def dispatch(session: Session, settings: Settings, dispatcher: Dispatcher, now: datetime | None = None) -> int:
    """Hand waiting runs to the broker in fair-share order, as many as the live
    workers have free slots, and ask runs to stop for preemption (see the module's
    docstring). Commits. Returns how many runs were sent."""
    _lock_dispatch(session)
    plan = queueing.plan_dispatch(queueing.read_queues(session, settings, now), settings)
    chosen: list[tuple[int, str, str]] = []
    for run_pk, queue in plan.send:
        task_id = new_id()
        claimed = _changed(session.execute(
            update(Run)
            .where(Run.id == run_pk, Run.status == "queued", Run.task_id.is_(None))
            .values(task_id=task_id, dispatched_at=utcnow())
        )).rowcount
        if claimed:
            chosen.append((run_pk, queue, task_id))
    if plan.preempt:
        session.execute(update(Run).where(Run.id.in_(plan.preempt), Run.status == "running",
                                          Run.preempt_requested_at.is_(None))
                        .values(preempt_requested_at=now or utcnow()))
    session.commit()
    for run_pk, queue, task_id in chosen:
        try:
            dispatcher.send_run(run_pk, queue, task_id)
        except Exception:
            session.execute(update(Run).where(Run.id == run_pk, Run.task_id == task_id).values(task_id=None))
            session.commit()
            raise
    return len(chosen)


def claim_run(session: Session, settings: Settings, run_pk: int, task_id: str,
              worker_id: str | None = None) -> Run | None:
    """Mark a run running for the task delivering it, held by worker ``worker_id``
    (its Worker row); None when the run was cancelled, finished or handed to another
    task meanwhile. A redelivered task (its worker died) claims again; after
    ``task_max_attempts`` the run fails."""
    # Lock the experiment before the run, the order of finish_run and of deleting an
    # experiment (its runs go by cascade): the other order deadlocks with a DELETE.
    experiment_id = session.scalar(select(Run.experiment_id).where(Run.id == run_pk))
    if experiment_id is not None:
        session.get(Experiment, experiment_id, with_for_update=True)
    run = session.get(Run, run_pk, with_for_update=True)
    if run is None or run.task_id != task_id or run.status not in ACTIVE_STATUSES:
        return None
    if run.attempts >= settings.task_max_attempts:
        _finish_run_for_the_sweep(session, run, "failed",
                                  error=f"run {run.run_id} was delivered {run.attempts} times and never finished "
                         f"(worker lost); the limit is FFLAB_TASK_MAX_ATTEMPTS={settings.task_max_attempts}")
        return None
    experiment = run.experiment
    if experiment.status not in ACTIVE_STATUSES:
        _finish_run_for_the_sweep(session, run, "cancelled")
        return None
    now = utcnow()
    run.status, run.started_at, run.attempts, run.error = "running", now, run.attempts + 1, None
    run.heartbeat_at, run.progress, run.worker_id = now, None, worker_id
    if experiment.status == "queued":
        experiment.status, experiment.started_at = "running", now
    session.flush()
    return run


def finish_run(
    session: Session, run: Run, status: str, error: str | None = None, record: dict[str, Any] | None = None
) -> str | None:
    """End a run; returns the experiment id when this was the last active run of an
    experiment that now needs its aggregation step (the caller sends it after commit)."""
    experiment = session.get(Experiment, run.experiment_id, with_for_update=True, populate_existing=True)
    run.status, run.finished_at, run.error, run.progress = status, utcnow(), error, None
    if record is not None:
        run.record = record
    session.flush()
    if experiment is None:
        return None
    remaining = session.scalar(
        select(func.count(Run.id)).where(Run.experiment_id == experiment.id, Run.status.in_(ACTIVE_STATUSES))
    )
    if remaining:
        return None
    if experiment.status == "cancelling":  # its last running run has stopped
        if experiment.aggregation_queued_at is None and _has_succeeded_run(session, experiment):
            experiment.aggregation_queued_at = utcnow()  # partial results of what finished; then cancelled
            return experiment.id
        if experiment.aggregation_queued_at is None:
            experiment.status, experiment.finished_at = "cancelled", utcnow()
        return None
    if experiment.status not in ACTIVE_STATUSES or experiment.aggregation_queued_at:
        return None
    error = _failed_runs_error(session, experiment)
    if error is not None and not _has_succeeded_run(session, experiment):
        # every run is final and none succeeded: the experiment fails, naming each failed run's reason
        experiment.status, experiment.finished_at, experiment.error = "failed", utcnow(), error
        return None
    experiment.aggregation_queued_at = utcnow()  # with failed runs: partial results, then failed
    return experiment.id


def _finish_run_for_the_sweep(session: Session, run: Run, status: str, error: str | None = None) -> None:
    """finish_run where the caller sends no aggregation: one now due is left unsent,
    for the sweep (``unsent_aggregations``) to send."""
    if finish_run(session, run, status, error) is not None:
        run.experiment.aggregation_queued_at = None


def _has_succeeded_run(session: Session, experiment: Experiment) -> bool:
    return bool(session.scalar(select(func.count(Run.id)).where(
        Run.experiment_id == experiment.id, Run.status == "succeeded")))


def _failed_runs_error(session: Session, experiment: Experiment) -> str | None:
    """The error of an experiment with failed runs, naming each one's reason; None
    when no run failed."""
    failed = list(session.execute(
        select(Run.run_id, Run.error).where(Run.experiment_id == experiment.id, Run.status == "failed")
        .order_by(Run.id)
    ))
    if not failed:
        return None
    reasons = "; ".join(f"run {run_id}: {reason}" for run_id, reason in failed[:10])
    more = f"; and {len(failed) - 10} more (GET .../runs)" if len(failed) > 10 else ""
    return f"{len(failed)} of {experiment.runs_total} runs failed: {reasons}{more}"


def _cancel_waiting_runs(session: Session, experiment: Experiment) -> list[str]:
    """Cancel the runs no worker has started; return the task ids sent to the broker."""
    waiting = list(session.scalars(
        select(Run).where(Run.experiment_id == experiment.id, Run.status == "queued")
    ))
    for run in waiting:
        run.status, run.finished_at = "cancelled", utcnow()
    return [run.task_id for run in waiting if run.task_id]


def cancel_experiment(session: Session, experiment: Experiment) -> list[str]:
    """Cancel: waiting runs end now, running ones at their next epoch (their
    should_stop sees the experiment's status). The experiment is ``cancelled`` at
    once if no run is running, else ``cancelling`` until its last running run ends
    (finish_run). Cancelling a cancelling experiment changes nothing. Returns task
    ids to revoke."""
    # Lock the experiment's row, as finish_run does: a run ending meanwhile either
    # ended before the count below or sees "cancelling" and ends the experiment.
    session.get(Experiment, experiment.id, with_for_update=True, populate_existing=True)
    if experiment.status in FINAL_STATUSES:
        raise ConflictError(f"experiment {experiment.id} already ended ({experiment.status}); "
                            f"only a queued or running experiment can be cancelled")
    if experiment.status == "cancelling":
        return []
    for analysis in session.scalars(
        select(Analysis).where(Analysis.experiment_id == experiment.id, Analysis.status.in_(ACTIVE_STATUSES))
    ):
        analysis.status, analysis.finished_at = "cancelled", utcnow()
    task_ids = _cancel_waiting_runs(session, experiment)
    running = session.scalar(
        select(func.count(Run.id)).where(Run.experiment_id == experiment.id, Run.status == "running")
    )
    if running or experiment.aggregation_queued_at is not None:  # its aggregation ends it as cancelled
        experiment.status = "cancelling"
    elif _has_succeeded_run(session, experiment):  # partial results first: sent by the caller, or the sweep
        experiment.status = "cancelling"
    else:
        experiment.status, experiment.finished_at = "cancelled", utcnow()
    return task_ids


def aggregation_due(session: Session, experiment: Experiment) -> bool:
    """Whether the experiment's aggregation is to be sent now: it is being
    cancelled, none of its runs is still active, and it was not sent yet (then it
    is marked sent; the caller sends it after commit)."""
    if experiment.status != "cancelling" or experiment.aggregation_queued_at is not None:
        return False
    if session.scalar(select(func.count(Run.id)).where(
            Run.experiment_id == experiment.id, Run.status.in_(ACTIVE_STATUSES))):
        return False
    experiment.aggregation_queued_at = utcnow()
    return True


def unsent_aggregations(session: Session) -> list[str]:
    """Experiments whose runs all ended without their aggregation being queued (its
    sending failed); marks them queued and returns their ids for the caller to send."""
    active = exists().where(Run.experiment_id == Experiment.id, Run.status.in_(ACTIVE_STATUSES))
    experiments = list(session.scalars(
        select(Experiment)
        .where(Experiment.status.in_(AGGREGATED_STATUSES), Experiment.aggregation_queued_at.is_(None), ~active)
        .with_for_update(skip_locked=True)
    ))
    for experiment in experiments:
        experiment.aggregation_queued_at = utcnow()
    return [experiment.id for experiment in experiments]


def _requeue_lost_run(session: Session, settings: Settings, run: Run, reason: str) -> str:
    """A running run whose delivery was lost (the caller holds the experiment's and
    the run's locks): cancelled if its experiment no longer wants it, failed after
    ``task_max_attempts`` deliveries, else back to waiting for dispatch with no task
    (the next dispatch sends it under a new task id). Returns what it did."""
    if run.experiment.status not in ACTIVE_STATUSES:
        _finish_run_for_the_sweep(session, run, "cancelled")
        return "cancelled"
    if run.attempts >= settings.task_max_attempts:
        _finish_run_for_the_sweep(session, run, "failed", error=(
            f"worker lost {run.attempts} times (last: {reason}); the limit is "
            f"FFLAB_TASK_MAX_ATTEMPTS={settings.task_max_attempts}"))
        return "failed"
    queueing.bank_delivery(run, utcnow())
    run.status, run.task_id, run.dispatched_at, run.worker_id = "queued", None, None, None
    run.heartbeat_at, run.progress, run.started_at = None, None, None
    return "requeued"


def requeue_run(session: Session, settings: Settings, run_pk: int, task_id: str, reason: str) -> str | None:
    """A running run that cannot go on where it is for a reason that another try
    may not have (its GPU ran out of memory): back to waiting for dispatch, with
    ``reason`` in its error until a worker claims it again, or failed after
    ``task_max_attempts`` deliveries, or cancelled if its experiment no longer
    wants it. Only the delivery holding it (``task_id``) may. Returns what it did,
    None when the run was not this delivery's. The caller commits."""
    run = _lock_running_run(session, run_pk)
    if run is None or run.task_id != task_id:
        return None
    if run.experiment.status in ACTIVE_STATUSES and run.attempts >= settings.task_max_attempts:
        _finish_run_for_the_sweep(session, run, "failed", error=(
            f"{reason}, on each of its {run.attempts} tries; the limit is "
            f"FFLAB_TASK_MAX_ATTEMPTS={settings.task_max_attempts}"))
        return "failed"
    outcome = _requeue_lost_run(session, settings, run, reason)
    if outcome == "requeued":
        run.error = f"requeued after try {run.attempts}: {reason}"
    return outcome


def release_run(session: Session, run_pk: int, task_id: str, reason: str) -> bool:
    """A delivery that will not start its run (no GPU memory came free in time)
    hands it back: the queued run waits for dispatch again, under a new task id,
    with ``reason`` in its error until a worker claims it. False when the run is
    no longer queued for this delivery. The caller commits."""
    return bool(_changed(session.execute(
        update(Run).where(Run.id == run_pk, Run.status == "queued", Run.task_id == task_id)
        .values(task_id=None, dispatched_at=None, error=f"waiting: {reason}")
    )).rowcount)


def _lock_running_run(session: Session, run_pk: int) -> Run | None:
    # Experiment before run, the lock order of claim_run and finish_run.
    experiment_id = session.scalar(select(Run.experiment_id).where(Run.id == run_pk))
    if experiment_id is not None:
        session.get(Experiment, experiment_id, with_for_update=True, populate_existing=True)
    run = session.get(Run, run_pk, with_for_update=True, populate_existing=True)
    return run if run is not None and run.status == "running" else None


class _RunBeats(Protocol):
    """What ``_lost_because`` reads of a run: a Run, or a row of its columns."""

    @property
    def worker_id(self) -> str | None: ...
    @property
    def heartbeat_at(self) -> datetime | None: ...
    @property
    def started_at(self) -> datetime | None: ...


def _lost_because(run: _RunBeats, worker_beat: datetime | None, now: datetime, settings: Settings) -> str | None:
    """Why a running run has lost its worker, or None while it has not."""
    if run.worker_id is not None and (
        worker_beat is None or worker_beat < now - timedelta(seconds=settings.worker_heartbeat_timeout_s)
    ):
        return (f"its worker was not heard from for {settings.worker_heartbeat_timeout_s:g} s "
                f"(FFLAB_WORKER_HEARTBEAT_TIMEOUT_S)")
    if (run.heartbeat_at or run.started_at or now) < now - timedelta(seconds=settings.run_heartbeat_timeout_s):
        return f"no heartbeat for {settings.run_heartbeat_timeout_s:g} s (FFLAB_RUN_HEARTBEAT_TIMEOUT_S)"
    return None


def reap_lost_runs(session: Session, settings: Settings, now: datetime | None = None) -> tuple[int, int]:
    """Running runs whose worker is gone: its Worker row not refreshed for
    ``worker_heartbeat_timeout_s`` (or deleted), or the run's own heartbeat (or
    start) older than ``run_heartbeat_timeout_s``. Each is requeued (status queued,
    no task: the next dispatch sends it under a new task id) or, after
    ``task_max_attempts`` deliveries, failed with "worker lost N times". Then the
    rows of gone workers are deleted. Commits after each run. Returns (requeued, failed)."""
    now = now or utcnow()

    def beat_of(worker_id: str | None) -> datetime | None:
        if worker_id is None:
            return None
        return session.scalar(select(Worker.heartbeat_at).where(Worker.id == worker_id))

    running = list(session.execute(
        select(Run.id, Run.worker_id, Run.heartbeat_at, Run.started_at, Worker.heartbeat_at.label("worker_beat"))
        .outerjoin(Worker, Worker.id == Run.worker_id).where(Run.status == "running")
    ))
    stale = [row.id for row in running if _lost_because(row, row.worker_beat, now, settings)]
    session.commit()
    requeued = failed = 0
    for run_pk in stale:
        run = _lock_running_run(session, run_pk)
        # Checked again under the lock: finished, or heard from, meanwhile?
        reason = run is not None and _lost_because(run, beat_of(run.worker_id), now, settings)
        if reason and run is not None:
            outcome = _requeue_lost_run(session, settings, run, reason)
            requeued += outcome == "requeued"
            failed += outcome == "failed"
        session.commit()
    gone = now - timedelta(seconds=settings.worker_heartbeat_timeout_s)
    session.execute(delete(Worker).where(Worker.heartbeat_at < gone))
    session.commit()
    return requeued, failed


# --------------------------------------------------------------------------- workers


def register_worker(session: Session, worker_id: str, name: str, hostname: str, pid: int,
                    queues: Collection[str], concurrency: int = 1,
                    devices: list[dict[str, Any]] | None = None) -> None:
    """A worker process announces itself (before it consumes), with the runs it takes
    at once (its slots in dispatch) and the GPUs it holds; the caller commits."""
    now = utcnow()
    session.add(Worker(id=worker_id, name=name, hostname=hostname, pid=pid, queues=",".join(sorted(queues)),
                       concurrency=concurrency, devices=list(devices or []), started_at=now, heartbeat_at=now))
    session.flush()


def beat_worker(session: Session, worker_id: str) -> bool:
    """Refresh the worker's heartbeat; False when its row is gone (the sweep took it
    for dead: the caller registers it again). The caller commits."""
    return bool(_changed(session.execute(
        update(Worker).where(Worker.id == worker_id).values(heartbeat_at=utcnow())
    )).rowcount)


def workers_named(session: Session, name: str, hostname: str) -> list[Worker]:
    """The registered workers of this node name on this host (earlier incarnations
    included, until forgotten)."""
    return list(session.scalars(select(Worker).where(Worker.name == name, Worker.hostname == hostname)))


def forget_worker(session: Session, settings: Settings, worker_id: str, reason: str) -> tuple[int, int]:
    """A worker known to be gone (its process ended, or it stopped): its running
    runs are requeued at once (or failed, see reap_lost_runs) and its row deleted.
    Commits after each run. Returns (requeued, failed)."""
    held = list(session.scalars(select(Run.id).where(Run.status == "running", Run.worker_id == worker_id)))
    session.commit()
    requeued = failed = 0
    for run_pk in held:
        run = _lock_running_run(session, run_pk)
        if run is not None and run.worker_id == worker_id:
            outcome = _requeue_lost_run(session, settings, run, reason)
            requeued += outcome == "requeued"
            failed += outcome == "failed"
        session.commit()
    session.execute(delete(Worker).where(Worker.id == worker_id))
    session.commit()
    return requeued, failed


def live_workers(session: Session, settings: Settings, now: datetime | None = None) -> list[Worker]:
    """Workers heard from within ``worker_heartbeat_timeout_s``."""
    cutoff = (now or utcnow()) - timedelta(seconds=settings.worker_heartbeat_timeout_s)
    return list(session.scalars(select(Worker).where(Worker.heartbeat_at >= cutoff).order_by(Worker.started_at)))


def requeue_lost_messages(session: Session, settings: Settings, in_broker: Collection[str],
                          now: datetime | None = None) -> int:
    """Runs handed to the broker more than ``lost_message_grace_s`` ago whose task id
    is not among ``in_broker`` (every task id in the broker's queues and unacknowledged
    set): the broker lost them (e.g. Redis restarted without persistence). They go
    back to waiting for dispatch, under a new task id. Commits; returns how many."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.lost_message_grace_s)
    lost = [
        (row.id, row.task_id) for row in session.execute(
            select(Run.id, Run.task_id, Run.dispatched_at)
            .where(Run.status == "queued", Run.task_id.is_not(None))
        )
        if row.task_id not in in_broker and (row.dispatched_at or now) < cutoff
    ]
    count = 0
    for run_pk, task_id in lost:  # a run started meanwhile is no longer queued: left alone
        count += _changed(session.execute(
            update(Run).where(Run.id == run_pk, Run.status == "queued", Run.task_id == task_id)
            .values(task_id=None, dispatched_at=None)
        )).rowcount
    session.commit()
    return count


def requeue_lost_aggregations(session: Session, settings: Settings, in_broker: Collection[str],
                              now: datetime | None = None) -> int:
    """Active experiments whose aggregation was queued more than ``lost_message_grace_s``
    ago and is not in the broker (``in_broker``: experiment ids of the aggregation
    tasks there): marked unsent, for ``unsent_aggregations`` to send again. An
    aggregation sent twice is harmless (the second finds the experiment final)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.lost_message_grace_s)
    lost = [
        row.id for row in session.execute(
            select(Experiment.id, Experiment.aggregation_queued_at)
            .where(Experiment.status.in_(AGGREGATED_STATUSES), Experiment.aggregation_queued_at.is_not(None))
        )
        if row.id not in in_broker and row.aggregation_queued_at < cutoff
    ]
    if lost:
        session.execute(update(Experiment).where(Experiment.id.in_(lost)).values(aggregation_queued_at=None))
    session.commit()
    return len(lost)


def lost_analyses(session: Session, settings: Settings, in_broker: Collection[str],
                  now: datetime | None = None) -> list[str]:
    """Re-analyses still queued more than ``lost_message_grace_s`` after they were
    created whose message is not in the broker (``in_broker``: analysis ids of the
    analysis tasks there): the broker lost them; the caller sends them again. A
    running one is not resent, so no analysis runs twice."""
    cutoff = (now or utcnow()) - timedelta(seconds=settings.lost_message_grace_s)
    return [
        row.id for row in session.execute(
            select(Analysis.id, Analysis.created_at).where(Analysis.status == "queued")
        )
        if row.id not in in_broker and row.created_at < cutoff
    ]


def preemption_requested(session: Session, run_pk: int, task_id: str) -> bool:
    """Whether the dispatcher asked this delivery of a run to stop at its checkpoint."""
    return session.scalar(
        select(Run.preempt_requested_at.is_not(None)).where(Run.id == run_pk, Run.task_id == task_id,
                                                            Run.status == "running")
    ) or False


def requeue_preempted(session: Session, run_pk: int, task_id: str) -> bool:
    """A preempted run, its checkpoint stored, goes back to waiting (no task: the
    next dispatch sends it under a new task id and it resumes from the checkpoint).
    Its run-time so far stays in its user's usage; the delivery does not count
    towards ``task_max_attempts``. A run its experiment no longer wants is cancelled.
    False when this delivery no longer holds the run. The caller commits."""
    run = _lock_running_run(session, run_pk)
    if run is None or run.task_id != task_id:
        return False
    if run.experiment.status not in ACTIVE_STATUSES:
        _finish_run_for_the_sweep(session, run, "cancelled")
        return True
    queueing.bank_delivery(run, utcnow())
    run.status, run.task_id, run.dispatched_at, run.worker_id = "queued", None, None, None
    run.heartbeat_at, run.progress, run.started_at = None, None, None
    run.attempts, run.preemptions = max(0, run.attempts - 1), run.preemptions + 1
    session.flush()
    return True


def should_stop(session: Session, run_pk: int, task_id: str | None = None) -> bool:
    """Whether the delivery of a run (by task ``task_id``) should stop: the run is no
    longer running, its experiment is being cancelled or gone, or the run was
    requeued meanwhile and belongs to another task now."""
    row = session.execute(
        select(Run.status, Run.task_id, Experiment.status).join(Experiment).where(Run.id == run_pk)
    ).first()
    return (row is None or row.status != "running" or row[2] not in ACTIVE_STATUSES
            or (task_id is not None and row.task_id != task_id))


def create_analysis(session: Session, experiment: Experiment, analysis_spec: dict[str, Any],
                    settings: Settings | None = None) -> Analysis:
    """A re-analysis of a succeeded experiment (ConflictError otherwise, or while
    another runs); with ``settings``, CapacityError when its owner's storage is at
    or over the quota (fflab.usage.analysis_refusal)."""
    if settings is not None and (refusal := usage.analysis_refusal(session, settings, experiment.owner_id)):
        raise CapacityError(refusal, settings.capacity_retry_after_s)
    if experiment.status != "succeeded":
        raise ConflictError(
            f"experiment {experiment.id} is {experiment.status}; re-analysis needs a succeeded "
            f"experiment (its stored representations)"
        )
    busy = session.scalar(
        select(func.count(Analysis.id)).where(
            Analysis.experiment_id == experiment.id, Analysis.status.in_(ACTIVE_STATUSES)
        )
    )
    if busy:
        raise ConflictError(f"experiment {experiment.id} has an analysis queued or running; wait for it")
    analysis = Analysis(id=new_id(), experiment_id=experiment.id, spec=analysis_spec)
    session.add(analysis)
    session.flush()
    return analysis


def finish_experiment(session: Session, experiment: Experiment) -> None:
    """Its aggregation is recorded: the experiment succeeded; or, with partial
    results, it is cancelled (it was being cancelled) or failed (naming each failed
    run's reason)."""
    if experiment.status == "cancelling":
        experiment.status, experiment.finished_at = "cancelled", utcnow()
        return
    error = _failed_runs_error(session, experiment)
    if error is not None:
        experiment.status, experiment.finished_at, experiment.error = "failed", utcnow(), error
        return
    experiment.status, experiment.finished_at = "succeeded", utcnow()


def fail_experiment(session: Session, experiment_id: str, error: str) -> None:
    """An experiment being aggregated fails with ``error`` (its aggregation failed
    for good); one being cancelled ends cancelled, its error saying so."""
    experiment = session.get(Experiment, experiment_id)
    if experiment is not None and experiment.status == "cancelling":
        experiment.status, experiment.finished_at, experiment.error = "cancelled", utcnow(), error
    elif experiment is not None and experiment.status in ACTIVE_STATUSES:
        experiment.status, experiment.finished_at, experiment.error = "failed", utcnow(), error


def start_analysis(analysis: Analysis) -> None:
    analysis.status, analysis.started_at = "running", utcnow()


def finish_analysis(analysis: Analysis, experiment: Experiment, spec: ExperimentSpec | dict[str, Any]) -> None:
    """The re-analysis is recorded: its settings become the experiment's (``spec``:
    the new spec, or an uploaded file's spec as a dict)."""
    experiment.spec = spec.model_dump(mode="json") if isinstance(spec, ExperimentSpec) else dict(spec)
    analysis.status, analysis.finished_at = "succeeded", utcnow()


def fail_analysis(session: Session, analysis_id: str, error: str) -> None:
    analysis = session.get(Analysis, analysis_id)
    if analysis is not None and analysis.status in ACTIVE_STATUSES:
        analysis.status, analysis.finished_at, analysis.error = "failed", utcnow(), error
