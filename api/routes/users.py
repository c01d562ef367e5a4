"""The current user and their own API keys; the rules: ``api.services.users``."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from api import schemas
from api.deps import Credentials, CurrentUser, DatabaseDep, authenticated_user
from api.errors import problem_responses
from api.paging import PageDep
from api.services import users

router = APIRouter(prefix="/v1/users", tags=["users"], responses=problem_responses(401, 422))


@router.get("/me", response_model=schemas.UserOut)
async def me(user: CurrentUser) -> schemas.UserOut:
    return schemas.UserOut.model_validate(user)


@router.get("/me/keys", response_model=schemas.KeyList)
async def list_my_keys(credentials: Credentials, db: DatabaseDep, page: PageDep) -> schemas.KeyList:
    """Your keys, active and revoked, newest first: their public prefixes, never the keys."""
    current = users.public_prefix(credentials.credentials) if credentials else None

    def keys_page(session: Session) -> schemas.KeyList:
        keys, next_token = users.keys_page(session, authenticated_user(session, credentials), page)
        return schemas.KeyList(items=[schemas.KeyOut(prefix=key.prefix, created_at=key.created_at,
                                                     revoked_at=key.revoked_at, current=key.prefix == current)
                                      for key in keys], next_page_token=next_token)

    return await db.read(keys_page)


@router.post("/me/keys", status_code=status.HTTP_201_CREATED, response_model=schemas.NewKey,
             responses=problem_responses(413))
async def rotate_my_key(user: CurrentUser, credentials: Credentials, db: DatabaseDep,
                        body: schemas.KeyRotation | None = None) -> schemas.NewKey:
    """A new key for you (shown once); the key this request is made with is revoked
    unless ``revoke_current`` is false (to keep both while you switch)."""
    revoke_current = (body or schemas.KeyRotation()).revoke_current
    current_key = credentials.credentials if credentials is not None else None

    def rotate(session: Session) -> schemas.NewKey:
        current, key = users.rotate_key(session, user, current_key, revoke_current)
        return schemas.NewKey(user=schemas.UserOut.model_validate(current), api_key=key)

    return await db.write(rotate)
