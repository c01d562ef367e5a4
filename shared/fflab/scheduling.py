"""The fair-share policy: which waiting runs the workers get next. Pure functions
over plain values (no database, no clock): fflab.queueing reads the state and
fflab.jobs.dispatch acts on the answer.

The rule (the one Slurm's fair-share and Kueue's fair sharing follow): pending work
is ordered by each user's recent use of the queue's workers, not by arrival.

- **Usage.** A user's usage of a queue is the run-time of their runs on it, each
  second weighted by ``2 ** -(age / half_life)`` (``decayed_seconds``): an hour
  used a half-life ago counts half an hour. Runs still running or already handed
  to the broker count too, each as at least the queue's expected run length
  (``Account.committed_s``), so that one round of dispatch spreads free slots over
  users instead of giving them all to the one who was behind.
- **Share.** ``score = (usage + committed) / weight * PRIORITY_FACTOR[priority]``:
  usage per unit of the user's weight (an admin sets weights; default 1). The
  waiting run of the user with the lowest score goes first; ties go to the higher
  priority, then to the oldest run. Within a user, runs go by priority, then in
  submission order.
- **Priority.** A high-priority run counts its user's usage at half (low: double),
  so it goes ahead of users with up to twice its user's usage per weight. Starvation
  is bounded: every run a user starts adds to their usage, so a high-priority user
  who keeps submitting overtakes the others only until their usage is twice theirs;
  a user with no recent usage scores 0 and goes first whatever the others' priority.
- **Slots.** Only as many runs go to the broker as there are free worker slots
  (``free_slots``), so the order is decided when a slot frees, not at submission.
- **Running cap.** A user may have at most ``running_cap`` runs running or in the
  broker on a queue: a fraction of its slots (at least one).
- **Preemption** (when enabled): ``preemption_victim`` names the run to stop at its
  next checkpoint when an under-served user has waited too long and no slot is free.
- **Estimated starts.** ``estimated_starts`` replays the queue: each slot frees when
  its run has run the expected run length, and takes the next run of the order.

Every time is in seconds. Unknown priorities raise ``ValueError``.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PRIORITIES = ("low", "normal", "high")
# Multiplies a user's usage per weight when their next run has this priority.
PRIORITY_FACTOR = {"low": 2.0, "normal": 1.0, "high": 0.5}


def priority_rank(priority: str) -> int:
    """0 (low), 1 (normal), 2 (high)."""
    if priority not in PRIORITY_FACTOR:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}; got {priority!r}")
    return PRIORITIES.index(priority)


def decayed_seconds(started_ago_s: float, ended_ago_s: float, half_life_s: float) -> float:
    """The run-time from ``started_ago_s`` to ``ended_ago_s`` seconds ago, each second
    weighted by 2 ** -(its age / half_life_s): the integral of that weight over the
    interval. A run that ended just now after an hour, with a half-life of an hour,
    counts 0.72 h."""
    if half_life_s <= 0:
        raise ValueError(f"half_life_s must be > 0; got {half_life_s}")
    if started_ago_s < ended_ago_s:
        raise ValueError(f"the run must start before it ends; started {started_ago_s} s ago, "
                         f"ended {ended_ago_s} s ago")
    rate = math.log(2) / half_life_s
    return (math.exp(-rate * max(ended_ago_s, 0.0)) - math.exp(-rate * max(started_ago_s, 0.0))) / rate


def decay(seconds: float, ago_s: float, half_life_s: float) -> float:
    """``seconds`` of usage that ended ``ago_s`` seconds ago, decayed as one block."""
    if half_life_s <= 0:
        raise ValueError(f"half_life_s must be > 0; got {half_life_s}")
    factor: float = 2.0 ** (-max(ago_s, 0.0) / half_life_s)
    return seconds * factor


@dataclass(frozen=True)
class Waiting:
    """A run waiting for a slot: its id, its user, its experiment's priority and when
    it was submitted (any clock; only the order matters)."""

    run: int
    user: Hashable
    priority: str
    submitted: float


@dataclass
class Account:
    """A user's standing on one queue. ``usage_s``: decayed run-time of ended
    deliveries; ``committed_s``: their runs running or in the broker, each counted
    as max(elapsed, expected run length); ``active``: how many such runs;
    ``weight`` > 0."""

    usage_s: float = 0.0
    committed_s: float = 0.0
    active: int = 0
    weight: float = 1.0

    def score(self, priority: str) -> float:
        if self.weight <= 0:
            raise ValueError(f"weight must be > 0; got {self.weight}")
        priority_rank(priority)
        return (self.usage_s + self.committed_s) / self.weight * PRIORITY_FACTOR[priority]


def fair_order(waiting: Iterable[Waiting], accounts: Mapping[Any, Account], charge_s: float,
               picks: int | None = None, running_cap: int | None = None) -> list[Waiting]:
    """The next ``picks`` runs (all when None) in fair-share order. Each pick adds
    ``charge_s`` (the expected run length) to its user's committed time and one to
    their active runs; a user with ``running_cap`` active runs gets no more. Users
    missing from ``accounts`` have no usage and weight 1. ``accounts`` is not changed."""
    if charge_s < 0:
        raise ValueError(f"charge_s must be >= 0; got {charge_s}")
    queues: dict[Hashable, list[Waiting]] = defaultdict(list)
    for item in waiting:
        queues[item.user].append(item)
    for items in queues.values():  # within a user: priority, then submission order
        items.sort(key=lambda w: (-priority_rank(w.priority), w.submitted, w.run))
        items.reverse()  # pop() from the end
    standing = {user: Account(**vars(accounts[user])) if user in accounts else Account() for user in queues}
    order: list[Waiting] = []
    limit = sum(len(items) for items in queues.values()) if picks is None else picks
    while len(order) < limit:
        candidates = [user for user, items in queues.items()
                      if items and (running_cap is None or standing[user].active < running_cap)]
        if not candidates:
            break

        def key(user: Hashable) -> tuple[float, int, float, int]:
            head = queues[user][-1]
            return standing[user].score(head.priority), -priority_rank(head.priority), head.submitted, head.run

        user = min(candidates, key=key)
        order.append(queues[user].pop())
        standing[user].committed_s += charge_s
        standing[user].active += 1
    return order


def running_cap(fraction: float, slots: int) -> int:
    """Runs one user may have running (or in the broker) on a queue of ``slots``
    slots: ``fraction`` of them, rounded down, at least one."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    return max(1, math.floor(fraction * slots + 1e-9))


@dataclass(frozen=True)
class WorkerSlots:
    """A live worker: the queues it consumes and how many runs it takes at once."""

    queues: frozenset[str]
    slots: int


def capacity(workers: Iterable[WorkerSlots], queue: str) -> int:
    """Slots of the workers that consume ``queue``."""
    return sum(worker.slots for worker in workers if queue in worker.queues)


def free_slots(workers: Sequence[WorkerSlots], active: Mapping[str, int], queues: Collection[str]) -> dict[str, int]:
    """Free slots per queue: the slots of the workers consuming it less the runs
    running or in the broker on any queue those workers consume (a worker of the
    cpu and gpu queues with one slot is busy with a run of either)."""
    free = {}
    for queue in queues:
        serving = [worker for worker in workers if queue in worker.queues]
        shared = set().union(*(worker.queues for worker in serving)) if serving else set()
        free[queue] = max(0, capacity(serving, queue) - sum(active.get(q, 0) for q in shared))
    return free


@dataclass(frozen=True)
class Active:
    """A run running on a queue: its id, its user, how long it has run, and whether
    it was asked to stop at its next checkpoint already."""

    run: int
    user: Hashable
    elapsed_s: float
    preempting: bool = False


def preemption_victim(waiting: Iterable[Waiting], waited_s: Mapping[int, float], running: Sequence[Active],
                      accounts: Mapping[Any, Account], wait_limit_s: float,
                      running_cap: int | None = None) -> int | None:
    """The run to stop at its next checkpoint (and requeue), or None: when a waiting
    user has a run that waited (``waited_s`` by run id) longer than ``wait_limit_s``
    and may run more (below ``running_cap``), and a user with running runs scores
    higher (is over-served compared with them), the longest-running run of the
    highest-scoring such user. The caller asks only when no slot is free. One at a
    time: None while a run is being stopped already."""
    if any(run.preempting for run in running):
        return None
    standing = {user: accounts.get(user, Account()) for user in {run.user for run in running}}
    starved = [item for item in waiting if waited_s.get(item.run, 0.0) > wait_limit_s
               and (running_cap is None or accounts.get(item.user, Account()).active < running_cap)]
    if not starved or not running:
        return None
    neediest = min(starved, key=lambda item: (accounts.get(item.user, Account()).score(item.priority),
                                               item.submitted, item.run))
    need = accounts.get(neediest.user, Account()).score(neediest.priority)
    victims = [user for user, account in standing.items()
               if user != neediest.user and account.score("normal") > need]
    if not victims:
        return None
    over = max(victims, key=lambda user: (standing[user].score("normal"), str(user)))
    return max((run for run in running if run.user == over), key=lambda run: (run.elapsed_s, -run.run)).run


def estimated_starts(count: int, slots: int, free: int, remaining_s: Iterable[float],
                     charge_s: float) -> list[float | None]:
    """Seconds from now until each of the next ``count`` runs of the order starts:
    ``free`` slots now, and a slot for each running run when its ``remaining_s``
    (expected length less elapsed, at least 0) is over; every run then takes
    ``charge_s``. None for every run when the queue has no slots (no worker)."""
    if slots <= 0:
        return [None] * count
    frees = [0.0] * max(free, 0) + sorted(max(0.0, r) for r in remaining_s)
    frees = frees[:slots] if len(frees) > slots else frees + [0.0] * (slots - len(frees))
    heapq.heapify(frees)
    starts: list[float | None] = []
    for _ in range(count):
        start = heapq.heappop(frees)
        starts.append(start)
        heapq.heappush(frees, start + charge_s)
    return starts
