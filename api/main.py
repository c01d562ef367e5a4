"""The FastAPI application: ``uvicorn --factory api.main:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api import docs, errors, ui
from api.deps import Database, Files
from api.inputs import RequestLineMiddleware, checked_json_body
from api.logs import install_key_redaction
from api.metrics import Metrics, MetricsAuthMiddleware
from api.middleware import (
    BodySizeLimitMiddleware,
    FailedAuthLimitMiddleware,
    HeaderLimitMiddleware,
    RequestContextMiddleware,
)
from api.overload import Gate
from api.protocol import RequestHeadMiddleware
from api.routes import (
    admin,
    analyses,
    comparisons,
    experiments,
    health,
    representations,
    results,
    run_analyses,
    runs,
    users,
)
from api.routes.usage import router as usage_router
from api.status_cache import StatusCache
from fflab import queueing
from fflab.db import get_sessionmaker
from fflab.db.migrate import upgrade_database
from fflab.db.session import configure_pool
from fflab.jobs import dispatch
from fflab.settings import Settings, get_settings
from fflab.startup import exit_unless_reachable
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
    configure_pool(settings.database_pool_size, settings.database_max_overflow)
    exit_unless_reachable(settings)  # a one-line error naming the setting, not a traceback

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
    app.state.celery = create_celery(settings)
    app.state.dispatcher = CeleryDispatcher(app.state.celery)
    app.state.metrics = Metrics(settings.resolved_database_url)
    # Bounded work, and 503 with Retry-After beyond it (api.overload).
    shed = app.state.metrics.shed

    def gate(what: str, limit: int) -> Gate:
        return Gate(what, limit, settings.api_queue_wait_s, settings.api_retry_after_s,
                    on_shed=lambda name: shed.labels(name).inc())

    app.state.database = Database(settings.resolved_database_url, gate("database", settings.api_db_concurrency))
    app.state.files = Files(get_storage(settings), gate("storage", settings.api_storage_concurrency))
    app.state.queue_places = queueing.PlacesCache(settings.queue_places_ttl_s)
    app.state.status_cache = StatusCache(settings.status_cache_ttl_s)
    for module in (health, users, admin, experiments, representations, runs, results, analyses, comparisons):
        app.include_router(module.router)
    # The analyses' endpoints, generated from their registry as it stands now.
    app.include_router(run_analyses.analysis_router())
    app.include_router(usage_router)  # storage and run-hours against the per-user limits
    ui.install(app)  # the web UI under /ui
    errors.install(app)
    app.add_middleware(MetricsAuthMiddleware, metrics_token=settings.metrics_token)  # /metrics: not public
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_body_bytes, uploads={  # uploads: their own cap
        "/v1/representations": (settings.representations_max_bytes, "FFLAB_REPRESENTATIONS_MAX_BYTES")})
    app.add_middleware(RequestLineMiddleware)
    # Limits (docs/service.md): failed authentication per client IP, header count and size.
    app.add_middleware(FailedAuthLimitMiddleware, per_minute=settings.auth_failures_per_minute,
                       storage_url=settings.resolved_broker_url, namespace=settings.queue_prefix)
    app.add_middleware(HeaderLimitMiddleware, max_bytes=settings.max_header_bytes,
                       max_count=settings.max_header_count)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestHeadMiddleware)  # 400: HTTP/0.9 request lines, no Host (api.protocol)
    # Outermost: X-Forwarded-For/-Proto are believed from the configured proxies only.
    app.add_middleware(ProxyHeadersMiddleware,
                       trusted_hosts=[h.strip() for h in settings.trusted_proxies.split(",") if h.strip()])
    return app
