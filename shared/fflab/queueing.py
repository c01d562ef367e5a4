"""The queue as fair-share dispatch sees it: read from the database in one
snapshot (``read_queues``), then what to send (``plan_dispatch``), where each
waiting experiment stands (``experiment_places``) and each user's share
(``user_shares``). The policy itself is fflab.scheduling (pure functions); the
state transitions (claiming runs, requeueing a preempted one) are fflab.jobs.

What the snapshot holds, per queue (``cpu``, ``gpu`` with the deployment's prefix):

- its **slots**: the concurrency of the live workers (heard from within
  ``worker_heartbeat_timeout_s``) that consume it;
- its **waiting** runs (queued, not handed to the broker), **in-broker** runs
  (queued with a task id) and **running** runs;
- each user's **account**: decayed run-time of ended deliveries over the last 20
  half-lives (``Settings.fair_share_half_life_s``; older usage weighs under a
  millionth), the run-time of earlier deliveries of requeued runs
  (``Run.earlier_seconds``, as if it ended at ``Run.earlier_until``), and their
  runs running or in the broker, each as max(elapsed, expected run length);
- the **expected run length**: the median length of the runs that succeeded on the
  queue within the window, else ``Settings.expected_run_s``.

The cap on running runs (``Settings.max_running_fraction`` of the queue's slots)
and the free slots are enforced by ``jobs.dispatch`` under its lock (PostgreSQL's
advisory lock; SQLite's write lock), so concurrent dispatchers cannot exceed them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import median
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from fflab import scheduling
from fflab.db import Experiment, Run, User, Worker, utcnow
from fflab.scheduling import Account, Active, Waiting, WorkerSlots
from fflab.settings import Settings

HISTORY_HALF_LIVES = 20
MEDIAN_OF_LAST = 200


class Preempted(Exception):
    """Raised in a worker after a checkpoint was stored, when the dispatcher asked
    the run to stop there: the run goes back to waiting (fflab.jobs.requeue_preempted)."""


def bank_delivery(run: Run, now: datetime) -> None:
    """A delivery ends without ending the run (preempted, or its worker lost): its
    run-time stays in the user's usage. Clears any preemption request."""
    if run.started_at is not None:
        run.earlier_seconds = (run.earlier_seconds or 0.0) + max(0.0, (now - run.started_at).total_seconds())
        run.earlier_until = now
    run.preempt_requested_at = None


@dataclass
class QueueState:
    """One queue in a snapshot. ``waited_s``: seconds since submission, by run id."""

    name: str
    slots: int
    charge_s: float
    cap: int
    waiting: list[Waiting] = field(default_factory=list)
    in_broker: list[int] = field(default_factory=list)
    running: list[Active] = field(default_factory=list)
    accounts: dict[int, Account] = field(default_factory=dict)
    usage_s: dict[int, float] = field(default_factory=dict)  # decayed ended + elapsed of running
    waited_s: dict[int, float] = field(default_factory=dict)


@dataclass
class Snapshot:
    now: datetime
    workers: list[WorkerSlots]
    queues: dict[str, QueueState]
    experiment_of: dict[int, str]  # waiting and in-broker run -> experiment id
    users: dict[int, User]

    def active(self) -> Counter[str]:
        """Runs running or in the broker, per queue."""
        return Counter({name: len(q.running) + len(q.in_broker) for name, q in self.queues.items()})

    def free(self) -> dict[str, int]:
        return scheduling.free_slots(self.workers, self.active(), self.queues)


def _seconds(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())


def read_queues(session: Session, settings: Settings, now: datetime | None = None) -> Snapshot:
    """The state fair-share dispatch decides on, in a few queries (see the module's
    docstring). Every queue named by a worker or a run is in it."""
    now = now or utcnow()
    half_life = settings.fair_share_half_life_s
    cutoff = now - timedelta(seconds=HISTORY_HALF_LIVES * half_life)
    beat_cutoff = now - timedelta(seconds=settings.worker_heartbeat_timeout_s)
    workers = [
        WorkerSlots(frozenset(filter(None, queues.split(","))), max(1, concurrency or 1))
        for queues, concurrency in session.execute(
            select(Worker.queues, Worker.concurrency).where(Worker.heartbeat_at >= beat_cutoff))
    ]
    current = session.execute(
        select(Run.id, Run.queue, Run.status, Run.task_id, Run.created_at, Run.started_at,
               Run.preempt_requested_at, Run.experiment_id, Experiment.owner_id, Experiment.priority)
        .join(Experiment).where(Run.status.in_(("queued", "running"))).order_by(Run.id)
    ).all()
    ended = session.execute(
        select(Run.queue, Run.status, Experiment.owner_id, Run.started_at, Run.finished_at)
        .join(Experiment).where(Run.finished_at >= cutoff, Run.started_at.is_not(None))
        .order_by(Run.finished_at.desc())
    ).all()
    banked = session.execute(
        select(Run.queue, Experiment.owner_id, Run.earlier_seconds, Run.earlier_until)
        .join(Experiment).where(Run.earlier_until >= cutoff)
    ).all()
    lengths: dict[str, list[float]] = defaultdict(list)
    for row in ended:
        if row.status == "succeeded" and len(lengths[row.queue]) < MEDIAN_OF_LAST:
            lengths[row.queue].append(_seconds(row.finished_at, row.started_at))
    names = ({q for w in workers for q in w.queues} | {row.queue for row in current}
             | {row.queue for row in ended} | {row.queue for row in banked})
    queues: dict[str, QueueState] = {}
    for name in sorted(names):
        slots = scheduling.capacity(workers, name)
        queues[name] = QueueState(
            name=name, slots=slots,
            charge_s=median(lengths[name]) if lengths[name] else settings.expected_run_s,
            cap=scheduling.running_cap(settings.max_running_fraction, slots) if slots else 0,
        )

    def account(queue: str, user: int) -> Account:
        state = queues[queue]
        if user not in state.accounts:
            state.accounts[user] = Account()
            state.usage_s[user] = 0.0
        return state.accounts[user]

    for row in ended:
        usage = scheduling.decayed_seconds(_seconds(now, row.started_at), _seconds(now, row.finished_at), half_life)
        account(row.queue, row.owner_id).usage_s += usage
        queues[row.queue].usage_s[row.owner_id] += usage
    for banked_row in banked:
        usage = scheduling.decay(banked_row.earlier_seconds or 0.0, _seconds(now, banked_row.earlier_until), half_life)
        account(banked_row.queue, banked_row.owner_id).usage_s += usage
        queues[banked_row.queue].usage_s[banked_row.owner_id] += usage
    experiment_of: dict[int, str] = {}
    for current_row in current:
        state, held = queues[current_row.queue], account(current_row.queue, current_row.owner_id)
        if current_row.status == "running":
            elapsed = _seconds(now, current_row.started_at or now)
            state.running.append(Active(current_row.id, current_row.owner_id, elapsed, current_row.preempt_requested_at is not None))
            state.usage_s[current_row.owner_id] += elapsed
            held.committed_s += max(elapsed, state.charge_s)
            held.active += 1
            continue
        experiment_of[current_row.id] = current_row.experiment_id
        if current_row.task_id is not None:
            state.in_broker.append(current_row.id)
            held.committed_s += state.charge_s
            held.active += 1
        else:
            state.waiting.append(Waiting(current_row.id, current_row.owner_id, current_row.priority, current_row.created_at.timestamp()))
            state.waited_s[current_row.id] = _seconds(now, current_row.created_at)
    user_ids = {user for state in queues.values() for user in state.accounts}
    users = {user.id: user for user in session.scalars(select(User).where(User.id.in_(user_ids)))}
    for state in queues.values():
        for user, held in state.accounts.items():
            held.weight = users[user].share_weight if user in users else 1.0
    return Snapshot(now, workers, queues, experiment_of, users)


@dataclass(frozen=True)
class DispatchPlan:
    """Runs to hand to the broker, with their queue, in order; runs to ask to stop
    at their next checkpoint."""

    send: list[tuple[int, str]]
    preempt: list[int]


def plan_dispatch(snapshot: Snapshot, settings: Settings) -> DispatchPlan:
    """Fill each queue's free slots in fair-share order, within each user's cap;
    with ``Settings.preemption``, name a run to preempt on a queue with no free slot
    where an under-served user waited over ``preempt_after_s``."""
    active = snapshot.active()
    send: list[tuple[int, str]] = []
    preempt: list[int] = []
    for name, state in snapshot.queues.items():
        if not state.waiting:
            continue
        free = scheduling.free_slots(snapshot.workers, active, [name])[name]
        if free == 0:
            if settings.preemption and state.slots:
                victim = scheduling.preemption_victim(state.waiting, state.waited_s, state.running, state.accounts,
                                                      settings.preempt_after_s, state.cap)
                if victim is not None:
                    preempt.append(victim)
            continue
        order = scheduling.fair_order(state.waiting, state.accounts, state.charge_s, picks=free,
                                      running_cap=state.cap)
        send += [(item.run, name) for item in order]
        active[name] += len(order)
    return DispatchPlan(send, preempt)


@dataclass(frozen=True)
class Place:
    """Where an experiment's next run stands: 1 = next to start (handed to a worker,
    or first to be); runs of others (and its own) ahead of it; expected start."""

    queue: str
    position: int
    runs_ahead: int
    estimated_start: datetime | None


def queue_order(snapshot: Snapshot, name: str) -> tuple[list[int], list[float | None]]:
    """Every run waiting on a queue in the order it would start if nothing else were
    submitted (runs in the broker first), and seconds until each starts."""
    state = snapshot.queues[name]
    order = state.in_broker + [w.run for w in scheduling.fair_order(state.waiting, state.accounts, state.charge_s)]
    remaining = [state.charge_s - run.elapsed_s for run in state.running]
    free = len(state.in_broker) + snapshot.free().get(name, 0)
    return order, scheduling.estimated_starts(len(order), state.slots, free, remaining, state.charge_s)


def experiment_places(snapshot: Snapshot) -> dict[str, Place]:
    """Each experiment with a run waiting: its place (its first run in the order)."""
    places: dict[str, Place] = {}
    for name in snapshot.queues:
        order, starts = queue_order(snapshot, name)
        for index, (run, start) in enumerate(zip(order, starts)):
            experiment = snapshot.experiment_of[run]
            if experiment not in places:
                places[experiment] = Place(name, index + 1, index, None if start is None
                                           else snapshot.now + timedelta(seconds=start))
    return places


class PlacesCache:
    """``experiment_places`` of a recent snapshot, shared by a process's requests.

    Every experiment's status poll would otherwise read the whole queue (five
    queries) to report its place, which is the same for every poller. A snapshot
    younger than ``ttl_s`` (``Settings.queue_places_ttl_s``) is reused; an older one,
    or one that misses an experiment that has waiting runs (submitted since), is
    read again by one thread while the others wait for it. ``ttl_s = 0`` reads
    every time. (Not a cachetools cache: those expire entries, but neither read
    one snapshot for every key at once nor let one thread read while the rest wait.)
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.clock = ttl_s, clock
        self._lock = threading.Lock()
        self._places: dict[str, Place] = {}
        self._read_at: float | None = None

    def place(self, session: Session, settings: Settings, experiment_id: str) -> Place | None:
        """The place of an experiment with waiting runs (None if it has none after all)."""
        read_at = self._read_at
        if read_at is not None and self.clock() - read_at < self.ttl_s and experiment_id in self._places:
            return self._places[experiment_id]
        with self._lock:
            if self._read_at == read_at:  # nobody read it while this thread waited
                self._places = experiment_places(read_queues(session, settings))
                self._read_at = self.clock()
            return self._places.get(experiment_id)


@dataclass(frozen=True)
class UserShare:
    """A user's standing on a queue. ``usage_s``: decayed run-time (running runs at
    their elapsed time); ``share``: its fraction of all users' usage; ``target``:
    the user's weight over the weights of users with usage or waiting runs."""

    user: int
    name: str
    weight: float
    max_priority: str
    usage_s: float
    share: float
    target: float
    running: int
    waiting: int
    oldest_wait_s: float | None


def user_shares(snapshot: Snapshot, name: str) -> list[UserShare]:
    state = snapshot.queues[name]
    waiting: dict[int, list[float]] = defaultdict(list)
    for item in state.waiting:
        waiting[cast(int, item.user)].append(state.waited_s[item.run])  # the queues' users are user ids
    running = Counter(run.user for run in state.running)
    users = sorted(set(state.accounts) | set(waiting))
    total_usage = sum(state.usage_s.get(user, 0.0) for user in users)
    weights = {user: snapshot.users[user].share_weight if user in snapshot.users else 1.0 for user in users}
    total_weight = sum(weights.values())
    return [
        UserShare(
            user=user, name=snapshot.users[user].name if user in snapshot.users else str(user),
            weight=weights[user],
            max_priority=snapshot.users[user].max_priority if user in snapshot.users else "normal",
            usage_s=round(state.usage_s.get(user, 0.0), 3),
            share=round(state.usage_s.get(user, 0.0) / total_usage, 4) if total_usage else 0.0,
            target=round(weights[user] / total_weight, 4) if total_weight else 0.0,
            running=running[user], waiting=len(waiting[user]),
            oldest_wait_s=round(max(waiting[user]), 3) if waiting[user] else None,
        )
        for user in users
    ]
