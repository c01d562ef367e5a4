"""The current user."""

from __future__ import annotations

from fastapi import APIRouter

from api import schemas
from api.deps import CurrentUser

router = APIRouter(prefix="/v1/users", tags=["users"])


@router.get("/me", response_model=schemas.UserOut)
def me(user: CurrentUser) -> schemas.UserOut:
    return schemas.UserOut.model_validate(user)
