"""Prometheus metrics: HTTP traffic, and experiments and runs by status read from
the database at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from fflab.db import Experiment, Run, get_sessionmaker


class DatabaseCollector(Collector):
    def __init__(self, database_url: str):
        self.database_url = database_url

    def collect(self) -> Iterator[GaugeMetricFamily]:
        experiments = GaugeMetricFamily("fflab_experiments", "Experiments by status.", labels=["status"])
        runs = GaugeMetricFamily("fflab_runs", "Runs by status and queue.", labels=["status", "queue"])
        with get_sessionmaker(self.database_url)() as session:
            for status, count in session.execute(
                select(Experiment.status, func.count(Experiment.id)).group_by(Experiment.status)
            ):
                experiments.add_metric([status], count)
            for status, queue, count in session.execute(
                select(Run.status, Run.queue, func.count(Run.id)).group_by(Run.status, Run.queue)
            ):
                runs.add_metric([status, queue], count)
        yield experiments
        yield runs


class Metrics:
    """One registry per app, so that several apps in a process do not collide."""

    def __init__(self, database_url: str):
        self.registry = CollectorRegistry()
        self.requests = Counter("fflab_http_requests", "HTTP requests.", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("fflab_http_request_duration_seconds", "HTTP request latency.",
                                 ["method", "route"], registry=self.registry)
        self.registry.register(DatabaseCollector(database_url))
