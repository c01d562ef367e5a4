"""Liveness, readiness and Prometheus metrics.

/healthz answers on the event loop: no thread, no database, no slot of a gate, so it
answers while the process lives, under any load. /readyz and /metrics read the
database in a unit of the database gate (``api.overload``); when no slot frees in
time, /readyz answers 503 (unavailable: busy) with Retry-After, /metrics the
problem 503."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api import schemas
from api.deps import DatabaseDep, SettingsDep, StorageDep
from api.metrics import operator_refusal
from api.overload import Overloaded
from api.services.workers import held_gpus, missing_consumers
from fflab.db import get_engine
from fflab.settings import Settings
from fflab.storage import Storage, disk_problems, disk_report

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers (on the event loop: touches neither threads nor the database)."""
    return {"status": "ok"}


def _check(what: Callable[[], object]) -> str:
    try:
        what()
    except Exception as error:
        return f"unreachable: {type(error).__name__}: {error}"
    return "ok"


@router.get("/readyz", response_model=schemas.Readiness, responses={503: {"model": schemas.Readiness}})
async def readyz(request: Request, response: Response, settings: SettingsDep, db: DatabaseDep,
                 files: StorageDep) -> schemas.Readiness:
    """Database, broker and artifact storage reachable, the disk of the var dir, the
    temporary folder and the local artifact folder above FFLAB_MIN_FREE_DISK_BYTES and
    writable, and a live worker consuming each queue work goes to (503 otherwise);
    and the GPUs the live workers hold, and the free space of each folder.
    503 with Retry-After when the server is too busy to check. The details (why a
    check failed, with its addresses; the folders; the GPUs' hosts) are for
    FFLAB_METRICS_TOKEN or an admin's key: anyone else gets each check's state alone."""
    try:
        report = await db.gate.run(readiness, request, response, settings, files.storage)
        if await operator_refusal(request.scope, settings.metrics_token, "/readyz's details") is not None:
            report = without_details(report)
        return report
    except Overloaded as busy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers.update(busy.headers or {})
        return schemas.Readiness(status="unavailable", checks={"database": f"busy: {busy.message}"},
                                 gpus=[])


def without_details(report: schemas.Readiness) -> schemas.Readiness:
    """The report for a caller who may not see its details: each check's state (its
    first word: ok, unreachable, low, none, unknown), no folders, no hosts."""
    return schemas.Readiness(status=report.status,
                             checks={name: result.split(":", 1)[0] for name, result in report.checks.items()},
                             gpus=[], disk={})


def readiness(request: Request, response: Response, settings: Settings, storage: Storage) -> schemas.Readiness:
    """The checks of /readyz, in one thread (each opens and closes its own connection)."""

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

    disk_ok, disk = disk_report(settings)
    low = disk_problems(settings)
    checks = {"database": _check(database), "broker": _check(broker), "storage": _check(storage.check),
              "disk": "ok" if disk_ok else "low: " + ("; ".join(low) if low else "; ".join(
                  f"the {role} {entry['path']} cannot be written ({entry['write']})"
                  for role, entry in disk.items() if entry["write"] != "ok")),
              "workers": workers()}
    ready = all(result == "ok" for result in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    try:
        gpus = held_gpus(settings)
    except Exception:  # the database check above says why
        gpus = []
    return schemas.Readiness(status="ready" if ready else "unavailable", checks=checks, gpus=gpus,
                             disk={role: schemas.DiskSpace.model_validate(entry) for role, entry in disk.items()})


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request, db: DatabaseDep) -> Response:
    """Prometheus text format."""
    body = await db.gate.run(generate_latest, request.app.state.metrics.registry)  # reads the database
    return Response(body, media_type=CONTENT_TYPE_LATEST)
