"""Sign-in sessions, CSRF tokens, and the UI's current user.

Session: signing in with an API key opens a server-side session (a ``ui_sessions``
row, ``fflab.accounts.open_ui_session``); the browser's cookie holds only the
session's random id (HttpOnly, SameSite=Strict, path ``/ui``), never the key.
Signing out deletes the row; revoking the key (or rotating it) ends every session
opened with it; a session ends FFLAB_UI_SESSION_TTL_S after it began. When the
public URL (FFLAB_PUBLIC_URL, else the request's scheme) is https, the cookies are
``Secure`` and named ``__Host-...`` (path ``/``, no Domain): a page served from
another port or a sibling host cannot set or overwrite them.

CSRF, on every state-changing form (``require_csrf``):

- the token is an HMAC (sha256, the server's secret: FFLAB_SECRET_KEY or
  ``<var_dir>/secret.key``) of the session id; before signing in, of a random
  pre-session id kept in a cookie of its own. Cookies are shared by every port of a
  host and SameSite does not separate same-site pages, so a page of another port
  can plant cookies: a planted value is of no use, since the token is not a cookie
  but derived from one with a secret the attacker lacks;
- the Origin header, when a browser sends one naming an origin, must be this
  site's own (FFLAB_PUBLIC_URL's, else the scheme and Host of the request); without
  it (or with ``Origin: null``, which Chromium sends under the UI's
  ``Referrer-Policy: no-referrer``), Sec-Fetch-Site, when sent, must be
  ``same-origin`` or ``none``. Requests with neither header (non-browser clients)
  are let through to the token check.

A refused form is a 403 page.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, Response, status
from sqlalchemy.orm import Session

from api.deps import DatabaseDep
from fflab import accounts
from fflab.db import User
from fflab.settings import Settings
from fflab.var_dir import private_dir

SESSION_NAME = "fflab_session"
PRESESSION_NAME = "fflab_presession"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
SAFE_FETCH_SITES = ("same-origin", "none")


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def is_https(request: Request) -> bool:
    """Whether the public URL is https (FFLAB_PUBLIC_URL, else this request's scheme)."""
    public = _settings(request).public_url
    return (public or "").lower().startswith("https://") or request.url.scheme == "https"


def cookie_name(request: Request, name: str) -> str:
    return f"__Host-{name}" if is_https(request) else name


def cookie_path(request: Request) -> str:
    return "/" if is_https(request) else "/ui"  # __Host- cookies must have Path=/


def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(cookie_name(request, name), value, path=cookie_path(request), httponly=True,
                        samesite="strict", secure=is_https(request))


def server_secret(settings: Settings) -> bytes:
    """FFLAB_SECRET_KEY, else the secret in <var_dir>/secret.key (made on first use, mode 600)."""
    if settings.secret_key:
        return settings.secret_key.encode()
    path = (settings.var_dir / "secret.key").resolve()
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile
        return path.read_bytes().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_bytes().strip()


def _secret(request: Request) -> bytes:
    secret = getattr(request.app.state, "ui_secret", None)
    if secret is None:
        secret = request.app.state.ui_secret = server_secret(_settings(request))
    return secret


def session_id_of(request: Request) -> str | None:
    given = request.cookies.get(cookie_name(request, SESSION_NAME), "")
    return given if SESSION_ID.match(given) else None


def _binding(request: Request) -> str | None:
    """What this browser's CSRF token is bound to: its session, else its pre-session."""
    session_id = session_id_of(request)
    if session_id:
        return "session:" + session_id
    presession = request.cookies.get(cookie_name(request, PRESESSION_NAME), "")
    if SESSION_ID.match(presession):
        return "presession:" + presession
    return None


def _token_for(request: Request, binding: str) -> str:
    return hmac.new(_secret(request), binding.encode(), hashlib.sha256).hexdigest()


def csrf_token(request: Request) -> str:
    """This browser's CSRF token; without a session or pre-session cookie, a new
    pre-session that ``remember_csrf_token`` sets on the response."""
    binding = _binding(request)
    if binding is None:
        if not getattr(request.state, "new_presession", None):
            request.state.new_presession = secrets.token_urlsafe(32)
        binding = "presession:" + request.state.new_presession
    return _token_for(request, binding)


def remember_csrf_token(request: Request, response: Response) -> None:
    presession = getattr(request.state, "new_presession", None)
    if presession:
        _set_cookie(request, response, PRESESSION_NAME, presession)


def expected_origin(request: Request) -> str:
    public = _settings(request).public_url
    if public:
        parts = urlsplit(public)
        return f"{parts.scheme}://{parts.netloc}".lower()
    return f"{request.url.scheme}://{request.headers.get('host', '')}".lower()


def check_origin(request: Request) -> None:
    """403 for a cross-origin browser request: Origin, when it names one, must be
    ours; otherwise (absent, or ``null``: Chromium sends ``Origin: null`` under the
    UI's ``Referrer-Policy: no-referrer``) Sec-Fetch-Site must be ``same-origin`` or
    ``none`` when sent; ``null`` without Sec-Fetch-Site is refused."""
    origin = request.headers.get("origin")
    if origin is not None and origin.lower() != "null":
        if origin.lower().rstrip("/") != expected_origin(request):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"this form was sent from another site ({origin[:100]}): refused")
        return
    site = request.headers.get("sec-fetch-site")
    if (site is not None and site.lower() not in SAFE_FETCH_SITES) or (site is None and origin is not None):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this form was sent from another site "
                                                       f"(Origin: {origin}, Sec-Fetch-Site: {site}): refused")


async def require_csrf(request: Request) -> None:
    """403 unless the request comes from this site (``check_origin``) and its form
    field ``csrf_token`` (or X-CSRF-Token header) is the token of its session."""
    check_origin(request)
    binding = _binding(request)
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else ""
    if binding is None or not hmac.compare_digest(_token_for(request, binding).encode(),
                                                  given.encode("utf-8", "replace")):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "this form has no valid CSRF token: reload the page and send the form again")


CsrfChecked = Depends(require_csrf)


def sign_in(request: Request, response: Response, session_id: str) -> None:
    """Keep the new session's id in the session cookie (its CSRF token follows from it)."""
    _set_cookie(request, response, SESSION_NAME, session_id)


def sign_out(request: Request, response: Response) -> None:
    response.delete_cookie(cookie_name(request, SESSION_NAME), path=cookie_path(request), httponly=True,
                           samesite="strict", secure=is_https(request))


async def get_ui_credentials(request: Request) -> str | None:
    """The session id of the session cookie."""
    return session_id_of(request)


UICredentials = Annotated[str | None, Depends(get_ui_credentials)]


def ui_user(session: Session, request: Request, session_id: str | None) -> User:
    """The signed-in user (inside a database unit); 401 (the sign-in page) unless
    the session is live and its key not revoked."""
    user = accounts.ui_session_user(session, session_id) if session_id else None
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not signed in, or the session has ended")
    request.state.ui_user = user
    return user


async def get_ui_user(request: Request, db: DatabaseDep, credentials: UICredentials) -> User:
    """``ui_user`` in a unit of its own, for pages that read a form first (detached)."""
    return await db.read(lambda session: ui_user(session, request, credentials))


UIUser = Annotated[User, Depends(get_ui_user)]
