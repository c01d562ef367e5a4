"""Helpers of the service tests: subprocesses, polling, fresh PostgreSQL databases."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from fflab.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_SERVE_DB = 14  # tests that run ``fflab serve`` on Redis; queue names of their own
WORKER_STARTED = re.compile(r"worker started \(pid (\d+)\)")

# A run takes about a second: MNIST subsets, one epoch, narrow layers.
TINY = {
    "preset": "quick",
    "name": "tiny",
    "models": ["ff", "bp"],
    "seeds": [0],
    "data": {"train_subset": 200, "test_subset": 200},
    "ff": {"epochs": 1, "batch_size": 100, "learning_rate": 0.003},
    "bp": {"epochs": 1, "batch_size": 100, "learning_rate": 0.003},
    "unseen_class": None,
    "network": {"width": 64},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def http_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False
    return ready


def create_database(name: str) -> str:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Process:
    """A subprocess whose output goes to a log file shown when a test fails."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path, log_dir: Path):
        self.name, self.log = name, log_dir / f"{name}.log"
        self.handle = self.log.open("w")
        self.popen = subprocess.Popen(command, env=env, cwd=cwd, stdout=self.handle, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.handle.close()


@dataclass
class Stack:
    api_url: str
    env: dict[str, str]
    settings: Settings
    admin_key: str
    member_key: str
    other_key: str
    s3_endpoint: str
    processes: list[Process] = field(default_factory=list)

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=30)

    def check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()

    def s3_keys(self, prefix: str) -> list[str]:
        from fflab.storage import S3Storage

        return S3Storage(self.settings).list(prefix)


def base_env(**settings: str) -> dict[str, str]:
    """This process's environment without FFLAB_* settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFLAB_")}
    env["FFLAB_DATA_ROOT"] = os.environ.get("FFLAB_DATA_ROOT", str(ROOT / "data"))
    env["PYTHONUNBUFFERED"] = "1"
    # Few PostgreSQL connections per server process: the suite's servers together stay
    # within SUITE_MAX_CONNECTIONS (a test may pass more, as the load tests do).
    env.update(FFLAB_DATABASE_POOL_SIZE="3", FFLAB_DATABASE_MAX_OVERFLOW="5", FFLAB_API_DB_CONCURRENCY="6")
    env.update({f"FFLAB_{name.upper()}": value for name, value in settings.items()})
    return env


def poll_experiment(client: httpx.Client, experiment_id: str, statuses: tuple[str, ...],
                    timeout: float = 90) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = client.get(f"/v1/experiments/{experiment_id}").json()
        return body if body["status"] in statuses else None

    return wait_for(reached, timeout, f"experiment {experiment_id} to be {' or '.join(statuses)}", 0.2)


class Serve:
    """``fflab serve`` in its own folder (var/ under it), with extra settings."""

    def __init__(self, folder: Path, name: str, *args: str, **settings: str):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = base_env(api_port=str(self.port), **settings)
        self.process = Process(name, [sys.executable, "-m", "fflab", "serve", *args], self.env, folder, folder)

    def wait_up(self, path: str = "/readyz", timeout: float = 90) -> None:
        wait_for(lambda: self.process.check_alive() or http_ready(f"{self.url}{path}")(), timeout,
                 f"{self.url}{path}")

    def key(self) -> str:
        return (self.folder / "var" / "admin.key").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key()}"}, timeout=30)

    def log(self) -> str:
        return self.process.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """Every worker process serve started, in order."""
        return [int(pid) for pid in WORKER_STARTED.findall(self.log())]


def backend_settings(backend: str, pg_database: Callable[[], str], queue_prefix: str) -> dict[str, str]:
    """Settings of ``fflab serve`` on the embedded default ("sqlite") or on a fresh
    PostgreSQL database and Redis ("postgresql")."""
    if backend == "sqlite":
        return {}
    broker = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_SERVE_DB}"
    return dict(database_url=pg_database(), broker_url=broker, result_backend=broker, queue_prefix=queue_prefix)


def readyz(url: str, token: str | None = None) -> httpx.Response:
    """GET /readyz; with ``token`` (an admin's key or FFLAB_METRICS_TOKEN) its details too."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{url}/readyz", headers=headers, timeout=5)


class RecordingDispatcher:
    """What would go to the broker, recorded (the rule that sends it is under test,
    not Celery). ``analyses_expected=False``: a re-analysis sent is a test failure."""

    def __init__(self, analyses_expected: bool = True) -> None:
        self.runs: list[tuple[int, str, str]] = []
        self.aggregations: list[str] = []
        self.analyses: list[str] = []
        self.analyses_expected = analyses_expected

    def send_run(self, run_pk: int, queue: str, task_id: str) -> None:
        self.runs.append((run_pk, queue, task_id))

    def send_aggregate(self, experiment_id: str, queue: str) -> None:
        self.aggregations.append(experiment_id)

    def send_analysis(self, analysis_id: str, queue: str) -> None:
        if not self.analyses_expected:
            raise AssertionError(f"a re-analysis ({analysis_id}) was sent where none was expected")
        self.analyses.append(analysis_id)

    def revoke(self, task_ids: list[str]) -> None:
        pass
