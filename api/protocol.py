"""uvicorn's HTTP/1.1 protocol (httptools), answering a request it cannot parse with
the API's problem+json error body instead of plain text: a malformed request line, a header
value with control characters, a URL or header section too long for the parser.

Used by ``fflab serve`` and by ``uvicorn --factory api.main:create_app --http
api.protocol:HttpProtocol``.

What the parser refuses (400 here): httptools' llhttp is strict by default (none of
its "dangerous leniencies" is turned on), so a line ending in a bare LF instead of
CRLF, in the request line or any header, is a parse error. uvicorn's other protocol,
h11, accepts bare LF: the API is run with this class only (Dockerfile,
docker-compose.yml, ``fflab serve``).

What the parser accepts and ``RequestHeadMiddleware`` (an ASGI middleware, so it
holds whatever server runs the app) refuses with 400: an HTTP/0.9-style request
line (no version: ``GET /``), which llhttp reports as HTTP/0.9, and a request
without a Host header (RFC 9112 section 3.2 requires one of HTTP/1.1; it is required
of HTTP/1.0 too, since this app builds absolute URLs from it)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.errors import PROBLEM_JSON, problem_body, problem_response

UNPARSABLE = ("the request is not valid HTTP/1.1: a malformed request line or header, a control "
              "character in a header, or a URL or headers too long")


class HttpProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        body = problem_body(400, UNPARSABLE)
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([
            b"content-type: " + PROBLEM_JSON.encode("ascii") + b"\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ])
        self.transport.write(b"".join(content))
        self.transport.close()


class RequestHeadMiddleware:
    """400 for an HTTP version other than 1.0 and 1.1 (HTTP/0.9 request lines) and
    for a request without a (non-empty) Host header."""

    VERSIONS = ("1.0", "1.1")

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            message = None
            if scope.get("http_version") not in self.VERSIONS:
                message = (f"HTTP/{scope.get('http_version')} is not served: send an HTTP/1.1 request line "
                           f"('GET /path HTTP/1.1')")
            elif not any(name == b"host" and value.strip() for name, value in scope.get("headers", [])):
                message = "the request has no Host header (HTTP/1.1 requires one)"
            if message is not None:
                response = problem_response(400, message, headers={"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
