"""Load benchmark of the service API: N concurrent pollers against a service of its own.

    python -m benchmarks.load_bench --mode embedded --clients 50 --seconds 20
    python -m benchmarks.load_bench --mode processes --clients 200 --seconds 20
    python -m benchmarks.load_bench --mode stack --clients 200 --seconds 20

Modes: ``embedded`` is ``fflab serve`` with nothing configured (one process: the API
on one event loop, plus its supervised solo worker; SQLite, the SQLite broker, a
local folder), the default a new user gets. ``processes`` starts the API (uvicorn,
``--api-workers`` processes) and a worker separately, on the same embedded SQLite
defaults (or ``--database-url``, which must be an empty or fflab database). ``stack``
is the production shape: a fresh PostgreSQL database of its own on ``--postgres``
(dropped at the end), Redis at ``--broker-url`` with queue names of its own, and
``--api-workers`` API processes. Everything listens on a free loopback port in a
temporary var dir. It creates a user, runs one tiny experiment
to the end (for ``/ensembles``), submits a second one whose first run trains throughout
the load (cancelled at the end), then runs the clients (asyncio, an aiohttp session each). Each client mostly polls
``GET /v1/experiments/{id}`` of the training experiment, and sometimes lists
``GET /v1/experiments`` or reads ``/ensembles`` of the finished one. Bounded by
``--warmup`` (reported apart) plus ``--seconds``, and ``--max-requests``. Prints
requests/second, latency percentiles per kind and the error count; exits non-zero only when the setup fails. Stops what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "preset": "quick", "name": "load-tiny", "models": ["ff", "bp"], "seeds": [0],
    "data": {"train_subset": 200, "test_subset": 200},
    "ff": {"epochs": 1, "batch_size": 100, "learning_rate": 0.003},
    "bp": {"epochs": 1, "batch_size": 100, "learning_rate": 0.003},
    "unseen_class": None, "network": {"width": 64},
}
# Trains throughout the load: its first run has more epochs than any load lasts (the
# bench cancels it at the end), and three more runs wait in the queue behind it, so
# that each status poll reports a running run's progress and queue places.
TRAINING = {**TINY, "name": "load-training", "seeds": [0, 1],
            "data": {"train_subset": 2000, "test_subset": 500},
            "ff": {**TINY["ff"], "epochs": 100_000}, "bp": {**TINY["bp"], "epochs": 3}}


class SetupError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, processes=(), interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in processes:
            if process.poll() is not None:
                raise SetupError(f"{name} exited with {process.returncode} while waiting for {what}")
        try:
            result = condition()
        except httpx.TransportError:
            result = None
        if result:
            return result
        time.sleep(interval)
    raise SetupError(f"timed out after {timeout:.0f} s waiting for {what}")


def children(pid: int) -> list[int]:
    """Child processes, recursively, whichever thread started them (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found + [grandchild for child in found for grandchild in children(child)]


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class Service:
    """The service in subprocesses (``fflab serve``, or uvicorn and a worker), logs
    under the var dir."""

    def __init__(self, var_dir: Path, mode: str, database_url: str | None, broker_url: str | None,
                 api_workers: int):
        self.var_dir, self.port, self.mode = var_dir, free_port(), mode
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FFLAB_")}
        env.update(FFLAB_VAR_DIR=str(var_dir), FFLAB_API_PORT=str(self.port), PYTHONUNBUFFERED="1",
                   FFLAB_DATA_ROOT=os.environ.get("FFLAB_DATA_ROOT", str(ROOT / "data")))
        if mode != "embedded":  # the embedded default keeps every default setting
            env.update(FFLAB_PROGRESS_INTERVAL_S="0.5", FFLAB_STOP_CHECK_INTERVAL_S="1.0")
        if database_url:
            env["FFLAB_DATABASE_URL"] = database_url
        if broker_url:
            env.update(FFLAB_BROKER_URL=broker_url, FFLAB_RESULT_BACKEND=broker_url,
                       FFLAB_QUEUE_PREFIX=f"load{secrets.token_hex(3)}-")
        self.env, self.api_workers = env, api_workers
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.logs: list = []

    def settings(self):
        from fflab.settings import Settings

        return Settings(**{k[len("FFLAB_"):].lower(): v for k, v in self.env.items()
                           if k.startswith("FFLAB_") and k != "FFLAB_DATA_ROOT"})

    def _spawn(self, name: str, command: list[str]) -> None:
        log = (self.var_dir / f"{name}.log").open("w")
        self.logs.append(log)
        process = subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append((name, process))

    def start(self) -> str:
        """Migrates the database, creates a user; returns the user's key once the API is ready."""
        from fflab import accounts
        from fflab.db import session_scope
        from fflab.db.migrate import upgrade_database

        settings = self.settings()
        upgrade_database(settings.resolved_database_url)
        with session_scope(settings.resolved_database_url) as session:
            name = f"load-{random.randrange(16**6):06x}"
            key = accounts.issue_key(session, accounts.create_user(session, name))
        if self.mode == "embedded":
            self._spawn("serve", [sys.executable, "-m", "fflab", "serve"])
            wait_until(lambda: httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200, 120,
                       "fflab serve", self.processes)
            return key
        self._spawn("worker", [sys.executable, "-m", "fflab", "worker", "--queue", "cpu", "--queue", "gpu",
                               "--pool", "solo"])
        # The worker declares the broker's queues as it starts: let it finish first
        # (the SQLite broker's queue table does not take concurrent first declarations).
        worker_log = self.var_dir / "worker.log"
        wait_until(lambda: "ready." in worker_log.read_text(errors="replace"), 90, "the worker", self.processes)
        self._spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app",
                            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.api_workers),
                            "--log-level", "warning", "--no-access-log"])
        wait_until(lambda: httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200, 90, "the API",
                   self.processes)
        return key

    def api_pids(self) -> list[int]:
        """The processes that serve HTTP: fflab serve (its worker is a child of its own),
        or uvicorn and its worker processes."""
        for name, process in self.processes:
            if name == "serve":
                return [process.pid]
            if name == "api":
                return [process.pid, *children(process.pid)]
        return []

    def worker_pids(self) -> list[int]:
        pids = []
        for name, process in self.processes:
            if name == "serve":
                pids += children(process.pid)
            elif name == "worker":
                pids += [process.pid, *children(process.pid)]
        return pids

    def cleanup_broker(self) -> None:
        """Redis: delete this run's queues and messages (its own queue prefix)."""
        prefix, broker = self.env.get("FFLAB_QUEUE_PREFIX"), self.env.get("FFLAB_BROKER_URL", "")
        if not prefix or not broker.startswith("redis://"):
            return
        import redis

        client = redis.Redis.from_url(broker)
        for key in client.scan_iter(f"*{prefix}*"):
            client.delete(key)

    def stop(self) -> None:
        for _name, process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)  # its own session: uvicorn workers too
                except ProcessLookupError:
                    pass
        for _name, process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        for log in self.logs:
            log.close()


def submit(client: httpx.Client, spec: dict) -> str:
    response = client.post("/v1/experiments", json=spec)
    if response.status_code != 202:
        raise SetupError(f"submission failed: {response.status_code} {response.text[:300]}")
    return response.json()["id"]


async def load(url: str, key: str, clients: int, seconds: float, max_requests: int, training_id: str,
               finished_id: str | None, interval: float, warmup: float) -> tuple[dict, int, list[str], float, int]:
    """Latencies per kind of request; those of requests sent in the first ``warmup``
    seconds (while 200 connections open and the API's database pools fill) under
    the kind ``warm-up``. Errors are counted all along."""
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    budget = [max_requests]

    # One client (one connection) per poller, as 200 researchers' scripts would each
    # have, made before the clock starts. The pollers are aiohttp's: the load
    # generator shares the machine it measures, and httpx's AsyncClient spends about
    # six times the CPU per request of aiohttp's (``python -m benchmarks.client_cost``:
    # 1.46 against 0.25 ms), which at 200 requests/s was a quarter of a core or more
    # taken from the service.
    timeout = aiohttp.ClientTimeout(total=30)
    pollers = [aiohttp.ClientSession(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=1)) for _ in range(clients)]
    measured_from = time.monotonic() + warmup
    deadline = measured_from + seconds

    async def one_client(number: int, session: aiohttp.ClientSession) -> None:
        async with session:
            rng = random.Random(number)
            await asyncio.sleep(rng.random() * interval)  # spread the first requests
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                draw = rng.random()
                if draw < 0.1:
                    kind, path = "list", "/v1/experiments"
                elif draw < 0.2 and finished_id:
                    kind, path = "ensembles", f"/v1/experiments/{finished_id}/ensembles"
                else:
                    kind, path = "status", f"/v1/experiments/{training_id}"
                started = time.perf_counter()
                counted = kind if time.monotonic() >= measured_from else "warm-up"
                try:
                    async with session.get(path) as response:
                        await response.read()
                        if response.status != 200:
                            errors.append(f"{kind}: HTTP {response.status}")
                        else:
                            latencies[counted].append(time.perf_counter() - started)
                except (TimeoutError, aiohttp.ClientError) as error:
                    errors.append(f"{kind}: {type(error).__name__}: {error}")
                await asyncio.sleep(rng.uniform(0.5, 1.5) * interval)  # a poller's wait between polls

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one_client(i, session) for i, session in enumerate(pollers))),
                           warmup + seconds + 60)
    elapsed = time.monotonic() - started
    return latencies, max_requests - budget[0], errors, elapsed, clients


STATUS_ROUTE = "/v1/experiments/{experiment_id}"


def server_side(metrics_text: str, route: str = STATUS_ROUTE) -> str:
    """The API's own latency histogram for ``route`` (one API process's: the one that
    answered /metrics): the share of requests under 250 ms and the buckets holding
    the median and the 99th percentile, measured from the request's arrival in the
    application to its response, without the clients' and the kernel's queueing."""
    buckets = []
    for line in metrics_text.splitlines():
        if line.startswith("fflab_http_request_duration_seconds_bucket{") and f'route="{route}"' in line \
                and 'method="GET"' in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    if not buckets or not buckets[-1][1]:
        return "server side: no histogram"
    total = buckets[-1][1]

    def upper(q: float) -> str:
        bound = next(bound for bound, count in buckets if count >= q * total)
        return "> 10 s" if bound == float("inf") else f"<= {bound * 1000:g} ms"

    under = next((count for bound, count in buckets if bound >= 0.25), total) / total
    return (f"server side (one API process, {total:.0f} status polls since it started): p50 {upper(0.5)}, "
            f"p99 {upper(0.99)}, {under:.1%} under 250 ms")


def report(latencies: dict, sent: int, errors: list[str], elapsed: float, clients: int) -> None:
    done = sum(len(v) for v in latencies.values())
    print(f"clients {clients}, {elapsed:.1f} s, {sent} requests sent, {done} ok, {len(errors)} errors, "
          f"{done / elapsed:.1f} requests/s")
    print(f"{'kind':<10} {'count':>6} {'mean ms':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind in ("status", "list", "ensembles", "warm-up"):
        values = [v * 1000 for v in latencies.get(kind, [])]
        if values:
            print(f"{kind:<10} {len(values):>6} {statistics.mean(values):>8.1f} {percentile(values, 50):>8.1f} "
                  f"{percentile(values, 95):>8.1f} {percentile(values, 99):>8.1f} {max(values):>8.1f}")
    if errors:
        counts: dict[str, int] = defaultdict(int)
        for error in errors:
            counts[error[:120]] += 1
        for error, count in sorted(counts.items(), key=lambda item: -item[1])[:5]:
            print(f"  error x{count}: {error}")
    status = [v * 1000 for v in latencies.get("status", [])]
    met = bool(status) and not errors and percentile(status, 99) < 250
    print(f"target (zero errors, status p99 < 250 ms): {'met' if met else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "processes", "stack"), default="embedded",
                        help="embedded: fflab serve; processes: uvicorn and a worker on SQLite; "
                             "stack: PostgreSQL and Redis.")
    parser.add_argument("--clients", type=int, default=None, help="Default 50 embedded, else 200.")
    parser.add_argument("--seconds", type=float, default=20, help="Measured seconds, after the warm-up.")
    parser.add_argument("--warmup", type=float, default=3,
                        help="Seconds of load first, reported apart (connections opening, pools filling).")
    parser.add_argument("--max-requests", type=int, default=200_000, help="Stop after this many requests.")
    parser.add_argument("--database-url", help="processes: a PostgreSQL URL (default: SQLite in the var dir).")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="stack: where to create the benchmark's own database.")
    parser.add_argument("--broker-url", default=None,
                        help="stack: the Redis broker (default redis://127.0.0.1:6379/15).")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="Mean seconds a client waits between its polls (uniform 0.5x-1.5x).")
    parser.add_argument("--api-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="uvicorn worker processes (default: the cores, at most 4).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary var dir (logs).")
    args = parser.parse_args(argv)
    clients = args.clients or (50 if args.mode == "embedded" else 200)

    var_dir = Path(tempfile.mkdtemp(prefix="fflab-load-"))
    database_url, broker_url, database_name = args.database_url, None, None
    if args.mode == "stack":
        database_name = f"fflab_load_{secrets.token_hex(4)}"
        database_url = create_database(args.postgres, database_name)
        broker_url = args.broker_url or "redis://127.0.0.1:6379/15"
    service = Service(var_dir, args.mode, database_url, broker_url, args.api_workers)
    try:
        key = service.start()
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            finished_id = submit(client, TINY)
            body = wait_until(lambda: (b := client.get(f"/v1/experiments/{finished_id}").json())["status"]
                              in ("succeeded", "failed", "cancelled") and b, 180,
                              "the first experiment to finish", service.processes, 0.5)
            if body["status"] != "succeeded":
                raise SetupError(f"the first experiment ended {body['status']}: {body.get('error')}")
            training_id = submit(client, TRAINING)
            wait_until(lambda: client.get(f"/v1/experiments/{training_id}").json()["status"] == "running", 60,
                       "the second experiment to start training", service.processes)
        shape = {"embedded": "fflab serve: SQLite, one API process and its solo worker",
                 "processes": f"{'PostgreSQL' if database_url else 'SQLite'}, {args.api_workers} API process(es) "
                              f"and a worker",
                 "stack": f"PostgreSQL and Redis, {args.api_workers} API process(es) and a worker"}[args.mode]
        print(f"service at {service.url} ({shape}); {clients} clients polling every ~{args.interval:g} s; "
              f"experiment {training_id} training during the load")
        api_pids, worker_pids = service.api_pids(), service.worker_pids()
        cpu_before = cpu_seconds(api_pids), cpu_seconds(worker_pids), time.monotonic(), time.process_time()
        load_before = os.getloadavg()[0]
        results = asyncio.run(load(service.url, key, clients, args.seconds, args.max_requests,
                                   training_id, finished_id, args.interval, args.warmup))
        api_cpu = cpu_seconds(api_pids) - cpu_before[0]
        worker_cpu = cpu_seconds(worker_pids) - cpu_before[1]
        wall = time.monotonic() - cpu_before[2]
        client_cpu = time.process_time() - cpu_before[3]
        metrics = ""
        try:
            with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"},
                              timeout=60) as client:
                after = client.get(f"/v1/experiments/{training_id}").json()
                metrics = client.get("/metrics").text
                client.post(f"/v1/experiments/{training_id}/cancel")
            trained = after["status"] == "running" and after["progress"]["runs_done"] == 0
            print(f"training experiment after the load: {after['status']}, "
                  f"{after['progress']['runs_done']} of {after['progress']['runs_total']} runs done"
                  + ("" if trained else " (NOT trained throughout the load: its figures are not under training)"))
        except (httpx.HTTPError, KeyError, ValueError) as error:
            print(f"training experiment after the load: unknown ({type(error).__name__}: {error})")
        report(*results)
        if metrics:
            print(server_side(metrics))
        done = sum(len(v) for v in results[0].values())
        print(f"CPU during the load: API {api_cpu:.1f} s ({1000 * api_cpu / max(done, 1):.1f} ms per request, "
              f"{api_cpu / wall:.0%} of a core), training worker {worker_cpu:.1f} s ({worker_cpu / wall:.0%} of a "
              f"core), these clients {client_cpu:.1f} s ({client_cpu / wall:.0%} of a core); load average "
              f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")
        return 0
    except SetupError as error:
        print(f"setup failed: {error}", file=sys.stderr)
        for name, _process in service.processes:
            log = var_dir / f"{name}.log"
            if log.is_file():
                print(f"----- {name} log -----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]),
                      file=sys.stderr)
        return 1
    finally:
        service.stop()
        service.cleanup_broker()
        if database_name:
            drop_database(args.postgres, database_name)
        if not args.keep:
            shutil.rmtree(var_dir, ignore_errors=True)


def create_database(admin_url: str, name: str) -> str:
    """A fresh PostgreSQL database on the server of ``admin_url``; its SQLAlchemy URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
