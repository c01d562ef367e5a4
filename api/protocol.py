"""uvicorn's HTTP/1.1 protocol (httptools), answering a request it cannot parse with
the API's problem+json error body instead of plain text: a malformed request line, a header
value with control characters, a URL or header section too long for the parser.

Used by ``fflab serve`` and by ``uvicorn --factory api.main:create_app --http
api.protocol:HttpProtocol``."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.errors import PROBLEM_JSON, problem_body

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
