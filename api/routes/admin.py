"""User and key management (admin role)."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import schemas, views
from api.errors import api_error, problem, problem_responses
from api.deps import AdminUser, DatabaseDep, SettingsDep
from api.paging import PageDep
from fflab import accounts
from fflab.db import User

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=problem_responses(401, 403, 422))


@router.get("/users", response_model=schemas.UserList)
async def list_users(_admin: AdminUser, db: DatabaseDep, page: PageDep) -> schemas.UserList:
    """Every user, oldest first."""

    def users(session: Session) -> schemas.UserList:
        found, next_token = page.cut(list(session.scalars(
            select(User).order_by(User.id).limit(page.limit + 1).offset(page.offset))))
        return schemas.UserList(items=[schemas.UserOut.model_validate(u) for u in found], next_page_token=next_token)

    return await db.read(users)


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=schemas.NewKey,
             responses=problem_responses(409, 413))
async def create_user(body: schemas.UserCreate, _admin: AdminUser, db: DatabaseDep) -> schemas.NewKey:
    """Create a user and its first API key (shown once)."""

    def create(session: Session) -> schemas.NewKey:
        try:
            user = accounts.create_user(session, body.name, body.role)
        except accounts.InvalidName as error:
            raise api_error(status.HTTP_422_UNPROCESSABLE_ENTITY, str(error), "validation_error",
                            [{"field": "name", "message": str(error), "type": "value_error"}]) from None
        except ValueError as error:  # accounts.NameClash
            raise api_error(status.HTTP_409_CONFLICT, str(error), "conflict",
                            [{"field": "name", "message": str(error), "type": "name_clash"}]) from None
        key = accounts.issue_key(session, user)
        session.commit()
        return schemas.NewKey(user=schemas.UserOut.model_validate(user), api_key=key)

    return await db.write(create)


@router.patch("/users/{name}", response_model=schemas.UserOut, responses=problem_responses(404, 413))
async def update_user_share(name: str, body: schemas.UserShareUpdate, _admin: AdminUser,
                            db: DatabaseDep) -> schemas.UserOut:
    """Set a user's fair-share weight and highest allowed priority."""

    def update(session: Session) -> schemas.UserOut:
        user = session.scalar(select(User).where(User.name == name).with_for_update())
        if user is None:
            raise api_error(status.HTTP_404_NOT_FOUND, f"no user {name}", "not_found")
        accounts.set_share(user, body.share_weight, body.max_priority)
        session.commit()
        return schemas.UserOut.model_validate(user)

    return await db.write(update)


@router.get("/queue", response_model=schemas.QueuesOut)
async def queue(_admin: AdminUser, db: DatabaseDep, settings: SettingsDep) -> schemas.QueuesOut:
    """Each queue's slots, every user's recent usage against their share, and the
    active experiments with waiting runs in the order they would start."""
    return await db.read(lambda session: views.queues_out(session, settings))


@router.post("/users/{name}/keys", status_code=status.HTTP_201_CREATED, response_model=schemas.NewKey,
             responses=problem_responses(404))
async def issue_key(name: str, _admin: AdminUser, db: DatabaseDep) -> schemas.NewKey:
    def issue(session: Session) -> schemas.NewKey:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise api_error(status.HTTP_404_NOT_FOUND, f"no user {name}", "not_found")
        key = accounts.issue_key(session, user)
        session.commit()
        return schemas.NewKey(user=schemas.UserOut.model_validate(user), api_key=key)

    return await db.write(issue)


@router.delete("/keys/{prefix}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(404))
async def revoke_key(prefix: str, _admin: AdminUser, db: DatabaseDep) -> None:
    """Revoke a key by its public prefix, its first 14 characters. Never the whole key:
    URLs are logged by servers and proxies (422)."""
    if len(prefix) > accounts.PUBLIC_PREFIX_LENGTH and accounts.contains_key(prefix):
        raise RequestValidationError([problem(
            ("path", "prefix"),
            f"pass the key's public prefix, its first {accounts.PUBLIC_PREFIX_LENGTH} characters, not the "
            "whole key: a URL is no place for a secret (servers and proxies log it)",
        )])

    def revoke(session: Session) -> None:
        if not accounts.revoke_keys(session, key_or_prefix=prefix):
            raise api_error(status.HTTP_404_NOT_FOUND, f"no active key starting with {prefix[:14]}", "not_found")
        session.commit()

    await db.write(revoke)
