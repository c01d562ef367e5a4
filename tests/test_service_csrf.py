"""The web UI's sessions and CSRF, /metrics, Idempotency-Key and the HTTP server's
request parsing, over real HTTP against ``fflab serve`` (no worker: submitted
experiments stay queued) on the embedded default and on PostgreSQL + Redis.

The CSRF attack (a page of another port of 127.0.0.1 plants a ``fflab_csrf`` cookie
and posts a form with the same value) is sent here exactly as Chromium sends it;
test_ui_browser.py has it in Chromium itself."""

from __future__ import annotations

import re
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service_helpers import REDIS_HOST, REDIS_PORT, REDIS_SERVE_DB, TINY, Serve, backend_settings

pytest_plugins = ["service_support"]

METRICS_TOKEN = "metrics-" + "t" * 32


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, pg_database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    prefix = f"c{secrets.token_hex(4)}-"
    folder = tmp_path_factory.mktemp(f"csrf-{request.param}")
    serve = Serve(folder, f"serve-{request.param}", "--no-worker", metrics_token=METRICS_TOKEN,
                  **backend_settings(request.param, pg_database, prefix))
    try:
        serve.wait_up("/healthz")
        with serve.client() as admin:
            created = admin.post("/v1/admin/users", json={"name": "carol"})
            assert created.status_code == 201, created.text
        yield {"serve": serve, "admin": serve.key(), "member": created.json()["api_key"], "backend": request.param}
    except Exception:
        print(serve.process.tail(80))
        raise
    finally:
        serve.process.stop()
        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=REDIS_SERVE_DB)
        for key in client.scan_iter(f"*{prefix}*"):
            client.delete(key)


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def browser(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, follow_redirects=False)


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    token = csrf_of(client.get("/ui/sign-in").text)
    response = client.post("/ui/sign-in", data={"api_key": key, "csrf_token": token, "next": "/ui/"})
    assert response.status_code == 303, response.text
    return response


def submit(serve: Serve, key: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{serve.url}/v1/experiments", json=TINY, timeout=30,
                      headers={"Authorization": f"Bearer {key}", **headers})


def test_a_token_planted_from_another_port_does_not_delete(served: dict) -> None:
    serve, member = served["serve"], served["member"]
    experiment = submit(serve, member)
    assert experiment.status_code == 202, experiment.text
    experiment_id = experiment.json()["id"]
    with browser(serve.url) as victim:
        sign_in(victim, member)
        session = victim.cookies.get("fflab_session")
        planted = secrets.token_urlsafe(32)
        # What Chromium sent for the page of http://127.0.0.1:<other port>: the session
        # cookie (same site), the planted cookie, its value in the form, its Origin.
        attack = {"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate",
                  "Cookie": f"fflab_session={session}; fflab_csrf={planted}"}
        response = httpx.post(f"{serve.url}/ui/experiments/{experiment_id}/delete", headers=attack,
                              data={"csrf_token": planted}, timeout=30)
        assert response.status_code == 403, response.text
        # Without the browser's headers, the planted value is still not this session's token.
        del attack["Origin"], attack["Sec-Fetch-Site"]
        response = httpx.post(f"{serve.url}/ui/experiments/{experiment_id}/delete", headers=attack,
                              data={"csrf_token": planted}, timeout=30)
        assert response.status_code == 403, response.text
        # A real token from another origin is refused too (Origin checked).
        token = csrf_of(victim.get("/ui/").text)
        cross = victim.post(f"/ui/experiments/{experiment_id}/cancel", data={"csrf_token": token},
                            headers={"Origin": "http://127.0.0.1:1"})
        assert cross.status_code == 403
        cross = victim.post(f"/ui/experiments/{experiment_id}/cancel", data={"csrf_token": token},
                            headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403
        for headers in ({"Origin": "null", "Sec-Fetch-Site": "same-site"}, {"Origin": "null"}):
            cross = victim.post(f"/ui/experiments/{experiment_id}/cancel", data={"csrf_token": token},
                                headers=headers)
            assert cross.status_code == 403, headers
        with serve.client() as admin:
            assert admin.get(f"/v1/experiments/{experiment_id}").status_code == 200
        # The page's own form, from its own origin, works.
        # Chromium sends "Origin: null" under Referrer-Policy: no-referrer: Sec-Fetch-Site decides.
        own = victim.post(f"/ui/experiments/{experiment_id}/cancel", data={"csrf_token": token},
                          headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"})
        assert own.status_code == 303, own.text
        own = victim.post(f"/ui/experiments/{experiment_id}/delete", data={"csrf_token": token},
                          headers={"Origin": serve.url, "Sec-Fetch-Site": "same-origin"})
        assert own.status_code == 303, own.text
        with serve.client() as admin:
            assert admin.get(f"/v1/experiments/{experiment_id}").status_code == 404


def test_a_the_session_is_server_side_and_revocable(served: dict) -> None:
    serve = served["serve"]
    with serve.client() as admin:
        created = admin.post("/v1/admin/users", json={"name": f"dave{served['backend']}"}).json()
    key = created["api_key"]
    with browser(serve.url) as person:
        response = sign_in(person, key)
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("fflab_session="))
        session = person.cookies.get("fflab_session")
        assert key not in cookie and re.fullmatch(r"[A-Za-z0-9_-]{43}", session)
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        assert "Secure" not in cookie  # plain http
        assert person.get("/ui/").status_code == 200
        # Sign-out deletes the session: the old cookie no longer signs anyone in.
        signed_out = person.post("/ui/sign-out", data={"csrf_token": csrf_of(person.get("/ui/").text)})
        assert signed_out.status_code == 303
    replay = httpx.get(f"{serve.url}/ui/", cookies={"fflab_session": session}, timeout=30)
    assert replay.status_code == 303 and replay.headers["location"].startswith("/ui/sign-in")
    # Revoking the key ends its sessions.
    with browser(serve.url) as person:
        sign_in(person, key)
        assert person.get("/ui/").status_code == 200
        with serve.client() as admin:
            assert admin.delete(f"/v1/admin/keys/{key[:14]}").status_code == 204
        assert person.get("/ui/").status_code == 303


def test_a_https_public_url_gives_host_prefixed_secure_cookies(tmp_path: Path, serves: list[Serve],
                                                              served: dict) -> None:
    if served["backend"] != "sqlite":
        pytest.skip("cookie names do not depend on the back end")
    serve = Serve(tmp_path, "serve-https", "--no-worker", public_url="https://fflab.lab.example")
    serves.append(serve)
    serve.wait_up("/healthz")
    page = httpx.get(f"{serve.url}/ui/sign-in", timeout=30)
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("__Host-fflab_presession=") and "Secure" in cookie and "Path=/;" in cookie
    token = csrf_of(page.text)
    presession = cookie.split(";")[0]
    signed = httpx.post(f"{serve.url}/ui/sign-in", data={"api_key": serve.key(), "csrf_token": token},
                        headers={"Cookie": presession, "Origin": "https://fflab.lab.example"}, timeout=30)
    assert signed.status_code == 303, signed.text
    session = signed.headers["set-cookie"]
    assert session.startswith("__Host-fflab_session=") and "Secure" in session and "Path=/;" in session
    # The public origin is the one a form must come from.
    refused = httpx.post(f"{serve.url}/ui/sign-in", data={"api_key": serve.key(), "csrf_token": token},
                         headers={"Cookie": presession, "Origin": serve.url}, timeout=30)
    assert refused.status_code == 403


def test_c_metrics_need_an_admin_key_or_the_metrics_token(served: dict) -> None:
    url = served["serve"].url + "/metrics"
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 401
    member = httpx.get(url, headers={"Authorization": f"Bearer {served['member']}"}, timeout=30)
    assert member.status_code == 403 and "carol" not in member.text
    for token in (served["admin"], METRICS_TOKEN):
        scraped = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert scraped.status_code == 200 and "fflab_experiments" in scraped.text


def count_experiments(serve: Serve, key: str) -> int:
    """The member's experiments."""
    listed = httpx.get(f"{serve.url}/v1/experiments", params={"limit": 100}, timeout=30,
                       headers={"Authorization": f"Bearer {key}"})
    return len(listed.json()["items"])


def test_d_idempotency_key_creates_one_experiment(served: dict) -> None:
    serve, member = served["serve"], served["member"]
    key = f"k-{secrets.token_hex(8)}"
    before = count_experiments(serve, member)
    first = submit(serve, member, **{"Idempotency-Key": key})
    second = submit(serve, member, **{"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json() == second.json()
    assert count_experiments(serve, member) == before + 1
    other = httpx.post(f"{serve.url}/v1/experiments", json={**TINY, "name": "else"}, timeout=30,
                       headers={"Authorization": f"Bearer {member}", "Idempotency-Key": key})
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["message"], other.text
    assert [d["field"] for d in other.json()["details"]] == ["header.Idempotency-Key"]
    # Another user's key of the same value is theirs.
    admins = submit(serve, served["admin"], **{"Idempotency-Key": key})
    assert admins.status_code == 202 and admins.json()["id"] != first.json()["id"]
    assert submit(serve, member, **{"Idempotency-Key": "bad key"}).status_code == 422

    before = count_experiments(serve, member)
    concurrent = f"c-{secrets.token_hex(8)}"
    answers: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: answers.append(
        submit(serve, member, **{"Idempotency-Key": concurrent}))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [202] * 6, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert count_experiments(serve, member) == before + 1


def raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(4096)
            if not chunk:
                break
            received += chunk
        return received


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\n\r\n",                      # no Host
    b"GET /healthz HTTP/1.0\r\n\r\n",                      # no Host (1.0)
    b"GET /healthz\r\n\r\n",                               # HTTP/0.9 request line
    b"GET /healthz HTTP/1.1\nHost: x\n\n",                 # bare LF
    b"GET /healthz HTTP/1.1\r\nHost: x\nAccept: */*\r\n\r\n",  # a bare LF between headers
], ids=["no-host", "no-host-1.0", "http-0.9", "bare-lf", "bare-lf-header"])
def test_f_malformed_requests_get_400(served: dict, request_bytes: bytes) -> None:
    answer = raw(served["serve"].url, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


def test_f_a_well_formed_request_is_served(served: dict) -> None:
    answer = raw(served["serve"].url, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
