"""Sign-in cookie, CSRF tokens and the UI's current user.

The session cookie holds the API key itself (HttpOnly, so page scripts cannot
read it; SameSite=Strict, so other sites cannot make the browser send it; path
``/ui``). It is read only by ``get_ui_user``, which authenticates it exactly as
the API authenticates its Authorization header (``api.deps.authenticated_user``):
a revoked key signs the browser out at its next request.

CSRF: ``csrf_token`` gives each browser a random token in the ``fflab_csrf``
cookie; pages repeat it in every form (field ``csrf_token``) and htmx sends it as
``X-CSRF-Token``. ``require_csrf`` compares the two in constant time and answers
403 when they differ or either is missing. Signing in replaces the token.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Annotated

from fastapi import Cookie, Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials

from api.deps import SessionDep, authenticated_user
from fflab.db import User

COOKIE_PATH = "/ui"
SESSION_COOKIE = "fflab_session"
CSRF_COOKIE = "fflab_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(name, value, path=COOKIE_PATH, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def sign_in(request: Request, response: Response, key: str) -> None:
    """Keep ``key`` in the session cookie and give the browser a fresh CSRF token."""
    _set_cookie(request, response, SESSION_COOKIE, key)
    _set_cookie(request, response, CSRF_COOKIE, secrets.token_urlsafe(32))


def sign_out(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


def csrf_token(request: Request) -> str:
    """This browser's CSRF token: its cookie's, or a new one that ``remember_csrf_token``
    sets on the response."""
    given = request.cookies.get(CSRF_COOKIE, "")
    if TOKEN.match(given):
        return given
    if not getattr(request.state, "new_csrf_token", None):
        request.state.new_csrf_token = secrets.token_urlsafe(32)
    return request.state.new_csrf_token


def remember_csrf_token(request: Request, response: Response) -> None:
    token = getattr(request.state, "new_csrf_token", None)
    if token:
        _set_cookie(request, response, CSRF_COOKIE, token)


async def require_csrf(request: Request) -> None:
    """403 unless the form field ``csrf_token`` (or the X-CSRF-Token header) equals
    the ``fflab_csrf`` cookie."""
    expected = request.cookies.get(CSRF_COOKIE, "")
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else ""
    if not TOKEN.match(expected) or not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "this form has no valid CSRF token: reload the page and send the form again")


CsrfChecked = Depends(require_csrf)


def get_ui_user(request: Request, session: SessionDep,
                key: Annotated[str | None, Cookie(alias=SESSION_COOKIE)] = None) -> User:
    """The signed-in user, authenticated as the API authenticates a bearer key; 401
    (the sign-in page) without a valid one."""
    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=key) if key else None
    user = authenticated_user(session, credentials)
    request.state.ui_user = user
    return user


UIUser = Annotated[User, Depends(get_ui_user)]
