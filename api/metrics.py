"""Prometheus metrics: HTTP traffic, and experiments and runs by status read from
the database at each scrape; per queue and user, the runs waiting to start and how
long the oldest of them has waited; the registered workers' slots and GPUs."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

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
            for name, hostname, slot_count, devices in session.execute(
                select(Worker.name, Worker.hostname, Worker.concurrency, Worker.devices)
            ):
                slots.add_metric([name, hostname], slot_count)
                for device in devices or []:
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
        self.registry.register(DatabaseCollector(database_url))
