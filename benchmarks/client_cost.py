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
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx

from benchmarks import print_spread
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


async def cpu_ms_per_request(sessions: list, send: Callable[[Any], Awaitable[None]], requests: int) -> float:
    """This process's CPU time per request while every session sends its share of
    ``requests``, one after another, all sessions at once."""

    async def share(session: Any) -> None:
        for _ in range(requests // len(sessions)):
            await send(session)

    started = time.process_time()
    await asyncio.gather(*(share(session) for session in sessions))
    return 1000 * (time.process_time() - started) / requests


async def with_httpx(url: str, clients: int, requests: int) -> float:
    sessions = [httpx.AsyncClient(headers={"Authorization": "Bearer x"}, limits=httpx.Limits(max_connections=1))
                for _ in range(clients)]

    async def send(session: httpx.AsyncClient) -> None:
        (await session.get(url)).raise_for_status()

    try:
        return await cpu_ms_per_request(sessions, send, requests)
    finally:
        for session in sessions:
            await session.aclose()


async def with_aiohttp(url: str, clients: int, requests: int) -> float:
    sessions = [aiohttp.ClientSession(headers={"Authorization": "Bearer x"},
                                      connector=aiohttp.TCPConnector(limit=1)) for _ in range(clients)]

    async def send(session: aiohttp.ClientSession) -> None:
        async with session.get(url) as response:
            await response.read()
            response.raise_for_status()

    try:
        return await cpu_ms_per_request(sessions, send, requests)
    finally:
        for session in sessions:
            await session.close()


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
    print(f"client CPU ms per request, {args.clients} clients, {args.rounds} rounds of {args.requests} requests "
          f"(load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    print_spread(per_round, "client", digits=3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
