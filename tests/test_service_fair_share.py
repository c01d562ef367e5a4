"""Fair-share dispatch in the service: priorities and weights set by an admin through
the API, queue places and the admin queue view, /metrics per user, the free slots
and the running cap under concurrent dispatchers (SQLite and PostgreSQL), and
checkpoint preemption through the real worker task with a bit-identical resume."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from fflab import accounts, jobs
from fflab.cli.service import describe, describe_queues
from fflab.db import Experiment, Run, User, get_sessionmaker, session_scope, utcnow
from fflab.db.migrate import upgrade_database
from fflab.models import MODELS
from fflab.settings import Settings, get_settings
from fflab.spec import build_spec
from fflab.storage import experiment_prefix, get_storage
from service_helpers import TINY, RecordingDispatcher
from test_service_faults import run_as_worker, worker_env  # noqa: F401 (fixture)

pytest_plugins = ["service_support"]

ONE_BP_RUN = {**TINY, "models": ["bp"]}


def tiny_spec(**overrides):
    return build_spec(TINY["preset"], {**{k: v for k, v in TINY.items() if k != "preset"}, **overrides})


@pytest.fixture()
def api(tmp_path: Path):
    """The app in process on SQLite, with an admin, alice and bob; no worker yet."""
    from api.main import create_app

    # Places read and statuses rendered for every request, so that each step below shows at once.
    settings = Settings(var_dir=tmp_path / "var", queue_places_ttl_s=0, status_cache_ttl_s=0)
    upgrade_database(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        keys = {name: accounts.issue_key(session, accounts.create_user(session, name, role))
                for name, role in (("root", "admin"), ("alice", "member"), ("bob", "member"))}
    with TestClient(create_app(settings)) as client:
        yield client, settings, {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}


def test_priorities_weights_and_the_queue_through_the_api(api, monkeypatch: pytest.MonkeyPatch) -> None:
    client, settings, headers = api
    # An admin sets bob's weight and highest priority; hostile values are 422s naming the field.
    answer = client.patch("/v1/admin/users/bob", json={"share_weight": 2, "max_priority": "high"},
                          headers=headers["root"])
    assert answer.status_code == 200 and answer.json()["share_weight"] == 2 and answer.json()["max_priority"] == "high"
    for body, field in (({"share_weight": 0}, "share_weight"), ({"share_weight": -1}, "share_weight"),
                        ({"max_priority": "urgent"}, "max_priority"), ({"weight": 2}, "weight")):
        answer = client.patch("/v1/admin/users/bob", json=body, headers=headers["root"])
        assert answer.status_code == 422 and answer.json()["details"][0]["field"] == field, answer.text
    assert client.patch("/v1/admin/users/nobody", json={"share_weight": 1}, headers=headers["root"]).status_code == 404
    assert client.patch("/v1/admin/users/bob", json={"share_weight": 9}, headers=headers["alice"]).status_code == 403

    # A priority above the owner's maximum: 403 naming it; bob may ask for high.
    denied = client.post("/v1/experiments", json={**ONE_BP_RUN, "priority": "high"}, headers=headers["alice"])
    assert denied.status_code == 403 and "priority 'high'" in denied.json()["message"]
    assert denied.json()["code"] == "forbidden"
    bad = client.post("/v1/experiments", json={**ONE_BP_RUN, "priority": "asap"}, headers=headers["alice"])
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "priority"
    first = client.post("/v1/experiments", json={**TINY, "seeds": [0, 1]}, headers=headers["alice"]).json()
    second = client.post("/v1/experiments", json={**ONE_BP_RUN, "priority": "low"}, headers=headers["bob"]).json()

    # No worker serves the queue: places, but no estimated start.
    view = client.get(f"/v1/experiments/{second['id']}", headers=headers["bob"]).json()
    assert view["priority"] == "low"
    # alice's first run (older, both unused) goes first; each run charges 600 s
    # (FFLAB_EXPECTED_RUN_S), alice's at weight 1 and bob's at weight 2 but with the
    # low-priority factor 2: bob's 0 < alice's 600 after her first run.
    assert view["queue"] == {"queue": "cpu", "position": 2, "runs_ahead": 1, "estimated_start": None}
    assert "queue cpu: position 2 (1 runs ahead), no worker serves this queue yet" in describe(view)

    with session_scope(settings.resolved_database_url) as session:  # a worker with one slot appears
        jobs.register_worker(session, "w1", "w1@test", "test", 1, ["cpu"], concurrency=1)
    view = client.get(f"/v1/experiments/{second['id']}", headers=headers["bob"]).json()
    start = datetime.fromisoformat(view["queue"]["estimated_start"])
    assert abs((start - utcnow()).total_seconds() - settings.expected_run_s) < 30  # one run ahead of it

    queue = client.get("/v1/admin/queue", headers=headers["root"])
    assert client.get("/v1/admin/queue", headers=headers["alice"]).status_code == 403
    (cpu,) = queue.json()["queues"]
    assert (cpu["queue"], cpu["slots"], cpu["free_slots"], cpu["running_cap"]) == ("cpu", 1, 1, 1)
    assert [(e["id"], e["position"], e["runs_waiting"]) for e in cpu["experiments"]] == [
        (first["id"], 1, 4), (second["id"], 2, 1)]
    users = {u["name"]: u for u in cpu["users"]}
    assert users["bob"]["share_weight"] == 2 and users["bob"]["target_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert users["alice"]["waiting"] == 4 and users["alice"]["usage_seconds"] == 0
    assert "alice" in describe_queues(queue.json())

    metrics = client.get("/metrics", headers=headers["root"]).text
    assert 'fflab_queue_waiting_runs{queue="cpu",user="alice"} 4.0' in metrics
    assert 'fflab_queue_oldest_wait_seconds{queue="cpu",user="bob"}' in metrics

    # The admin verb of the CLI sets the same, directly in the database.
    from fflab.cli import main as fflab

    monkeypatch.setenv("FFLAB_DATABASE_URL", settings.resolved_database_url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(fflab, ["admin", "set-share", "alice", "--weight", "3", "--max-priority", "high"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0 and "alice: weight 3, max priority high" in result.output, result.output
    me = client.get("/v1/users/me", headers=headers["alice"]).json()
    assert (me["share_weight"], me["max_priority"]) == (3, "high")


def test_status_polls_share_one_queue_snapshot_per_ttl(tmp_path: Path) -> None:
    """A status poll reports its experiment's place from a snapshot at most
    queue_places_ttl_s old, so that a hundred pollers do not read the whole queue a
    hundred times; a new experiment's place is read at once, and a stale one again."""
    from sqlalchemy import event

    from api.main import create_app
    from fflab.db import get_engine

    # Statuses rendered for every poll (api.status_cache has its own test): each reads the places.
    settings = Settings(var_dir=tmp_path / "var", queue_places_ttl_s=60, status_cache_ttl_s=0)
    upgrade_database(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        key = accounts.issue_key(session, accounts.create_user(session, "alice"))
    headers = {"Authorization": f"Bearer {key}"}
    queue_reads = []

    @event.listens_for(get_engine(settings.resolved_database_url), "before_cursor_execute")
    def count(_connection, _cursor, statement, *_args) -> None:
        if "FROM workers" in statement:  # the first of the snapshot's queries
            queue_reads.append(statement)

    now = [0.0]
    with TestClient(create_app(settings)) as client:
        client.app.state.queue_places.clock = lambda: now[0]
        first = client.post("/v1/experiments", json={**TINY, "seeds": [0, 1]}, headers=headers).json()["id"]
        queue_reads.clear()  # submitting dispatches, which reads the queue too
        polled = [client.get(f"/v1/experiments/{first}", headers=headers).json()["queue"] for _ in range(5)]
        assert len(queue_reads) == 1 and polled == [polled[0]] * 5
        assert polled[0]["position"] == 1

        second = client.post("/v1/experiments", json=ONE_BP_RUN, headers=headers).json()["id"]
        queue_reads.clear()
        place = client.get(f"/v1/experiments/{second}", headers=headers).json()["queue"]
        assert len(queue_reads) == 1 and place["position"] == 5  # not in the snapshot: read at once

        with session_scope(settings.resolved_database_url) as session:  # a worker appears
            jobs.register_worker(session, "w1", "w1@test", "test", 1, ["cpu"], concurrency=1)
        assert client.get(f"/v1/experiments/{first}", headers=headers).json()["queue"]["estimated_start"] is None
        now[0] = 61.0  # past the ttl: read again
        assert client.get(f"/v1/experiments/{first}", headers=headers).json()["queue"]["estimated_start"]
        assert len(queue_reads) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_free_slots_and_the_running_cap_hold_under_concurrent_dispatchers(
        backend: str, tmp_path: Path, pg_database, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 slots, at most a quarter of them (2) per user: 12 dispatchers at the same
    moment send exactly alice 2, bob 2, carol 1, each run once. Each dispatcher
    pauses between its decision and its writes, so that those not held back by the
    dispatch lock decide on a state others are changing."""
    from fflab import queueing

    plan = queueing.plan_dispatch

    def slow_plan(*args, **kwargs):
        decided = plan(*args, **kwargs)
        time.sleep(0.1)
        return decided

    monkeypatch.setattr(queueing, "plan_dispatch", slow_plan)
    url = f"sqlite:///{tmp_path / 'fflab.db'}" if backend == "sqlite" else pg_database()
    upgrade_database(url)
    settings = Settings(database_url=url, max_running_fraction=0.25)
    with session_scope(url) as session:
        for index in (1, 2):
            jobs.register_worker(session, f"w{index}", f"w{index}@test", "test", index, ["cpu"], concurrency=4)
        for name, seeds in (("alice", 10), ("bob", 10), ("carol", 1)):
            user = accounts.create_user(session, name)
            jobs.create_experiment(session, settings, user, tiny_spec(models=["bp"], seeds=list(range(seeds))),
                                   "private")
    dispatcher = RecordingDispatcher()
    barrier = threading.Barrier(12, timeout=60)

    def dispatch(_: int) -> int:
        with get_sessionmaker(url)() as session:
            session.commit()
            barrier.wait()
            return jobs.dispatch(session, settings, dispatcher)

    with ThreadPoolExecutor(12) as pool:
        sent = sum(pool.map(dispatch, range(12)))
    run_ids = [run_pk for run_pk, _, _ in dispatcher.runs]
    assert sent == len(run_ids) == len(set(run_ids)) == 5
    with session_scope(url) as session:
        owners = sorted(session.scalars(
            select(User.name).join(Experiment, Experiment.owner_id == User.id).join(Run).where(Run.id.in_(run_ids))))
    assert owners == ["alice", "alice", "bob", "bob", "carol"]


def load_weights(settings: Settings, experiment_id: str, run_id: str, folder: Path) -> dict:
    target = folder / f"{experiment_id}.pt"
    get_storage(settings).download(f"{experiment_prefix(experiment_id)}/runs/{run_id}/weights.pt", target)
    return torch.load(target, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_a_preempted_run_stops_at_its_checkpoint_is_requeued_and_resumes_bit_identically(
        worker_env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        model: str) -> None:
    """One slot, held by alice's run of each model type (3 layers, 2 epochs). bob's
    run waits past FFLAB_PREEMPT_AFTER_S: the dispatcher asks alice's run to stop;
    the worker task stores its first checkpoint (after layer 1, or after epoch 1),
    the run goes back to waiting (not a lost delivery) and bob's run gets the slot;
    alice's run then resumes from there and ends with exactly the weights of
    carol's uninterrupted run of the same spec."""
    tasks, _, dispatcher = worker_env
    monkeypatch.setenv("FFLAB_PREEMPTION", "true")
    monkeypatch.setenv("FFLAB_PREEMPT_AFTER_S", "0.05")
    monkeypatch.setenv("FFLAB_CHECKPOINT_EVERY_EPOCHS", "1")
    get_settings.cache_clear()
    settings = get_settings()
    spec = tiny_spec(models=[model], **{model: {"epochs": 2, "batch_size": 100, "learning_rate": 0.003}})
    url = settings.resolved_database_url
    with session_scope(url) as session:
        jobs.register_worker(session, "w1", "w1@test", "test", 1, ["cpu"])
        alice, bob, carol = (accounts.create_user(session, name) for name in ("alice", "bob", "carol"))
        interrupted = jobs.create_experiment(session, settings, alice, spec, "private").id
    with get_sessionmaker(url)() as session:
        jobs.dispatch(session, settings, dispatcher)
        alice_pk, _, alice_task = dispatcher.runs[-1]
        assert jobs.claim_run(session, settings, alice_pk, alice_task, "w1") is not None  # it runs
        session.commit()
        with session_scope(url) as other:
            waiting = jobs.create_experiment(other, settings, other.get(User, bob.id),
                                             tiny_spec(models=["bp"]), "private").id
        time.sleep(0.1)  # bob's run waits past FFLAB_PREEMPT_AFTER_S
        assert jobs.dispatch(session, settings, dispatcher) == 0  # no free slot ...
        assert session.get(Run, alice_pk, populate_existing=True).preempt_requested_at is not None  # ... so this

    caplog.set_level(logging.INFO, logger="worker.run_support")  # where a resume is logged
    run_as_worker(tasks.run_task, alice_pk, alice_task)  # trains to its first checkpoint, stores it, stops
    with session_scope(url) as session:
        run = session.get(Run, alice_pk)
        assert (run.status, run.task_id, run.preemptions, run.preempt_requested_at) == ("queued", None, 1, None)
        assert run.attempts == 1 and run.earlier_seconds > 0  # the redelivery of the claim above only
        bob_pk = session.scalar(select(Run.id).where(Run.experiment_id == waiting))
    assert dispatcher.runs[-1][0] == bob_pk  # the freed slot went to bob
    run_as_worker(tasks.run_task, bob_pk, dispatcher.runs[-1][2])
    assert dispatcher.runs[-1][0] == alice_pk  # bob's run ended: alice's comes back, under a new task
    run_as_worker(tasks.run_task, alice_pk, dispatcher.runs[-1][2])
    where = "layer 2" if MODELS[model].layer_by_layer else "epoch 2"
    assert any(f"resumed run {run.run_id} of experiment {interrupted} from {where}" in m for m in caplog.messages)

    with session_scope(url) as session:
        uninterrupted = jobs.create_experiment(session, settings, session.get(User, carol.id), spec, "private").id
    with get_sessionmaker(url)() as session:
        jobs.dispatch(session, settings, dispatcher)
    run_as_worker(tasks.run_task, dispatcher.runs[-1][0], dispatcher.runs[-1][2])
    with session_scope(url) as session:
        statuses = dict(session.execute(select(Run.experiment_id, Run.status)).all())
    assert statuses == {interrupted: "succeeded", waiting: "succeeded", uninterrupted: "succeeded"}
    expected = load_weights(settings, uninterrupted, run.run_id, tmp_path)
    got = load_weights(settings, interrupted, run.run_id, tmp_path)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
