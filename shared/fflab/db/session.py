"""Engines and sessions: one engine per database URL and process.

SQLite has no row locks: SQLAlchemy leaves ``FOR UPDATE`` out of its SQL, and
pysqlite starts a transaction only before the first data-changing statement, so a
transaction that reads, decides and writes (a user's cap on active runs, a run's
end deciding its experiment's) could act on what another process changed
meanwhile. On SQLite sessions here, a statement with ``with_for_update()`` first
takes the database's write lock (``BEGIN IMMEDIATE``, waiting up to the busy
timeout) when no transaction is open, so such transactions run one after the other
as they do under PostgreSQL's row locks. (An open pysqlite transaction has written
already, so it holds the write lock.)"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

if TYPE_CHECKING:
    import sqlite3

    from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
    from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

POSTGRES_POOL_SIZE, POSTGRES_MAX_OVERFLOW = 16, 4  # defaults of Settings.database_pool_size, _max_overflow
_pool = {"pool_size": POSTGRES_POOL_SIZE, "max_overflow": POSTGRES_MAX_OVERFLOW}
# How long a thread waits for a pooled connection before SQLAlchemy's TimeoutError
# (SQLAlchemy's default: 30 s), which the API answers 503 with Retry-After. The API's
# database gate (api.overload) keeps its units within the pool, so this is a backstop.
POOL_TIMEOUT_S = 2.0
# A pooled connection unused for longer than this is pinged before it is handed out.
PING_AFTER_IDLE_S = 2.0
_engines: dict[str, Engine] = {}
_sessionmakers: dict[tuple[str, bool], sessionmaker[Session]] = {}
_lock = threading.Lock()


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # Connections kept open: as many as an API process's requests use at once under
        # load (with SQLAlchemy's 5, the rest were opened and closed for each request, and
        # a PostgreSQL connection costs more than the query); beyond pool plus overflow a
        # thread waits for one, at most POOL_TIMEOUT_S. Up to 20 per process by default
        # (configure_pool): size max_connections to match.
        engine = create_engine(url, **_pool, pool_timeout=POOL_TIMEOUT_S)
        event.listen(engine, "checkin", _note_idle_since)
        event.listen(engine, "checkout", functools.partial(_ping_if_idle, engine.dialect))
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # The API, the worker and the broker share the file: wait for locks instead of failing.
    # A pool as large as the threads that may query at once (the API's threadpool has
    # 40): beyond the pool, a connection is opened and closed for each session.
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                           pool_size=32, max_overflow=32, pool_timeout=POOL_TIMEOUT_S)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _note_idle_since(_dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dialect: Dialect, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry,
                  _proxy: PoolProxiedConnection) -> None:
    """Pessimistic disconnect handling for connections that sat idle: a database
    restart or a dropped connection is found by a ``SELECT 1`` before use, and the
    pool replaces the connection (``DisconnectionError``). SQLAlchemy's
    ``pool_pre_ping`` does that on every checkout, one more round trip per request;
    under load a connection comes back to the pool within milliseconds and goes out
    again unpinged (a status poll then makes one round trip instead of two). A
    connection broken while in use or within ``PING_AFTER_IDLE_S`` fails its
    statement instead; the first such error invalidates the process's whole pool,
    and the API's read-only units (``api.deps.Database.read``) retry once."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since <= PING_AFTER_IDLE_S:
        return
    try:
        dialect.do_ping(dbapi_connection)
    except dialect.loaded_dbapi.Error as error:
        raise exc.DisconnectionError(f"the idle connection is gone: {error}") from error


def configure_pool(pool_size: int, max_overflow: int) -> None:
    """The PostgreSQL connection pool of the engines this process creates from now
    on (Settings.database_pool_size, database_max_overflow): a process's server
    start calls it before its first query."""
    with _lock:
        _pool.update(pool_size=pool_size, max_overflow=max_overflow)


def get_engine(url: str) -> Engine:
    with _lock:
        if url not in _engines:
            _engines[url] = _create_engine(url)
        return _engines[url]


def _sqlite_write_lock_for_update(state: ORMExecuteState) -> None:
    """SELECT ... FOR UPDATE on SQLite: take the database's write lock first."""
    if getattr(state.statement, "_for_update_arg", None) is None:
        return
    connection = state.session.connection()
    if not cast("sqlite3.Connection", connection.connection.dbapi_connection).in_transaction:  # SQLite here
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def get_sessionmaker(url: str, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions on the database at ``url``. ``read_only``: for reads that need no
    transaction around them; such a session must not write. On a database server its
    statements run in autocommit, each seeing the latest committed data as it does at
    PostgreSQL's default isolation (READ COMMITTED) anyway, which saves the BEGIN and
    ROLLBACK round trips of each status poll (about 0.5 ms of its 4 ms of CPU). On
    SQLite, where a transaction costs no round trip and autocommit costs a snapshot
    per statement, it is an ordinary session."""
    engine = get_engine(url)
    read_only = read_only and engine.dialect.name != "sqlite"
    with _lock:
        if (url, read_only) not in _sessionmakers:
            if read_only:
                factory = sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"),
                                       expire_on_commit=False)
            else:
                factory = sessionmaker(engine, expire_on_commit=False)
                if engine.dialect.name == "sqlite":
                    event.listen(factory, "do_orm_execute", _sqlite_write_lock_for_update)
            _sessionmakers[url, read_only] = factory
        return _sessionmakers[url, read_only]


def close_idle_connections() -> None:
    """Close the pooled connections of every engine of this process that no session
    holds now; each engine opens new ones on demand. For a long-lived process that
    has touched many databases (a test session) and no longer needs their connections."""
    for engine in list(_engines.values()):
        engine.dispose()


def forget_inherited_connections() -> None:
    """In a forked child: drop the parent's pooled connections without closing
    them (they are the parent's), so that the child opens its own."""
    for engine in _engines.values():
        engine.dispose(close=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with get_sessionmaker(url)() as session, session.begin():
        yield session
