"""Templates, ``render`` and ``HTMLRoute``, the route class that turns the API's
exceptions into pages.

``render`` adds what every page needs (the signed-in user, the CSRF token) and
the headers of every page: a Content-Security-Policy that allows only the app's
own scripts, styles and images (nothing from the internet), no framing, no
caching of pages that show a user's data, no referrer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from api.services.errors import ServiceError
from api.ui import forms
from api.ui.security import csrf_token, remember_csrf_token

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
SIGN_IN = "/ui/sign-in"
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def duration(seconds: float | None) -> str:
    """``75`` -> ``1 min 15 s``; ``4000`` -> ``1 h 6 min``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def cell(value: Any) -> str:
    """A table cell: floats to 4 significant digits, missing as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


TEMPLATES.env.filters.update(duration=duration, cell=cell, when=when,
                             pretty_json=lambda value: json.dumps(value, indent=2, sort_keys=False))


def render(request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200,
           headers: dict[str, str] | None = None) -> Response:
    context = {"current_user": getattr(request.state, "ui_user", None), "csrf_token": csrf_token(request),
               **(context or {})}
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status_code,
                                          headers={**PAGE_HEADERS, **(headers or {})})
    remember_csrf_token(request, response)
    return response


def sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = f"{SIGN_IN}?next={quote(target, safe='')}" if request.method == "GET" else SIGN_IN
    if request.headers.get("hx-request"):  # htmx follows HX-Redirect with a full page load
        return Response(status_code=200, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


def error_page(request: Request, status_code: int, message: str, problems: dict[str, list[str]] | None = None,
               headers: dict[str, str] | None = None) -> Response:
    return render(request, "error.html", {"status_code": status_code, "message": message,
                                          "problems": problems or {}}, status_code, headers)


def declared_query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route and its dependencies declare (by their aliases)."""
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= declared_query_names(dependency)
    return names


class HTMLRoute(APIRoute):
    """A route whose HTTP errors and services' refusals are pages: 401 -> the
    sign-in page, 422 -> the fields and their problems, others -> the API's message."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        known = declared_query_names(self.dependant)

        async def html_handler(request: Request) -> Response:
            unknown = sorted(set(request.query_params) - known)
            if unknown and request.method == "GET":  # a mistyped deep link says so instead of showing defaults
                allowed = ", ".join(sorted(known)) or "none"
                return error_page(request, 422, "the address has query parameters this page does not take",
                                  {name: [f"unknown query parameter; allowed: {allowed}"] for name in unknown})
            try:
                return await handler(request)
            except HTTPException as error:
                if error.status_code == 401:
                    return sign_in_redirect(request)
                detail = error.detail if isinstance(error.detail, str) else json.dumps(error.detail)
                if isinstance(error.detail, dict) and "message" in error.detail:  # api.errors.api_error
                    detail = str(error.detail["message"])
                headers: dict[str, str] | None = {k: v for k, v in (error.headers or {}).items()
                                                  if k.lower() == "retry-after"}
                return error_page(request, error.status_code, detail, headers=headers)
            except RequestValidationError as error:
                problems = forms.field_errors({"detail": list(error.errors())})
                return error_page(request, 422, "the request has invalid values", problems)
            except ServiceError as error:  # what a service refused (api.services.errors)
                if error.message is None:
                    problems = forms.field_errors({"detail": error.problems})
                    return error_page(request, error.status, "the request has invalid values", problems)
                headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
                return error_page(request, error.status, error.message, headers=headers)

        return html_handler
