"""Pagination of every list of the API: ``?limit=`` and ``?page_token=``, answered
with ``{"items": [...], "next_page_token": "..." | null}``.

A page token is opaque to clients: they pass back what the previous page gave until
it is null (fflab.client iterates so). Inside, it is the offset of the next page and
a fingerprint of the listing it belongs to (the route and its filters), so that a
token passed to another listing, or with other filters, is a 422 naming
``query.page_token`` instead of a silently wrong page. Offsets, not keysets: lists
are ordered on stable keys (creation time and id, names), and an item inserted
while a client pages shifts it by one at most, which the lists' users (researchers'
scripts, the CLI) tolerate.

(No ``from __future__ import annotations`` here: FastAPI reads the parameters of the
dependency ``page_params`` builds at run time, and they name its closure's
``max_limit``.)"""


import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 2**31 - 1
MAX_TOKEN_LENGTH = 200
PAGING_PARAMETERS = ("limit", "page_token")
T = TypeVar("T")


def fingerprint(path: str, filters: Mapping[str, Any]) -> str:
    """The listing a token belongs to: the route's path and every other query parameter."""
    text = json.dumps([path, sorted((k, str(v)) for k, v in filters.items() if k not in PAGING_PARAMETERS)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def encode_token(offset: int, listing: str) -> str:
    raw = json.dumps({"o": offset, "l": listing}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, listing: str) -> int:
    """The offset in ``token``; 422 unless it was made for ``listing``."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        document = json.loads(raw)
        offset = document["o"]
        valid = isinstance(offset, int) and not isinstance(offset, bool) and 0 <= offset <= MAX_OFFSET
    except (binascii.Error, ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise _bad_token(token, "not a page token of this API: pass back a next_page_token unchanged")
    if document.get("l") != listing:
        raise _bad_token(token, "this page token belongs to another listing or other filters: keep the "
                                "filters of the first page, or start again without page_token")
    return int(offset)


def _bad_token(token: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", "page_token"), "msg": message,
                                    "input": token, "ctx": {"expected": "a next_page_token from the previous page"}}])


@dataclass(frozen=True)
class Page:
    """Where this page starts and how long it is; ``next_token`` after fetching
    ``limit + 1`` rows tells whether there is another page."""

    limit: int
    offset: int
    listing: str

    def next_token(self, fetched: int) -> str | None:
        return encode_token(self.offset + self.limit, self.listing) if fetched > self.limit else None

    @classmethod
    def first(cls, limit: int = MAX_LIMIT) -> "Page":
        """The first page, for code that calls a list route in process (the web UI)."""
        return cls(limit, 0, "")

    def cut(self, rows: list[T]) -> tuple[list[T], str | None]:
        """``rows`` (fetched with ``limit + 1``) as this page's items and the next token."""
        return rows[: self.limit], self.next_token(len(rows))


def page_params(max_limit: int = MAX_LIMIT, default: int = DEFAULT_LIMIT) -> Any:  # Depends() is typed Any
    """A dependency giving the request's ``Page``."""

    async def page(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=max_limit, description="Items per page.")] = default,
        page_token: Annotated[str | None, Query(max_length=MAX_TOKEN_LENGTH, description=(
            "next_page_token of the previous page; keep the other parameters unchanged."))] = None,
    ) -> Page:
        listing = fingerprint(request.url.path, request.query_params)
        offset = 0 if page_token is None else decode_token(page_token, listing)
        return Page(limit, offset, listing)

    return Depends(page)


PageDep = Annotated[Page, page_params()]
