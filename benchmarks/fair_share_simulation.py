"""Scheduling simulation: the real dispatcher (fflab.jobs.dispatch) against a real
database, with fake runs of fixed lengths on a virtual clock.

    python -m benchmarks.fair_share_simulation                  # SQLite in a temporary folder
    python -m benchmarks.fair_share_simulation --database-url postgresql+psycopg://postgres@127.0.0.1/db

Everything but the training is the service's own code: experiments are created
with ``jobs.create_experiment`` (the per-user caps apply), workers register with
``jobs.register_worker``, every dispatch is ``jobs.dispatch`` after the same
events as in the worker (a run claimed with ``jobs.claim_run``, a run ended with
``jobs.finish_run``, an experiment submitted). The broker is a FIFO list per
queue, as Redis's is; each simulated worker takes the head of it when idle, holds
the run for the run's length, then ends it. The clock is moved from event to event
with time-machine, so an hour of queueing takes a second and the answer does not
depend on the machine's load.

Scenarios:

- ``sweep``: 4 workers. alice submits the paper sweep (120 runs of 10 min) at 0;
  bob submits a 4-run experiment (1-min runs) at 5 min, carol one at 15 min.
- ``weights``: 4 workers; alice has weight 2, bob and carol 1; each submits 30
  runs of 5 min at the start. While all three have runs waiting, their shares of
  the run-time should be 1/2, 1/4, 1/4.

Policies: ``dispatcher`` is whatever ``jobs.dispatch`` of the code on the path
does (run this script against an older checkout to measure it); ``fifo`` models
a plain Celery queue: every run goes to the broker at submission, in order.
"""

from __future__ import annotations

import argparse
import heapq
import inspect
import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import time_machine
from sqlalchemy import select, update

from fflab import accounts, jobs
from fflab.db import Experiment, Run, User, get_sessionmaker, utcnow
from fflab.db.migrate import upgrade_database
from fflab.settings import Settings
from fflab.spec import build_spec

START = datetime(2030, 1, 1, tzinfo=UTC)
QUEUE = "cpu"


@dataclass(frozen=True)
class Submission:
    at_s: float
    user: str
    runs: int
    run_s: float


@dataclass(frozen=True)
class Scenario:
    workers: int
    submissions: tuple[Submission, ...]
    weights: dict[str, float] = field(default_factory=dict)


SCENARIOS = {
    "sweep": Scenario(4, (Submission(0, "alice", 120, 600), Submission(300, "bob", 4, 60),
                          Submission(900, "carol", 4, 60))),
    "weights": Scenario(4, (Submission(0, "alice", 30, 300), Submission(1, "bob", 30, 300),
                            Submission(2, "carol", 30, 300)), {"alice": 2.0, "bob": 1.0, "carol": 1.0}),
}


@dataclass
class RunRecord:
    user: str
    experiment: str
    submitted_s: float
    started_s: float
    finished_s: float


class FifoBroker:
    """The broker: a FIFO list, filled by jobs.dispatch (it is the Dispatcher)."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, str]] = []

    def send_run(self, run_pk: int, queue: str, task_id: str) -> None:
        self.messages.append((run_pk, task_id))

    def send_aggregate(self, experiment_id: str, queue: str) -> None:
        pass

    def send_analysis(self, analysis_id: str, queue: str) -> None:
        pass

    def revoke(self, task_ids: list[str]) -> None:
        pass


def spec_of(runs: int, name: str):
    """A spec of ``runs`` runs (bp on one or two data sets); never trained here."""
    datasets = ["mnist", "fashion_mnist"] if runs > 100 else ["mnist"]
    seeds = list(range(runs // len(datasets)))
    return build_spec(None, {"name": name, "models": ["bp"], "datasets": datasets, "seeds": seeds,
                             "unseen_class": None})


def send_everything(session, broker: FifoBroker) -> None:
    """The fifo policy: every waiting run to the broker now, in submission order."""
    for run_pk in session.scalars(select(Run.id).where(Run.status == "queued", Run.task_id.is_(None))
                                  .order_by(Run.id)):
        task_id = jobs.new_id()
        session.execute(update(Run).where(Run.id == run_pk).values(task_id=task_id, dispatched_at=utcnow()))
        broker.send_run(run_pk, QUEUE, task_id)
    session.commit()


def simulate(database_url: str, scenario: Scenario, policy: str = "dispatcher",
             half_life_s: float = 3600.0) -> list[RunRecord]:
    """Run the scenario on a fresh database; every run's user, submission, start
    and end, in seconds from the start."""
    if policy not in ("dispatcher", "fifo"):
        raise ValueError(f"policy must be dispatcher or fifo; got {policy!r}")
    settings = Settings(database_url=database_url, fair_share_half_life_s=half_life_s,
                        worker_heartbeat_timeout_s=1e9, max_queued_runs_per_user=1000)
    broker = FifoBroker()
    run_length: dict[str, float] = {}
    with time_machine.travel(START, tick=False) as clock:
        upgrade_database(database_url)
        factory = get_sessionmaker(database_url)
        with factory() as session:
            users = {}
            for name in sorted({s.user for s in scenario.submissions}):
                users[name] = accounts.create_user(session, name)
                if name in scenario.weights:
                    users[name].share_weight = scenario.weights[name]
            takes_concurrency = "concurrency" in inspect.signature(jobs.register_worker).parameters
            workers = [f"sim-worker-{index}" for index in range(scenario.workers)]
            for worker_id in workers:
                extra = {"concurrency": 1} if takes_concurrency else {}
                jobs.register_worker(session, worker_id, f"{worker_id}@sim", "sim", 1, [QUEUE], **extra)
            session.commit()

            def dispatch() -> None:
                if policy == "fifo":
                    send_everything(session, broker)
                else:
                    jobs.dispatch(session, settings, broker)

            pending = sorted(scenario.submissions, key=lambda s: s.at_s)
            ending: list[tuple[float, str, int]] = []  # (time, worker, run)
            idle = list(workers)
            now_s = 0.0
            while pending or ending or broker.messages:
                times = [s.at_s for s in pending[:1]] + [e[0] for e in ending[:1]]
                if times:
                    now_s = max(now_s, min(times))
                clock.move_to(START + timedelta(seconds=now_s))
                while ending and ending[0][0] <= now_s:
                    _, worker_id, run_pk = heapq.heappop(ending)
                    run = session.get(Run, run_pk)
                    jobs.finish_run(session, run, "succeeded")
                    session.commit()
                    idle.append(worker_id)
                    dispatch()
                while pending and pending[0].at_s <= now_s:
                    submission = pending.pop(0)
                    owner = session.get(User, users[submission.user].id)
                    experiment = jobs.create_experiment(session, settings, owner,
                                                        spec_of(submission.runs, submission.user), "private")
                    run_length[experiment.id] = submission.run_s
                    session.commit()
                    dispatch()
                while idle and broker.messages:
                    run_pk, task_id = broker.messages.pop(0)
                    worker_id = idle.pop(0)
                    run = jobs.claim_run(session, settings, run_pk, task_id, worker_id)
                    session.commit()
                    if run is None:
                        idle.insert(0, worker_id)
                        continue
                    heapq.heappush(ending, (now_s + run_length[run.experiment_id], worker_id, run_pk))
                    dispatch()  # the run left the broker (run_task does the same)
                if not pending and not ending and broker.messages and not idle:
                    raise RuntimeError("simulation stuck: messages but no worker")
                if not pending and not ending and not broker.messages:
                    break
            unfinished = session.scalar(select(Run.id).where(Run.finished_at.is_(None)).limit(1))
            if unfinished is not None:
                raise RuntimeError(f"simulation ended with run {unfinished} never run")
            rows = session.execute(
                select(User.name, Run.experiment_id, Run.created_at, Run.started_at, Run.finished_at)
                .join(Experiment, Run.experiment_id == Experiment.id).join(User, Experiment.owner_id == User.id)
                .order_by(Run.id)
            ).all()
    seconds = lambda moment: (moment - START).total_seconds()  # noqa: E731
    return [RunRecord(row.name, row.experiment_id, seconds(row.created_at), seconds(row.started_at),
                      seconds(row.finished_at)) for row in rows]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def wait_table(records: list[RunRecord]) -> dict[str, dict[str, float]]:
    """Per user: runs, run wait p50 / p90 / max, and the wait of the user's first
    run of each experiment (the experiment's start), in seconds."""
    by_user: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_user[record.user].append(record)
    table = {}
    for user, items in sorted(by_user.items()):
        waits = [r.started_s - r.submitted_s for r in items]
        firsts: dict[str, float] = {}
        for r in items:
            firsts[r.experiment] = min(firsts.get(r.experiment, float("inf")), r.started_s - r.submitted_s)
        table[user] = {"runs": len(items), "p50": percentile(waits, 50), "p90": percentile(waits, 90),
                       "max": max(waits), "experiment_start": max(firsts.values()),
                       "done": max(r.finished_s for r in items) - min(r.submitted_s for r in items)}
    return table


def shares(records: list[RunRecord], start_s: float, end_s: float) -> dict[str, float]:
    """Each user's fraction of the run-time spent between start_s and end_s."""
    used: dict[str, float] = defaultdict(float)
    for r in records:
        used[r.user] += max(0.0, min(r.finished_s, end_s) - max(r.started_s, start_s))
    total = sum(used.values())
    return {user: value / total for user, value in sorted(used.items())}


def backlogged_window(records: list[RunRecord]) -> tuple[float, float]:
    """From the last user's first submission until the first user's last run starts:
    while every user still has runs waiting."""
    start = max(min(r.submitted_s for r in records if r.user == u) for u in {r.user for r in records})
    end = min(max(r.started_s for r in records if r.user == u) for u in {r.user for r in records})
    return start, end


def report(database_url: str, policies: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for policy in policies:
        sweep = simulate(database_url.format(name=f"{policy}-sweep"), SCENARIOS["sweep"], policy)
        weighted = simulate(database_url.format(name=f"{policy}-weights"), SCENARIOS["weights"], policy)
        out[policy] = {"sweep": wait_table(sweep), "weights": shares(weighted, *backlogged_window(weighted))}
    return out


def format_report(result: dict[str, Any]) -> str:
    lines = []
    for policy, parts in result.items():
        lines.append(f"policy {policy}: sweep scenario (4 workers; alice 120 x 10 min at 0; bob 4 x 1 min "
                     "at 5 min; carol 4 x 1 min at 15 min), waits in minutes")
        lines.append("| user | runs | wait p50 | wait p90 | wait max | experiment start | all done |")
        lines.append("|---|---|---|---|---|---|---|")
        for user, row in parts["sweep"].items():
            lines.append(f"| {user} | {row['runs']} | {row['p50'] / 60:.1f} | {row['p90'] / 60:.1f} | "
                         f"{row['max'] / 60:.1f} | {row['experiment_start'] / 60:.1f} | {row['done'] / 60:.1f} |")
        share = ", ".join(f"{user} {value:.3f}" for user, value in parts["weights"].items())
        lines.append(f"weights scenario (2:1:1, target 0.500, 0.250, 0.250): run-time shares {share}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None,
                        help="A database URL with {name} for each run's own database file or name "
                             "(default: SQLite files in a temporary folder). PostgreSQL: an empty "
                             "database per run is needed; give a URL without {name} to reuse one.")
    parser.add_argument("--policy", action="append", choices=["dispatcher", "fifo"], default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fflab-sim-") as folder:
        url = args.database_url or f"sqlite:///{Path(folder)}/{{name}}.db"
        result = report(url, args.policy or ["fifo", "dispatcher"])
    print(json.dumps(result, indent=2) if args.json else format_report(result))


if __name__ == "__main__":
    main()
