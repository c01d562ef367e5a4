"""Fixtures of the service tests (loaded with ``pytest_plugins = ["service_support"]``).

``stack`` is the production shape on loopback: a fresh PostgreSQL database, a Redis
db number and queue names of this session's own, artifact storage on a moto S3
server, a worker (``fflab worker``) and the API (uvicorn) in subprocesses.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from fflab import accounts
from fflab.db import session_scope
from fflab.db.migrate import upgrade_database
from fflab.db.session import close_idle_connections
from fflab.processes import process_alive
from fflab.settings import Settings
from service_helpers import (
    PG_ADMIN_URL,
    REDIS_HOST,
    REDIS_PORT,
    REDIS_SERVE_DB,
    ROOT,
    Process,
    Serve,
    Stack,
    base_env,
    create_database,
    drop_database,
    free_port,
    http_ready,
    wait_for,
)


@pytest.fixture(autouse=True)
def _close_idle_database_connections() -> Iterator[None]:
    """After each test, this process's pooled database connections go: a session that
    touched many test databases would otherwise hold one or more idle connections to
    each until it ends (PostgreSQL's max_connections is shared with the services)."""
    yield
    close_idle_connections()


class ConnectionSampler(threading.Thread):
    """Counts, twice a second, the PostgreSQL connections to this suite's databases
    (``fflab_test_*``) and keeps the largest count, printed at the end of the session."""

    def __init__(self) -> None:
        super().__init__(name="pg-connection-sampler", daemon=True)
        self.largest, self.stopping = 0, threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=2) as connection:
                while not self.stopping.wait(0.5):
                    [(count,)] = connection.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'fflab_test_%'").fetchall()
                    self.largest = max(self.largest, count)
        except psycopg.Error:
            return  # no PostgreSQL here: the tests that need it say so themselves


SAMPLER = ConnectionSampler()  # started by the first test that makes a database (this plugin loads after
# the session has started, with the first module that names it, so pytest_sessionstart would never see it)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if SAMPLER.is_alive():
        SAMPLER.stopping.set()
        terminalreporter.write_line(f"most PostgreSQL connections the suite held at once: {SAMPLER.largest}")


STARTUP_S = 240  # how long the stack's API and worker may take to start


@pytest.fixture(scope="session")
def pg_database() -> Iterator[Callable[[], str]]:
    """Makes fresh, empty PostgreSQL databases (fflab_test_<random>); drops them at the end."""
    names: list[str] = []
    SAMPLER.start()

    def make() -> str:
        names.append(f"fflab_test_{secrets.token_hex(6)}")
        return create_database(names[-1])

    yield make
    for name in names:  # WITH (FORCE) also ends this process's pooled connections
        drop_database(name)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_dir = tmp_path_factory.mktemp("moto")
    process = Process("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                      base_env(), log_dir, log_dir)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(http_ready(f"{endpoint}/moto-api/"), 30, "the moto S3 server")
        yield endpoint
    finally:
        process.stop()


@pytest.fixture(scope="session")
def stack(data_root: Path, pg_database, moto_s3: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import boto3

    database_url = pg_database()
    redis_db = random.randint(1, 15)
    prefix = f"t{secrets.token_hex(4)}-"
    broker_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"
    var_dir = tmp_path_factory.mktemp("stack-var")
    bucket = f"fflab-{secrets.token_hex(4)}"
    port = free_port()
    values = dict(
        var_dir=str(var_dir), database_url=database_url, broker_url=broker_url, result_backend=broker_url,
        s3_bucket=bucket, s3_endpoint_url=moto_s3, s3_access_key_id="testing", s3_secret_access_key="testing",
        queue_prefix=prefix, max_queued_runs_per_user="16", max_body_bytes="20000", progress_interval_s="0.2",
        stop_check_interval_s="0.2", api_port=str(port),
        # small enough for test_service_representations to go past each with a tiny file
        representations_max_bytes="300000", representations_max_units="64", representations_max_images="400",
        # every test of the session reaches this stack from 127.0.0.1, and many of them
        # send bad keys on purpose: the limit per client has its own test (test_service_limits)
        auth_failures_per_minute="100000",
    )
    env = base_env(**values)
    settings = Settings(**values)
    boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=bucket)

    upgrade_database(database_url)
    with session_scope(database_url) as session:
        admin_key = accounts.issue_key(session, accounts.create_user(session, "root", "admin"))
        member_key = accounts.issue_key(session, accounts.create_user(session, "alice"))
        other_key = accounts.issue_key(session, accounts.create_user(session, "bob"))

    processes = [
        Process("worker", [sys.executable, "-m", "fflab", "worker", "--queue", "cpu", "--queue", "gpu"],
                env, ROOT, var_dir),
        Process("api", [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app",
                        "--http", "api.protocol:HttpProtocol", "--host", "127.0.0.1", "--port", str(port),
                        "--no-proxy-headers"],
                env, ROOT, var_dir),
    ]
    result = Stack(f"http://127.0.0.1:{port}", env, settings, admin_key, member_key, other_key, moto_s3, processes)
    try:
        def up() -> bool:
            result.check_alive()
            return http_ready(f"{result.api_url}/readyz")()

        # A shared, loaded machine (a training job, other suites) can take minutes to import torch twice.
        wait_for(up, STARTUP_S, "the API")
        wait_for(lambda: result.check_alive() or "ready." in processes[0].log.read_text(), STARTUP_S, "the worker")
        yield result
    finally:
        for process in processes:
            process.stop()
        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=redis_db)
        for key in client.scan_iter(f"*{prefix}*"):
            client.delete(key)
        shutil.rmtree(var_dir, ignore_errors=True)


@pytest.fixture()
def serves(data_root: Path, request: pytest.FixtureRequest) -> Iterator[list[Serve]]:
    """The ``fflab serve`` processes a test appends here: their logs are printed if it
    fails; they and any worker of theirs are stopped at the end."""
    started: list[Serve] = []
    yield started
    report = getattr(request.node, "rep_call", None)
    for serve in started:
        if report is not None and report.failed:
            print(f"----- {serve.process.name} -----\n{serve.process.tail(80)}")
        serve.process.stop()
        for pid in serve.worker_pids():  # a worker left behind is reported by the test itself
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    """Queue names of this test's own on Redis (REDIS_SERVE_DB), deleted at the end."""
    prefix = f"s{secrets.token_hex(4)}-"
    yield prefix
    client = redis.Redis(REDIS_HOST, REDIS_PORT, db=REDIS_SERVE_DB)
    for key in client.scan_iter(f"*{prefix}*"):
        client.delete(key)


@pytest.fixture(autouse=True)
def _show_service_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """On failure, print the tail of the stack's logs (pytest shows captured output)."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "stack" in request.fixturenames:
        for process in request.getfixturevalue("stack").processes:
            print(f"----- {process.name} log -----\n{process.tail()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
