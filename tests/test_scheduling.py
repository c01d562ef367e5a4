"""The fair-share policy (fflab.scheduling) as pure functions, on hand-built inputs
with known answers."""

from __future__ import annotations

import math

import pytest

from fflab.scheduling import (
    Account,
    Active,
    Waiting,
    WorkerSlots,
    decay,
    decayed_seconds,
    estimated_starts,
    fair_order,
    free_slots,
    preemption_victim,
    running_cap,
)

HOUR = 3600.0


def waiting(user: str, count: int, first: int = 0, priority: str = "normal", submitted: float = 0.0) -> list[Waiting]:
    return [Waiting(first + i, user, priority, submitted + i) for i in range(count)]


def test_decayed_usage_is_the_integral_of_the_half_life_weight() -> None:
    # An hour that ended now, half-life one hour: (1 - 1/2) / (ln 2 / 3600) s.
    assert decayed_seconds(HOUR, 0, HOUR) == pytest.approx(0.5 * HOUR / math.log(2))
    # The same hour a half-life earlier counts half as much.
    assert decayed_seconds(2 * HOUR, HOUR, HOUR) == pytest.approx(0.25 * HOUR / math.log(2))
    # A very long half-life: plain run-time.
    assert decayed_seconds(600, 0, 1e12) == pytest.approx(600)
    assert decay(100, HOUR, HOUR) == pytest.approx(50) and decay(100, 0, HOUR) == 100
    with pytest.raises(ValueError, match="half_life_s"):
        decayed_seconds(10, 0, 0)
    with pytest.raises(ValueError, match="start before it ends"):
        decayed_seconds(0, 10, HOUR)


def test_least_usage_per_weight_goes_first_and_each_pick_is_charged() -> None:
    runs = waiting("alice", 4) + waiting("bob", 4, first=10, submitted=100)
    # alice used an hour, bob nothing: each pick charges bob 600 s, and his four runs
    # (2400 s) all go before alice's.
    order = fair_order(runs, {"alice": Account(usage_s=HOUR)}, charge_s=600)
    assert [w.user for w in order] == ["bob"] * 4 + ["alice"] * 4
    # Equal usage, equal weight: they alternate, the older submission first.
    assert [w.user for w in fair_order(runs, {}, 600, picks=4)] == ["alice", "bob", "alice", "bob"]
    # Weight 2 for alice: two of hers per one of bob's.
    weighted = fair_order(runs, {"alice": Account(weight=2.0)}, 600, picks=6)
    assert [w.user for w in weighted] == ["alice", "bob", "alice", "alice", "bob", "alice"]
    # Within a user: submission order.
    assert [w.run for w in order if w.user == "alice"] == [0, 1, 2, 3]


def test_running_cap_and_picks_bound_the_order() -> None:
    runs = waiting("alice", 5) + waiting("bob", 1, first=10)
    order = fair_order(runs, {"alice": Account(active=1)}, 600, picks=4, running_cap=2)
    # alice may add one run (one is active already); bob one; then nobody may.
    assert sorted(w.user for w in order) == ["alice", "bob"]
    assert running_cap(0.5, 4) == 2 and running_cap(0.1, 4) == 1 and running_cap(1.0, 3) == 3
    with pytest.raises(ValueError, match="fraction"):
        running_cap(0.0, 4)


def test_priorities_order_within_a_user_and_discount_usage_between_users() -> None:
    mixed = [Waiting(1, "alice", "low", 0), Waiting(2, "alice", "normal", 1), Waiting(3, "alice", "high", 2)]
    assert [w.run for w in fair_order(mixed, {}, 0)] == [3, 2, 1]
    # A high-priority run counts its user's usage at half: 150 s -> 75 < 100, it goes first ...
    ahead = [Waiting(1, "hi", "high", 5), Waiting(2, "norm", "normal", 0)]
    assert fair_order(ahead, {"hi": Account(usage_s=150), "norm": Account(usage_s=100)}, 0, picks=1)[0].user == "hi"
    # ... but not past a user with less than half its usage: 250 s -> 125 > 100.
    assert fair_order(ahead, {"hi": Account(usage_s=250), "norm": Account(usage_s=100)}, 0, picks=1)[0].user == "norm"
    with pytest.raises(ValueError, match="priority must be one of low, normal, high"):
        fair_order([Waiting(1, "a", "urgent", 0)], {}, 0)


def test_a_high_priority_user_does_not_starve_a_low_priority_one() -> None:
    """One slot, runs of 1 s, both users always waiting: the low-priority user's
    share settles at 1/5 (usage ratio 4 = 2 / 0.5), never 0."""
    used = {"hi": 0.0, "lo": 0.0}
    for step in range(500):
        backlog = [Waiting(2 * step, "hi", "high", step), Waiting(2 * step + 1, "lo", "low", step)]
        user = fair_order(backlog, {u: Account(usage_s=s) for u, s in used.items()}, 1.0, picks=1)[0].user
        used[user] += 1.0
    assert used["lo"] / 500 == pytest.approx(0.2, abs=0.01)


def test_free_slots_count_a_worker_shared_by_two_queues_once() -> None:
    shared = [WorkerSlots(frozenset({"cpu", "gpu"}), 1)]
    assert free_slots(shared, {"gpu": 1}, ["cpu", "gpu"]) == {"cpu": 0, "gpu": 0}
    assert free_slots(shared, {}, ["cpu", "gpu"]) == {"cpu": 1, "gpu": 1}
    dedicated = [WorkerSlots(frozenset({"gpu"}), 1)] * 4 + [WorkerSlots(frozenset({"cpu"}), 3)]
    assert free_slots(dedicated, {"gpu": 3, "cpu": 1}, ["cpu", "gpu", "none"]) == {"cpu": 2, "gpu": 1, "none": 0}


def test_preemption_takes_the_longest_run_of_the_most_over_served_user() -> None:
    running = [Active(1, "alice", 500), Active(2, "alice", 900), Active(3, "bob", 2000)]
    accounts = {"alice": Account(usage_s=5000, active=2), "bob": Account(usage_s=1000, active=1)}
    starved = [Waiting(10, "carol", "normal", 0)]
    assert preemption_victim(starved, {10: 700}, running, accounts, 600) == 2  # alice's longest, not bob's
    assert preemption_victim(starved, {10: 500}, running, accounts, 600) is None  # not waited long enough
    asked = [Active(1, "alice", 500, preempting=True)] + running[1:]
    assert preemption_victim(starved, {10: 700}, asked, accounts, 600) is None  # one at a time
    # alice waiting herself is not under-served compared with anybody: no victim.
    assert preemption_victim([Waiting(11, "alice", "normal", 0)], {11: 700}, running[:2],
                             {"alice": Account(usage_s=5000, active=2)}, 600) is None


def test_estimated_starts_replay_the_slots() -> None:
    # Two slots busy for 100 s and 300 s more; runs of 600 s.
    assert estimated_starts(4, 2, 0, [100, 300], 600) == [100, 300, 700, 900]
    assert estimated_starts(2, 2, 1, [50], 600) == [0, 50]
    assert estimated_starts(2, 0, 0, [], 600) == [None, None]
