"""The workers as readiness sees them: the queues no live worker consumes and the
GPUs the live ones hold (each reads in a session of its own, inside /readyz's slot
of the database gate)."""

from __future__ import annotations

from api import schemas
from fflab import jobs
from fflab.db import get_sessionmaker
from fflab.settings import Settings


def missing_consumers(settings: Settings) -> list[str]:
    """The queues that must have a live worker (heard from within
    FFLAB_WORKER_HEARTBEAT_TIMEOUT_S) and have none: cpu (aggregations and
    re-analyses go there), and gpu when the deployment runs GPU workers."""
    needed = [settings.queue_name("cpu")] + ([settings.queue_name("gpu")] if settings.gpus_available else [])
    with get_sessionmaker(settings.resolved_database_url)() as session:
        consumed = {queue for worker in jobs.live_workers(session, settings) for queue in worker.queues.split(",")}
    return [queue for queue in needed if queue not in consumed]


def held_gpus(settings: Settings) -> list[schemas.WorkerGpu]:
    """The GPUs of the workers heard from within FFLAB_WORKER_HEARTBEAT_TIMEOUT_S."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return [
            schemas.WorkerGpu(worker=worker.name, hostname=worker.hostname, slots=worker.concurrency,
                              index=device.get("index"), name=device.get("name", "?"),
                              total_memory_bytes=device.get("total_memory_bytes", 0))
            for worker in jobs.live_workers(session, settings) for device in worker.devices or []
            if device.get("kind", "cuda") == "cuda"  # CPU workers register their RAM as a "cpu" device
        ]
