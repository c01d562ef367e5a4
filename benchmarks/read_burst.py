"""Read bursts against a service of its own while a run trains: on each read route,
``--requests`` GETs with ``--concurrency`` in flight at once, as the adversarial
probe of the overload issue fired them (1000, 200 at once, a key that may read).

    python -m benchmarks.read_burst --mode embedded
    python -m benchmarks.read_burst --mode stack --requests 1000 --concurrency 200

Modes as in ``benchmarks.load_bench`` (whose service, setup and clean-up it uses):
``embedded`` is ``fflab serve`` with nothing configured (SQLite, the SQLite broker,
a local folder); ``stack`` a fresh PostgreSQL database of its own, Redis with queue
names of its own, ``--api-workers`` uvicorn processes and a worker (artifacts in a
local folder). Everything listens on 127.0.0.1. It runs a tiny experiment to the
end (its figures, artifacts and run documents are what the bursts read), submits
one whose first run trains throughout (cancelled at the end), then, route by
route (``--routes``): figures (``/figures/figure2.png``), artifacts
(``/artifacts/results.json``), runs (``/runs``), documents
(``/runs/<run>/documents/metrics``), ensembles (``/ensembles``) and status (the
training experiment). Each request may take ``--timeout`` seconds (the probe's 60);
beyond it, it counts as a timeout. Meanwhile ``/healthz`` is asked every 0.5 s on
a connection of its own (5 s each). Prints, per route: answers by status,
timeouts, p50/p99/max of the answers' latency, the burst's length, and /healthz.
Exits non-zero only when the setup fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

from benchmarks.load_bench import (
    TINY,
    TRAINING,
    Service,
    SetupError,
    create_database,
    drop_database,
    percentile,
    submit,
    wait_until,
)

ROUTES = ("figures", "artifacts", "runs", "documents", "ensembles", "status")
HEALTH_EVERY_S, HEALTH_TIMEOUT_S = 0.5, 5.0


@dataclass
class Burst:
    route: str
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # answered requests, seconds
    timeouts: int = 0
    errors: Counter = field(default_factory=Counter)  # connection errors other than timeouts
    seconds: float = 0.0
    health: list[float | None] = field(default_factory=list)  # None: no answer within 5 s or not 200


async def burst(url: str, key: str, route: str, path: str, requests: int, concurrency: int,
                timeout: float) -> Burst:
    result = Burst(route)
    left = [requests]
    done = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while left[0] > 0:
            left[0] -= 1
            started = time.perf_counter()
            try:
                async with session.get(path) as response:
                    await response.read()
                    result.statuses[response.status] += 1
                    result.latencies.append(time.perf_counter() - started)
            except TimeoutError:
                result.timeouts += 1
            except aiohttp.ClientError as error:
                result.errors[f"{type(error).__name__}: {error}"[:100]] += 1

    async def prober() -> None:
        async with aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S),
                                         connector=aiohttp.TCPConnector(limit=1, force_close=True)) as session:
            while not done.is_set():
                started = time.perf_counter()
                try:
                    async with session.get("/healthz") as response:
                        await response.read()
                        ok = response.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                result.health.append(time.perf_counter() - started if ok else None)
                try:
                    await asyncio.wait_for(done.wait(), HEALTH_EVERY_S)
                except TimeoutError:
                    pass

    async with aiohttp.ClientSession(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=aiohttp.ClientTimeout(total=timeout),
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        probing = asyncio.create_task(prober())
        started = time.monotonic()
        try:
            await asyncio.gather(*(client(session) for _ in range(concurrency)))
        finally:
            result.seconds = time.monotonic() - started
            done.set()
            await probing
    return result


def show(result: Burst) -> None:
    answered = sum(result.statuses.values())
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(result.statuses.items()))
    ms = [1000 * v for v in result.latencies]
    latency = (f"p50 {percentile(ms, 50):.0f} ms, p99 {percentile(ms, 99):.0f} ms, max {max(ms):.0f} ms"
               if ms else "no answers")
    health_ok = [v for v in result.health if v is not None]
    health = (f"/healthz {len(health_ok)}/{len(result.health)} answered"
              + (f", max {1000 * max(health_ok):.0f} ms" if health_ok else ""))
    print(f"{result.route:<10} {answered} answered ({statuses}), {result.timeouts} timeouts"
          + (f", {sum(result.errors.values())} connection errors" if result.errors else "")
          + f"; {latency}; {result.seconds:.1f} s, {answered / max(result.seconds, 1e-9):.0f} answers/s; {health}")
    for error, count in result.errors.most_common(3):
        print(f"           error x{count}: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "stack"), default="embedded")
    parser.add_argument("--requests", type=int, default=1000, help="Requests per route.")
    parser.add_argument("--concurrency", type=int, default=200, help="Requests in flight at once.")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds a request may take (the probe's 60).")
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"Comma-separated, of {', '.join(ROUTES)}.")
    parser.add_argument("--pause", type=float, default=3.0, help="Seconds between two routes' bursts.")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="stack: where to create the benchmark's own database.")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/15", help="stack: the Redis broker.")
    parser.add_argument("--api-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="stack: uvicorn worker processes (default: the cores, at most 4).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary var dir (logs).")
    args = parser.parse_args(argv)
    routes = [route.strip() for route in args.routes.split(",") if route.strip()]
    unknown = set(routes) - set(ROUTES)
    if unknown:
        parser.error(f"unknown routes {', '.join(sorted(unknown))}")

    var_dir = Path(tempfile.mkdtemp(prefix="fflab-burst-"))
    database_url = broker_url = database_name = None
    if args.mode == "stack":
        database_name = f"fflab_burst_{secrets.token_hex(4)}"
        database_url = create_database(args.postgres, database_name)
        broker_url = args.broker_url
    service = Service(var_dir, args.mode, database_url, broker_url, args.api_workers)
    try:
        key = service.start()
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            finished_id = submit(client, TINY)
            body = wait_until(lambda: (b := client.get(f"/v1/experiments/{finished_id}").json())["status"]
                              in ("succeeded", "failed", "cancelled") and b, 300,
                              "the first experiment to finish", service.processes, 0.5)
            if body["status"] != "succeeded":
                raise SetupError(f"the first experiment ended {body['status']}: {body.get('error')}")
            run_id = client.get(f"/v1/experiments/{finished_id}/runs").json()["items"][0]["run_id"]
            training_id = submit(client, TRAINING)
            wait_until(lambda: client.get(f"/v1/experiments/{training_id}").json()["status"] == "running", 120,
                       "the second experiment to start training", service.processes)
        base = f"/v1/experiments/{finished_id}"
        paths = {"figures": f"{base}/figures/figure2.png", "artifacts": f"{base}/artifacts/results.json",
                 "runs": f"{base}/runs", "documents": f"{base}/runs/{run_id}/documents/metrics",
                 "ensembles": f"{base}/ensembles", "status": f"/v1/experiments/{training_id}"}
        shape = {"embedded": "fflab serve: SQLite, one API process and its solo worker",
                 "stack": f"PostgreSQL and Redis, {args.api_workers} API process(es) and a worker"}[args.mode]
        print(f"service at {service.url} ({shape}); {args.requests} requests per route, {args.concurrency} at "
              f"once, {args.timeout:g} s each; experiment {training_id} training throughout")
        for index, route in enumerate(routes):
            if index:
                time.sleep(args.pause)
            show(asyncio.run(burst(service.url, key, route, paths[route], args.requests, args.concurrency,
                                   args.timeout)))
        try:
            with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"},
                              timeout=60) as client:
                after = client.get(f"/v1/experiments/{training_id}").json()
                client.post(f"/v1/experiments/{training_id}/cancel")
            trained = after["status"] == "running" and after["progress"]["runs_done"] == 0
            print(f"training experiment after the bursts: {after['status']}, {after['progress']['runs_done']} "
                  f"of {after['progress']['runs_total']} runs done" + ("" if trained else " (NOT trained throughout)"))
        except (httpx.HTTPError, KeyError, ValueError) as error:
            print(f"after the bursts, the status did not answer within 60 s ({type(error).__name__})")
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


if __name__ == "__main__":
    sys.exit(main())
