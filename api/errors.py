"""Every error body of the API is built here: ``{"detail": ...}``, a message or, for
422, FastAPI's list of problems, each naming the field (``loc``) and what is allowed
(``msg``). Exception handlers, middleware and the HTTP protocol's own 400 all use
``error_response`` or ``error_body``, so that the format can change in one place.

What a client sent is echoed back in a problem's ``input`` only in a form that JSON
can carry: non-finite numbers become the strings "NaN", "Infinity" and "-Infinity",
lone surrogates are escaped, integers beyond 64 bits become strings, and containers
are cut at a few levels."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_ECHO_DEPTH = 4
MAX_ECHO_ITEMS = 50
MAX_ECHO_CHARS = 1000
NO_BODY_STATUSES = {204, 304}


def error_content(detail: Any, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, **extra}


def error_body(detail: Any) -> bytes:
    """The JSON bytes of an error body (for code that writes bytes itself)."""
    return json.dumps(error_content(detail), ensure_ascii=False, allow_nan=False).encode()


def error_response(status_code: int, detail: Any, headers: Mapping[str, str] | None = None,
                   **extra: Any) -> Response:
    """The response of every error; ``extra`` adds top-level fields (``request_id``)."""
    if status_code < 200 or status_code in NO_BODY_STATUSES:
        return Response(status_code=status_code, headers=dict(headers or {}))
    return JSONResponse(error_content(detail, **extra), status_code=status_code, headers=dict(headers or {}))


def problem(loc: Iterable[str | int], msg: str, kind: str = "value_error", **ctx: Any) -> dict[str, Any]:
    """One entry of a 422's ``detail`` list; it carries no ``input`` (for values that
    must not be echoed, such as a whole API key)."""
    entry: dict[str, Any] = {"type": kind, "loc": tuple(loc), "msg": msg}
    if ctx:
        entry["ctx"] = ctx
    return entry


def safe_text(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` as valid Unicode (lone surrogates escaped as \\udXXX), cut at ``limit``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def safe_value(value: Any, depth: int = 0) -> Any:
    """``value`` in a form that JSON can carry, whatever the client sent."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else safe_text(str(value), 40)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, bytes):
        return safe_text(value.decode("utf-8", "replace"))
    if depth >= MAX_ECHO_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        items = list(value.items())[:MAX_ECHO_ITEMS]
        return {safe_text(str(k), 100): safe_value(v, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [safe_value(v, depth + 1) for v in value[:MAX_ECHO_ITEMS]]
    return safe_text(str(value))


def safe_problems(problems: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validation problems (pydantic's or ours) as JSON-safe dicts: type, loc, msg, and
    input and ctx where present."""
    out = []
    for entry in problems:
        item: dict[str, Any] = {
            "type": safe_text(str(entry.get("type", "value_error")), 100),
            "loc": [p if isinstance(p, int) and not isinstance(p, bool) else safe_text(str(p), 100)
                    for p in entry.get("loc", ())],
            "msg": safe_text(str(entry.get("msg", ""))),
        }
        if "input" in entry:
            item["input"] = safe_value(entry["input"])
        if isinstance(entry.get("ctx"), Mapping):
            item["ctx"] = {safe_text(str(k), 100): safe_value(v if isinstance(v, (int, float, str, type(None)))
                                                               else str(v))
                           for k, v in entry["ctx"].items()}
        out.append(item)
    return out


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


async def http_error(request: Request, error: HTTPException) -> Response:
    return error_response(error.status_code, safe_value(_unparsable_body(error) or error.detail), error.headers)


def _unparsable_body(error: HTTPException) -> str | None:
    """What was wrong with a body FastAPI could not decode as JSON (its 400 says only
    that there was an error): not UTF-8, or nested too deeply for the decoder."""
    if error.status_code != 400:
        return None
    if isinstance(error.__cause__, UnicodeDecodeError):
        return "the body is not valid JSON: it is not UTF-8 text"
    if isinstance(error.__cause__, RecursionError):
        return "the body is not valid JSON for this API: it is nested too deeply"
    return None


async def validation_error(request: Request, error: RequestValidationError) -> Response:
    return error_response(422, safe_problems(error.errors()))


async def internal_error(request: Request, error: Exception) -> Response:
    rid = request_id(request)
    log.error("unhandled error in %s %s (request %s)", request.method, request.url.path, rid, exc_info=error)
    return error_response(500, "internal server error; quote the request id when reporting it",
                          {"x-request-id": rid}, request_id=rid)


async def database_unavailable(request: Request, error: Exception) -> Response:
    """The database is unreachable (restarting, failing over): 503 with a retry hint
    instead of a 500; the pool's pre-ping reconnects once it is back."""
    rid = request_id(request)
    log.warning("database unavailable in %s %s (request %s): %s", request.method, request.url.path,
                rid, str(getattr(error, "orig", error))[:300])
    return error_response(503, "the database is unavailable; retry shortly",
                          {"retry-after": str(RETRY_AFTER_S), "x-request-id": rid}, request_id=rid)


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(InterfaceError, database_unavailable)
