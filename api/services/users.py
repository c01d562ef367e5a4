"""Users, their API keys and the web UI's sign-in sessions: what an admin does
(create users, set their fair share, issue and revoke keys) and what a user does
for themselves (rotate a key, sign in and out of the web UI)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import schemas
from api.services.errors import Conflict, Invalid, NotFound
from fflab import accounts
from fflab.db import ApiKey, User
from fflab.settings import Settings

if TYPE_CHECKING:
    from api.paging import Page


def user_named(session: Session, name: str, for_update: bool = False) -> User:
    """The user called ``name``, compared as names are (``accounts.find_user``:
    normalised, so 'Alice' is 'alice'); NotFound if there is none. ``for_update``
    locks the row until the unit commits."""
    user = accounts.find_user(session, name, for_update=for_update)
    if user is None:
        raise NotFound(f"no user {name}")
    return user


def users_page(session: Session, page: Page) -> tuple[list[User], str | None]:
    """Every user, oldest first."""
    return page.cut(list(session.scalars(select(User).order_by(User.id).limit(page.limit + 1).offset(page.offset))))


def create_user(session: Session, new: schemas.UserCreate) -> tuple[User, str]:
    """A new user and its first API key (committed): Invalid for a name that is not
    allowed, Conflict for one equal or confusable with an existing user's."""
    try:
        user = accounts.create_user(session, new.name, new.role)
    except accounts.InvalidName as error:
        raise Invalid([{"type": "value_error", "loc": ("body", "name"), "msg": str(error)}], str(error)) from None
    except ValueError as error:  # accounts.NameClash
        raise Conflict(str(error), [{"type": "name_clash", "loc": ("body", "name"), "msg": str(error)}]) from None
    key = accounts.issue_key(session, user)
    session.commit()
    return user, key


def set_share(session: Session, name: str, share: schemas.UserShareUpdate) -> User:
    """Set a user's fair-share weight and highest allowed priority (committed)."""
    user = user_named(session, name, for_update=True)
    accounts.set_share(user, share.share_weight, share.max_priority)
    session.commit()
    return user


def issue_key(session: Session, name: str) -> tuple[User, str]:
    """A new API key for the user called ``name`` (committed; shown once)."""
    user = user_named(session, name)
    key = accounts.issue_key(session, user)
    session.commit()
    return user, key


def check_key_prefix(prefix: str) -> None:
    """A key is revoked by its public prefix, never named whole in a URL (servers and
    proxies log URLs): Invalid for the path parameter ``prefix`` otherwise."""
    if len(prefix) > accounts.PUBLIC_PREFIX_LENGTH and accounts.contains_key(prefix):
        raise Invalid([{
            "type": "value_error", "loc": ("path", "prefix"),
            "msg": f"pass the key's public prefix, its first {accounts.PUBLIC_PREFIX_LENGTH} characters, not the "
                   "whole key: a URL is no place for a secret (servers and proxies log it)",
        }])


def revoke_key(session: Session, prefix: str) -> None:
    """Revoke the active key with this public prefix (committed; NotFound if none)."""
    check_key_prefix(prefix)
    if not accounts.revoke_keys(session, key_or_prefix=prefix):
        raise NotFound(f"no active key starting with {prefix[:accounts.PUBLIC_PREFIX_LENGTH]}")
    session.commit()


def keys_page(session: Session, user: User, page: Page) -> tuple[list[ApiKey], str | None]:
    """The user's keys, active and revoked, newest first."""
    return page.cut(list(session.scalars(
        select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
        .limit(page.limit + 1).offset(page.offset))))


def public_prefix(key: str) -> str:
    """What identifies a key in lists and URLs (its first characters)."""
    return key[:accounts.PUBLIC_PREFIX_LENGTH]


def rotate_key(session: Session, user: User, current_key: str | None, revoke_current: bool) -> tuple[User, str]:
    """A new key for the user (committed; shown once); the key the request came with
    (``current_key``) is revoked if ``revoke_current``."""
    current = session.get_one(User, user.id)
    key = accounts.issue_key(session, current)
    if revoke_current and current_key is not None:
        accounts.revoke_keys(session, key_or_prefix=current_key)
    session.commit()
    return current, key


def open_ui_session(session: Session, key: str, settings: Settings) -> str | None:
    """A web UI session opened with ``key`` (committed), its id for the cookie; None
    if the key is not (or no longer) active."""
    api_key = accounts.api_key_of(session, key)
    if api_key is None:
        return None
    session_id = accounts.open_ui_session(session, api_key, settings.ui_session_ttl_s)
    session.commit()
    return session_id


def close_ui_session(session: Session, session_id: str) -> None:
    """End a web UI session: its id no longer signs anyone in (committed)."""
    accounts.close_ui_session(session, session_id)
    session.commit()
