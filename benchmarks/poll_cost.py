"""CPU time of one status poll (``GET /v1/experiments/{id}``), in process, by variant.

    python -m benchmarks.poll_cost                 # SQLite (the embedded default)
    python -m benchmarks.poll_cost --postgres postgresql://postgres@127.0.0.1:5432/postgres

The app runs in this process on a database of its own (a temporary SQLite file, or a
fresh PostgreSQL database dropped at the end) and is called through httpx's ASGI
transport, one request at a time: no network, no other process, so the figure is the
Python and database-driver work of a poll (plus about 0.5 ms of the in-process
client's, the ``/healthz`` line). The experiment has 8 runs, one running and seven
queued, so that a poll reports a queue place. The variants alternate within each
round, so that the machine's state changes each alike: the queue snapshot read for
every poll (``queue_places_ttl_s = 0``) or reused (the default), and the status body
rendered for every poll (``status_cache_ttl_s = 0``) or reused (the default; each poll
still authenticates its key). The estimator is the least CPU time per poll over
the rounds (noise only adds time); the median and maximum show the spread. The wall
time per poll is printed the same way (it includes the database server's answers,
which the CPU time of this process leaves out), and on PostgreSQL the pool's pings
per poll (a round trip each; ``fflab.db.session`` pings only idle connections).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks import print_spread

SPEC = {"preset": "quick", "name": "poll-cost", "models": ["ff", "bp"], "seeds": [0, 1, 2, 3],
        "data": {"train_subset": 2000, "test_subset": 500}, "unseen_class": None, "network": {"width": 64}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", help="A PostgreSQL server URL to create the benchmark's database on.")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--polls", type=int, default=150, help="Polls per variant and round.")
    args = parser.parse_args(argv)

    from fflab.settings import Settings

    var_dir = Path(tempfile.mkdtemp(prefix="fflab-poll-"))
    database_name = None
    settings = Settings(var_dir=var_dir)
    if args.postgres:
        from benchmarks.load_bench import create_database

        database_name = f"fflab_poll_{secrets.token_hex(4)}"
        settings = Settings(var_dir=var_dir, database_url=create_database(args.postgres, database_name))
    try:
        per_round, wall_per_round, pings = asyncio.run(measure(settings, args.rounds, args.polls))
    finally:
        if database_name:
            from benchmarks.load_bench import drop_database
            from fflab.db import get_engine

            get_engine(settings.resolved_database_url).dispose()
            drop_database(args.postgres, database_name)
        shutil.rmtree(var_dir, ignore_errors=True)
    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(f"{backend}: CPU ms per status poll, in process, {args.rounds} rounds of {args.polls} polls "
          f"(load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    print_spread(per_round, "variant")
    print(f"\n{backend}: wall ms per status poll, the same polls")
    print_spread(wall_per_round, "variant")
    if pings is not None:
        print(f"\nthe pool's pings per poll: {pings:.2f}")
    return 0


async def measure(settings, rounds: int, polls: int) -> tuple[dict[str, list[float]], dict[str, list[float]],
                                                              float | None]:
    from sqlalchemy import select, update

    from api.main import create_app
    from fflab import accounts
    from fflab.db import Run, get_engine, session_scope
    from fflab.db.migrate import upgrade_database

    upgrade_database(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        key = accounts.issue_key(session, accounts.create_user(session, "poller"))
    app = create_app(settings)
    queue_ttl, status_ttl = settings.queue_places_ttl_s, settings.status_cache_ttl_s
    variants = {  # (queue snapshot reused for, status body reused for)
        "queue read and status rendered per poll": (0.0, 0.0),
        f"queue reused ({queue_ttl:g} s), status rendered per poll": (queue_ttl, 0.0),
        f"queue reused, status reused ({status_ttl:g} s) (as served)": (queue_ttl, status_ttl),
    }
    healthz = "/healthz (the in-process client and app)"
    per_round: dict[str, list[float]] = {name: [] for name in [*variants, healthz]}
    wall_per_round: dict[str, list[float]] = {name: [] for name in [*variants, healthz]}
    dialect, pings = get_engine(settings.resolved_database_url).dialect, [0]
    if dialect.name != "sqlite":
        ping = dialect.do_ping
        dialect.do_ping = lambda connection: pings.__setitem__(0, pings[0] + 1) or ping(connection)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://poll-cost",
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        submitted = await client.post("/v1/experiments", json=SPEC)
        if submitted.status_code != 202:
            raise SystemExit(f"submission failed: {submitted.status_code} {submitted.text[:300]}")
        experiment_id = submitted.json()["id"]
        with session_scope(settings.resolved_database_url) as session:  # one run running, with progress
            first = session.scalar(select(Run.id).where(Run.experiment_id == experiment_id).order_by(Run.id))
            session.execute(update(Run).where(Run.id == first).values(
                status="running", progress={"layer": 1, "layers": 3, "epoch": 2, "epochs": 3, "eta_seconds": 4.0}))
        path = f"/v1/experiments/{experiment_id}"
        pinged = polled = 0
        for _ in range(rounds):
            for name, (queue_ttl, status_ttl) in variants.items():
                app.state.queue_places.ttl_s = queue_ttl
                app.state.status_cache.ttl_s = status_ttl
                pings[0] = 0
                cpu, wall = await cost_per_request(client, path, polls)
                pinged, polled = pinged + pings[0], polled + polls + 10
                per_round[name].append(cpu)
                wall_per_round[name].append(wall)
            cpu, wall = await cost_per_request(client, "/healthz", polls)
            per_round[healthz].append(cpu)
            wall_per_round[healthz].append(wall)
    return per_round, wall_per_round, (None if dialect.name == "sqlite" else pinged / polled)


async def cost_per_request(client: httpx.AsyncClient, path: str, count: int) -> tuple[float, float]:
    """CPU and wall ms per request of ``count`` requests one after the other."""
    for _ in range(10):  # warm: pools, caches, prepared statements
        assert (await client.get(path)).status_code == 200
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        await client.get(path)
    return 1000 * (time.process_time() - cpu) / count, 1000 * (time.perf_counter() - wall) / count


if __name__ == "__main__":
    raise SystemExit(main())
