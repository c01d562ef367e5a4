"""Dependencies: settings, database session, storage, dispatcher, current user,
and experiments as the current user may see them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from fflab import accounts, jobs
from fflab.db import Experiment, User, get_sessionmaker
from fflab.settings import Settings
from fflab.storage import Storage


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


StorageDep = Annotated[Storage, Depends(get_storage)]


def get_dispatcher(request: Request) -> jobs.Dispatcher:
    return request.app.state.dispatcher


DispatcherDep = Annotated[jobs.Dispatcher, Depends(get_dispatcher)]

bearer = HTTPBearer(auto_error=False, description="An API key from `fflab admin create-user`.")


def get_current_user(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> User:
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    user = accounts.authenticate(session, credentials.credentials)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key",
                            headers={"WWW-Authenticate": "Bearer"})
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_admin(user: CurrentUser) -> User:
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this operation needs the admin role")
    return user


AdminUser = Annotated[User, Depends(get_admin)]
ExperimentId = Annotated[str, Path(description="The id returned by POST /v1/experiments.", max_length=64)]


def get_readable_experiment(experiment_id: ExperimentId, session: SessionDep, user: CurrentUser) -> Experiment:
    """The experiment if the user owns it, it is visible to the lab, or the user is
    an admin; otherwise 404, so that others' ids are not disclosed."""
    experiment = session.get(Experiment, experiment_id)
    if experiment is None or not (
        experiment.owner_id == user.id or experiment.visibility == "lab" or user.role == "admin"
    ):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment {experiment_id}")
    return experiment


ReadableExperiment = Annotated[Experiment, Depends(get_readable_experiment)]


def get_owned_experiment(experiment: ReadableExperiment, user: CurrentUser) -> Experiment:
    """The experiment if the user may change it: its owner or an admin."""
    if experiment.owner_id != user.id and user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "only the experiment's owner or an admin may change it")
    return experiment


OwnedExperiment = Annotated[Experiment, Depends(get_owned_experiment)]
