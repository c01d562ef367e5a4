"""CPU time a load generator's HTTP client spends per request: httpx against aiohttp.

    python -m benchmarks.client_cost

``benchmarks.load_bench`` runs its pollers on the machine it measures, so every
millisecond its client spends is taken from the service. This serves a fixed
1.5 kB JSON body from a bare ASGI app under uvicorn in another process, then has
100 concurrent clients (one connection each, as in load_bench) send 3000 requests
with each library, alternating within each of 5 rounds, and reads this process's
CPU time. The estimator is the least CPU time per request over the rounds (noise
only adds time); the median and maximum show the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import aiohttp
import httpx

from benchmarks.load_bench import free_port, wait_until

SERVER = """
import uvicorn

BODY = b'{"status": "running", "padding": "' + b"x" * 1500 + b'"}'


async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": BODY})


uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), log_level="critical")
"""


async def with_httpx(url: str, clients: int, requests: int) -> float:
    sessions = [httpx.AsyncClient(headers={"Authorization": "Bearer x"}, limits=httpx.Limits(max_connections=1))
                for _ in range(clients)]

    async def one(session: httpx.AsyncClient) -> None:
        for _ in range(requests // clients):
            (await session.get(url)).raise_for_status()

    started = time.process_time()
    await asyncio.gather(*(one(session) for session in sessions))
    spent = time.process_time() - started
    for session in sessions:
        await session.aclose()
    return 1000 * spent / requests


async def with_aiohttp(url: str, clients: int, requests: int) -> float:
    sessions = [aiohttp.ClientSession(headers={"Authorization": "Bearer x"},
                                      connector=aiohttp.TCPConnector(limit=1)) for _ in range(clients)]

    async def one(session: aiohttp.ClientSession) -> None:
        for _ in range(requests // clients):
            async with session.get(url) as response:
                await response.read()
                response.raise_for_status()

    started = time.process_time()
    await asyncio.gather(*(one(session) for session in sessions))
    spent = time.process_time() - started
    for session in sessions:
        await session.close()
    return 1000 * spent / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=3000, help="Per client library and round.")
    args = parser.parse_args(argv)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    url = f"http://127.0.0.1:{port}/v1/experiments/x"
    try:
        wait_until(lambda: httpx.get(url).status_code == 200, 30, "the server", [("server", server)])
        per_round: dict[str, list[float]] = {"httpx 0.28 AsyncClient": [], "aiohttp ClientSession": []}
        for _ in range(args.rounds):
            per_round["httpx 0.28 AsyncClient"].append(asyncio.run(with_httpx(url, args.clients, args.requests)))
            per_round["aiohttp ClientSession"].append(asyncio.run(with_aiohttp(url, args.clients, args.requests)))
    finally:
        server.kill()
        server.wait()
    baseline = min(per_round["httpx 0.28 AsyncClient"])
    print(f"client CPU ms per request, {args.clients} clients, {args.rounds} rounds of {args.requests} requests "
          f"(load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    print(f"{'client':<24} {'min':>6} {'median':>7} {'max':>6} {'min / httpx':>12}")
    for name, values in per_round.items():
        print(f"{name:<24} {min(values):>6.3f} {statistics.median(values):>7.3f} {max(values):>6.3f} "
              f"{min(values) / baseline:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
