"""Start-up checks: the database and the broker answer, within
FFLAB_STARTUP_CONNECT_TIMEOUT_S each, or a one-line error naming the setting.

``fflab serve`` and the API app (``api.main.create_app``) call ``exit_unless_reachable``
first, so that a wrong or unreachable FFLAB_DATABASE_URL or FFLAB_BROKER_URL ends the
process at once with, e.g., ``FFLAB_DATABASE_URL: could not connect to
postgresql://fflab:***@127.0.0.1:1/fflab: connection refused`` and exit code 2,
instead of a long traceback after the drivers' own retries."""

from __future__ import annotations

import sys
from urllib.parse import urlsplit, urlunsplit

from fflab.settings import Settings

EXIT_CODE = 2


class Unreachable(Exception):
    """A configured service did not answer; the message is one line naming the setting."""


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _reason(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def check_database(url: str, timeout_s: float) -> None:
    """Connect once (a server database only: SQLite is a local file)."""
    if url.startswith("sqlite"):
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    connect_args = {"connect_timeout": max(1, int(timeout_s))} if url.startswith("postgresql") else {}
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as error:
        raise Unreachable(f"FFLAB_DATABASE_URL: could not connect to {_hide_password(url)}: "
                          f"{_reason(error)}") from None


def check_redis(setting: str, url: str, timeout_s: float) -> None:
    """PING a Redis broker or result backend (other brokers are not checked)."""
    if not url.startswith(("redis://", "rediss://")):
        return
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as error:
        raise Unreachable(f"{setting}: could not connect to {_hide_password(url)}: {_reason(error)}") from None


def check_services(settings: Settings) -> None:
    timeout_s = settings.startup_connect_timeout_s
    check_database(settings.resolved_database_url, timeout_s)
    check_redis("FFLAB_BROKER_URL", settings.resolved_broker_url, timeout_s)
    if settings.resolved_result_backend != settings.resolved_broker_url:
        check_redis("FFLAB_RESULT_BACKEND", settings.resolved_result_backend, timeout_s)


def exit_unless_reachable(settings: Settings) -> None:
    """``check_services``, or the one-line error on stderr and exit code 2."""
    try:
        check_services(settings)
    except Unreachable as error:
        print(str(error), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CODE) from None
