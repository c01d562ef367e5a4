"""Property-based fuzzing of every operation in the OpenAPI schema (hypothesis):
path, query and body values drawn from the declared schemas, mixed with junk, and in
half the examples with hostile values in every place a value goes: non-finite numbers
(NaN, Infinity, 1e999), lone surrogates, integers beyond 64 bits, values of the wrong
JSON type, odd bytes in the Authorization header; and raw bodies that are not valid
UTF-8, not valid JSON or nested 100000 levels deep. No request may get a 5xx, every
error has the error shape, and every JSON response of a declared status must match
its declared schema.

Three targets: on SQLite with a local artifact folder and kombu's SQLite broker, the
app in process (TestClient) and ``fflab serve --no-worker`` (the embedded default,
served by uvicorn) over real HTTP; and the app in process on PostgreSQL, which refuses
what SQLite stores (NUL in text reached it from a query string: a 500)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from fflab import accounts
from fflab.db import Artifact, Experiment, Run, session_scope
from fflab.db.migrate import upgrade_database
from fflab.settings import Settings
from service_helpers import Process, base_env, free_port, http_ready, wait_for

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                              st.integers(), max_size=3))
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
SURROGATES = st.builds(lambda before, surrogate, after: before + surrogate + after, st.text(max_size=4),
                       st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.text(max_size=4))
HUGE_INTEGERS = st.one_of(st.integers(2**63, 2**200), st.integers(-(2**200), -(2**63) - 1))
# Any of these, or a value of another JSON type, where a value goes.
HOSTILE = st.one_of(NON_FINITE, SURROGATES, HUGE_INTEGERS, JUNK)
# The same, as query and path parameters carry them (text).
HOSTILE_TEXT = st.one_of(
    HUGE_INTEGERS.map(str), st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e999", "-0", "0x10", "1_000",
                                             "\uff11\uff12", "true", "null", "[]", "", " 1", "\x00"]),
    SURROGATES, st.text(max_size=30),
)
HOSTILE_NUMBER_TEXT = st.one_of(  # for integer and number parameters
    st.integers(2**63, 2**200).map(str), HUGE_INTEGERS.map(str),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", "1.5", "-0", "0x10", "1_000",
                     "\uff11\uff12", "true", " 1", "1 "]),
)
BROKEN_BODIES = st.one_of(
    st.binary(max_size=40).map(lambda b: b + b"\xff\xfe"),  # not UTF-8
    st.text(max_size=40).map(lambda t: ("{" + t).encode()),  # not JSON
    st.integers(1, 100_000).map(lambda n: b"[" * n),  # nested, never closed
    st.integers(1, 2_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),  # nested, closed
    st.sampled_from([b"", b"NaN", b"1e999", b'"\\ud800"', b"[" * 100_000 + b"]" * 100_000]),
)
ODD_AUTHORIZATION = st.binary(min_size=1, max_size=60).map(
    lambda b: b"Bearer " + bytes(c for c in b if c >= 0x20 and c != 0x7F) + b"=")
GENERIC_ERRORS = {400, 401, 403, 404, 409, 413, 414, 422, 429}
EXPERIMENT_ID = "e" * 32

pytest_plugins = ["service_support"]


def strategy(schema: dict[str, Any], components: dict[str, Any], depth: int = 0,
             hostile: bool = False) -> st.SearchStrategy:
    """Values valid for ``schema`` (roughly), or junk now and then; with ``hostile``,
    each value is hostile (see HOSTILE) one time in five."""
    valid = _strategy(schema, components, depth, hostile)
    if not hostile:
        return valid
    return st.integers(0, 4).flatmap(lambda n: HOSTILE if n == 0 else valid)


def _strategy(schema: dict[str, Any], components: dict[str, Any], depth: int, hostile: bool) -> st.SearchStrategy:
    if depth > 6:
        return JUNK
    if "$ref" in schema:
        return strategy(components[schema["$ref"].rsplit("/", 1)[-1]], components, depth + 1, hostile)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return st.one_of([strategy(s, components, depth + 1, hostile) for s in schema[key]])
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), JUNK)
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -10**6))
        high = schema.get("maximum", schema.get("exclusiveMaximum", 10**6))
        return st.integers(int(low) - 2, int(high) + 2)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
    if kind == "string":
        return st.one_of(st.text(max_size=schema.get("maxLength", 40) + 2), st.from_regex(r"[a-z0-9_.-]{1,12}"))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(strategy(schema.get("items", {}), components, depth + 1, hostile), max_size=4)
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = st.fixed_dictionaries(
            {k: strategy(v, components, depth + 1, hostile) for k, v in properties.items() if k in required},
            optional={k: strategy(v, components, depth + 1, hostile) for k, v in properties.items()
                      if k not in required},
        )
        if hostile:  # and a field whose name is a lone surrogate
            fields = st.one_of(fields, st.builds(lambda d, k, v: {**d, k: v}, fields, SURROGATES, HOSTILE))
        return fields
    return JUNK


def is_numeric(schema: dict[str, Any]) -> bool:
    return schema.get("type") in ("integer", "number") or any(is_numeric(s) for s in schema.get("anyOf", []))


def encode(body: Any, big_exponent: bool) -> bytes:
    """``body`` as JSON text as a client could send it: NaN and Infinity as JavaScript
    writes them (or 1e999), lone surrogates as \\u escapes."""
    text = json.dumps(body, allow_nan=True)
    return (text.replace("-Infinity", "-1e999").replace("Infinity", "1e999") if big_exponent else text).encode()


def query_string(values: dict[str, Any]) -> str:
    """Percent-encoded as UTF-8, lone surrogates as the bytes they would be."""
    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, allow_nan=True)

    return "&".join(f"{quote(name)}={quote(text(value).encode('utf-8', 'surrogatepass'), safe='')}"
                    for name, value in values.items())


def seed(settings: Settings) -> str:
    """An admin (whose key is returned) with one finished experiment, one run and one
    stored artifact."""
    var = settings.var_dir
    upgrade_database(settings.resolved_database_url)
    (var / "artifacts" / "experiments" / EXPERIMENT_ID).mkdir(parents=True)
    (var / "artifacts" / "experiments" / EXPERIMENT_ID / "results.json").write_text("{}")
    with session_scope(settings.resolved_database_url) as session:
        admin = accounts.create_user(session, "admin", "admin")
        key = accounts.issue_key(session, admin)
        session.add(Experiment(id=EXPERIMENT_ID, owner=admin, name="x", spec={}, runs_total=1, status="succeeded"))
        session.flush()
        session.add(Run(experiment_id=EXPERIMENT_ID, run_id="bp-mnist-seed0", model="bp", dataset="mnist", seed=0,
                        queue="cpu", status="succeeded"))
        session.add(Artifact(experiment_id=EXPERIMENT_ID, name="results.json", key=f"experiments/{EXPERIMENT_ID}/results.json",
                             size=2, sha256="0" * 64, content_type="application/json"))
    return key


LIMITS = {"max_body_bytes": "200000", "max_queued_runs_per_user": "50"}


@pytest.fixture(scope="module", params=["in-process", "served", "in-process-postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    from api.main import create_app

    folder = tmp_path_factory.mktemp("fuzz")
    database = {}
    if request.param == "in-process-postgresql":
        database["database_url"] = request.getfixturevalue("pg_database")()
    settings = Settings(var_dir=folder / "var", **LIMITS, **database)
    key = seed(settings)
    headers = {"Authorization": f"Bearer {key}"}
    if request.param != "served":
        with TestClient(create_app(settings), headers=headers, raise_server_exceptions=False,
                        follow_redirects=False) as client:
            yield client, client.get("/openapi.json").json()
        return
    port = free_port()
    process = Process("serve", [sys.executable, "-m", "fflab", "serve", "--no-worker"],
                      base_env(var_dir=str(settings.var_dir), api_port=str(port), **LIMITS), folder, folder)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.check_alive() or http_ready(f"{url}/healthz")(), 60, "fflab serve")
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            yield client, client.get("/openapi.json").json()
        process.check_alive()
        assert "Traceback" not in process.log.read_text(errors="replace"), process.tail()
    finally:
        process.stop()


def operations() -> list[tuple[str, str]]:
    from api.main import create_app

    document = create_app(Settings(var_dir=Path("/nonexistent-fuzz"))).openapi()
    # Rotating one's own key revokes the key the fuzzer sends (tested in test_service_contract).
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item
            if method in ("get", "post", "delete", "put", "patch")
            and (method, path) != ("post", "/v1/users/me/keys")]


@pytest.mark.parametrize("method, path", operations())
def test_fuzz_operation(api, method: str, path: str) -> None:
    client, document = api
    components = document["components"]["schemas"]
    operation = document["paths"][path][method.lower()]
    parameters = operation.get("parameters", [])
    body_schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    known = {"experiment_id": st.one_of(st.just(EXPERIMENT_ID), st.text(max_size=70)),
             "run_id": st.one_of(st.just("bp-mnist-seed0"), st.text(max_size=20)),
             "name": st.one_of(st.sampled_from(["results.json", "figure1a", "admin", "../results.json"]),
                               st.text(max_size=20))}

    @hsettings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        # Most examples put hostile values in one place: a parameter, the body or the
        # Authorization header; the rest of the request is drawn as usual.
        places = [None] + [p["name"] for p in parameters] + ["body", "authorization"]
        hostile = data.draw(st.sampled_from(places), label="hostile place")
        # A hostile query parameter comes alone (but for required ones), so that the
        # others' errors do not hide it.
        query_names = {p["name"] for p in parameters if p["in"] == "query"}
        url, query = path, {}
        for parameter in parameters:
            name, where = parameter["name"], parameter["in"]
            if hostile == name:
                numeric = is_numeric(parameter.get("schema", {}))
                value = data.draw(HOSTILE_NUMBER_TEXT if numeric else HOSTILE_TEXT, label=f"hostile {name}")
            else:
                value = data.draw(known.get(name, strategy(parameter.get("schema", {}), components)), label=name)
            if where == "path":
                text = value if isinstance(value, str) else json.dumps(value)
                if not text or text in (".", ".."):
                    text = "x"
                safe = "/" if "{name}" in path and "artifacts" in path else ""
                url = url.replace(f"{{{name}}}", quote(text.encode("utf-8", "surrogatepass"), safe=safe))
            elif where == "query" and (parameter.get("required") or hostile == name
                                       or (hostile not in query_names and data.draw(st.booleans()))):
                query[name] = value
        if query:
            url = f"{url}?{query_string(query)}"
        kwargs: dict[str, Any] = {"headers": {"content-type": "application/json"}}
        if hostile == "authorization":
            kwargs["headers"]["authorization"] = data.draw(ODD_AUTHORIZATION, label="authorization")
        if hostile == "body" and data.draw(st.booleans(), label="broken"):
            kwargs["content"] = data.draw(BROKEN_BODIES, label="broken body")
        elif body_schema is not None or hostile == "body":
            body = data.draw(st.one_of(strategy(body_schema or {}, components, hostile=hostile == "body"), JUNK),
                             label="body")
            kwargs["content"] = encode(body, hostile == "body" and data.draw(st.booleans()))
        response = client.request(method, url, **kwargs)
        declared = operation.get("responses", {}).get(str(response.status_code))
        # No 5xx, but one the operation documents (/readyz: 503 while not ready).
        assert response.status_code < 500 or declared is not None, \
            (method, url, kwargs, response.status_code, response.text[:300])
        if response.status_code >= 500:
            return
        if 300 <= response.status_code < 400:  # a trailing slash, also an encoded one: %2F
            assert "location" in response.headers
            return
        if declared is None or response.status_code >= 400:
            assert response.status_code in GENERIC_ERRORS or declared is not None, (method, url, response.status_code)
            assert response.headers["content-type"] == "application/problem+json", response.text[:300]
            error = json.loads(response.content.decode("utf-8"),
                               parse_constant=lambda name: pytest.fail(f"{name} in an error body"))
            assert {"code", "message", "detail", "details"} <= set(error), error
            assert error["status"] == response.status_code and isinstance(error["details"], list), error
            if declared is None:
                return
        schema = declared.get("content", {}).get("application/json", {}).get("schema")
        if schema and response.headers.get("content-type", "").startswith("application/json"):
            jsonschema.validate(response.json(), {**schema, "components": document["components"]})

    run()
