"""Stored files (figures and artifacts) over HTTP, as download tools expect them:

- ``HEAD`` answers the headers of ``GET`` without the body;
- ``ETag`` is the file's sha256 (quoted); ``If-None-Match`` with it (or ``*``) is
  answered 304 with no body. ``Cache-Control: private, no-cache``: files are behind
  an API key, and a re-analysis replaces figures under the same name, so caches keep
  them but check the ETag each time;
- ``Range: bytes=a-b`` (also ``a-`` and ``-n``) is answered 206 with
  ``Content-Range``, so that a 95 MB ``representations.npz`` can be resumed or read in
  parts; ``If-Range`` with another ETag gets the whole file; a range past the end is
  416 with ``Content-Range: bytes */<size>``; several ranges at once get the whole
  file (RFC 9110 lets a server ignore Range);
- ``Content-Type`` by the file's name (fflab.storage.content_type), whatever was
  recorded when it was stored.

The artifact's row is read in a database unit that has ended before the file is
opened (``api.deps``): the file is opened (its first chunk read) under a slot of the
storage gate, and the rest streams to the client with no slot and no database
connection held.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

from fastapi import Request, status
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException

from api.deps import Files
from api.errors import api_error
from fflab.db import Artifact
from fflab.storage import Storage, StorageError, content_type

SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def encoded_slash(request: Request) -> bool:
    """Whether the request's path had a percent-encoded slash or backslash, which no
    file's name may hold (``api.services.results.check_artifact_name``)."""
    raw_path = request.scope.get("raw_path", b"").lower()
    return b"%2f" in raw_path or b"%5c" in raw_path


def etag_of(artifact: Artifact) -> str:
    return f'"{artifact.sha256}"'


def _matches(header: str, etag: str) -> bool:
    """If-None-Match: ``*`` or a list of (possibly weak) tags."""
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (start, end) of a single-range ``Range`` header; None for the
    whole file (no header, several ranges, another unit); 416 when unsatisfiable."""
    if not header:
        return None
    match = SINGLE_RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # the last n bytes
        if int(last) == 0:
            raise _unsatisfiable(header, size)
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or (last != "" and int(last) < start):
        raise _unsatisfiable(header, size)
    return start, end


def _unsatisfiable(header: str, size: int) -> HTTPException:
    return api_error(status.HTTP_416_RANGE_NOT_SATISFIABLE,
                     f"the range {header[:100]} is outside the file's {size} bytes", "range_not_satisfiable",
                     headers={"Content-Range": f"bytes */{size}"})


# An SVG is a document that may hold scripts (and a stored one could have been
# replaced in the bucket): opened on its own, the browser runs nothing of it, loads
# nothing and treats it as a sandboxed, unique origin; its inline style (matplotlib
# writes one) still applies. As an <img>, a browser never runs an SVG's scripts.
SVG_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
               "X-Content-Type-Options": "nosniff"}


async def file_response(request: Request, files: Files, artifact: Artifact) -> Response:
    """The answer to GET or HEAD of a stored file (see the module's docstring);
    ``artifact`` is a detached row (its columns loaded)."""
    etag = etag_of(artifact)
    file_name = artifact.name.rsplit("/", 1)[-1]
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, no-cache",
               "Content-Disposition": f'inline; filename="{file_name}"'}
    media_type = content_type(artifact.name)
    if media_type == "image/svg+xml":
        headers.update(SVG_HEADERS)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    if_range = request.headers.get("if-range")
    span = byte_range(request.headers.get("range"), artifact.size)
    if span is not None and if_range is not None and if_range.strip() != etag:
        span = None
    status_code, start, end = status.HTTP_200_OK, 0, artifact.size - 1
    if span is not None:
        status_code, (start, end) = status.HTTP_206_PARTIAL_CONTENT, span
        headers["Content-Range"] = f"bytes {start}-{end}/{artifact.size}"
    headers["Content-Length"] = str(max(0, end - start + 1))
    if request.method == "HEAD":
        return Response(status_code=status_code, headers=headers, media_type=media_type)
    chunks = await files.run(_open, artifact, start, end if span is not None else None)
    return StreamingResponse(chunks, status_code=status_code, media_type=media_type, headers=headers)


def _open(storage: Storage, artifact: Artifact, start: int, end: int | None) -> Iterator[bytes]:
    """The bytes, with the first chunk read now: a storage that cannot deliver is a
    503 before any header is sent."""
    chunks = storage.iter_bytes(artifact.key, start, end)
    try:
        first = next(chunks, b"")
    except (StorageError, FileNotFoundError):
        raise api_error(status.HTTP_503_SERVICE_UNAVAILABLE,
                        f"artifact {artifact.name} is recorded but storage cannot deliver it", "unavailable",
                        headers={"Retry-After": "5"}) from None
    return itertools.chain([first], chunks)
