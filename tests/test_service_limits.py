"""Limits of ``fflab serve`` over real HTTP and raw sockets: failed authentication is
rate-limited per client IP (on the embedded default, and on PostgreSQL + Redis, where
the count lives in Redis), request heads are bounded in size and header count, and
idle or half-sent connections are closed after their time-outs."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from service_helpers import Serve, backend_settings

pytest_plugins = ["service_support"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_failed_authentication_is_rate_limited(backend: str, tmp_path: Path, serves: list[Serve],
                                               pg_database, redis_prefix: str) -> None:
    serve = Serve(tmp_path, "serve", "--no-worker", auth_failures_per_minute="10",
                  **backend_settings(backend, pg_database, redis_prefix))
    serves.append(serve)
    serve.wait_up("/healthz")
    statuses, retry_after = [], None
    with httpx.Client(base_url=serve.url, timeout=10) as anonymous:
        for attempt in range(40):
            response = anonymous.get("/v1/experiments", headers={"Authorization": f"Bearer ffk_wrong{attempt:04d}"})
            statuses.append(response.status_code)
            if response.status_code == 429 and retry_after is None:
                retry_after = response.headers.get("retry-after")
                body = response.json()
                assert body["code"] == "rate_limited" and "FFLAB_AUTH_FAILURES_PER_MINUTE" in body["message"]
        assert statuses[:10] == [401] * 10, statuses
        assert set(statuses[10:]) == {429}, statuses
        assert retry_after is not None and 1 <= int(retry_after) <= 60
        assert anonymous.get("/v1/experiments").status_code == 429  # no key at all counts as a failure too
    with serve.client() as admin:  # a valid key from the same address still works
        assert admin.get("/v1/experiments").status_code == 200
        assert admin.get("/v1/experiments").status_code == 200
    assert httpx.get(f"{serve.url}/healthz").status_code == 200  # nothing unauthenticated is refused


def exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` (as much as the server takes) and read until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            connection.sendall(request)
        except OSError:  # the server answered and closed before taking it all
            pass
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except OSError:
            pass
        return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def closed_within(connection: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it did."""
    started, received = time.monotonic(), b""
    connection.settimeout(seconds)
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {seconds} s (received {received[:200]!r})") from None
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def test_header_limits_and_idle_connections(tmp_path: Path, serves: list[Serve]) -> None:
    serve = Serve(tmp_path, "serve", "--no-worker", keep_alive_s="1", header_timeout_s="1.5")
    serves.append(serve)
    serve.wait_up("/healthz")

    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n"
    assert status_of(exchange(serve.port, huge)) in (400, 431)
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)) + b"\r\n"
    answer = exchange(serve.port, many)
    assert status_of(answer) in (400, 431), answer[:300]
    assert b"FFLAB_MAX_HEADER" in answer

    # An idle keep-alive connection is closed after FFLAB_KEEP_ALIVE_S.
    with socket.create_connection(("127.0.0.1", serve.port), timeout=10) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = connection.recv(65536)
        assert status_of(first) == 200
        _, after = closed_within(connection, 10)
        assert after < 5
    # A connection that sends nothing, or half a head, is closed after FFLAB_HEADER_TIMEOUT_S.
    for opening in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):
        with socket.create_connection(("127.0.0.1", serve.port), timeout=10) as connection:
            if opening:
                connection.sendall(opening)
            received, after = closed_within(connection, 10)
            assert after < 6, after
            assert received == b"" or status_of(received) == 408, received[:300]

    # Many idle connections are shed after the time-out; new clients are served meanwhile.
    idle = [socket.create_connection(("127.0.0.1", serve.port), timeout=10) for _ in range(200)]
    try:
        assert httpx.get(f"{serve.url}/healthz", timeout=10).status_code == 200
        time.sleep(3)
        for connection in idle[:20]:
            closed_within(connection, 5)
    finally:
        for connection in idle:
            connection.close()
    with serve.client() as admin:  # an ordinary request is not affected by any of this
        assert admin.get("/v1/experiments").status_code == 200


HUGE = {"preset": "quick", "ff": {"epochs": 100000}, "network": {"width": 8192, "layers": 8},
        "data": {"train_subset": None}}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_run_no_worker_could_hold_is_refused_at_submission(backend: str, tmp_path: Path, serves: list[Serve],
                                                             pg_database, redis_prefix: str) -> None:
    """On the embedded default with its worker registered (its RAM), and on PostgreSQL
    + Redis before any worker registered (this machine's RAM): 422 naming both."""
    with_worker = backend == "sqlite"
    serve = Serve(tmp_path, "serve", *([] if with_worker else ["--no-worker"]),
                  **backend_settings(backend, pg_database, redis_prefix))
    serves.append(serve)
    serve.wait_up("/readyz" if with_worker else "/healthz")
    with serve.client() as admin:
        refused = admin.post("/v1/experiments", json=HUGE)
        assert refused.status_code == 422, refused.text
        message = refused.json()["message"]
        assert "needs an estimated" in message and "GiB of memory" in message, message
        assert ("worker fflab-serve@" in message and "RAM of" in message) if with_worker else \
            "this machine's RAM" in message, message
        accepted = admin.post("/v1/experiments", json={**HUGE, "network": {"width": 64, "layers": 2},
                                                       "data": {"train_subset": 200, "test_subset": 200},
                                                       "ff": {"epochs": 1}})
        assert accepted.status_code == 202, accepted.text
        admin.post(f"/v1/experiments/{accepted.json()['id']}/cancel")
