"""Checks every request passes before a route sees it, whatever its shape.

- A JSON body may not hold values the API cannot carry faithfully: non-finite numbers
  (NaN, Infinity, 1e999), strings with lone surrogates (\\ud800), integers beyond 64
  bits, nesting deeper than ``MAX_JSON_DEPTH``. 422 naming each field.
- URLs longer than ``MAX_URL_BYTES``: 414.
- An API key in the query string (``?api_key=...``, or any parameter whose value is a
  key): 400. Keys go in the Authorization header; URLs end up in logs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import INT64_MAX, INT64_MIN, problem, problem_response
from fflab.accounts import contains_key

MAX_JSON_DEPTH = 32
MAX_PROBLEMS = 20
MAX_URL_BYTES = 8192
KEY_PARAMETERS = {"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "authorization",
                  "bearer"}


def _unrepresentable(document: Any) -> Iterator[dict[str, Any]]:
    """Problems of a decoded JSON document, depth first, without recursion."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    while stack:
        path, value = stack.pop()
        loc = ("body", *path)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            yield {**problem(loc, "Input should be a finite number", "finite_number"), "input": value}
        elif isinstance(value, int) and value > INT64_MAX:
            yield {**problem(loc, f"Input should be less than or equal to {INT64_MAX}", "less_than_equal",
                             le=INT64_MAX), "input": value}
        elif isinstance(value, int) and value < INT64_MIN:
            yield {**problem(loc, f"Input should be greater than or equal to {INT64_MIN}", "greater_than_equal",
                             ge=INT64_MIN), "input": value}
        elif isinstance(value, str) and not _is_unicode(value):
            yield problem(loc, "Input should be a valid string: lone surrogates (\\ud800-\\udfff) are not "
                               "Unicode characters", "string_unicode")
        elif isinstance(value, (list, dict)) and len(path) >= MAX_JSON_DEPTH:
            yield problem(loc, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "json_invalid")
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in reversed(list(enumerate(value))))
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if not _is_unicode(key):
                    yield problem((*loc, key), "Field names should be valid strings: lone surrogates "
                                               "(\\ud800-\\udfff) are not Unicode characters", "string_unicode")
                else:
                    stack.append(((*path, key), item))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def checked_json_body(request: Request) -> None:
    """A dependency of every route: 422 naming each field of a JSON body that holds a
    value the API cannot carry (see the module's docstring). Runs before the route's
    own validation, so that its messages never have to echo such values."""
    route = request.scope.get("route")
    if getattr(route, "body_field", None) is None:
        return
    try:
        document = await request.json()  # already parsed (and cached) by FastAPI
    except Exception:  # not JSON: FastAPI's own validation answers
        return
    problems = []
    for found in _unrepresentable(document):
        problems.append(found)
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        raise RequestValidationError(problems)


def key_in_query(query_string: bytes) -> bool:
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name.strip().lower() in KEY_PARAMETERS or contains_key(name) or contains_key(value):
            return True
    return False


class RequestLineMiddleware:
    """414 for URLs over ``MAX_URL_BYTES``; 400 for an API key in the query string,
    before any route runs (the access log redacts the key: fflab.accounts.redact_keys)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"")
            if len(scope.get("raw_path") or scope["path"].encode()) + len(query) > MAX_URL_BYTES:
                response = problem_response(414, f"the URL is longer than {MAX_URL_BYTES} bytes")
                await response(scope, receive, send)
                return
            if query and key_in_query(query):
                response = problem_response(
                    400, "an API key may not be sent in the URL: send it in the header "
                         "'Authorization: Bearer <key>' (URLs are logged by servers and proxies)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
