"""User and key management (admin role)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select

from api import schemas, views
from api.errors import problem
from api.deps import AdminUser, SessionDep, SettingsDep
from fflab import accounts
from fflab.db import User

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/users", response_model=list[schemas.UserOut])
def list_users(_admin: AdminUser, session: SessionDep) -> list[schemas.UserOut]:
    return [schemas.UserOut.model_validate(u) for u in session.scalars(select(User).order_by(User.id))]


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=schemas.NewKey)
def create_user(body: schemas.UserCreate, _admin: AdminUser, session: SessionDep) -> schemas.NewKey:
    """Create a user and its first API key (shown once)."""
    try:
        user = accounts.create_user(session, body.name, body.role)
    except ValueError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    key = accounts.issue_key(session, user)
    session.commit()
    return schemas.NewKey(user=schemas.UserOut.model_validate(user), api_key=key)


@router.patch("/users/{name}", response_model=schemas.UserOut)
def update_user_share(name: str, body: schemas.UserShareUpdate, _admin: AdminUser,
                      session: SessionDep) -> schemas.UserOut:
    """Set a user's fair-share weight and highest allowed priority."""
    user = session.scalar(select(User).where(User.name == name).with_for_update())
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {name}")
    accounts.set_share(user, body.share_weight, body.max_priority)
    session.commit()
    return schemas.UserOut.model_validate(user)


@router.get("/queue", response_model=schemas.QueuesOut)
def queue(_admin: AdminUser, session: SessionDep, settings: SettingsDep) -> schemas.QueuesOut:
    """Each queue's slots, every user's recent usage against their share, and the
    active experiments with waiting runs in the order they would start."""
    return views.queues_out(session, settings)


@router.post("/users/{name}/keys", status_code=status.HTTP_201_CREATED, response_model=schemas.NewKey)
def issue_key(name: str, _admin: AdminUser, session: SessionDep) -> schemas.NewKey:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {name}")
    key = accounts.issue_key(session, user)
    session.commit()
    return schemas.NewKey(user=schemas.UserOut.model_validate(user), api_key=key)


@router.delete("/keys/{prefix}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(prefix: str, _admin: AdminUser, session: SessionDep) -> None:
    """Revoke a key by its public prefix, its first 14 characters. Never the whole key:
    URLs are logged by servers and proxies (422)."""
    if len(prefix) > accounts.PUBLIC_PREFIX_LENGTH and accounts.contains_key(prefix):
        raise RequestValidationError([problem(
            ("path", "prefix"),
            f"pass the key's public prefix, its first {accounts.PUBLIC_PREFIX_LENGTH} characters, not the "
            "whole key: a URL is no place for a secret (servers and proxies log it)",
        )])
    if not accounts.revoke_keys(session, key_or_prefix=prefix):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no active key starting with {prefix[:14]}")
    session.commit()
