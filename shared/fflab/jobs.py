"""The life of experiments, runs and analyses in the database, shared by the API
and the workers. Sending tasks is left to a ``Dispatcher`` (the Celery one lives
in worker/celery_app.py).

Statuses. A run: queued -> running -> succeeded | failed | cancelled. An
experiment: queued until its first run starts, running until the aggregation
step ends (succeeded) or it is cancelled. A run that fails for good keeps its
reason (e.g. "loss became NaN at layer 2 epoch 3") and does not stop the others:
once every run is final, an experiment with a failed run ends ``failed`` without
aggregation, its error naming each failed run and its reason. The last run to end triggers the aggregation, counted in the
database under a lock on the experiment row, so no chord (and no result backend)
is needed.

Fair order. Runs are not all sent to the broker at submission: each queue holds at
most ``dispatch_window`` run tasks that no worker has started. When a slot frees
(a run starts, ends or is cancelled, or an experiment is submitted), the next run
comes from the user with the fewest runs started or in the broker, ties going to
the user whose waiting run is oldest; a user's runs go in submission order. A user
with one long experiment therefore does not hold back a user who submits later.

Lost workers. A worker refreshes ``Run.heartbeat_at`` while it runs a run (a
thread, and every progress write). ``reap_lost_runs`` (the workers' periodic
sweep) requeues a running run whose heartbeat is older than
``run_heartbeat_timeout_s`` under a new task id, so that a late redelivery of the
old message is ignored; after ``task_max_attempts`` deliveries the run fails with
"worker lost N times". The requeued run resumes from its last checkpoint in the
artifact storage (after each FF layer, every FFLAB_CHECKPOINT_EVERY_EPOCHS otherwise).

Queues. Runs go to the queue of their spec.device (Settings.queue_for_device);
aggregations and re-analyses, which need no GPU, go to the cpu queue.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import exists, func, select, text, update
from sqlalchemy.orm import Session

from fflab.db import ACTIVE_STATUSES, FINAL_STATUSES, Analysis, Experiment, Run, User, utcnow
from fflab.settings import Settings
from fflab.spec import ExperimentSpec

# Any constant shared by every process; "FFDS" (fflab dispatch) in ASCII.
DISPATCH_LOCK_ID = 0x4646_4453


class Dispatcher(Protocol):
    def send_run(self, run_pk: int, queue: str, task_id: str) -> None: ...
    def send_aggregate(self, experiment_id: str, queue: str) -> None: ...
    def send_analysis(self, analysis_id: str, queue: str) -> None: ...
    def revoke(self, task_ids: list[str]) -> None: ...


class CapacityError(Exception):
    """The user's cap on queued plus running runs would be exceeded."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConflictError(Exception):
    """The operation does not apply in the object's current status."""


def new_id() -> str:
    return uuid.uuid4().hex


def active_runs(session: Session, owner_id: int) -> int:
    return session.scalar(
        select(func.count(Run.id))
        .join(Experiment)
        .where(Experiment.owner_id == owner_id, Run.status.in_(ACTIVE_STATUSES))
    ) or 0


def create_experiment(
    session: Session, settings: Settings, owner: User, spec: ExperimentSpec, visibility: str
) -> Experiment:
    keys = spec.runs()
    # Lock the owner's row until commit, so that concurrent submissions of one user
    # count active runs one after the other (the cap holds); other users are not held
    # up. On SQLite the lock is the database's write lock (fflab.db.session).
    session.execute(select(User.id).where(User.id == owner.id).with_for_update())
    active = active_runs(session, owner.id)
    cap = settings.max_active_runs_per_user
    if active + len(keys) > cap:
        raise CapacityError(
            f"this experiment has {len(keys)} runs and you have {active} queued or running; "
            f"the limit is {cap} per user (FFLAB_MAX_ACTIVE_RUNS_PER_USER). Wait for runs to "
            f"finish or cancel some.",
            settings.capacity_retry_after_s,
        )
    queue = settings.queue_for_device(spec.device)
    experiment = Experiment(
        id=new_id(), owner=owner, name=spec.name, visibility=visibility,
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


def _lock_dispatch(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": DISPATCH_LOCK_ID})


def dispatch(session: Session, settings: Settings, dispatcher: Dispatcher) -> int:
    """Hand waiting runs to the broker in fair order, up to the window of each queue.
    Commits. Returns how many runs were sent."""
    _lock_dispatch(session)
    in_broker = (Run.status == "queued") & Run.task_id.is_not(None)
    waiting = session.execute(
        select(Run.id, Run.queue, Experiment.owner_id)
        .join(Experiment)
        .where(Run.status == "queued", Run.task_id.is_(None))
        .order_by(Run.id)
    ).all()
    if not waiting:
        session.commit()
        return 0
    load: dict[int, int] = defaultdict(int)
    for owner_id, count in session.execute(
        select(Experiment.owner_id, func.count(Run.id))
        .join(Experiment)
        .where((Run.status == "running") | in_broker)
        .group_by(Experiment.owner_id)
    ):
        load[owner_id] = count
    pending = dict(
        session.execute(select(Run.queue, func.count(Run.id)).where(in_broker).group_by(Run.queue)).all()
    )
    chosen: list[tuple[int, str, str]] = []
    for queue in sorted({row.queue for row in waiting}):
        slots = settings.dispatch_window - pending.get(queue, 0)
        by_owner: dict[int, list[int]] = defaultdict(list)
        for row in waiting:
            if row.queue == queue:
                by_owner[row.owner_id].append(row.id)
        while slots > 0 and by_owner:
            owner_id = min(by_owner, key=lambda owner: (load[owner], by_owner[owner][0]))
            run_pk = by_owner[owner_id].pop(0)
            if not by_owner[owner_id]:
                del by_owner[owner_id]
            task_id = new_id()
            claimed = session.execute(
                update(Run)
                .where(Run.id == run_pk, Run.status == "queued", Run.task_id.is_(None))
                .values(task_id=task_id, dispatched_at=utcnow())
            ).rowcount
            if claimed:
                chosen.append((run_pk, queue, task_id))
                load[owner_id] += 1
                slots -= 1
    session.commit()
    for run_pk, queue, task_id in chosen:
        try:
            dispatcher.send_run(run_pk, queue, task_id)
        except Exception:
            session.execute(update(Run).where(Run.id == run_pk, Run.task_id == task_id).values(task_id=None))
            session.commit()
            raise
    return len(chosen)


def claim_run(session: Session, settings: Settings, run_pk: int, task_id: str) -> Run | None:
    """Mark a run running for the task delivering it; None when the run was
    cancelled, finished or handed to another task meanwhile. A redelivered task
    (its worker died) claims again; after ``task_max_attempts`` the run fails."""
    # Lock the experiment before the run, the order of finish_run and of deleting an
    # experiment (its runs go by cascade): the other order deadlocks with a DELETE.
    experiment_id = session.scalar(select(Run.experiment_id).where(Run.id == run_pk))
    if experiment_id is not None:
        session.get(Experiment, experiment_id, with_for_update=True)
    run = session.get(Run, run_pk, with_for_update=True)
    if run is None or run.task_id != task_id or run.status not in ACTIVE_STATUSES:
        return None
    if run.attempts >= settings.task_max_attempts:
        finish_run(session, run, "failed",
                   error=f"run {run.run_id} was delivered {run.attempts} times and never finished "
                         f"(worker lost); the limit is FFLAB_TASK_MAX_ATTEMPTS={settings.task_max_attempts}")
        return None
    experiment = run.experiment
    if experiment.status not in ACTIVE_STATUSES:
        finish_run(session, run, "cancelled")
        return None
    now = utcnow()
    run.status, run.started_at, run.attempts, run.error = "running", now, run.attempts + 1, None
    run.heartbeat_at, run.progress = now, None
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
    if remaining or experiment.status not in ACTIVE_STATUSES or experiment.aggregation_queued_at:
        return None
    failed = list(session.execute(
        select(Run.run_id, Run.error).where(Run.experiment_id == experiment.id, Run.status == "failed")
        .order_by(Run.id)
    ))
    if failed:  # every run is final: the experiment fails, naming each failed run's reason
        experiment.status, experiment.finished_at = "failed", utcnow()
        reasons = "; ".join(f"run {run_id}: {reason}" for run_id, reason in failed[:10])
        more = f"; and {len(failed) - 10} more (GET .../runs)" if len(failed) > 10 else ""
        experiment.error = f"{len(failed)} of {experiment.runs_total} runs failed: {reasons}{more}"
        return None
    experiment.aggregation_queued_at = utcnow()
    return experiment.id


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
    should_stop sees the experiment's status). Returns task ids to revoke."""
    if experiment.status in FINAL_STATUSES:
        raise ConflictError(f"experiment {experiment.id} has already {experiment.status}; "
                            f"only queued or running experiments can be cancelled")
    experiment.status, experiment.finished_at = "cancelled", utcnow()
    for analysis in session.scalars(
        select(Analysis).where(Analysis.experiment_id == experiment.id, Analysis.status.in_(ACTIVE_STATUSES))
    ):
        analysis.status, analysis.finished_at = "cancelled", utcnow()
    return _cancel_waiting_runs(session, experiment)


def unsent_aggregations(session: Session) -> list[str]:
    """Experiments whose runs all ended without their aggregation being queued (its
    sending failed); marks them queued and returns their ids for the caller to send."""
    active = exists().where(Run.experiment_id == Experiment.id, Run.status.in_(ACTIVE_STATUSES))
    experiments = list(session.scalars(
        select(Experiment)
        .where(Experiment.status.in_(ACTIVE_STATUSES), Experiment.aggregation_queued_at.is_(None), ~active)
        .with_for_update(skip_locked=True)
    ))
    for experiment in experiments:
        experiment.aggregation_queued_at = utcnow()
    return [experiment.id for experiment in experiments]


def reap_lost_runs(session: Session, settings: Settings, now: datetime | None = None) -> tuple[int, int]:
    """Runs marked running whose heartbeat (or start) is older than
    ``run_heartbeat_timeout_s``: their worker vanished (killed, machine lost). Each is
    requeued (status queued, no task: the next dispatch sends it under a new task id)
    or, after ``task_max_attempts`` deliveries, failed with "worker lost N times".
    Commits after each run. Returns (requeued, failed)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.run_heartbeat_timeout_s)
    stale = [
        row.id for row in session.execute(
            select(Run.id, Run.heartbeat_at, Run.started_at).where(Run.status == "running")
        )
        if (row.heartbeat_at or row.started_at or now) < cutoff
    ]
    session.commit()
    requeued = failed = 0
    for run_pk in stale:
        # Experiment before run, the lock order of claim_run and finish_run.
        experiment_id = session.scalar(select(Run.experiment_id).where(Run.id == run_pk))
        if experiment_id is not None:
            session.get(Experiment, experiment_id, with_for_update=True, populate_existing=True)
        run = session.get(Run, run_pk, with_for_update=True, populate_existing=True)
        if run is None or run.status != "running" or (run.heartbeat_at or run.started_at or now) >= cutoff:
            session.commit()  # finished or heard from meanwhile
            continue
        if run.experiment.status not in ACTIVE_STATUSES:
            finish_run(session, run, "cancelled")
        elif run.attempts >= settings.task_max_attempts:
            finish_run(session, run, "failed", error=(
                f"worker lost {run.attempts} times: no heartbeat for "
                f"{settings.run_heartbeat_timeout_s:g} s (FFLAB_RUN_HEARTBEAT_TIMEOUT_S) on each of its "
                f"{run.attempts} deliveries; the limit is FFLAB_TASK_MAX_ATTEMPTS={settings.task_max_attempts}"))
            failed += 1
        else:
            run.status, run.task_id, run.dispatched_at = "queued", None, None
            run.heartbeat_at, run.progress, run.started_at = None, None, None
            requeued += 1
        session.commit()
    return requeued, failed


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
        count += session.execute(
            update(Run).where(Run.id == run_pk, Run.status == "queued", Run.task_id == task_id)
            .values(task_id=None, dispatched_at=None)
        ).rowcount
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
            .where(Experiment.status.in_(ACTIVE_STATUSES), Experiment.aggregation_queued_at.is_not(None))
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


def should_stop(session: Session, run_pk: int) -> bool:
    row = session.execute(
        select(Run.status, Experiment.status).join(Experiment).where(Run.id == run_pk)
    ).first()
    return row is None or row[0] != "running" or row[1] not in ACTIVE_STATUSES


def create_analysis(session: Session, experiment: Experiment, analysis_spec: dict[str, Any]) -> Analysis:
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
