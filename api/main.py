"""The FastAPI application: ``uvicorn --factory api.main:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api import docs, errors, ui
from api.inputs import RequestLineMiddleware, checked_json_body
from api.logs import install_key_redaction
from api.metrics import Metrics
from api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from api.routes import admin, analyses, experiments, health, results, run_analyses, runs, users
from api.status_cache import StatusCache
from fflab import queueing
from fflab.db import get_sessionmaker
from fflab.db.migrate import upgrade_database
from fflab.jobs import dispatch
from fflab.settings import Settings, get_settings
from fflab.storage import get_storage
from worker.dispatch import CeleryDispatcher, create_celery, ensure_sqlite_folders

log = logging.getLogger(__name__)


def _start(settings: Settings, app: FastAPI) -> None:
    ensure_sqlite_folders(settings)
    upgrade_database(settings.resolved_database_url)
    try:  # runs left waiting by a previous crash
        with get_sessionmaker(settings.resolved_database_url)() as session:
            dispatch(session, settings, app.state.dispatcher)
    except Exception:
        log.warning("could not dispatch waiting runs at startup", exc_info=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_key_redaction()  # the server has configured logging by now
        await run_in_threadpool(_start, settings, app)
        yield

    app = FastAPI(
        title="fflab",
        version="1",
        summary="Train Forward-Forward networks and analyse their ensembles, as a service.",
        lifespan=lifespan,
        dependencies=[Depends(checked_json_body)],
        docs_url=None,
        redoc_url=None,
    )
    docs.install(app)
    app.state.settings = settings
    app.state.storage = get_storage(settings)
    app.state.celery = create_celery(settings)
    app.state.dispatcher = CeleryDispatcher(app.state.celery)
    app.state.metrics = Metrics(settings.resolved_database_url)
    app.state.queue_places = queueing.PlacesCache(settings.queue_places_ttl_s)
    app.state.status_cache = StatusCache(settings.status_cache_ttl_s)
    for module in (health, users, admin, experiments, runs, results, run_analyses, analyses):
        app.include_router(module.router)
    ui.install(app)  # the web UI under /ui
    errors.install(app)
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(RequestLineMiddleware)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    # Outermost: X-Forwarded-For/-Proto are believed from the configured proxies only.
    app.add_middleware(ProxyHeadersMiddleware,
                       trusted_hosts=[h.strip() for h in settings.trusted_proxies.split(",") if h.strip()])
    return app
