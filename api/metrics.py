"""Prometheus metrics: HTTP traffic; experiments and runs by status, and the
registered workers' slots and GPUs, read from the database at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from fflab.db import Experiment, Run, Worker, get_sessionmaker


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
                select(Worker.name, Worker.hostname, Worker.slots, Worker.devices)
            ):
                slots.add_metric([name, hostname], slot_count)
                for device in devices or []:
                    gpus.add_metric([name, hostname, str(device.get("index")), str(device.get("name"))],
                                    device.get("total_memory_bytes", 0))
        yield experiments
        yield runs
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
