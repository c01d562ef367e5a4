"""Hostile input and secrets, through real HTTP: ``fflab serve`` with nothing configured
(SQLite, the embedded default) and the PostgreSQL/Redis stack. No request of any shape
gets a 5xx; every refusal has the API's error shape and names the field; no API key,
or any part of its secret, reaches a log; var/ and its databases are the owner's only."""

from __future__ import annotations

import json
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from fflab.spec import build_spec
from service_helpers import TINY, Process, Stack, base_env, free_port, http_ready, wait_for

pytest_plugins = ["service_support"]

ONE_RUN = {**TINY, "models": ["bp"]}


@dataclass
class Target:
    url: str
    admin_key: str
    member_key: str
    log: Callable[[], str]  # the API process's output so far
    var: Path | None = None

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def embedded(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """``fflab serve --no-worker`` in an empty folder: the defaults, SQLite under var/."""
    folder = tmp_path_factory.mktemp("embedded")
    port = free_port()
    process = Process("serve", [sys.executable, "-m", "fflab", "serve", "--no-worker"],
                      base_env(api_port=str(port)), folder, folder)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.check_alive() or http_ready(f"{url}/healthz")(), 60, "fflab serve")
        admin_key = (folder / "var" / "admin.key").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
            created = admin.post("/v1/admin/users", json={"name": "alice"})
            assert created.status_code == 201, created.text
        yield Target(url, admin_key, created.json()["api_key"], lambda: process.log.read_text(errors="replace"),
                     folder / "var")
    finally:
        process.stop()


@pytest.fixture(params=["embedded", "stack"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "embedded":
        return request.getfixturevalue("embedded")
    stack: Stack = request.getfixturevalue("stack")
    api = next(p for p in stack.processes if p.name == "api")
    return Target(stack.api_url, stack.admin_key, stack.member_key, lambda: api.log.read_text(errors="replace"))


@pytest.fixture()
def experiment_id(target: Target) -> Iterator[str]:
    """One of the member's experiments (queued or done), for the analyses route."""
    with target.client(target.member_key) as member:
        created = member.post("/v1/experiments", json=ONE_RUN)
        assert created.status_code == 202, created.text
        yield created.json()["id"]
        member.delete(f"/v1/experiments/{created.json()['id']}")


# ---------------------------------------------------------------- raw HTTP


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> Any:
        """The problem document's ``details``: JSON that any strict parser reads (no NaN,
        valid UTF-8), in the API's one error shape."""
        assert self.headers.get("content-type", "") == "application/problem+json", (self.status, self.body[:300])
        document = json.loads(self.body.decode("utf-8"), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
        assert {"code", "message", "detail", "details"} <= set(document), document
        assert document["status"] == self.status and document["message"], document
        return document["details"] or [{"field": "", "message": document["message"]}]


def send(url: str, request_line: bytes, headers: list[bytes] = (), body: bytes | None = None) -> Answer:
    """One request, byte for byte as given (no client library normalises or refuses it)."""
    parts = urlsplit(url)
    head = [request_line, b"Host: 127.0.0.1", b"Connection: close", *headers]
    if body is not None:
        head.append(b"Content-Length: %d" % len(body))
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as connection:
        connection.sendall(b"\r\n".join(head) + b"\r\n\r\n" + (body or b""))
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    header_block, _, content = received.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines if ": " in line)
    return Answer(int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, content)


def auth(key: str) -> bytes:
    return f"Authorization: Bearer {key}".encode()


def post_json(target: Target, path: str, raw: bytes, key: str) -> Answer:
    return send(target.url, f"POST {path} HTTP/1.1".encode(),
                [auth(key), b"Content-Type: application/json"], raw)


def locations(details: list[dict]) -> list[list]:
    """Each problem's field as a pydantic-style location: "ff.epochs" -> ["body", "ff",
    "epochs"], "query.limit" -> ["query", "limit"], "seeds.0" -> ["body", "seeds", 0]."""
    found = []
    for problem in details:
        parts: list = [int(p) if p.isdigit() else p for p in problem["field"].split(".")]
        found.append(parts if parts[0] in ("query", "path", "header", "body") else ["body", *parts])
    return found


def assert_refused(answer: Answer, loc: list, status: int = 422) -> list[dict]:
    assert answer.status == status, (answer.status, answer.body[:500])
    detail = answer.error()
    assert loc in locations(detail), (loc, detail)
    return detail


# ---------------------------------------------------------------- values JSON cannot carry


NON_FINITE = [
    (b'{"preset":"quick","ff":{"learning_rate":NaN}}', ["body", "ff", "learning_rate"]),
    (b'{"preset":"quick","ff":{"learning_rate":Infinity}}', ["body", "ff", "learning_rate"]),
    (b'{"preset":"quick","network":{"threshold":-Infinity}}', ["body", "network", "threshold"]),
    (b'{"preset":"quick","bp":{"learning_rate":1e999}}', ["body", "bp", "learning_rate"]),
    (b'{"preset":"quick","analysis":{"rho_cut":Infinity}}', ["body", "analysis", "rho_cut"]),
    (b'{"preset":"quick","analysis":{"quantiles":[0.9,NaN]}}', ["body", "analysis", "quantiles", 1]),
    (b'{"preset":"quick","seeds":[NaN]}', ["body", "seeds", 0]),
    (b'{"preset":"quick","surprise":NaN}', ["body", "surprise"]),
    (b'{"preset":NaN}', ["body", "preset"]),
]


def test_non_finite_numbers_are_422_naming_the_field(target: Target, experiment_id: str) -> None:
    for raw, loc in NON_FINITE:
        assert_refused(post_json(target, "/v1/experiments", raw, target.member_key), loc)
    analyses = f"/v1/experiments/{experiment_id}/analyses"
    for raw, loc in ((b'{"epsilon":NaN}', ["body", "epsilon"]), (b'{"rho_cut":Infinity}', ["body", "rho_cut"]),
                     (b'{"quantiles":[1e999],"table_quantile":0.9}', ["body", "quantiles", 0])):
        assert_refused(post_json(target, analyses, raw, target.member_key), loc)
    assert_refused(post_json(target, "/v1/admin/users", b'{"name":"x","role":NaN}', target.admin_key),
                   ["body", "role"])


SURROGATES = [
    (b'{"preset":"quick","name":"\\ud800"}', ["body", "name"]),
    (b'{"preset":"\\udfff"}', ["body", "preset"]),
    (b'{"preset":"quick","datasets":["mnist","\\ud800x"]}', ["body", "datasets", 1]),
    (b'{"preset":"quick","visibility":"\\ud83d"}', ["body", "visibility"]),
]


def test_lone_surrogates_are_422_naming_the_field(target: Target) -> None:
    for raw, loc in SURROGATES:
        assert_refused(post_json(target, "/v1/experiments", raw, target.member_key), loc)
    # A field name with a surrogate is named too, escaped so that the answer is valid UTF-8.
    assert_refused(post_json(target, "/v1/experiments", b'{"preset":"quick","\\ud800":1}', target.member_key),
                   ["body", "\\ud800"])
    for raw in (b'{"name":"\\ud800"}', b'{"name":"bob\\udc00"}'):
        assert_refused(post_json(target, "/v1/admin/users", raw, target.admin_key), ["body", "name"])


NUL_BODIES = [
    (b'{"preset":"quick","sweep":{"negative_labels":["fixed","sub\\u0000sampled"]}}',
     ["body", "sweep", "negative_labels", 1]),
    (b'{"preset":"quick","tags":["a\\u0000"]}', ["body", "tags", 0]),
    (b'{"preset":"quick","surprise\\u0000":1}', ["body", "surprise\x00"]),
]


def test_nul_in_body_text_is_422_naming_the_field(target: Target) -> None:
    """NUL (\\u0000) is valid JSON but no value of this API, and PostgreSQL cannot store it."""
    for raw, loc in NUL_BODIES:
        detail = assert_refused(post_json(target, "/v1/experiments", raw, target.member_key), loc)
        assert detail[0]["type"] == "string_nul", detail
    assert_refused(post_json(target, "/v1/admin/users", b'{"name":"bob\\u0000"}', target.admin_key),
                   ["body", "name"])


HUGE = "99999999999999999999999"


def test_integers_beyond_64_bits_are_422_naming_the_field(target: Target, experiment_id: str) -> None:
    base = f"/v1/experiments/{experiment_id}"
    for path, loc in ((f"/v1/experiments?limit=-{HUGE}", ["query", "limit"]),
                      (f"/v1/experiments?page_token={'1' * 1000}", ["query", "page_token"]),
                      (f"{base}/runs?limit={'1' * 1000}", ["query", "limit"]),
                      (f"/v1/experiments?limit={HUGE}", ["query", "limit"]),
                      (f"{base}/ensembles?layer={HUGE}", ["query", "layer"]),
                      (f"{base}/ensembles?class_index={HUGE}", ["query", "class_index"]),
                      (f"{base}/shared-units?layer=-{HUGE}", ["query", "layer"]),
                      (f"{base}/weights?layer={2**63}", ["query", "layer"])):
        assert_refused(send(target.url, f"GET {path} HTTP/1.1".encode(), [auth(target.member_key)]), loc)
    for raw, loc in ((b'{"preset":"quick","seeds":[%d]}' % 2**70, ["body", "seeds", 0]),
                     (b'{"preset":"quick","ff":{"epochs":%d}}' % 2**64, ["body", "ff", "epochs"]),
                     (b'{"preset":"quick","analysis":{"nh_cut":%s}}' % HUGE.encode(), ["body", "analysis", "nh_cut"]),
                     (b'{"preset":"quick","unseen_class":-%s}' % HUGE.encode(), ["body", "unseen_class"])):
        assert_refused(post_json(target, "/v1/experiments", raw, target.member_key), loc)
    assert_refused(post_json(target, f"{base}/analyses", b'{"nh_cut":%s}' % HUGE.encode(), target.member_key),
                   ["body", "nh_cut"])


def test_values_of_the_wrong_json_type_are_422(target: Target, experiment_id: str) -> None:
    for change, loc in ((b'"ff":{"epochs":true}', ["body", "ff", "epochs"]),
                        (b'"ff":{"epochs":"3"}', ["body", "ff", "epochs"]),
                        (b'"ff":{"epochs":3.0}', ["body", "ff", "epochs"]),
                        (b'"ff":{"learning_rate":"0.01"}', ["body", "ff", "learning_rate"]),
                        (b'"seeds":[false]', ["body", "seeds", 0]),
                        (b'"network":{"width":"64"}', ["body", "network", "width"]),
                        (b'"analysis":{"correct_only":1}', ["body", "analysis", "correct_only"]),
                        (b'"unseen_class":"0"', ["body", "unseen_class"])):
        assert_refused(post_json(target, "/v1/experiments", b'{"preset":"quick",%s}' % change, target.member_key),
                       loc)
    assert_refused(post_json(target, f"/v1/experiments/{experiment_id}/analyses", b'{"nh_cut":true}',
                             target.member_key), ["body", "nh_cut"])
    # An integer is a valid float.
    with target.client(target.member_key) as member:
        accepted = member.post("/v1/experiments", json={**ONE_RUN, "bp": {"epochs": 1, "learning_rate": 1}})
        assert accepted.status_code == 202, accepted.text
        member.delete(f"/v1/experiments/{accepted.json()['id']}")


def test_settings_that_cannot_apply_together_are_422_saying_why(target: Target) -> None:
    """Each value valid alone: a norm for an image left unnormalised, and a sweep's grid
    point that combines two settings a rule across them forbids (before: accepted, and
    the run failed)."""
    for raw, loc, says in (
        (b'{"preset":"paper","network":{"normalize_first_layer":false,"first_layer_normalization":"l2"}}',
         ["body", "network"], "needs normalize_first_layer = true"),
        (b'{"preset":"paper","sweep":{"network.normalize_first_layer":[true,false],'
         b'"network.first_layer_normalization":["l2",null]}}',
         ["body", "sweep"], 'network.normalize_first_layer = false with network.first_layer_normalization = "l2"'),
    ):
        detail = assert_refused(post_json(target, "/v1/experiments", raw, target.member_key), loc)
        assert any(says in entry["message"] for entry in detail), detail


def test_a_submission_names_a_preset_or_gives_a_complete_spec(target: Target) -> None:
    with target.client(target.member_key) as member:
        for body in ({}, {"visibility": "lab"}, {"models": ["bp"]}, {"preset": None, "seeds": [0]}):
            refused = member.post("/v1/experiments", json=body)
            assert refused.status_code == 422, (body, refused.text)
            (problem,) = refused.json()["details"]
            assert problem["field"] == "body" and "preset" in problem["message"]
            assert "complete spec" in problem["message"]
        complete = build_spec("quick", {k: v for k, v in ONE_RUN.items() if k != "preset"}).model_dump(mode="json")
        accepted = member.post("/v1/experiments", json=complete)
        assert accepted.status_code == 202 and accepted.json()["runs_total"] == 1, accepted.text
        member.delete(f"/v1/experiments/{accepted.json()['id']}")


# ---------------------------------------------------------------- bodies, URLs and headers


BROKEN_BODIES = {
    "not UTF-8": b'{"preset": "qu\xffick"}',
    "UTF-8 bytes cut": b'{"preset": "quick", "name": "\xe2\x82"}',
    "not JSON": b"{preset: quick}",
    "cut short": b'{"preset": "quick", "ff": {"epochs": ',
    "empty": b"",
    "100000 levels": b"[" * 100_000,
    "deep, closed": b'{"a":' * 900 + b"1" + b"}" * 900,
    "deep within a spec": b'{"preset":"quick","ff":' + b"[" * 40 + b"]" * 40 + b"}",
    "a bare number": b"1e999",
    "a string": b'"\\ud800"',
}


def test_broken_bodies_get_the_error_shape(target: Target, experiment_id: str) -> None:
    for path, key in (("/v1/experiments", target.member_key),
                      (f"/v1/experiments/{experiment_id}/analyses", target.member_key),
                      ("/v1/admin/users", target.admin_key)):
        for what, raw in BROKEN_BODIES.items():
            answer = post_json(target, path, raw, key)
            assert answer.status in (400, 413, 422), (path, what, answer.status, answer.body[:300])
            assert answer.error(), (path, what)


def test_overlong_urls_get_the_error_shape(target: Target) -> None:
    for path in ("/v1/experiments/" + "a" * 10_000, "/v1/experiments?status=" + "x" * 10_000,
                 "/v1/experiments/" + "a" * 100_000, "/v1/experiments?page_token=" + "1" * 1_000_000):
        answer = send(target.url, f"GET {path} HTTP/1.1".encode(), [auth(target.member_key)])
        assert answer.status in (400, 414, 431), (len(path), answer.status, answer.body[:300])
        assert answer.error()


# Text in the URL that no name, id or value holds: bytes that are not UTF-8 once
# percent-decoded (a lone surrogate in CESU-8, a stray byte, an overlong encoding), and
# NUL, which PostgreSQL cannot store. Before the check, the first became U+FFFD and
# matched nothing (200), and NUL reached PostgreSQL in the list's filters and the
# experiment id (500).
URL_TEXT = [
    ("/v1/experiments?name=%00", ["query", "name"]),
    ("/v1/experiments?owner=a%00b&scope=all", ["query", "owner"]),
    ("/v1/experiments?name=%ED%A0%80", ["query", "name"]),
    ("/v1/experiments?name=x%FF", ["query", "name"]),
    ("/v1/experiments?name=%C0%AF", ["query", "name"]),
    ("/v1/experiments?limit=5&%FF=1", ["query", "\\xff"]),
    ("/v1/experiments/%00", ["path"]),
    ("/v1/experiments/%FF%FE", ["path"]),
    ("/v1/experiments/{id}/ensembles?run_id=%00", ["query", "run_id"]),
    ("/v1/experiments/{id}/ensembles?run_id=%ED%A0%80", ["query", "run_id"]),
    ("/v1/experiments/{id}/analyses?run_id=%FF", ["query", "run_id"]),
    ("/v1/experiments/{id}/artifacts/runs%2F%00.json", ["path"]),
]


def test_url_text_that_is_not_utf8_or_holds_nul_is_422_naming_the_parameter(target: Target,
                                                                            experiment_id: str) -> None:
    for request_target, loc in URL_TEXT:
        request_target = request_target.replace("{id}", experiment_id)
        answer = send(target.url, f"GET {request_target} HTTP/1.1".encode(), [auth(target.member_key)])
        detail = assert_refused(answer, loc)
        assert detail[0]["type"] in ("string_unicode", "string_nul") and detail[0]["allowed"], detail
    # Bytes outside ASCII sent unencoded: the HTTP parser refuses them, or the check does.
    answer = send(target.url, b"GET /v1/experiments?name=\xff HTTP/1.1", [auth(target.member_key)])
    assert answer.status in (400, 422), (answer.status, answer.body[:300])
    # UTF-8 text, percent-encoded or with '+' for a space, is still read as it was sent.
    with target.client(target.member_key) as member:
        for name in ("\u00e9t\u00e9", "a b", "\U0001f600"):
            listed = member.get("/v1/experiments", params={"name": name})
            assert listed.status_code == 200 and listed.json()["items"] == [], listed.text
        assert member.get(f"/v1/experiments/{experiment_id}/ensembles?run_id=a+b").status_code == 200


ODD_HEADERS = [
    [b"Authorization: Bearer \xff\xfe\x80"],
    [b"Authorization: Bearer fflab_\xff" + b"x" * 42],
    [b"Authorization: \xff\xff"],
    [b"Authorization: Bearer \x01\x02\x7f"],
    [b"Authorization: Bearer " + b"x" * 20_000],
    [b"Authorization: Bearer fflab_" + b"A" * 43],  # the shape of a key, but none
    [b"Authorization: Basic " + b"\x00"],
    [b"X-Request-ID: \xff\xfe"],
    [b"Content-Type: application/json; charset=\xff"],
    [b"Content-Length: abc"],
    [b"Content-Length: 99999999999999999999999"],
    [b"Bad\xffName: 1"],
]


def test_odd_header_bytes_get_a_4xx(target: Target) -> None:
    """Odd bytes in Authorization: 401 (or 400 from the HTTP parser); in other headers,
    no 5xx, and any 4xx has the error shape."""
    for extra in ODD_HEADERS:
        for line in (b"GET /v1/users/me HTTP/1.1", b"POST /v1/experiments HTTP/1.1"):
            in_authorization = extra[0].startswith(b"Authorization")
            answer = send(target.url, line, extra if in_authorization else [auth(target.member_key), *extra])
            assert answer.status < 500 and (answer.status >= 400 or not in_authorization), \
                (extra, line, answer.status, answer.body[:300])
            if answer.status >= 400:
                assert answer.error()


# ---------------------------------------------------------------- secrets


def test_keys_never_reach_the_logs(target: Target) -> None:
    with target.client(target.admin_key) as admin:
        created = admin.post("/v1/admin/users", json={"name": f"mallory{free_port()}"})
        assert created.status_code == 201, created.text
        key = created.json()["api_key"]
        other = admin.post(f"/v1/admin/users/{created.json()['user']['name']}/keys").json()["api_key"]
        whole = admin.delete(f"/v1/admin/keys/{key}")
        assert whole.status_code == 422, whole.text
        (problem,) = whole.json()["details"]
        assert problem["field"] == "path.prefix" and "prefix" in problem["message"] and key not in whole.text
        unknown = "fflab_" + "Q" * 43
        assert admin.delete(f"/v1/admin/keys/{unknown}").status_code == 422
        assert admin.delete(f"/v1/admin/keys/{key[:20]}").status_code == 422  # part of the secret
        assert admin.get(f"/v1/experiments/{key}").status_code == 404
        for query in (f"api_key={key}", f"token={quote(key, safe='')}", f"x={key}",
                      "api_key=" + "".join(f"%{b:02X}" for b in key.encode()), "access_token=anything"):
            for path in ("/v1/users/me", "/v1/experiments", "/healthz", "/v1/nowhere"):
                refused = admin.get(f"{path}?{query}")
                assert refused.status_code == 400, (path, query, refused.text)
                assert "Authorization" in refused.json()["message"] and key not in refused.text
    with target.client(key) as mallory:
        assert mallory.get("/v1/users/me").status_code == 200  # none of that revoked it
        assert mallory.delete(f"/v1/admin/keys/{target.admin_key}").status_code == 403
        assert mallory.delete(f"/v1/admin/keys/{other}").status_code == 403
    with target.client(target.admin_key) as admin:
        assert admin.delete(f"/v1/admin/keys/{key[:14]}").status_code == 204
    with target.client(key) as mallory:
        assert mallory.get("/v1/users/me").status_code == 401

    def logged() -> str | None:
        text = target.log()
        return text if f'"DELETE /v1/admin/keys/{key[:14]} HTTP/1.1" 204' in text else None

    log = wait_for(logged, 10, "the access log of the revocation")
    # The access log was captured: the refused requests are in it, keys cut to their prefix.
    assert f'"DELETE /v1/admin/keys/{key[:14]}[redacted] HTTP/1.1" 422' in log
    assert f'"GET /v1/users/me?api_key={key[:14]}[redacted] HTTP/1.1" 400' in log
    for secret in (key, other, target.admin_key, unknown):
        assert secret[14:24] not in log, secret[:14]


def test_var_and_its_databases_are_readable_by_their_owner_only(embedded: Target) -> None:
    var = embedded.var
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    files = {path.name: stat.S_IMODE(path.stat().st_mode) for path in var.iterdir() if path.is_file()}
    assert {"fflab.db", "broker.db", "admin.key"} <= set(files), files
    assert {name: mode for name, mode in files.items() if mode & 0o077} == {}
