"""ASGI middleware: request ids and metrics, the request body size limit, the header
limits and the rate limit on failed authentication."""

from __future__ import annotations

import json
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PROBLEM_JSON, problem_content, problem_response
from api.metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    """Gives each request an id (the client's X-Request-ID if sane), returns it in
    the response, and counts the request by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((REQUEST_ID_HEADER.encode(), request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(scope["method"], template).observe(time.perf_counter() - started)


class BodyTooLarge(HTTPException):
    """Raised while reading the body; an HTTPException so that FastAPI's body
    parsing passes it on (it turns other errors into 400s)."""

    def __init__(self, limit: int):
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int, setting: str = "FFLAB_MAX_BODY_BYTES") -> str:
    return f"request body too large: the limit is {limit} bytes ({setting})"


class BodySizeLimitMiddleware:
    """413 for a request body over ``limit`` bytes, whether announced by
    Content-Length or discovered while reading a chunked body. ``uploads`` maps
    the paths of upload routes to their own limit and its setting's name
    (``POST /v1/representations``: FFLAB_REPRESENTATIONS_MAX_BYTES)."""

    def __init__(self, app: ASGIApp, limit: int, uploads: dict[str, tuple[int, str]] | None = None):
        self.app, self.limit, self.uploads = app, limit, dict(uploads or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.uploads.get(scope.get("path", ""), (self.limit, "FFLAB_MAX_BODY_BYTES"))

        async def reject() -> None:
            # The rest of the body is not read: the connection is closed after the answer.
            await problem_response(413, too_large_message(limit, setting), {"connection": "close"})(
                scope, receive, send)

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await reject()
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await reject()


class HeaderLimitMiddleware:
    """431 for a request with more than ``max_count`` headers, or whose request line
    and headers together exceed ``max_bytes``, before any route runs. (The HTTP
    parser has read them by then: this bounds what the application accepts; the
    server's own time-outs and connection limit bound what it holds, see api.cli.)"""

    def __init__(self, app: ASGIApp, max_bytes: int, max_count: int):
        self.app, self.max_bytes, self.max_count = app, max_bytes, max_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
                len(name) + len(value) + 4 for name, value in headers)
            if len(headers) > self.max_count or size > self.max_bytes:
                message = (f"request headers too large: at most {self.max_count} headers (FFLAB_MAX_HEADER_COUNT) "
                           f"and {self.max_bytes} bytes with the request line (FFLAB_MAX_HEADER_BYTES); "
                           f"this request has {len(headers)} headers, {size} bytes")
                response = problem_response(431, message, {"connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class FailedAuthLimitMiddleware:
    """Failed authentication, rate-limited per client IP with the ``limits`` library
    (a moving window of ``per_minute`` failures a minute): once a client is past it,
    each further 401 it would get is answered 429 with Retry-After instead (until the
    window frees). A request with a valid key is never refused, so a client that
    mistyped a key can still work with the right one. The client IP is the socket's
    peer, or X-Forwarded-For from FFLAB_TRUSTED_PROXIES (ProxyHeadersMiddleware runs
    first). Counted in Redis when the broker is Redis (every API process shares the
    count), else in this process's memory; when Redis cannot be reached, no limit
    applies rather than refusing requests."""

    def __init__(self, app: ASGIApp, per_minute: int, storage_url: str | None = None, namespace: str = ""):
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage, Storage, storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self.app, self.namespace = app, namespace or "-"  # deployments sharing a Redis count apart
        self.item = RateLimitItemPerMinute(per_minute)
        store: Storage = MemoryStorage()
        if storage_url and storage_url.startswith(("redis://", "rediss://")):
            try:
                found = storage_from_string(storage_url, socket_timeout=1, socket_connect_timeout=1)
                if isinstance(found, Storage):  # always, for these schemes (async+redis:// is the asyncio one)
                    store = found
            except Exception:  # a Redis client library missing: per process
                store = MemoryStorage()
        self.limiter = MovingWindowRateLimiter(store)

    def _blocked(self, client: str) -> int | None:
        """Record a failure of ``client``: None while within the limit, else seconds until
        it is again."""
        try:
            if self.limiter.hit(self.item, "fflab-auth-failures", self.namespace, client):
                return None
            reset = self.limiter.get_window_stats(self.item, "fflab-auth-failures", self.namespace, client).reset_time
        except Exception:  # the counter's store (Redis) is unreachable: do not refuse anyone
            return None
        return max(1, int(reset - time.time() + 0.999))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        replaced = False

        async def limited_send(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the 401's body: dropped, the 429 was sent
            if message["type"] == "http.response.start" and message["status"] == 401:
                retry_after = self._blocked(client)
                if retry_after is not None:
                    replaced = True
                    body = problem_content(
                        429, f"too many failed authentications from {client}; retry in {retry_after} s "
                             f"(at most {self.item.amount} a minute: FFLAB_AUTH_FAILURES_PER_MINUTE)",
                        "rate_limited", None, retry_after_seconds=retry_after)
                    encoded = json.dumps(body).encode()
                    await send({"type": "http.response.start", "status": 429, "headers": [
                        (b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(encoded)).encode()),
                        (b"retry-after", str(retry_after).encode())]})
                    await send({"type": "http.response.body", "body": encoded})
                    return
            await send(message)

        await self.app(scope, receive, limited_send)
