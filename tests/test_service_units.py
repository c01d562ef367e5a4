"""Parts of the service without servers: fair dispatch order, the run life cycle
in the database, accounts, settings, storage keys and the API's error handler."""

from __future__ import annotations

import inspect
import threading
from datetime import UTC
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import select, update

from fflab import accounts, jobs
from fflab.db import Experiment, ExperimentTag, Run, Worker, get_engine, get_sessionmaker
from fflab.db.migrate import upgrade_database
from fflab.settings import Settings
from fflab.spec import build_spec
from fflab.storage import LocalStorage, check_key
from service_helpers import RecordingDispatcher, free_port, http_ready, wait_for

pytest_plugins = ["service_support"]

SPEC = {"models": ["bp"], "datasets": ["mnist"], "unseen_class": None}


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    settings = Settings(var_dir=tmp_path, max_queued_runs_per_user=100)
    upgrade_database(settings.resolved_database_url)
    return settings


@pytest.fixture()
def session(settings: Settings):
    with get_sessionmaker(settings.resolved_database_url)() as session:
        # Dispatch sends as many runs as the live workers have free slots: here 2.
        jobs.register_worker(session, "pool", "pool@test", "test", 1, ["cpu"], concurrency=2)
        session.commit()
        yield session


def submit(session, settings, user, seeds: int) -> Experiment:
    spec = build_spec(None, {**SPEC, "seeds": list(range(seeds))})
    experiment = jobs.create_experiment(session, settings, user, spec, "private")
    session.commit()
    return experiment


def owners(session, dispatcher: RecordingDispatcher) -> list[str]:
    return [session.get(Run, pk).experiment.owner.name for pk, _, _ in dispatcher.runs]


def start(session, settings, dispatcher: RecordingDispatcher, index: int) -> Run:
    run_pk, _, task_id = dispatcher.runs[index]
    run = jobs.claim_run(session, settings, run_pk, task_id)
    session.commit()
    jobs.dispatch(session, settings, dispatcher)
    return run


def test_dispatch_is_fair_between_users(session, settings: Settings) -> None:
    dispatcher = RecordingDispatcher(analyses_expected=False)
    alice = accounts.create_user(session, "alice")
    bob = accounts.create_user(session, "bob")
    submit(session, settings, alice, 6)
    assert jobs.dispatch(session, settings, dispatcher) == 2  # the worker's two slots
    submit(session, settings, bob, 2)
    assert jobs.dispatch(session, settings, dispatcher) == 0  # no slot free
    for index in (0, 1):  # each of alice's runs ends: bob, who used nothing, gets the slot
        run = start(session, settings, dispatcher, index)
        jobs.finish_run(session, run, "succeeded")
        session.commit()
        assert jobs.dispatch(session, settings, dispatcher) == 1
    assert owners(session, dispatcher) == ["alice", "alice", "bob", "bob"]
    assert all(queue == "cpu" for _, queue, _ in dispatcher.runs)


def test_last_run_to_end_triggers_aggregation_once(session, settings: Settings) -> None:
    dispatcher = RecordingDispatcher(analyses_expected=False)
    experiment = submit(session, settings, accounts.create_user(session, "alice"), 2)
    jobs.dispatch(session, settings, dispatcher)
    first, second = (start(session, settings, dispatcher, i) for i in range(2))
    assert session.get(Experiment, experiment.id).status == "running"
    assert jobs.finish_run(session, first, "succeeded") is None
    assert jobs.finish_run(session, second, "succeeded") == experiment.id
    session.commit()
    assert jobs.finish_run(session, second, "succeeded") is None  # aggregation already queued
    # A stale redelivery of a finished run's task does nothing.
    assert jobs.claim_run(session, settings, second.id, dispatcher.runs[1][2]) is None


def test_a_failed_run_fails_alone_and_the_experiment_once_all_are_final(session, settings: Settings) -> None:
    dispatcher = RecordingDispatcher(analyses_expected=False)
    experiment = submit(session, settings, accounts.create_user(session, "alice"), 3)
    jobs.dispatch(session, settings, dispatcher)
    running = start(session, settings, dispatcher, 0)
    assert jobs.finish_run(session, running, "failed", "ValueError: boom") is None
    session.commit()
    experiment = session.get(Experiment, experiment.id)
    assert experiment.status == "running" and experiment.error is None  # the others go on
    statuses = sorted(session.scalars(select(Run.status).where(Run.experiment_id == experiment.id)))
    assert statuses == ["failed", "queued", "queued"]
    run = start(session, settings, dispatcher, 1)
    assert jobs.finish_run(session, run, "succeeded") is None
    session.commit()
    run = start(session, settings, dispatcher, 2)
    assert jobs.finish_run(session, run, "succeeded") == experiment.id  # partial results of the succeeded runs
    session.commit()
    experiment = session.get(Experiment, experiment.id, populate_existing=True)
    assert experiment.status == "running" and experiment.error is None  # until its aggregation is recorded
    jobs.finish_experiment(session, experiment)
    assert experiment.status == "failed" and experiment.finished_at is not None
    assert experiment.error == "1 of 3 runs failed: run bp-mnist-seed0: ValueError: boom"
    # With no run succeeded there is nothing to aggregate: failed at once.
    alone = submit(session, settings, experiment.owner, 1)
    jobs.dispatch(session, settings, dispatcher)
    run = session.scalars(select(Run).where(Run.experiment_id == alone.id)).one()
    assert jobs.claim_run(session, settings, run.id, run.task_id) is not None
    assert jobs.finish_run(session, run, "failed", "ValueError: boom") is None
    assert alone.status == "failed" and alone.error == "1 of 1 runs failed: run bp-mnist-seed0: ValueError: boom"


def test_a_cancelled_experiment_is_final_only_once_its_runs_are(session, settings: Settings) -> None:
    """State machine: queued -> running -> cancelling (a run still trains) -> cancelled
    when that run ends; a cancel of a cancelling experiment changes nothing, of a
    final one is a conflict."""
    dispatcher = RecordingDispatcher(analyses_expected=False)
    experiment = submit(session, settings, accounts.create_user(session, "alice"), 3)
    jobs.dispatch(session, settings, dispatcher)
    running = start(session, settings, dispatcher, 0)
    revoked = jobs.cancel_experiment(session, experiment)
    session.commit()
    assert sorted(revoked) == sorted(task_id for _, _, task_id in dispatcher.runs[1:])  # the waiting ones
    assert experiment.status == "cancelling" and experiment.finished_at is None
    assert jobs.should_stop(session, running.id)
    assert jobs.cancel_experiment(session, experiment) == [] and experiment.status == "cancelling"
    assert jobs.finish_run(session, running, "cancelled") is None
    session.commit()
    experiment = session.get(Experiment, experiment.id, populate_existing=True)
    assert experiment.status == "cancelled" and experiment.finished_at >= running.finished_at
    with pytest.raises(jobs.ConflictError, match=r"already ended \(cancelled\); only a queued or running"):
        jobs.cancel_experiment(session, experiment)
    queued_only = submit(session, settings, experiment.owner, 1)
    jobs.cancel_experiment(session, queued_only)  # nothing runs: final at once
    assert queued_only.status == "cancelled" and queued_only.finished_at is not None
    assert not jobs.aggregation_due(session, queued_only)


def test_a_cancelled_experiment_with_a_succeeded_run_is_aggregated_first(session, settings: Settings) -> None:
    """Cancelled after a run succeeded, while another trains: ``cancelling`` until
    the partial aggregation of the succeeded run is recorded, then ``cancelled``; one
    cancelled with no run training is aggregated at once (the caller sends it)."""
    dispatcher = RecordingDispatcher(analyses_expected=False)
    experiment = submit(session, settings, accounts.create_user(session, "alice"), 3)
    jobs.dispatch(session, settings, dispatcher)
    done, running = (start(session, settings, dispatcher, i) for i in range(2))
    assert jobs.finish_run(session, done, "succeeded") is None
    jobs.cancel_experiment(session, experiment)
    assert experiment.status == "cancelling" and not jobs.aggregation_due(session, experiment)  # one still trains
    assert jobs.finish_run(session, running, "cancelled") == experiment.id  # the partial aggregation
    session.commit()
    experiment = session.get(Experiment, experiment.id, populate_existing=True)
    assert experiment.status == "cancelling" and experiment.finished_at is None
    assert jobs.unsent_aggregations(session) == []  # queued already
    jobs.finish_experiment(session, experiment)
    assert experiment.status == "cancelled" and experiment.finished_at is not None and experiment.error is None

    other = submit(session, settings, experiment.owner, 2)
    jobs.dispatch(session, settings, dispatcher)
    run = start(session, settings, dispatcher, len(dispatcher.runs) - 2)
    assert jobs.finish_run(session, run, "succeeded") is None
    jobs.cancel_experiment(session, other)  # the other run was waiting: none trains now
    assert other.status == "cancelling" and jobs.aggregation_due(session, other)
    assert not jobs.aggregation_due(session, other)  # marked sent


def test_a_run_requeued_for_another_task_stops_its_old_delivery(session, settings: Settings) -> None:
    dispatcher = RecordingDispatcher(analyses_expected=False)
    submit(session, settings, accounts.create_user(session, "alice"), 1)
    jobs.dispatch(session, settings, dispatcher)
    run = start(session, settings, dispatcher, 0)
    old_task = dispatcher.runs[0][2]
    assert not jobs.should_stop(session, run.id, old_task)
    session.execute(update(Run).where(Run.id == run.id).values(task_id="a-newer-delivery"))
    session.commit()
    assert jobs.should_stop(session, run.id, old_task) and not jobs.should_stop(session, run.id)


def test_runs_of_a_silent_or_forgotten_worker_are_requeued(session, settings: Settings) -> None:
    """A worker's heartbeat, not the run's, decides: the run of a worker silent for
    FFLAB_WORKER_HEARTBEAT_TIMEOUT_S is requeued while its own heartbeat is fresh;
    forget_worker requeues at once."""
    from datetime import timedelta

    dispatcher = RecordingDispatcher(analyses_expected=False)
    submit(session, settings, accounts.create_user(session, "alice"), 2)
    jobs.dispatch(session, settings, dispatcher)
    for worker_id in ("w1", "w2"):
        jobs.register_worker(session, worker_id, f"{worker_id}@host", "host", 1, ["cpu"])
    session.commit()
    for index, worker_id in enumerate(("w1", "w2")):
        run_pk, _, task_id = dispatcher.runs[index]
        assert jobs.claim_run(session, settings, run_pk, task_id, worker_id).worker_id == worker_id
        session.commit()
    assert jobs.reap_lost_runs(session, settings) == (0, 0)
    assert [w.id for w in jobs.live_workers(session, settings)] == ["pool", "w1", "w2"]
    later = jobs.utcnow() + timedelta(seconds=settings.worker_heartbeat_timeout_s + 1)
    assert jobs.beat_worker(session, "w2")
    session.commit()
    session.execute(update(Worker).where(Worker.id == "w2").values(heartbeat_at=later))
    session.commit()
    assert jobs.reap_lost_runs(session, settings, now=later) == (1, 0)  # w1's run; w2 beats
    assert session.get(Worker, "w1") is None and not jobs.beat_worker(session, "w1")
    statuses = dict(session.execute(select(Run.id, Run.status)).all())
    assert statuses == {dispatcher.runs[0][0]: "queued", dispatcher.runs[1][0]: "running"}
    assert jobs.forget_worker(session, settings, "w2", "its worker died") == (1, 0)
    assert set(session.scalars(select(Run.status))) == {"queued"}


def test_redelivered_runs_fail_after_the_attempt_limit(session, settings: Settings) -> None:
    dispatcher = RecordingDispatcher(analyses_expected=False)
    submit(session, settings, accounts.create_user(session, "alice"), 1)
    jobs.dispatch(session, settings, dispatcher)
    run_pk, _, task_id = dispatcher.runs[0]
    for _ in range(settings.task_max_attempts):  # each delivery's worker died
        assert jobs.claim_run(session, settings, run_pk, task_id) is not None
        session.commit()
    assert jobs.claim_run(session, settings, run_pk, task_id) is None
    run = session.get(Run, run_pk)
    assert run.status == "failed" and "FFLAB_TASK_MAX_ATTEMPTS" in run.error


def test_cap_on_active_runs(session, settings: Settings) -> None:
    user = accounts.create_user(session, "alice")
    capped = settings.model_copy(update={"max_queued_runs_per_user": 3})
    submit(session, capped, user, 2)
    with pytest.raises(jobs.CapacityError, match="limit is 3"):
        submit(session, capped, user, 2)


def test_keys_are_stored_hashed_and_revocable(session) -> None:
    user = accounts.create_user(session, "alice")
    key = accounts.issue_key(session, user)
    stored = user.keys[0]
    assert key not in (stored.key_hash, stored.prefix) and stored.key_hash == accounts.hash_key(key)
    assert accounts.authenticate(session, key) is user
    assert accounts.authenticate(session, key[:-1] + "x") is None
    assert accounts.revoke_keys(session, key[:14]) == 1
    assert accounts.authenticate(session, key) is None
    with pytest.raises(ValueError, match="is taken"):
        accounts.create_user(session, "alice")
    with pytest.raises(ValueError, match="role must be one of admin, member"):
        accounts.create_user(session, "eve", "root")


def test_settings_defaults_and_queue_routing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("FFLAB_DATABASE_URL", "FFLAB_BROKER_URL", "FFLAB_S3_BUCKET", "FFLAB_GPUS_AVAILABLE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'var' / 'fflab.db'}"
    assert settings.resolved_broker_url == f"sqla+sqlite:///{tmp_path / 'var' / 'broker.db'}"
    assert settings.resolved_result_backend == f"db+sqlite:///{tmp_path / 'var' / 'celery-results.db'}"
    assert settings.resolved_artifacts_dir == tmp_path / "var" / "artifacts"
    assert settings.resolved_api_url == "http://127.0.0.1:8000"
    assert [settings.queue_for_device(d) for d in ("auto", "cpu", "cuda")] == ["cpu", "cpu", "gpu"]
    monkeypatch.setenv("FFLAB_GPUS_AVAILABLE", "true")
    monkeypatch.setenv("FFLAB_QUEUE_PREFIX", "lab-")
    assert [Settings().queue_for_device(d) for d in ("auto", "cpu")] == ["lab-gpu", "lab-cpu"]


def test_local_storage_and_key_checks(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "artifacts")
    source = tmp_path / "file.bin"
    source.write_bytes(b"abc")
    stored = storage.put_file("experiments/e1/runs/r1/file.bin", source)
    assert (stored.size, stored.sha256[:8]) == (3, "ba7816bf")
    assert storage.list("experiments/e1") == ["experiments/e1/runs/r1/file.bin"]
    assert b"".join(storage.iter_bytes(stored.key)) == b"abc"
    storage.delete_prefix("experiments/e1")
    assert storage.list("experiments/e1") == []
    for bad in ("../x", "/etc/passwd", "a/../b", "a//b", "a\\b", ""):
        with pytest.raises(ValueError, match="relative path"):
            check_key(bad)


def test_unexpected_errors_are_500_with_a_request_id_and_no_trace(settings: Settings) -> None:
    from api.main import create_app

    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(http_ready(f"http://127.0.0.1:{port}/healthz"), 30, "the API")
        response = httpx.get(f"http://127.0.0.1:{port}/boom", headers={"x-request-id": "req-42"})
        assert response.status_code == 500
        assert response.json()["request_id"] == "req-42" == response.headers["x-request-id"]
        assert "secret" not in response.text and "Traceback" not in response.text
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_sweep_finds_aggregations_whose_sending_failed(session, settings: Settings) -> None:
    dispatcher = RecordingDispatcher(analyses_expected=False)
    experiment = submit(session, settings, accounts.create_user(session, "alice"), 1)
    jobs.dispatch(session, settings, dispatcher)
    run = start(session, settings, dispatcher, 0)
    assert jobs.unsent_aggregations(session) == []  # a run is active
    assert jobs.finish_run(session, run, "succeeded") == experiment.id
    session.get(Experiment, experiment.id).aggregation_queued_at = None  # as after a failed send
    session.commit()
    assert jobs.unsent_aggregations(session) == [experiment.id]
    session.commit()
    assert jobs.unsent_aggregations(session) == []


def test_lost_analyses_are_the_queued_ones_the_broker_no_longer_holds(session, settings):
    from datetime import timedelta

    from fflab.db import Analysis, utcnow
    from worker.dispatch import ANALYSIS_ID_PREFIX, named_task_id, subject_of_task

    user = accounts.create_user(session, "alice")
    experiment = submit(session, settings, user, seeds=1)
    old = utcnow() - timedelta(seconds=settings.lost_message_grace_s + 5)
    rows = {
        "lost": Analysis(id="lost", experiment_id=experiment.id, spec={}, status="queued", created_at=old),
        "held": Analysis(id="held", experiment_id=experiment.id, spec={}, status="queued", created_at=old),
        "young": Analysis(id="young", experiment_id=experiment.id, spec={}, status="queued"),
        "running": Analysis(id="running", experiment_id=experiment.id, spec={}, status="running", created_at=old),
    }
    session.add_all(rows.values())
    session.commit()
    held_task = named_task_id(ANALYSIS_ID_PREFIX, "held")
    in_broker = {subject_of_task(ANALYSIS_ID_PREFIX, held_task), subject_of_task(ANALYSIS_ID_PREFIX, "a-run-task")}
    assert subject_of_task(ANALYSIS_ID_PREFIX, held_task) == "held"
    assert jobs.lost_analyses(session, settings, in_broker - {None}) == ["lost"]


def test_fetching_runs_leaves_out_documents_registered_after_they_were_trained(tmp_path):
    """A run stored before a document type existed: fetch_runs takes what it has
    (the aggregation then draws no figure from the missing document)."""
    from types import SimpleNamespace

    from fflab.pipeline import documents
    from fflab.storage import LocalStorage, experiment_prefix
    from worker.service import fetch_runs

    storage = LocalStorage(tmp_path / "artifacts")
    old = [name for name in documents.run_files() if name != "dominance.json"]
    for name in old:
        source = tmp_path / "source" / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("{}")
        storage.put_file(f"{experiment_prefix('e1')}/runs/ff-mnist-seed0/{name}", source)
    base = tmp_path / "fetched"
    fetch_runs(storage, "e1", [SimpleNamespace(run_id="ff-mnist-seed0")], base, True, set())
    fetched = sorted(p.name for p in (base / "runs" / "ff-mnist-seed0").iterdir())
    assert fetched == sorted(old)


def group_nice() -> str:
    """This process's autogroup niceness, or "none" where it is in no autogroup: a
    process in init's session (a daemon, a CI runner's job) or in a cgroup other than
    the root shows an empty /proc/self/autogroup."""
    fields = Path("/proc/self/autogroup").read_text().split("nice")
    return fields[1].strip() if len(fields) == 2 else "none"


AUTOGROUP_PROBE = f"""
import os, sys
from pathlib import Path
from fflab.processes import lower_priority
{inspect.getsource(group_nice)}
lowered = lower_priority(int(sys.argv[1]))
print(lowered, os.nice(0), group_nice())
"""


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup scheduling here")
def test_a_worker_leading_its_own_session_also_lowers_its_autogroup() -> None:
    """Under autogroup scheduling niceness counts only within a session: a worker in a
    session of its own must lower its group's priority too, or it takes as much CPU as
    the API's whole group. One inside another session leaves that group alone."""
    import subprocess
    import sys

    def probe(nice: int, own_session: bool) -> list[str]:
        out = subprocess.run([sys.executable, "-c", AUTOGROUP_PROBE, str(nice)], capture_output=True, text=True,
                             check=True, start_new_session=own_session, timeout=60)
        return out.stdout.split()

    own = probe(7, own_session=True)
    if own[2] == "none":
        pytest.skip("a new session gets no autogroup here (autogroup off, or the tests run in a cgroup of their own)")
    assert own[0] == "True" and int(own[1]) >= 7 and own[2] == "7"
    group = group_nice()
    inside = probe(7, own_session=False)  # pytest's session: its group stays as it is
    assert inside[0] == "False" and int(inside[1]) >= 7 and inside[2] == group
    assert probe(0, own_session=True)[:1] == ["False"]  # 0: nothing changes


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_run_states_reads_counts_running_runs_and_tags_in_one_query(backend: str, tmp_path: Path,
                                                                     pg_database) -> None:
    """What a status poll or a list page reads of the runs (counts by status, the
    running runs' progress and heartbeat, in run order) and the tags, for several
    experiments in one statement, with the JSON and timestamp columns read back as
    the ORM reads them, on both databases."""
    from datetime import datetime

    from sqlalchemy import event

    from api import views

    url = pg_database() if backend == "postgresql" else None
    settings = Settings(var_dir=tmp_path, database_url=url, max_queued_runs_per_user=100)
    upgrade_database(settings.resolved_database_url)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        user = accounts.create_user(session, "alice")
        first, second = submit(session, settings, user, 5), submit(session, settings, user, 2)
        runs = sorted(first.runs, key=lambda run: run.id)
        beat = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        for run, status, progress in [(runs[0], "succeeded", None), (runs[1], "running", {"epoch": 2, "epochs": 9}),
                                      (runs[2], "failed", None), (runs[3], "running", {"epoch": 1, "layer": 2})]:
            run.status, run.progress, run.heartbeat_at = status, progress, beat if status == "running" else None
        session.add_all([ExperimentTag(experiment_id=first.id, tag=tag) for tag in ("b-tag", "a-tag")])
        session.commit()
        ids, run_ids = [first.id, second.id], [run.run_id for run in runs]
        session.expire_all()
        statements: list[str] = []
        engine = get_engine(settings.resolved_database_url)
        listener = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            states = views.run_states(session, [*ids, "no-such-experiment"])
            assert views.run_states(session, []) == {}
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        assert len(statements) == 1, statements
        assert states[ids[0]].counts == {"succeeded": 1, "running": 2, "failed": 1, "queued": 1}
        assert [(r.run_id, r.model, r.progress) for r in states[ids[0]].running] == [
            (run_ids[1], "bp", {"epoch": 2, "epochs": 9}), (run_ids[3], "bp", {"epoch": 1, "layer": 2})]
        assert {r.heartbeat_at for r in states[ids[0]].running} == {session.get(Run, runs[1].id).heartbeat_at}
        assert states[ids[0]].tags == ["a-tag", "b-tag"]
        assert (states[ids[1]].counts, states[ids[1]].running, states[ids[1]].tags) == ({"queued": 2}, [], [])
        assert "no-such-experiment" not in states


def test_the_status_cache_expires_forgets_and_drops_bodies_read_before_a_write() -> None:
    from api.status_cache import StatusCache

    now = [100.0]
    cache = StatusCache(ttl_s=1.0, max_experiments=4, clock=lambda: now[0])
    cache.put("e1", "http://a/", 7, "private", b"one", cache.epoch())
    assert cache.get("e1", "http://a/").body == b"one"
    assert cache.get("e1", "http://b/") is None  # links are absolute: per base URL
    now[0] += 0.999
    assert cache.get("e1", "http://a/") is not None
    now[0] += 0.001
    assert cache.get("e1", "http://a/") is None  # ttl_s old: rendered again

    read_at = cache.epoch()  # a poll reads the rows...
    cache.forget("e1")  # ...a write commits and forgets...
    cache.put("e1", "http://a/", 7, "private", b"stale", read_at)  # ...the poll's body predates it
    assert cache.get("e1", "http://a/") is None
    cache.put("e1", "http://a/", 7, "lab", b"fresh", cache.epoch())
    assert (cache.get("e1", "http://a/").body, cache.get("e1", "http://a/").visibility) == (b"fresh", "lab")

    for index in range(2, 7):  # bounded: the least recently added experiments go first
        cache.put(f"e{index}", "http://a/", 7, "private", b"x", cache.epoch())
    assert [cache.get(f"e{index}", "http://a/") is not None for index in range(1, 7)] == [
        False, False, True, True, True, True]

    hosts = StatusCache(ttl_s=1.0, max_base_urls=2, clock=lambda: now[0])  # Host headers are the client's
    for host in ("http://a/", "http://b/", "http://c/"):
        hosts.put("e1", host, 7, "private", host.encode(), hosts.epoch())
    assert [hosts.get("e1", host) is not None for host in ("http://a/", "http://b/", "http://c/")] == [
        False, True, True]

    off = StatusCache(ttl_s=0)
    off.put("e1", "http://a/", 7, "private", b"one", off.epoch())
    assert off.get("e1", "http://a/") is None
