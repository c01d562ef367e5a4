"""Dependencies: settings, database session, storage, dispatcher, current user,
and experiments as the current user may see them.

FastAPI runs each plain ``def`` dependency in a trip of its own to the threadpool:
a thread to wake, then the event loop again, each waiting for a CPU where others'
processes keep the cores busy, and for Python's GIL. The dependencies that do no
I/O are ``async``; the session is opened on the event loop (no I/O until its first
query). Routes that clients poll do all their database work in one trip
(``in_one_trip``): authentication, the experiment and its rendering."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from fflab import accounts, jobs
from fflab.db import Experiment, User, get_sessionmaker
from fflab.settings import Settings
from fflab.storage import Storage


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_db(settings: SettingsDep) -> AsyncIterator[Session]:
    session = get_sessionmaker(settings.resolved_database_url)()
    try:
        yield session
    finally:
        await run_in_threadpool(session.close)


SessionDep = Annotated[Session, Depends(get_db)]


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


StorageDep = Annotated[Storage, Depends(get_storage)]


async def get_dispatcher(request: Request) -> jobs.Dispatcher:
    return request.app.state.dispatcher


DispatcherDep = Annotated[jobs.Dispatcher, Depends(get_dispatcher)]

bearer = HTTPBearer(auto_error=False, description="An API key from `fflab admin create-user`.")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
T = TypeVar("T")


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


def get_current_user(session: SessionDep, credentials: Credentials) -> User:
    return authenticated_user(session, credentials)


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this operation needs the admin role")
    return user


AdminUser = Annotated[User, Depends(get_admin)]
ExperimentId = Annotated[str, Path(description="The id returned by POST /v1/experiments.", max_length=64)]


def may_read(user: User, owner_id: int, visibility: str) -> bool:
    """Who may read an experiment: its owner, anyone if it is visible to the lab, an admin."""
    return owner_id == user.id or visibility == "lab" or user.role == "admin"


def readable_experiment(session: Session, user: User, experiment_id: str) -> Experiment:
    """The experiment if ``may_read``; otherwise 404, so that others' ids are not disclosed."""
    experiment = session.get(Experiment, experiment_id)
    if experiment is None or not may_read(user, experiment.owner_id, experiment.visibility):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment {experiment_id}")
    return experiment


def get_readable_experiment(experiment_id: ExperimentId, session: SessionDep, user: CurrentUser) -> Experiment:
    return readable_experiment(session, user, experiment_id)


ReadableExperiment = Annotated[Experiment, Depends(get_readable_experiment)]


async def get_owned_experiment(experiment: ReadableExperiment, user: CurrentUser) -> Experiment:
    """The experiment if the user may change it: its owner or an admin."""
    if experiment.owner_id != user.id and user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "only the experiment's owner or an admin may change it")
    return experiment


OwnedExperiment = Annotated[Experiment, Depends(get_owned_experiment)]


async def in_one_trip(settings: Settings, work: Callable[[Session], T]) -> T:
    """``work(session)`` in one trip to the threadpool, with a read-only session of
    its own (no transaction: no BEGIN and ROLLBACK round trips) closed there too.
    ``work`` must not write. Where its connection turns out to be broken (the
    database restarted; ``fflab.db.session`` pings only connections that sat idle),
    ``work`` runs once more on a new one: it only reads."""

    def once() -> T:
        with get_sessionmaker(settings.resolved_database_url, read_only=True)() as session:
            return work(session)

    def call() -> T:
        try:
            return once()
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
        return once()

    return await run_in_threadpool(call)
