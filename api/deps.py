"""Dependencies: settings, the database, storage, dispatcher, current user, and
experiments as the current user may see them.

No request holds a database connection while it waits for anything else. FastAPI
runs each plain ``def`` dependency and route in a trip of its own to the threadpool,
and a session opened by a yield-dependency lived across those trips and until the
response had been sent: under a burst, every request held a pooled connection while
it waited for a thread, and every thread waited for a connection (SQLAlchemy's
QueuePool timeouts, the API frozen; FastAPI's issue 3205). So the database is used
in *units* (``Database.read`` and ``Database.write``): one trip to the threadpool,
a session opened there, closed there (its connection back in the pool) before the
trip ends, under a slot of the process's database gate (``api.overload``: 503 with
Retry-After when none frees in time). SQLAlchemy's advice for web applications, a
session per logical operation with ``expire_on_commit=False``, kept to one thread.

Routes are ``async``; each does its database work in units and returns what they
built (schemas, or detached rows with their columns loaded), files stream from
storage after the unit has ended (``api.files``). Reads are one unit per request:
authentication, the experiment and the rendering (``authenticated_user``,
``readable_experiment`` inside the unit); their query parameters are validated
before it (a 422 comes before a 401, as it always did for the status, the list and
``/ensembles``), names in the path inside it, after authentication. A route with a
body authenticates first in a unit of its own (``CurrentUser``, ``OwnedExperiment``),
so that a client without a valid key gets 401 before its body is validated, then
writes in a second unit that loads again what it changes.

Who may read or change an experiment is the service's rule
(``api.services.experiments``: ``readable_experiment``, ``owned_experiment``); the
dependencies here call it inside their units, and its refusals (NotFound,
Forbidden) become problems in ``api.errors``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.overload import Gate
from api.services.experiments import owned_experiment
from api.status_cache import StatusCache
from fflab import accounts, jobs
from fflab.db import Experiment, User, get_sessionmaker
from fflab.settings import Settings
from fflab.storage import Storage

T = TypeVar("T")


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


class Database:
    """The database in units of work, each in one trip to the threadpool under a
    slot of ``gate``, with a session opened and closed inside it."""

    def __init__(self, url: str, gate: Gate):
        self.url, self.gate = url, gate

    async def read(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` with a read-only session (no transaction on a database
        server: no BEGIN and ROLLBACK round trips); ``work`` must not write. Where its
        connection turns out to be broken (the database restarted; ``fflab.db.session``
        pings only connections that sat idle), ``work`` runs once more on a new one:
        it only reads."""

        def once() -> T:
            with get_sessionmaker(self.url, read_only=True)() as session:
                return work(session)

        def call() -> T:
            try:
                return once()
            except DBAPIError as error:
                if not error.connection_invalidated:
                    raise
            return once()

        return await self.gate.run(call)

    async def write(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` in a transaction; ``work`` commits what it means to keep
        (whatever it did not is rolled back when the session closes)."""

        def once() -> T:
            with get_sessionmaker(self.url)() as session:
                return work(session)

        return await self.gate.run(once)


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]


class Files:
    """Artifact storage, each blocking call in one trip to the threadpool under a
    slot of the storage gate (503 with Retry-After when none frees in time)."""

    def __init__(self, storage: Storage, gate: Gate):
        self.storage, self.gate = storage, gate

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(storage, *args)``."""
        return await self.gate.run(work, self.storage, *args)


async def get_files(request: Request) -> Files:
    files: Files = request.app.state.files
    return files


StorageDep = Annotated[Files, Depends(get_files)]


async def get_dispatcher(request: Request) -> jobs.Dispatcher:
    dispatcher: jobs.Dispatcher = request.app.state.dispatcher
    return dispatcher


DispatcherDep = Annotated[jobs.Dispatcher, Depends(get_dispatcher)]

bearer = HTTPBearer(auto_error=False, description="An API key from `fflab admin create-user`.")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def authenticated_user(session: Session, credentials: HTTPAuthorizationCredentials | None) -> User:
    """The key's user; 401 without a valid key."""
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    user = accounts.authenticate(session, credentials.credentials)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key",
                            headers={"WWW-Authenticate": "Bearer"})
    return user


async def get_current_user(db: DatabaseDep, credentials: Credentials) -> User:
    """The key's user (detached: its columns only), in a unit of its own."""
    return await db.read(lambda session: authenticated_user(session, credentials))


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this operation needs the admin role")
    return user


AdminUser = Annotated[User, Depends(get_admin)]
ExperimentId = Annotated[str, Path(description="The id returned by POST /v1/experiments.", max_length=64)]


async def get_owned_experiment(experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials) -> Experiment:
    """Authentication and the right to change the experiment, checked in a unit of
    their own before the body is read: the experiment, detached (its columns only).
    A route that changes it loads it again in its write unit (``current_experiment``)."""
    return await db.read(lambda session: owned_experiment(session, authenticated_user(session, credentials),
                                                          experiment_id))


OwnedExperiment = Annotated[Experiment, Depends(get_owned_experiment)]


async def get_status_cache(request: Request) -> StatusCache:
    status_cache: StatusCache = request.app.state.status_cache
    return status_cache


StatusCacheDep = Annotated[StatusCache, Depends(get_status_cache)]
