"""Faults survived, nothing lost (issue #5), against real servers on loopback: a
fresh PostgreSQL database per test, a throwaway ``redis-server`` of the test's own
(killed and restarted here; the shared one on 6379 is never touched), a Celery
worker (``fflab worker``) and the API (uvicorn) in subprocesses, real HTTP.

Recovery settings are short here: the sweep every 0.5 s, a run whose heartbeat is
older than 3 s has lost its worker, a run message missing from Redis for 2 s is lost.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis

from fflab import accounts, jobs
from fflab.db import Experiment, Run, get_sessionmaker, session_scope
from fflab.db.migrate import upgrade_database
from fflab.settings import Settings, get_settings
from service_helpers import ROOT, TINY, Process, base_env, free_port, http_ready, poll_experiment, wait_for

pytest_plugins = ["service_support"]

# One FF run of a few seconds: long enough to be killed mid-training.
LONG = {**TINY, "name": "long", "models": ["ff"],
        "ff": {"epochs": 60, "batch_size": 100, "learning_rate": 0.003}}
LONG_LAYERS = 3  # the default network
FINAL = ("succeeded", "failed", "cancelled")


class RedisServer:
    """A throwaway redis-server on a free loopback port, without persistence."""

    def __init__(self, log_dir: Path):
        self.port, self.log_dir, self.process = free_port(), log_dir, None

    def start(self) -> None:
        self.process = Process(f"redis-{time.monotonic_ns()}", [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        ], os.environ.copy(), self.log_dir, self.log_dir)
        client = redis.Redis("127.0.0.1", self.port, socket_timeout=1)
        wait_for(lambda: self._pings(client), 20, "redis-server")

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.popen.kill()
            self.process.popen.wait(timeout=20)
            self.process.handle.close()
            self.process = None


def descendants(pid: int) -> list[int]:
    """Child processes, recursively (Linux /proc)."""
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *descendants(child)]
    return found


def sigkill_tree(process: Process) -> None:
    """SIGKILL a process and its children at once: no graceful shutdown, no ack."""
    for pid in [*descendants(process.popen.pid), process.popen.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.popen.wait(timeout=20)
    process.handle.close()


class Service:
    """API and workers of one test, on its own database, Redis and queues."""

    def __init__(self, database_url: str, redis_server: RedisServer, var_dir: Path):
        broker = f"redis://127.0.0.1:{redis_server.port}/0"
        self.port, self.var_dir = free_port(), var_dir
        var_dir.mkdir(parents=True, exist_ok=True)
        self.values = dict(
            var_dir=str(var_dir), database_url=database_url, broker_url=broker, result_backend=broker,
            queue_prefix=f"r{secrets.token_hex(3)}-", progress_interval_s="0.2", stop_check_interval_s="0.2",
            sweep_interval_s="0.5", run_heartbeat_timeout_s="3", lost_message_grace_s="2",
            broker_visibility_timeout_s="600", api_port=str(self.port),
        )
        self.env, self.settings = base_env(**self.values), Settings(**self.values)
        upgrade_database(database_url)
        with session_scope(database_url) as session:
            self.key = accounts.issue_key(session, accounts.create_user(session, "alice"))
        self.api: Process | None = None
        self.workers: list[Process] = []
        self.count = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}-{self.count}"

    def start_api(self) -> Process:
        self.api = Process(self._name("api"), [
            sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app",
            "--host", "127.0.0.1", "--port", str(self.port),
        ], self.env, ROOT, self.var_dir)
        wait_for(lambda: self.api.check_alive() or http_ready(f"{self.url}/healthz")(), 60, "the API")
        return self.api

    def start_worker(self) -> Process:
        worker = Process(self._name("worker"), [
            sys.executable, "-m", "fflab", "worker", "--queue", "cpu", "--queue", "gpu",
            "--name", f"fflab-test{self.count}-{secrets.token_hex(3)}@127.0.0.1",
        ], self.env, ROOT, self.var_dir)
        self.workers.append(worker)
        wait_for(lambda: worker.check_alive() or "ready." in worker.log.read_text(), 60, "the worker")
        return worker

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.tail(40)}"
                         for p in [*self.workers, *([self.api] if self.api else [])])

    def stop(self) -> None:
        for process in [*self.workers, *([self.api] if self.api else [])]:
            if not process.handle.closed:
                process.stop()


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture()
def service(data_root: Path, pg_database, redis_server: RedisServer, tmp_path: Path,
            request: pytest.FixtureRequest) -> Iterator[Service]:
    result = Service(pg_database(), redis_server, tmp_path / "var")
    try:
        yield result
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(result.logs())
        result.stop()


def run_rows(api: httpx.Client, experiment_id: str) -> list[dict]:
    return api.get(f"/v1/experiments/{experiment_id}/runs").json()["items"]


def outcome(api: httpx.Client, experiment_id: str) -> tuple[list, list]:
    """What must not depend on a worker's death: accuracies and ensemble sizes."""
    accuracies = sorted((run["run_id"], run["accuracy"]) for run in run_rows(api, experiment_id))
    ensembles = api.get(f"/v1/experiments/{experiment_id}/ensembles").json()["runs"]
    sizes = sorted(
        (document["run_id"], record["method"], record["layer"], record["class_index"],
         str(record.get("quantile")), record["size"], record["units"])
        for document in ensembles for record in document["ensembles"]
    )
    return accuracies, sizes


def test_worker_killed_mid_run_the_run_is_delivered_again_and_results_match(service: Service) -> None:
    """SIGKILL the worker (and its pool child) while a run trains: nothing acks the
    message and the run stays ``running`` with a heartbeat that stops. The sweep of a
    new worker sees the stale heartbeat, requeues the run (new task id) and it trains
    again from the start (killed within layer 1: no checkpoint yet); the experiment succeeds with the accuracy
    and ensemble sizes of an uninterrupted experiment with the same spec and seed."""
    service.start_api()
    worker = service.start_worker()
    with service.client() as api:
        interrupted = api.post("/v1/experiments", json=LONG).json()["id"]

        def training() -> dict | None:
            runs = run_rows(api, interrupted)
            return runs[0] if runs[0]["status"] == "running" and runs[0]["progress"] else None

        before = wait_for(training, 60, "the run to report progress", 0.1)
        sigkill_tree(worker)  # the fault
        assert before["attempts"] == 1
        time.sleep(1)
        lost = run_rows(api, interrupted)[0]
        assert lost["status"] == "running"  # nobody told the database: only the heartbeat stops

        second = service.start_worker()
        finished = poll_experiment(api, interrupted, FINAL, timeout=90)
        assert "1 runs lost their worker and were requeued" in second.log.read_text()
        assert finished["status"] == "succeeded", finished
        run = run_rows(api, interrupted)[0]
        assert run["status"] == "succeeded" and run["attempts"] == 2  # delivered again, once

        uninterrupted = api.post("/v1/experiments", json=LONG).json()["id"]
        assert poll_experiment(api, uninterrupted, FINAL, timeout=90)["status"] == "succeeded"
        assert run_rows(api, uninterrupted)[0]["attempts"] == 1
        expected, got = outcome(api, uninterrupted), outcome(api, interrupted)
        assert expected[1], "no ensembles to compare"
        assert got == expected


def test_worker_killed_after_a_layer_the_run_resumes_from_its_checkpoint(service: Service) -> None:
    """SIGKILL the worker once the FF run's first layer is checkpointed in artifact
    storage (the run's progress shows layer 2 or later): the redelivered run
    fetches the checkpoint and resumes after the last finished layer (its progress
    never shows layer 1 again, says where it resumed from, and the worker logs it);
    the checkpoint is deleted when the run ends; accuracy and ensembles equal those
    of an uninterrupted experiment with the same spec and seed."""
    service.start_api()
    worker = service.start_worker()
    with service.client() as api:
        interrupted = api.post("/v1/experiments", json=LONG).json()["id"]
        run_id = run_rows(api, interrupted)[0]["run_id"]
        stored = service.settings.resolved_artifacts_dir / "experiments" / interrupted / "runs" / run_id / "checkpoint.pt"

        def layer_checkpointed() -> dict | None:
            # Killed as soon as the first layer's checkpoint is stored: two layers left.
            run = run_rows(api, interrupted)[0]
            return run if run["status"] == "running" and stored.is_file() else None

        before = wait_for(layer_checkpointed, 60, "the first layer's checkpoint in storage", 0.05)
        sigkill_tree(worker)  # the fault
        assert before["attempts"] == 1 and before["status"] == "running"

        second = service.start_worker()
        seen: list[dict] = []  # progress of the second delivery

        def finished() -> dict | None:
            run = run_rows(api, interrupted)[0]
            if run["attempts"] == 2 and run["status"] == "running" and run["progress"]:
                seen.append(run["progress"])
            body = api.get(f"/v1/experiments/{interrupted}").json()
            return body if body["status"] in FINAL else None

        body = wait_for(finished, 90, "the interrupted experiment to end", 0.05)
        assert body["status"] == "succeeded", body
        run = run_rows(api, interrupted)[0]
        assert run["status"] == "succeeded" and run["attempts"] == 2
        log = second.log.read_text()
        assert "1 runs lost their worker and were requeued" in log
        resumed = re.search(rf"resumed run {run_id} of experiment {interrupted} from (layer (\d+) .*)", log)
        assert resumed, log[-3000:]
        resumed_layer = int(resumed.group(2))
        assert resumed_layer >= 2  # layer 1 was not trained again
        if resumed_layer <= LONG_LAYERS:  # else killed after training, while evaluating
            assert seen, "no progress seen from the second delivery"
        assert all(p["resumed_from"] == resumed.group(1).strip() and p["layer"] >= resumed_layer for p in seen)
        assert not stored.exists()  # deleted when the run ended

        uninterrupted = api.post("/v1/experiments", json=LONG).json()["id"]
        assert poll_experiment(api, uninterrupted, FINAL, timeout=90)["status"] == "succeeded"
        expected, got = outcome(api, uninterrupted), outcome(api, interrupted)
        assert expected[1], "no ensembles to compare"
        assert got == expected


def test_reaper_requeues_then_fails_a_run_whose_worker_keeps_vanishing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process (SQLite): a running run with a stale heartbeat is requeued under a
    new task id (a late redelivery of the old message is ignored); once its
    deliveries reach FFLAB_TASK_MAX_ATTEMPTS it fails with "worker lost N times" and
    its experiment fails naming it. A fresh heartbeat is left alone."""
    from fflab.spec import build_spec
    from service_helpers import RecordingDispatcher

    settings = Settings(var_dir=tmp_path, run_heartbeat_timeout_s=30, task_max_attempts=2)
    upgrade_database(settings.resolved_database_url)
    dispatcher = RecordingDispatcher()
    with session_scope(settings.resolved_database_url) as session:
        owner = accounts.create_user(session, "alice")
        spec = build_spec("quick", {**{k: v for k, v in TINY.items() if k != "preset"}, "models": ["ff"]})
        experiment_id = jobs.create_experiment(session, settings, owner, spec, "private").id
    with get_sessionmaker(settings.resolved_database_url)() as session:  # reap_lost_runs commits
        for attempt in (1, 2):
            jobs.register_worker(session, f"pool{attempt}", "pool@test", "test", 1, ["cpu"])  # a slot to fill
            jobs.dispatch(session, settings, dispatcher)
            run_pk, _, task_id = dispatcher.runs[-1]
            run = jobs.claim_run(session, settings, run_pk, task_id)
            assert run is not None and run.attempts == attempt and run.heartbeat_at is not None
            session.commit()
            assert jobs.reap_lost_runs(session, settings) == (0, 0)  # heartbeat fresh
            later = run.heartbeat_at + timedelta(seconds=31)
            if attempt == 1:
                assert jobs.reap_lost_runs(session, settings, now=later) == (1, 0)
                run = session.get(Run, run_pk, populate_existing=True)
                assert run.status == "queued" and run.task_id is None
                assert jobs.claim_run(session, settings, run_pk, task_id) is None  # the old message
                session.commit()
                # The old delivery, if only slow, ends without touching the requeued run.
                monkeypatch.setenv("FFLAB_DATABASE_URL", settings.resolved_database_url)
                get_settings.cache_clear()
                import worker.service as service

                monkeypatch.setattr(service, "dispatcher_for", lambda settings: dispatcher)
                service.end_run(get_settings(), run_pk, "cancelled", task_id=task_id)
                assert session.get(Run, run_pk, populate_existing=True).status == "queued"
                session.commit()
        assert jobs.reap_lost_runs(session, settings, now=later) == (0, 1)
        run = session.get(Run, run_pk, populate_existing=True)
        assert run.status == "failed" and run.error.startswith("worker lost 2 times")
        experiment = session.get(Experiment, experiment_id, populate_existing=True)
        assert experiment.status == "failed" and "worker lost 2 times" in experiment.error
    get_settings.cache_clear()


def test_redis_restarted_with_one_experiment_running_and_one_queued(service: Service,
                                                                    redis_server: RedisServer) -> None:
    """Redis (no persistence) is killed while one experiment trains (half done) on
    the worker's only slot and another waits, and comes back empty once the first
    run has ended: the running run's unacknowledged message is gone and the first
    experiment's aggregation could not be sent. The run still ends succeeded (the
    failed send is left to the sweep); the worker reconnects, its sweep sends the
    aggregation and dispatches the waiting run to the freed slot; both experiments
    succeed, none is left running. Fair share keeps the waiting run out of the
    broker while no slot is free, so Redis never held it."""
    service.start_api()
    service.start_worker()
    with service.client() as api:
        # Longer than LONG: the run must still be under half done after the second
        # experiment is queued (LONG's run can end within 2 s on a warm machine).
        running = api.post("/v1/experiments", json={**LONG, "ff": {**LONG["ff"], "epochs": 300}}).json()["id"]
        wait_for(lambda: run_rows(api, running)[0]["progress"], 60, "the first run to train", 0.1)
        queued = api.post("/v1/experiments", json={**TINY, "models": ["bp"]}).json()["id"]
        probe = redis.Redis("127.0.0.1", redis_server.port)
        queue = service.settings.queue_name("cpu")
        assert api.get(f"/v1/experiments/{queued}").json()["status"] == "queued"
        assert probe.llen(queue) == 0  # no free slot: the waiting run is not in the broker

        def half_done() -> bool:
            progress = run_rows(api, running)[0]["progress"]
            return bool(progress and progress["fraction_done"] >= 0.5)

        wait_for(half_done, 60, "the first run to be half done", 0.05)
        assert api.get(f"/v1/experiments/{queued}").json()["status"] == "queued"
        redis_server.kill()  # the fault: every message and unacked entry is gone
        # Down until the first run has ended (its aggregation cannot be sent), 15 s at most.
        wait_for(lambda: run_rows(api, running)[0]["status"] != "running", 15, "the first run to end", 0.2)
        assert run_rows(api, running)[0]["status"] == "succeeded"  # not failed by the broker's absence
        time.sleep(1)
        redis_server.start()
        started = time.monotonic()
        bodies = {experiment_id: poll_experiment(api, experiment_id, FINAL, timeout=120)
                  for experiment_id in (running, queued)}
        statuses = {experiment_id: body["status"] for experiment_id, body in bodies.items()}
        assert statuses == {running: "succeeded", queued: "succeeded"}, [b["error"] for b in bodies.values()]
        assert time.monotonic() - started < 120
        assert all(run["status"] == "succeeded" for e in (running, queued) for run in run_rows(api, e))
        log = service.workers[0].log.read_text()
        assert "could not send the aggregation" in log  # then sent by the sweep: the experiment succeeded


def test_api_restarted_while_experiments_are_queued(service: Service) -> None:
    """The API is SIGKILLed while two experiments wait (no worker yet) and a new one
    starts on the same port: queued work lives in PostgreSQL and Redis, not in the
    API, so once a worker comes both experiments complete."""
    api_process = service.start_api()
    with service.client() as api:
        ids = [api.post("/v1/experiments", json={**TINY, "models": ["bp"], "seeds": [seed]}).json()["id"]
               for seed in (0, 1)]
        assert {api.get(f"/v1/experiments/{i}").json()["status"] for i in ids} == {"queued"}
    sigkill_tree(api_process)  # the fault
    service.start_api()
    service.start_worker()
    with service.client() as api:
        for experiment_id in ids:
            assert poll_experiment(api, experiment_id, FINAL, timeout=90)["status"] == "succeeded"


def test_queue_declaration_race_on_the_sqlite_broker(tmp_path: Path) -> None:
    """Four processes declare the queues at the same instant on a fresh SQLite broker
    (what `fflab serve`, its worker and the API did at start): none fails, one row
    per queue."""
    import sqlite3

    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    start = time.time() + 3
    script = ("import sys, time; from worker.dispatch import declare_queues; "
              "time.sleep(max(0, float(sys.argv[2]) - time.time())); declare_queues(sys.argv[1], ['cpu', 'gpu'])")
    processes = [subprocess.Popen([sys.executable, "-c", script, broker, str(start)], cwd=ROOT,
                                  env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for _ in range(4)]
    outputs = [process.communicate(timeout=60)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0, 0], outputs
    rows = sqlite3.connect(tmp_path / "broker.db").execute("SELECT name FROM kombu_queue ORDER BY name").fetchall()
    assert rows == [("cpu",), ("gpu",)]


def test_queue_declaration_retries_a_lost_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A declaration that loses the race (UNIQUE constraint) is tried again on a
    fresh connection and finds the queue."""
    from kombu import Queue
    from sqlalchemy.exc import IntegrityError

    from worker.dispatch import declare_queues

    real, failures = Queue.declare, []

    def racing(self, *args, **kwargs):
        if not failures:
            failures.append(self.name)
            raise IntegrityError("INSERT INTO kombu_queue", {}, Exception("UNIQUE constraint failed: kombu_queue.name"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Queue, "declare", racing)
    declare_queues(f"sqla+sqlite:///{tmp_path / 'broker.db'}", ["cpu", "gpu"], backoff_s=0)
    assert failures == ["cpu"]
