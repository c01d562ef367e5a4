"""Prometheus metrics: HTTP traffic, and experiments and runs by status read from
the database at each scrape; per queue and user, the runs waiting to start and how
long the oldest of them has waited; the registered workers' slots and GPUs.

/metrics names users and their queues, so it is not public (``MetricsAuthMiddleware``):
it takes ``Authorization: Bearer <FFLAB_METRICS_TOKEN>`` (when that is set) or an
admin's API key; 401 without credentials (or with wrong ones), 403 for a member's key."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from fflab import accounts
from fflab.db import Experiment, Run, User, Worker, get_sessionmaker, utcnow


class DatabaseCollector(Collector):
    def __init__(self, database_url: str):
        self.database_url = database_url

    def collect(self) -> Iterator[GaugeMetricFamily]:
        experiments = GaugeMetricFamily("fflab_experiments", "Experiments by status.", labels=["status"])
        runs = GaugeMetricFamily("fflab_runs", "Runs by status and queue.", labels=["status", "queue"])
        slots = GaugeMetricFamily("fflab_worker_slots", "Runs a registered worker trains at once.",
                                  labels=["worker", "hostname"])
        gpus = GaugeMetricFamily("fflab_worker_gpu_memory_bytes", "Memory of each GPU a registered worker holds.",
                                 labels=["worker", "hostname", "gpu", "name"])
        with get_sessionmaker(self.database_url)() as session:
            for status, count in session.execute(
                select(Experiment.status, func.count(Experiment.id)).group_by(Experiment.status)
            ):
                experiments.add_metric([status], count)
            for status, queue, count in session.execute(
                select(Run.status, Run.queue, func.count(Run.id)).group_by(Run.status, Run.queue)
            ):
                runs.add_metric([status, queue], count)
            workers: Iterable[tuple[str, str, int, list[dict[str, Any]]]] = session.execute(
                select(Worker.name, Worker.hostname, Worker.concurrency, Worker.devices)
            ).tuples()
            for name, hostname, slot_count, devices in workers:
                slots.add_metric([name, hostname], slot_count)
                for device in devices or []:
                    if device.get("kind", "cuda") != "cuda":  # CPU workers register their RAM as a "cpu" device
                        continue
                    gpus.add_metric([name, hostname, str(device.get("index")), str(device.get("name"))],
                                    device.get("total_memory_bytes", 0))
            waiting_rows = session.execute(
                select(Run.queue, User.name, func.count(Run.id), func.min(Run.created_at))
                .join(Experiment, Run.experiment_id == Experiment.id).join(User, Experiment.owner_id == User.id)
                .where(Run.status == "queued").group_by(Run.queue, User.name)
            ).all()
        waiting = GaugeMetricFamily("fflab_queue_waiting_runs", "Runs waiting to start, by queue and user.",
                                    labels=["queue", "user"])
        oldest = GaugeMetricFamily("fflab_queue_oldest_wait_seconds",
                                   "How long the oldest waiting run of each user has waited, by queue.",
                                   labels=["queue", "user"])
        now = utcnow()
        for queue, user, count, first in waiting_rows:
            waiting.add_metric([queue, user], count)
            if first.tzinfo is None:  # SQLite's aggregate comes back naive (UTC)
                first = first.replace(tzinfo=now.tzinfo)
            oldest.add_metric([queue, user], max(0.0, (now - first).total_seconds()))
        yield experiments
        yield runs
        yield waiting
        yield oldest
        yield slots
        yield gpus


class Metrics:
    """One registry per app, so that several apps in a process do not collide."""

    def __init__(self, database_url: str):
        self.registry = CollectorRegistry()
        self.requests = Counter("fflab_http_requests", "HTTP requests.", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("fflab_http_request_duration_seconds", "HTTP request latency.",
                                 ["method", "route"], registry=self.registry)
        self.shed = Counter("fflab_http_shed", "Requests answered 503 because no slot of a gate (database, "
                            "storage) freed within FFLAB_API_QUEUE_WAIT_S (api.overload).", ["gate"],
                            registry=self.registry)
        self.registry.register(DatabaseCollector(database_url))


class MetricsAuthMiddleware:
    """/metrics for the metrics token or an admin's key only (see the module's docstring)."""

    PATH = "/metrics"

    def __init__(self, app: ASGIApp, metrics_token: str | None):
        self.app, self.metrics_token = app, metrics_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != self.PATH:
            await self.app(scope, receive, send)
            return
        refusal = await self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        from api.errors import problem_response

        status_code, message = refusal
        headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
        code = "unauthorized" if status_code == 401 else "forbidden"
        await problem_response(status_code, message, code=code, headers=headers)(scope, receive, send)

    async def refusal(self, scope: Scope) -> tuple[int, str] | None:
        return await operator_refusal(scope, self.metrics_token, "/metrics")


async def operator_refusal(scope: Scope, metrics_token: str | None, what: str) -> tuple[int, str] | None:
    """None when the request carries FFLAB_METRICS_TOKEN or an admin's API key, else
    (status, message): 401 without valid credentials, 403 for a member's key. What
    /metrics requires, and what /readyz requires for its details."""
    scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return 401, f"{what} needs 'Authorization: Bearer <token>': FFLAB_METRICS_TOKEN or an admin's API key"
    if metrics_token and hmac.compare_digest(token.encode(), metrics_token.encode()):
        return None
    if not accounts.is_key(token):
        return 401, "invalid metrics token or API key"
    database = scope["app"].state.database
    user = await database.read(lambda session: accounts.authenticate(session, token))
    if user is None:
        return 401, "invalid metrics token or API key"
    if user.role != "admin":
        return 403, f"{what} needs the admin role or FFLAB_METRICS_TOKEN"
    return None
