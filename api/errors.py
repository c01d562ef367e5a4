"""Every error body of the API is built here, in one shape: RFC 9457 problem details
(``Content-Type: application/problem+json``) with three members of our own::

    {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
     "code": "validation_error",
     "message": "ff.learning_rate: Input should be greater than 0",
     "detail": "ff.learning_rate: Input should be greater than 0",
     "details": [{"field": "ff.learning_rate", "given": -1, "allowed": "> 0",
                  "message": "Input should be greater than 0", "type": "greater_than"}]}

- ``code`` is stable and machine-readable (``CODES``): a client branches on it, never
  on the wording of ``message``;
- ``message`` is one human sentence, and ``detail`` (RFC 9457's name) repeats it;
- ``details`` lists the problems with single fields (validation), ``[]`` otherwise.
  ``field`` is the dotted path of a body field (``network.width``), or ``query.<name>``,
  ``path.<name>`` or ``header.<name>``; ``given`` is what the client sent (absent
  where it must not be echoed, such as an API key); ``allowed`` says what would be
  accepted; ``type`` is pydantic's error type.

Exception handlers, middleware and the HTTP protocol's own 400 all go through
``problem_response`` or ``problem_body``. What a service refuses
(``api.services.errors``: NotFound, Forbidden, Conflict, LimitReached, Invalid) is
turned into its problem here, in ``service_error``, for every route. Routes raise
``api_error(status, message, code)`` (an ``HTTPException``) for what is theirs (the
request's own headers and parameters), or a plain ``HTTPException`` whose status
gives the code (``CODE_BY_STATUS``).

What a client sent is echoed back in ``given`` only in a form that JSON can carry:
non-finite numbers become the strings "NaN", "Infinity" and "-Infinity", lone
surrogates are escaped, integers beyond 64 bits become strings, and containers are cut
at a few levels."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi import HTTPException as DetailHTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException

from api.services.errors import ServiceError

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_ECHO_DEPTH = 4
MAX_ECHO_ITEMS = 50
MAX_ECHO_CHARS = 1000
NO_BODY_STATUSES = {204, 304}

Code = Literal["validation_error", "not_found", "unauthorized", "forbidden", "conflict", "quota_exceeded",
               "payload_too_large", "rate_limited", "unavailable", "internal_error", "method_not_allowed",
               "not_acceptable", "range_not_satisfiable", "unsupported_media_type"]
CODES: tuple[str, ...] = Code.__args__  # type: ignore[attr-defined]
CODE_BY_STATUS = {
    400: "validation_error", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 413: "payload_too_large",
    414: "validation_error", 415: "unsupported_media_type", 416: "range_not_satisfiable", 422: "validation_error", 429: "rate_limited",
    503: "unavailable",
}


class FieldProblem(BaseModel):
    field: str = Field(description="Dotted path of a body field (network.width), or query.<name>, "
                                   "path.<name>, header.<name>; 'body' for the body as a whole.")
    message: str = Field(description="What is wrong with it.")
    allowed: str | None = Field(None, description="What would be accepted, where it can be said.")
    given: Any = Field(None, description="What was sent (absent where it must not be echoed).")
    type: str = Field(description="The kind of problem (pydantic's error types: missing, greater_than, ...).")


class Problem(BaseModel):
    """The body of every 4xx and 5xx (RFC 9457, application/problem+json)."""

    type: str = Field("about:blank", description="RFC 9457: no further documentation URI.")
    title: str = Field(description="The HTTP reason phrase of the status.")
    status: int
    code: Code = Field(description="Stable and machine-readable: branch on this.")
    message: str = Field(description="One human sentence.")
    detail: str = Field(description="RFC 9457's name for the same sentence as message.")
    details: list[FieldProblem] = Field(description="Problems with single fields (validation); [] otherwise.")
    request_id: str | None = Field(None, description="500 and 503: quote it when reporting the error.")
    retry_after_seconds: int | None = Field(None, description="429 and 503: when to try again (also Retry-After).")


def _title(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"


def problem_content(status_code: int, message: str, code: str | None = None,
                    details: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """The problem document (a dict); ``extra`` adds members (``request_id``)."""
    message = safe_text(str(message))
    body = {"type": "about:blank", "title": _title(status_code), "status": status_code,
            "code": code or CODE_BY_STATUS.get(status_code, "internal_error" if status_code >= 500
                                                 else "validation_error"),
            "message": message, "detail": message, "details": details or []}
    body.update({key: value for key, value in extra.items() if value is not None})
    return body


def problem_body(status_code: int, message: str, code: str | None = None) -> bytes:
    """The JSON bytes of a problem (for code that writes bytes itself)."""
    return json.dumps(problem_content(status_code, message, code), ensure_ascii=False, allow_nan=False).encode()


def problem_response(status_code: int, message: str, headers: Mapping[str, str] | None = None,
                     code: str | None = None, details: list[dict[str, Any]] | None = None,
                     **extra: Any) -> Response:
    """The response of every error."""
    if status_code < 200 or status_code in NO_BODY_STATUSES:
        return Response(status_code=status_code, headers=dict(headers or {}))
    return JSONResponse(problem_content(status_code, message, code, details, **extra), status_code=status_code,
                        headers=dict(headers or {}), media_type=PROBLEM_JSON)


def api_error(status_code: int, message: str, code: str | None = None,
              details: list[dict[str, Any]] | None = None,
              headers: Mapping[str, str] | None = None) -> HTTPException:
    """An exception a route raises; the handler answers it as a problem with this code."""
    return DetailHTTPException(status_code, {"message": message, "code": code, "details": details or []},
                               headers=dict(headers) if headers else None)


def problem(loc: Iterable[str | int], msg: str, kind: str = "value_error", **ctx: Any) -> dict[str, Any]:
    """One validation problem in pydantic's form (``loc``, ``msg``, ``type``, ``ctx``),
    without ``input``: for values that must not be echoed, such as a whole API key."""
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


def field_path(loc: Iterable[Any]) -> str:
    """pydantic's ``loc`` as a field path: ("body", "ff", "epochs") -> "ff.epochs",
    ("query", "limit") -> "query.limit", ("body",) -> "body"."""
    parts = [str(p) if isinstance(p, int) and not isinstance(p, bool) else safe_text(str(p), 100) for p in loc]
    if parts and parts[0] == "body" and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts) or "body"


ALLOWED_BY_CONTEXT = {"gt": "> {}", "ge": ">= {}", "lt": "< {}", "le": "<= {}", "multiple_of": "a multiple of {}",
                      "pattern": "text matching {}", "expected": "{}", "min_length": "at least {} long",
                      "max_length": "at most {} long"}
ALLOWED_BY_TYPE = {"finite_number": "a finite number", "missing": "a value (the field is required)",
                   "extra_forbidden": "no such field: see the schema for the fields there are",
                   "int_type": "an integer", "float_type": "a number", "string_type": "a string",
                   "bool_type": "true or false", "list_type": "a list", "dict_type": "an object",
                   "model_type": "an object", "string_unicode": "valid Unicode text",
                   "string_nul": "text without the NUL character",
                   "int_parsing": "an integer", "float_parsing": "a number", "bool_parsing": "true or false"}


def allowed_of(kind: str, ctx: Mapping[str, Any] | None) -> str | None:
    """What would have been accepted, from pydantic's error type and context."""
    parts = [template.format(safe_value(ctx[name])) for name, template in ALLOWED_BY_CONTEXT.items()
             if ctx and name in ctx and not isinstance(ctx[name], (dict, list))]
    if parts:
        return ", ".join(parts)
    return ALLOWED_BY_TYPE.get(kind)


def field_problems(problems: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validation problems (pydantic's or ours, with ``loc``, ``msg``, ``type`` and
    maybe ``input`` and ``ctx``) as ``details`` entries."""
    out = []
    for entry in problems:
        kind = safe_text(str(entry.get("type", "value_error")), 100)
        ctx = entry.get("ctx") if isinstance(entry.get("ctx"), Mapping) else None
        item: dict[str, Any] = {"field": field_path(entry.get("loc", ())),
                                "message": safe_text(str(entry.get("msg", ""))), "type": kind}
        allowed = allowed_of(kind, ctx)
        if allowed is not None:
            item["allowed"] = allowed
        if "input" in entry and kind != "missing":
            item["given"] = safe_value(entry["input"])
        out.append(item)
    return out


def validation_message(details: list[dict[str, Any]]) -> str:
    if not details:
        return "the request is invalid"
    first = details[0]
    more = f" (and {len(details) - 1} more problem{'s' if len(details) > 2 else ''})" if len(details) > 1 else ""
    return f"{first['field']}: {first['message']}{more}"


def request_id(request: Request) -> str:
    rid: str = request.scope.get("state", {}).get("request_id", "")
    return rid


async def http_error(request: Request, error: HTTPException) -> Response:
    detail = error.detail
    if isinstance(detail, Mapping) and "message" in detail:
        return problem_response(error.status_code, detail["message"], error.headers, detail.get("code"),
                                list(detail.get("details") or []),
                                retry_after_seconds=detail.get("retry_after_seconds"))
    message = _unparsable_body(error) or detail
    if not isinstance(message, str):
        message = json.dumps(safe_value(message), ensure_ascii=False)
    return problem_response(error.status_code, message, error.headers)


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
    details = field_problems(error.errors())
    return problem_response(422, validation_message(details), code="validation_error", details=details)


async def internal_error(request: Request, error: Exception) -> Response:
    rid = request_id(request)
    log.error("unhandled error in %s %s (request %s)", request.method, request.url.path, rid, exc_info=error)
    return problem_response(500, "internal server error; quote the request id when reporting it",
                            {"x-request-id": rid}, "internal_error", request_id=rid)


async def database_unavailable(request: Request, error: Exception) -> Response:
    """The database is unreachable (restarting, failing over): 503 with a retry hint
    instead of a 500; the pool replaces its broken connections once it is back (the
    first disconnect invalidates the pool; ``fflab.db.session`` pings idle ones)."""
    rid = request_id(request)
    log.warning("database unavailable in %s %s (request %s): %s", request.method, request.url.path,
                rid, str(getattr(error, "orig", error))[:300])
    return problem_response(503, "the database is unavailable; retry shortly",
                            {"retry-after": str(RETRY_AFTER_S), "x-request-id": rid}, "unavailable",
                            request_id=rid, retry_after_seconds=RETRY_AFTER_S)


async def pool_exhausted(request: Request, error: Exception) -> Response:
    """No pooled database connection freed within fflab.db.session.POOL_TIMEOUT_S
    (a backstop: the database gate, api.overload, keeps units within the pool): 503
    with Retry-After, the request did nothing."""
    rid = request_id(request)
    retry_after = request.app.state.settings.api_retry_after_s
    log.warning("no database connection free in %s %s (request %s)", request.method, request.url.path, rid)
    return problem_response(503, f"the server is busy (database connections); retry in {retry_after} s",
                            {"retry-after": str(retry_after), "x-request-id": rid}, "unavailable",
                            request_id=rid, retry_after_seconds=retry_after)


async def service_error(request: Request, error: ServiceError) -> Response:
    """What a service refused (``api.services.errors``), each kind with its status and
    code; its field problems as a validation error's ``details``."""
    details = field_problems(error.problems)
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    return problem_response(error.status, error.message or validation_message(details), headers, error.code,
                            details)


def install(app: FastAPI) -> None:
    # Starlette types a handler as taking any Exception; it calls each with the class it was added for.
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(InterfaceError, database_unavailable)
    app.add_exception_handler(PoolTimeoutError, pool_exhausted)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` declaring these error statuses with the Problem body."""
    descriptions = {
        400: "The request is malformed.", 401: "No valid API key.", 403: "Not allowed to this user.",
        404: "No such resource (or not visible to this user).", 409: "Conflicts with the resource's state.",
        413: "The body is larger than FFLAB_MAX_BODY_BYTES (an upload: FFLAB_REPRESENTATIONS_MAX_BYTES).",
        415: "The body is not of a format this route reads.", 416: "The Range cannot be satisfied.",
        422: "A field is invalid: details names each.", 429: "A cap or rate limit is reached (Retry-After).",
        503: "A backend (database, storage) is unavailable (Retry-After).",
    }
    return {status: {"model": Problem, "description": descriptions.get(status, _title(status)),
                     "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for status in statuses}
