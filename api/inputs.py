"""Checks every request passes before a route sees it, whatever its shape.

- A JSON body may not hold values the API cannot carry faithfully: non-finite numbers
  (NaN, Infinity, 1e999), strings with lone surrogates (\\ud800) or NUL (\\u0000, which
  PostgreSQL cannot store), integers beyond 64 bits, nesting deeper than
  ``MAX_JSON_DEPTH``. 422 naming each field.
- URLs longer than ``MAX_URL_BYTES``: 414.
- A URL whose path or query parameters, once percent-decoded, are not UTF-8 text or
  hold NUL (``%ED%A0%80``, ``%FF``, ``%00``): 422 naming the parameter (or ``path``),
  before any route runs. Without it, such bytes became U+FFFD unannounced, and NUL
  reached the database.
- An API key in the query string (``?api_key=...``, or any parameter whose value is a
  key): 400. Keys go in the Authorization header; URLs end up in logs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import INT64_MAX, INT64_MIN, field_problems, problem, problem_response, validation_message
from fflab.accounts import contains_key

MAX_JSON_DEPTH = 32
MAX_PROBLEMS = 20
MAX_URL_BYTES = 8192
NUL_MESSAGE = "Input should not hold the NUL character (\\u0000, %00): no value of this API holds one"
URL_TEXT_MESSAGES = {
    "string_unicode": "should be UTF-8 text once percent-decoded, and is not (a lone surrogate such as "
                      "%ED%A0%80, or a byte such as %FF)",
    "string_nul": "should not hold the NUL character (%00): no name, id or value of this API holds one",
}
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
        elif isinstance(value, str) and "\x00" in value:
            yield problem(loc, NUL_MESSAGE, "string_nul")
        elif isinstance(value, (list, dict)) and len(path) >= MAX_JSON_DEPTH:
            yield problem(loc, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "json_invalid")
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in reversed(list(enumerate(value))))
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if not _is_unicode(key):
                    yield problem((*loc, key), "Field names should be valid strings: lone surrogates "
                                               "(\\ud800-\\udfff) are not Unicode characters", "string_unicode")
                elif "\x00" in key:
                    yield problem((*loc, key), NUL_MESSAGE, "string_nul")
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


def query_pairs(query_string: bytes) -> list[tuple[bytes, bytes]]:
    """The query's (name, value) pairs, percent-decoded to bytes, split as Starlette
    splits them (``&``, ``+`` for a space): each name is one a route would see."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in
            parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, encoding="latin-1")]


def url_text_problems(raw_path: bytes, pairs: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """Problems of a URL's text, in pydantic's form: the path, or a query parameter's
    name or value (``query_pairs``), that once percent-decoded is not UTF-8 or holds NUL."""
    problems = []
    if kind := _text_problem(unquote_to_bytes(raw_path)):
        problems.append(problem(("path",), f"The URL's path {URL_TEXT_MESSAGES[kind]}", kind))
    for name_bytes, value_bytes in pairs:
        shown = name_bytes.decode("utf-8", "backslashreplace")
        if kind := _text_problem(name_bytes):
            problems.append(problem(("query", shown), f"The parameter's name {URL_TEXT_MESSAGES[kind]}", kind))
        elif kind := _text_problem(value_bytes):
            problems.append(problem(("query", shown), f"Input {URL_TEXT_MESSAGES[kind]}", kind))
        if len(problems) >= MAX_PROBLEMS:
            break
    return problems


def _text_problem(raw: bytes) -> str | None:
    """The problem's type where ``raw`` is not UTF-8 text without NUL, else None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "string_unicode"
    return "string_nul" if "\x00" in text else None


def key_in_query(pairs: list[tuple[bytes, bytes]]) -> bool:
    """Whether a query parameter (``query_pairs``), read as UTF-8 as Starlette reads
    it, is named as a key or holds one."""
    for name_bytes, value_bytes in pairs:
        name, value = name_bytes.decode("utf-8", "replace"), value_bytes.decode("utf-8", "replace")
        if name.strip().lower() in KEY_PARAMETERS or contains_key(name) or contains_key(value):
            return True
    return False


class RequestLineMiddleware:
    """414 for URLs over ``MAX_URL_BYTES``; 400 for an API key in the query string
    (the access log redacts the key: fflab.accounts.redact_keys); 422 for a path or
    query parameter that is not UTF-8 text or holds NUL: before any route runs."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"")
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            if len(raw_path) + len(query) > MAX_URL_BYTES:
                response = problem_response(414, f"the URL is longer than {MAX_URL_BYTES} bytes")
                await response(scope, receive, send)
                return
            pairs = query_pairs(query) if query else []
            if key_in_query(pairs):
                response = problem_response(
                    400, "an API key may not be sent in the URL: send it in the header "
                         "'Authorization: Bearer <key>' (URLs are logged by servers and proxies)")
                await response(scope, receive, send)
                return
            if problems := url_text_problems(raw_path, pairs):
                details = field_problems(problems)
                response = problem_response(422, validation_message(details), details=details)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
