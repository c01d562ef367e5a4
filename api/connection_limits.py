"""Connection limits of the HTTP server: what a client may hold open, and how much
head it may send, before the application sees a request.

uvicorn with httptools bounds neither the request head (the probe sent 20 MB of
headers, and 10,000 of them) nor the time a client takes to send it (an idle or
half-sent connection was never closed; 450 such connections made every new client
fail). ``bounded_protocol(settings)`` is the API's protocol (``api.protocol.
HttpProtocol``: problem+json for what cannot be parsed) with, per connection:

* the request line and headers within FFLAB_MAX_HEADER_BYTES (counted as they
  arrive, so at most that much plus one read is buffered) and at most
  FFLAB_MAX_HEADER_COUNT headers: past either, ``431 Request Header Fields Too
  Large`` and the connection is closed. The close lingers (``LINGER_S``): what the
  client still sends is read and dropped, and our side is half-closed after the
  response, so a client still sending its head reads the 431 rather than a reset;
* the head within FFLAB_HEADER_TIMEOUT_S of the connection opening or of its first
  byte after a response: else ``408 Request Timeout`` and the connection is closed.

``fflab serve`` also passes uvicorn ``timeout_keep_alive`` (FFLAB_KEEP_ALIVE_S: an idle
keep-alive connection is closed) and ``limit_concurrency`` (FFLAB_MAX_CONNECTIONS:
past it a new request gets 503); ``api.middleware.HeaderLimitMiddleware`` checks the
header count and size again in the application, for servers started otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from api.errors import PROBLEM_JSON, problem_body
from api.protocol import HttpProtocol
from fflab.settings import Settings


class HeadTooLarge(Exception):
    """Raised from a parser callback: the head is over a limit (431)."""


# How long a rejected connection still reads (and drops) what its client sends before it is closed.
LINGER_S = 2.0


class BoundedHttpProtocol(HttpProtocol):
    max_header_bytes = 64 * 1024
    max_header_count = 100
    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._reading_head, self._head_bytes, self._head_count = True, 0, 0
        self._too_large: str | None = None
        self._rejected = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            self._reject(408, f"the request line and headers did not arrive within {self.header_timeout_s:g} s "
                              f"(FFLAB_HEADER_TIMEOUT_S)")

    def _reject(self, status: int, message: str) -> None:
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = problem_body(status, message, "validation_error")
        self.transport.write(b"".join([
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: " + PROBLEM_JSON.encode("ascii") + b"\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n", body]))
        self._rejected = True
        self._disarm_head_timer()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _too_large_message(self) -> str:
        return (f"request headers too large: at most {self.max_header_count} headers (FFLAB_MAX_HEADER_COUNT) "
                f"and {self.max_header_bytes} bytes with the request line (FFLAB_MAX_HEADER_BYTES)")

    def data_received(self, data: bytes) -> None:
        if self._rejected:  # lingering: drop what the client still sends
            return
        if self._reading_head:
            self._head_bytes += len(data)
            self._arm_head_timer()  # a response's keep-alive timer ends with the first byte
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._reading_head and self._head_bytes > self.max_header_bytes:
            self._reject(431, self._too_large_message())

    def send_400_response(self, msg: str) -> None:
        if self._too_large is not None:  # raised from on_header: the parser says "callback error"
            self._reject(431, self._too_large)
            return
        super().send_400_response(msg)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self.max_header_count:
            self._too_large = self._too_large_message()
            raise HeadTooLarge(self._too_large)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes, self._head_count = True, 0, 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)


def bounded_protocol(settings: Settings) -> type[BoundedHttpProtocol]:
    """The protocol class with this deployment's limits (uvicorn takes a class)."""
    return type("HttpProtocol", (BoundedHttpProtocol,), {
        "max_header_bytes": settings.max_header_bytes, "max_header_count": settings.max_header_count,
        "header_timeout_s": settings.header_timeout_s})


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run's options for the limits: the protocol, keep-alive and connections."""
    return {"http": bounded_protocol(settings), "timeout_keep_alive": settings.keep_alive_s,
            "limit_concurrency": settings.max_connections}
