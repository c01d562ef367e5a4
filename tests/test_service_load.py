"""Bursts of reads over real HTTP, on the embedded default (``fflab serve``: SQLite,
the SQLite broker, local files) and on the stack (PostgreSQL, Redis, S3 on moto,
uvicorn and a worker in processes of their own).

An adversarial probe fired 1000 ``GET .../figures/figure2.png`` (and 1000 ``GET
.../runs``), 200 at once, with a key that may read them: every request timed out,
and the service, /healthz included, stopped answering for a quarter of an hour: each
request held a pooled database connection while it waited for one of the
threadpool's threads, and every thread waited for a connection. Scaled to two
cores: ``TOTAL`` requests, ``CONCURRENCY`` at once, on each route. The service must
answer every one within ``ANSWER_WITHIN_S`` with 2xx, or shed it with 503 or 429
and Retry-After; /healthz must answer throughout; afterwards the route answers 200.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import pytest

from service_helpers import TINY, Serve, Stack, poll_experiment

pytest_plugins = ["service_support"]

TOTAL, CONCURRENCY = 300, 150
ANSWER_WITHIN_S = 10.0
HEALTH_WITHIN_S = 5.0
HEALTH_EVERY_S = 0.25
BURST_LIMIT_S = 60.0  # the burst as a whole
SHED = (429, 503)


@dataclass(frozen=True)
class Outcome:
    status: int | None  # None: no answer (timed out, connection failed)
    seconds: float
    retry_after: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Deployment:
    url: str
    key: str
    experiment_id: str


async def _get(session: aiohttp.ClientSession, path: str) -> Outcome:
    started = time.perf_counter()
    try:
        async with session.get(path) as response:
            await response.read()
            return Outcome(response.status, time.perf_counter() - started, response.headers.get("retry-after"))
    except (TimeoutError, aiohttp.ClientError) as error:
        return Outcome(None, time.perf_counter() - started, error=f"{type(error).__name__}: {error}")


async def _burst(url: str, key: str, path: str) -> tuple[list[Outcome], list[Outcome]]:
    """``TOTAL`` GETs of ``path``, ``CONCURRENCY`` at once (each client sends its
    next request when its last is answered), and /healthz every ``HEALTH_EVERY_S``
    on a connection of its own meanwhile."""
    left = [TOTAL]
    outcomes: list[Outcome] = []
    health: list[Outcome] = []
    done = asyncio.Event()
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=ANSWER_WITHIN_S)

    async def client(session: aiohttp.ClientSession) -> None:
        while left[0] > 0:
            left[0] -= 1
            outcomes.append(await _get(session, path))

    async def prober() -> None:
        async with aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=HEALTH_WITHIN_S),
                                         connector=aiohttp.TCPConnector(limit=1, force_close=True)) as session:
            while not done.is_set():
                health.append(await _get(session, "/healthz"))
                try:
                    await asyncio.wait_for(done.wait(), HEALTH_EVERY_S)
                except TimeoutError:
                    pass

    async with aiohttp.ClientSession(base_url=url, headers=headers, timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        probing = asyncio.create_task(prober())
        try:
            await asyncio.wait_for(asyncio.gather(*(client(session) for _ in range(CONCURRENCY))), BURST_LIMIT_S)
        finally:
            done.set()
            await probing
    return outcomes, health


def _summary(outcomes: list[Outcome]) -> str:
    counts = Counter("timeout/error" if o.status is None else str(o.status) for o in outcomes)
    slowest = max((o.seconds for o in outcomes), default=0.0)
    errors = Counter(o.error[:100] for o in outcomes if o.error)
    return f"{dict(counts)}, slowest {slowest:.1f} s, errors {dict(errors.most_common(3))}"


def _check_burst(deployment: Deployment, path: str) -> None:
    outcomes, health = asyncio.run(_burst(deployment.url, deployment.key, path))
    summary = _summary(outcomes)
    print(f"{path}: {summary}; /healthz {_summary(health)}")
    assert len(outcomes) == TOTAL, summary
    unanswered = [o for o in outcomes if o.status is None]
    assert not unanswered, f"{len(unanswered)} of {TOTAL} not answered within {ANSWER_WITHIN_S} s: {summary}"
    wrong = [o for o in outcomes if not (200 <= o.status < 300 or o.status in SHED)]
    assert not wrong, f"answers neither 2xx nor 503/429: {summary}"
    assert all(o.retry_after and int(o.retry_after) > 0 for o in outcomes if o.status in SHED), summary
    assert any(200 <= o.status < 300 for o in outcomes), f"nothing served: {summary}"
    assert len(health) >= 2, "the /healthz prober did not run"
    assert all(o.status == 200 for o in health), f"/healthz failed during the burst: {_summary(health)}"
    # Afterwards the service serves the route again at once.
    with httpx.Client(base_url=deployment.url, headers={"Authorization": f"Bearer {deployment.key}"},
                      timeout=ANSWER_WITHIN_S) as client:
        assert client.get(path).status_code == 200
        assert client.get(f"/v1/experiments/{deployment.experiment_id}").status_code == 200


def _finished_experiment(url: str, key: str) -> str:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        created = client.post("/v1/experiments", json={**TINY, "name": "load"})
        assert created.status_code == 202, created.text
        experiment = poll_experiment(client, created.json()["id"], ("succeeded", "failed", "cancelled"), 180)
        assert experiment["status"] == "succeeded", (experiment["error"], experiment["progress"])
        figures = {f["name"] for f in client.get(f"/v1/experiments/{experiment['id']}/figures").json()["items"]}
        assert "figure2.png" in figures
        return experiment["id"]


@pytest.fixture(params=["embedded", "stack"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Deployment:
    """A finished tiny experiment (its figures stored) on the embedded default or on the stack."""
    if request.param == "embedded":
        serve = Serve(tmp_path, "serve")  # nothing configured: SQLite, the SQLite broker, var/artifacts
        request.getfixturevalue("serves").append(serve)
        serve.wait_up()
        url, key = serve.url, serve.key()
    else:
        stack: Stack = request.getfixturevalue("stack")
        url, key = stack.api_url, stack.member_key
    return Deployment(url, key, _finished_experiment(url, key))


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_read_bursts_are_answered_or_shed_and_health_answers(deployment: Deployment) -> None:
    base = f"/v1/experiments/{deployment.experiment_id}"
    _check_burst(deployment, f"{base}/figures/figure2.png")
    _check_burst(deployment, f"{base}/runs")
