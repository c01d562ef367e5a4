"""Property-based fuzzing of every operation in the OpenAPI schema (hypothesis):
path, query and body values drawn from the declared schemas, mixed with junk.
No request may get a 5xx, and every JSON response of a declared status must match
its declared schema. In process (TestClient) on SQLite, a local artifact folder and
kombu's SQLite broker, so that ~30 examples per operation stay quick."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from fflab import accounts
from fflab.db import Artifact, Experiment, Run, session_scope
from fflab.db.migrate import upgrade_database
from fflab.settings import Settings

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                              st.integers(), max_size=3))
GENERIC_ERRORS = {401, 403, 404, 409, 413, 422, 429}
EXPERIMENT_ID = "e" * 32


def strategy(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> st.SearchStrategy:
    """Values valid for ``schema`` (roughly), or junk now and then."""
    if depth > 6:
        return JUNK
    if "$ref" in schema:
        return strategy(components[schema["$ref"].rsplit("/", 1)[-1]], components, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return st.one_of([strategy(s, components, depth + 1) for s in schema[key]])
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
        return st.lists(strategy(schema.get("items", {}), components, depth + 1), max_size=4)
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: strategy(v, components, depth + 1) for k, v in properties.items() if k in required},
            optional={k: strategy(v, components, depth + 1) for k, v in properties.items() if k not in required},
        )
    return JUNK


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    from api.main import create_app

    var = tmp_path_factory.mktemp("fuzz")
    settings = Settings(var_dir=var, max_body_bytes=20_000, max_active_runs_per_user=50)
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
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"},
                    raise_server_exceptions=False) as client:
        yield client, client.get("/openapi.json").json()


def operations() -> list[tuple[str, str]]:
    from api.main import create_app

    document = create_app(Settings(var_dir=Path("/nonexistent-fuzz"))).openapi()
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item
            if method in ("get", "post", "delete", "put", "patch")]


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
        url, query = path, {}
        for parameter in parameters:
            name, where = parameter["name"], parameter["in"]
            value = data.draw(known.get(name, strategy(parameter.get("schema", {}), components)), label=name)
            if where == "path":
                text = value if isinstance(value, str) else json.dumps(value)
                if not text or text in (".", ".."):
                    text = "x"
                url = url.replace(f"{{{name}}}", quote(text, safe="/" if "{name}" in path and "artifacts" in path else ""))
            elif where == "query" and (parameter.get("required") or data.draw(st.booleans())):
                query[name] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        kwargs: dict[str, Any] = {"params": query}
        if body_schema is not None:
            kwargs["json"] = data.draw(st.one_of(strategy(body_schema, components), JUNK), label="body")
        response = client.request(method, url, **kwargs)
        assert response.status_code < 500, (method, url, kwargs, response.status_code, response.text[:300])
        declared = operation.get("responses", {}).get(str(response.status_code))
        if declared is None:
            assert response.status_code in GENERIC_ERRORS, (method, url, response.status_code)
            assert "detail" in response.json()
            return
        schema = declared.get("content", {}).get("application/json", {}).get("schema")
        if schema and response.headers.get("content-type", "").startswith("application/json"):
            jsonschema.validate(response.json(), {**schema, "components": document["components"]})

    run()
