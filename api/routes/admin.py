"""User and key management (admin role); the rules: ``api.services.users``."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from api import schemas, views
from api.deps import AdminUser, DatabaseDep, SettingsDep
from api.errors import problem_responses
from api.paging import PageDep
from api.services import users
from fflab.db import User

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=problem_responses(401, 403, 422))


def new_key(user: User, key: str) -> schemas.NewKey:
    return schemas.NewKey(user=schemas.UserOut.model_validate(user), api_key=key)


@router.get("/users", response_model=schemas.UserList)
async def list_users(_admin: AdminUser, db: DatabaseDep, page: PageDep) -> schemas.UserList:
    """Every user, oldest first."""

    def users_page(session: Session) -> schemas.UserList:
        found, next_token = users.users_page(session, page)
        return schemas.UserList(items=[schemas.UserOut.model_validate(u) for u in found], next_page_token=next_token)

    return await db.read(users_page)


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=schemas.NewKey,
             responses=problem_responses(409, 413))
async def create_user(body: schemas.UserCreate, _admin: AdminUser, db: DatabaseDep) -> schemas.NewKey:
    """Create a user and its first API key (shown once)."""
    return await db.write(lambda session: new_key(*users.create_user(session, body)))


@router.patch("/users/{name}", response_model=schemas.UserOut, responses=problem_responses(404, 413))
async def update_user_share(name: str, body: schemas.UserShareUpdate, _admin: AdminUser,
                            db: DatabaseDep) -> schemas.UserOut:
    """Set a user's fair-share weight and highest allowed priority."""
    return await db.write(lambda session: schemas.UserOut.model_validate(users.set_share(session, name, body)))


@router.get("/queue", response_model=schemas.QueuesOut)
async def queue(_admin: AdminUser, db: DatabaseDep, settings: SettingsDep) -> schemas.QueuesOut:
    """Each queue's slots, every user's recent usage against their share, and the
    active experiments with waiting runs in the order they would start."""
    return await db.read(lambda session: views.queues_out(session, settings))


@router.post("/users/{name}/keys", status_code=status.HTTP_201_CREATED, response_model=schemas.NewKey,
             responses=problem_responses(404))
async def issue_key(name: str, _admin: AdminUser, db: DatabaseDep) -> schemas.NewKey:
    return await db.write(lambda session: new_key(*users.issue_key(session, name)))


@router.delete("/keys/{prefix}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(404))
async def revoke_key(prefix: str, _admin: AdminUser, db: DatabaseDep) -> None:
    """Revoke a key by its public prefix, its first 14 characters. Never the whole key:
    URLs are logged by servers and proxies (422)."""
    users.check_key_prefix(prefix)  # before the unit: a 422 takes no slot
    await db.write(lambda session: users.revoke_key(session, prefix))
