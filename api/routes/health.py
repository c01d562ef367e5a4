"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api import schemas
from api.deps import SettingsDep, StorageDep
from fflab import jobs
from fflab.db import get_engine, get_sessionmaker
from fflab.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


def _check(what) -> str:
    try:
        what()
    except Exception as error:
        return f"unreachable: {type(error).__name__}: {error}"
    return "ok"


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
        ]


@router.get("/readyz", response_model=schemas.Readiness, responses={503: {"model": schemas.Readiness}})
def readyz(request: Request, response: Response, settings: SettingsDep, storage: StorageDep) -> schemas.Readiness:
    """Database, broker and artifact storage reachable, and a live worker consuming
    each queue work goes to (503 otherwise); and the GPUs the live workers hold."""

    def database() -> None:
        with get_engine(settings.resolved_database_url).connect() as connection:
            connection.execute(text("SELECT 1"))

    def broker() -> None:
        with request.app.state.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)

    def workers() -> str:
        try:
            missing = missing_consumers(settings)
        except Exception as error:
            return f"unknown: {type(error).__name__}: {error}"
        if missing:
            return (f"none: no worker consuming {', '.join(missing)} was heard from in the last "
                    f"{settings.worker_heartbeat_timeout_s:g} s")
        return "ok"

    checks = {"database": _check(database), "broker": _check(broker), "storage": _check(storage.check),
              "workers": workers()}
    ready = all(result == "ok" for result in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    try:
        gpus = held_gpus(settings)
    except Exception:  # the database check above says why
        gpus = []
    return schemas.Readiness(status="ready" if ready else "unavailable", checks=checks, gpus=gpus)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
