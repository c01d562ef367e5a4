"""Storage and compute use against the per-user limits (the rules: fflab.usage):
your own, and every user's for admins."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import schemas
from api.deps import AdminUser, CurrentUser, DatabaseDep, SettingsDep
from api.errors import problem_responses
from api.paging import PageDep
from fflab import usage
from fflab.db import User
from fflab.settings import Settings

router = APIRouter(tags=["users"], responses=problem_responses(401, 422))


def usage_out(session: Session, settings: Settings, user: User) -> schemas.UsageOut:
    use = usage.user_usage(session, settings, user.id)
    return schemas.UsageOut(user=user.name, stored_bytes=use.stored_bytes, pending_bytes=use.pending_bytes,
                            storage_quota_bytes=use.storage_quota_bytes, active_runs=use.active_runs,
                            active_run_hours=use.active_run_hours, max_active_run_hours=use.max_active_run_hours)


@router.get("/v1/users/me/usage", response_model=schemas.UsageOut)
async def my_usage(user: CurrentUser, db: DatabaseDep, settings: SettingsDep) -> schemas.UsageOut:
    """Your stored bytes and estimated run-hours, against the storage quota and the run-hours limit."""
    return await db.read(lambda session: usage_out(session, settings, session.get_one(User, user.id)))


@router.get("/v1/admin/usage", response_model=schemas.UsageList, responses=problem_responses(403))
async def every_usage(_admin: AdminUser, db: DatabaseDep, settings: SettingsDep, page: PageDep) -> schemas.UsageList:
    """Every user's use (admin), oldest user first."""

    def users(session: Session) -> schemas.UsageList:
        found, next_token = page.cut(list(session.scalars(
            select(User).order_by(User.id).limit(page.limit + 1).offset(page.offset))))
        return schemas.UsageList(items=[usage_out(session, settings, user) for user in found],
                                 next_page_token=next_token)

    return await db.read(users)
