"""The FastAPI application: ``uvicorn --factory api.main:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from api.metrics import Metrics
from api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from api.routes import admin, analyses, experiments, health, results, runs, users
from fflab.db import get_sessionmaker
from fflab.db.migrate import upgrade_database
from fflab.jobs import dispatch
from fflab.settings import Settings, get_settings
from fflab.storage import get_storage
from worker.celery_app import CeleryDispatcher, create_celery, ensure_sqlite_folders

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5


def _start(settings: Settings, app: FastAPI) -> None:
    ensure_sqlite_folders(settings)
    upgrade_database(settings.resolved_database_url)
    try:  # runs left waiting by a previous crash
        with get_sessionmaker(settings.resolved_database_url)() as session:
            dispatch(session, settings, app.state.dispatcher)
    except Exception:
        log.warning("could not dispatch waiting runs at startup", exc_info=True)


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.error("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id,
              exc_info=error)
    return JSONResponse(
        {"detail": "internal server error; quote the request id when reporting it", "request_id": request_id},
        status_code=500, headers={"x-request-id": request_id},
    )


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    """The database is unreachable (restarting, failing over): 503 with a retry hint
    instead of a 500; the pool's pre-ping reconnects once it is back."""
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.warning("database unavailable in %s %s (request %s): %s", request.method, request.url.path,
                request_id, str(getattr(error, "orig", error))[:300])
    return JSONResponse(
        {"detail": "the database is unavailable; retry shortly", "request_id": request_id},
        status_code=503, headers={"retry-after": str(RETRY_AFTER_S), "x-request-id": request_id},
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(_start, settings, app)
        yield

    app = FastAPI(
        title="fflab",
        version="1",
        summary="Train Forward-Forward networks and analyse their ensembles, as a service.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.storage = get_storage(settings)
    app.state.celery = create_celery(settings)
    app.state.dispatcher = CeleryDispatcher(app.state.celery)
    app.state.metrics = Metrics(settings.resolved_database_url)
    for module in (health, users, admin, experiments, runs, results, analyses):
        app.include_router(module.router)
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(InterfaceError, database_unavailable)
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    return app
