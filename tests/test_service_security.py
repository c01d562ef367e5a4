"""Hostile input and other users: path tricks on artifact and figure names (local
folder in process, S3 on the real stack), every route with another user's ids,
keys at rest and in logs, and limits on specs."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi.testclient import TestClient

from fflab import accounts
from fflab.db import Artifact, Experiment, session_scope
from fflab.db.migrate import upgrade_database
from fflab.settings import Settings
from fflab.storage import get_storage
from service_helpers import free_port, http_ready, wait_for

SECRET = b"top-secret-outside-the-storage"
OTHER = b"bob's private results"


def raw_get(base_url: str, path: str, key: str | None) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (httpx would normalise '..' segments)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        if key:
            connection.putheader("Authorization", f"Bearer {key}")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def path_tricks(other_id: str) -> list[str]:
    """Artifact names that try to leave the experiment, its storage, or the folder."""
    return [
        "../secret.txt", "../../secret.txt", "runs/../../secret.txt", "runs/../../../../secret.txt",
        "%2e%2e/%2e%2e/secret.txt", "%2E%2E%2F%2E%2E%2Fsecret.txt", "..%2f..%2fsecret.txt",
        "/etc/passwd", "%2Fetc%2Fpasswd", "//etc/passwd", "..\\..\\secret.txt", "%5c..%5c..%5csecret.txt",
        "runs/ok%00.json", "%00", "results.json%00", "C:%5cWindows%5cwin.ini", "./results.json",
        f"../../{other_id}/results.json", f"%2e%2e/%2e%2e/{other_id}/results.json",
        f"..%2F..%2F{other_id}%2Fresults.json", "%252e%252e/%252e%252e/secret.txt",
        f"../../../experiments/{other_id}/results.json",
    ]


def assert_contained(base_url: str, experiment_id: str, other_id: str, key: str, leaks: list[bytes]) -> None:
    for route in ("artifacts", "figures"):
        for name in path_tricks(other_id):
            status, body = raw_get(base_url, f"/v1/experiments/{experiment_id}/{route}/{name}", key)
            assert 400 <= status < 500, (route, name, status, body[:200])
            assert not any(leak in body for leak in leaks), (route, name)


@pytest.fixture()
def local_api(tmp_path: Path) -> Iterator[tuple[str, str, str, str]]:
    """The API in process on SQLite and a local artifact folder, with alice's and bob's
    experiments, each with a results.json, and a secret file beside the folder."""
    from api.main import create_app

    settings = Settings(var_dir=tmp_path / "var")
    upgrade_database(settings.resolved_database_url)
    storage = get_storage(settings)
    (settings.resolved_artifacts_dir.parent / "secret.txt").write_bytes(SECRET)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    with session_scope(settings.resolved_database_url) as session:
        alice = accounts.create_user(session, "alice")
        bob = accounts.create_user(session, "bob")
        key = accounts.issue_key(session, alice)
        for experiment_id, owner, content in (("a" * 32, alice, b"{}"), ("b" * 32, bob, OTHER)):
            session.add(Experiment(id=experiment_id, owner=owner, name="x", spec={}, runs_total=0,
                                   status="succeeded"))
            session.flush()
            source = tmp_path / f"{experiment_id}.json"
            source.write_bytes(content)
            for name in ("results.json", "figures/figure1a.png"):
                stored = storage.put_file(f"experiments/{experiment_id}/{name}", source)
                session.add(Artifact(experiment_id=experiment_id, name=name, key=stored.key, size=stored.size,
                                     sha256=stored.sha256, content_type="application/json"))
            svg = tmp_path / f"{experiment_id}.svg"
            svg.write_bytes(HOSTILE_SVG)
            stored = storage.put_file(f"experiments/{experiment_id}/figures/figure1a.svg", svg)
            session.add(Artifact(experiment_id=experiment_id, name="figures/figure1a.svg", key=stored.key,
                                 size=stored.size, sha256=stored.sha256, content_type="image/svg+xml"))
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(http_ready(f"http://127.0.0.1:{port}/healthz"), 30, "the API")
        yield f"http://127.0.0.1:{port}", key, "a" * 32, "b" * 32
    finally:
        server.should_exit = True
        thread.join(timeout=10)


HOSTILE_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/v1/experiments")</script>'
               b'<style>rect{fill:red}</style><rect width="1" height="1"/></svg>')


def test_an_svg_figure_is_served_as_svg_that_runs_and_loads_nothing(local_api) -> None:
    """A figure's SVG (fflab writes one beside each PNG) is a document that could hold
    a script: served as image/svg+xml with a policy under which nothing in it runs or
    loads when it is opened on its own, and not sniffed as anything else."""
    import httpx

    base_url, key, mine, _ = local_api
    for route in ("figures/figure1a.svg", "artifacts/figures/figure1a.svg"):
        response = httpx.get(f"{base_url}/v1/experiments/{mine}/{route}", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, route
        assert response.headers["content-type"] == "image/svg+xml"
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "sandbox" in policy and "script" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == HOSTILE_SVG
    png = httpx.get(f"{base_url}/v1/experiments/{mine}/figures/figure1a", headers={"Authorization": f"Bearer {key}"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert "content-security-policy" not in png.headers


def test_path_tricks_never_leave_the_experiment_local_storage(local_api) -> None:
    base_url, key, mine, bobs = local_api
    assert raw_get(base_url, f"/v1/experiments/{mine}/artifacts/results.json", key) == (200, b"{}")
    assert raw_get(base_url, f"/v1/experiments/{mine}/figures/figure1a", key)[0] == 200
    assert raw_get(base_url, f"/v1/experiments/{bobs}/artifacts/results.json", key)[0] == 404
    assert_contained(base_url, mine, bobs, key, [SECRET, OTHER])


# ---------------------------------------------------------------- the real stack

import hmac  # noqa: E402

import httpx  # noqa: E402
import psycopg  # noqa: E402
from fastapi.routing import APIRoute  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402

from fflab.db import Analysis  # noqa: E402
from service_helpers import TINY, Stack, poll_experiment  # noqa: E402

pytest_plugins = ["service_support"]

# Routes anyone may call; a new public route must be added here on purpose.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
          "/static/{path:path}"}  # /static: the docs pages' vendored scripts and styles


@pytest.fixture(scope="module")
def users(stack: Stack) -> Iterator[dict[str, httpx.Client]]:
    with stack.client(stack.admin_key) as admin:
        created = admin.post("/v1/admin/users", json={"name": "mallory"})
        assert created.status_code == 201, created.text
        revoked = created.json()["api_key"]
        assert admin.delete(f"/v1/admin/keys/{revoked[:14]}").status_code == 204
    clients = {"alice": stack.client(stack.member_key), "bob": stack.client(stack.other_key),
               "admin": stack.client(stack.admin_key), "anonymous": stack.client(None),
               "revoked": stack.client(revoked)}
    clients["revoked"].key = revoked  # type: ignore[attr-defined]
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(scope="module")
def two_experiments(stack: Stack, users: dict[str, httpx.Client]) -> tuple[dict, dict]:
    """A finished private experiment of alice's (with a failed analysis row) and one of bob's."""
    done = []
    for name in ("alice", "bob"):
        created = users[name].post("/v1/experiments", json={**TINY, "models": ["bp"]})
        assert created.status_code == 202, created.text
        done.append(created.json())
    alices, bobs = (poll_experiment(users[n], e["id"], ("succeeded", "failed"))
                    for n, e in zip(("alice", "bob"), done, strict=True))
    assert alices["status"] == bobs["status"] == "succeeded"
    with session_scope(stack.settings.resolved_database_url) as session:
        session.add(Analysis(id="c" * 32, experiment_id=alices["id"], spec={}, status="failed", error="x"))
    return alices, bobs


def test_path_tricks_never_leave_the_experiment_s3(stack: Stack, users, two_experiments) -> None:
    alices, bobs = two_experiments
    bobs_results = users["bob"].get(f"/v1/experiments/{bobs['id']}/artifacts/results.json").content
    assert len(bobs_results) > 100
    assert raw_get(stack.api_url, f"/v1/experiments/{alices['id']}/artifacts/results.json",
                   stack.member_key)[0] == 200
    assert_contained(stack.api_url, alices["id"], bobs["id"], stack.member_key, [bobs_results])


def flatten(routes, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, also inside included routers (FastAPI nests them)."""
    for route in routes:
        if isinstance(route, (Route, APIRoute)):
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                yield method, prefix + route.path
        elif isinstance(route, Mount):  # the web UI's static files
            yield "GET", prefix + route.path + "/{path:path}"
        elif hasattr(route, "original_router"):
            yield from flatten(route.original_router.routes, prefix + route.include_context.prefix)
        else:
            raise AssertionError(f"unknown kind of route {route!r}: teach flatten() about it")


def route_table(stack: Stack) -> list[tuple[str, str]]:
    from api.main import create_app

    app = create_app(stack.settings)  # not started: only its routes are read
    return list(flatten(app.routes))


def fill(path: str, experiment_id: str, prefix: str) -> str:
    values = {"{experiment_id}": experiment_id, "{run_id}": "bp-mnist-seed0", "{analysis_id}": "c" * 32,
              "{name:path}": "results.json", "{name}": "alice" if "/admin/" in path else "figure2",
              "{prefix}": prefix}
    for placeholder, value in values.items():
        path = path.replace(placeholder, value)
    assert "{" not in path, f"no test value for a parameter of {path}: add one to fill()"
    return path


BODIES = {"/v1/experiments": {"preset": "quick", "epochz": 1}, "/v1/admin/users": {"name": "eve"},
          "/v1/experiments/{experiment_id}": {"name": "taken", "visibility": "lab"},
          "/v1/users/me/keys": {"revoke_current": False},
          "/v1/experiments/{experiment_id}/analyses": {"quantiles": [0.5], "table_quantile": 0.5,
                                                       "figure_quantile": 0.5}}


def test_every_route_refuses_other_users(stack: Stack, users, two_experiments) -> None:
    """Table-driven over app.routes: a new route is covered (or fails here) automatically."""
    alices, bobs_own = two_experiments
    table = route_table(stack)
    assert len(table) >= 25
    for method, template in table:
        if template.startswith("/ui/") or template == "/":
            continue  # the web UI (cookie sign-in, CSRF): every route of it in test_ui_http.py
        if not template.startswith("/v1/"):
            assert template in PUBLIC, f"{method} {template} is public but not in PUBLIC"
            continue
        path = fill(template.replace("/comparisons/figures/{name}", "/comparisons/figures/loss_curves"),
                    alices["id"], stack.member_key[:14])
        if template.startswith("/v1/comparisons"):  # alice's experiment beside bob's own
            path += f"?experiment={alices['id']}&experiment={bobs_own['id']}"
        body = BODIES.get(template)

        def call(who: str) -> httpx.Response:
            return users[who].request(method, path, json=body)

        for who in ("anonymous", "revoked"):
            response = call(who)
            assert response.status_code == 401, (who, method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
        bobs = call("bob")
        if template.startswith("/v1/admin/"):
            assert bobs.status_code == 403, (method, path, bobs.text)
        elif "{experiment_id}" in template:
            assert bobs.status_code == 404, (method, path, bobs.text)
            assert alices["id"] not in bobs.text.replace(f"no experiment {alices['id']}", "")
        elif template.startswith("/v1/comparisons"):  # alice's private experiment is not found
            assert bobs.status_code == 404, (method, path, bobs.text)
            assert alices["id"] not in bobs.text.replace(f"no experiment {alices['id']}", "")
        elif template == "/v1/experiments" and method == "GET":
            assert alices["id"] not in bobs.text and bobs.status_code == 200
        elif template == "/v1/experiments" and method == "POST":
            assert bobs.status_code == 422
        elif template == "/v1/representations":  # an upload of bob's own: no body is no file
            assert bobs.status_code == 422 and alices["id"] not in bobs.text
        elif template == "/v1/users/me":
            assert bobs.json()["name"] == "bob"
        elif template == "/v1/users/me/keys" and method == "GET":  # bob's own keys only
            assert bobs.status_code == 200 and stack.member_key[:14] not in bobs.text
            assert [key["current"] for key in bobs.json()["items"]].count(True) == 1
        elif template == "/v1/users/me/keys" and method == "POST":  # a new key of bob's own
            assert bobs.status_code == 201 and bobs.json()["user"]["name"] == "bob"
        elif template == "/v1/users/me/usage":  # bob's own storage and run-hours only
            assert bobs.status_code == 200 and bobs.json()["user"] == "bob"
        else:
            raise AssertionError(f"{method} {template}: say what another user gets")
    experiment = users["alice"].get(f"/v1/experiments/{alices['id']}")
    assert experiment.status_code == 200 and experiment.json()["status"] == "succeeded"
    assert users["alice"].get("/v1/users/me").status_code == 200  # alice's key was not revoked


def test_keys_are_hashed_at_rest_and_absent_from_logs(stack: Stack, users, two_experiments) -> None:
    keys = [stack.admin_key, stack.member_key, stack.other_key, users["revoked"].key]
    url = stack.settings.resolved_database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as connection:
        tables = [row[0] for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert "api_keys" in tables
        for table in tables:
            dump = "\n".join(row[0] for row in connection.execute(f'SELECT t::text FROM "{table}" t'))
            for key in keys:
                assert key not in dump and key[14:] not in dump, table
        hashes = {row[0] for row in connection.execute("SELECT key_hash FROM api_keys")}
    assert accounts.hash_key(stack.member_key) in hashes
    for process in stack.processes:  # the API and worker logs of the whole session so far
        log = process.log.read_text(errors="replace")
        for key in keys:
            assert key[14:] not in log, process.name


def test_keys_are_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(var_dir=tmp_path)
    upgrade_database(settings.resolved_database_url)
    calls: list[tuple[str, str]] = []
    original = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(accounts.hmac, "compare_digest", spy)
    with session_scope(settings.resolved_database_url) as session:
        key = accounts.issue_key(session, accounts.create_user(session, "alice"))
        assert accounts.authenticate(session, key).name == "alice"
        assert accounts.authenticate(session, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert calls == [(accounts.hash_key(key), accounts.hash_key(key)),
                     (accounts.hash_key(key), accounts.hash_key(key[:-1] + ("A" if key[-1] != "A" else "B")))]


# ---------------------------------------------------------------- limits

LIMITS = {"max_epochs": 7, "max_width": 96, "max_layers": 3, "max_seeds": 4, "max_train_subset": 500,
          "max_test_subset": 300, "max_runs_per_experiment": 6, "max_body_bytes": 4096,
          "max_queued_runs_per_user": 1000}
BASE = {"preset": "quick", "models": ["bp"], "datasets": ["mnist"], "seeds": [0], "unseen_class": None,
        "data": {"train_subset": 200, "test_subset": 200}, "network": {"width": 64, "layers": 2},
        "bp": {"epochs": 1, "learning_rate": 0.003}, "bpff": {"epochs": 1, "learning_rate": 0.003}}


@pytest.fixture()
def limited(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    from api.main import create_app

    settings = Settings(var_dir=tmp_path / "var", **LIMITS)
    upgrade_database(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        key = accounts.issue_key(session, accounts.create_user(session, "alice"))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client, settings


def merged(**changes) -> dict:
    body = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = body
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    return body


def field_of(loc: list) -> str:
    """The problem document's field of a pydantic location: ["body", "bp", "epochs"] -> "bp.epochs"."""
    return ".".join(str(part) for part in (loc[1:] if loc[0] == "body" else loc))


@pytest.mark.parametrize("field, at, past, loc", [
    ("bp__epochs", 7, 8, ["body", "bp", "epochs"]),
    ("network__width", 96, 97, ["body", "network", "width"]),
    ("network__layers", 3, 4, ["body", "network", "layers"]),
    ("seeds", [0, 1, 2, 3], [0, 1, 2, 3, 4], ["body", "seeds"]),
    ("data__train_subset", 500, 501, ["body", "data", "train_subset"]),
    ("data__train_subset", 500, None, ["body", "data", "train_subset"]),  # null = the whole set
    ("data__test_subset", 300, 301, ["body", "data", "test_subset"]),
    ("models", ["bp", "bpff"], ["bp", "bpff", "ff"], ["body", "bp", "epochs"]),  # each model's epochs
])
def test_spec_limits_are_configurable_and_name_the_field(limited, field, at, past, loc) -> None:
    client, _ = limited
    accepted = client.post("/v1/experiments", json=merged(**{field: at}))
    assert accepted.status_code == 202, accepted.text
    body = merged(**{field: past})
    if field == "models":  # the epochs of the model the list adds are checked too
        body["bp"]["epochs"], body["ff"], loc = 1, {"epochs": 8}, ["body", "ff", "epochs"]
    refused = client.post("/v1/experiments", json=body)
    assert refused.status_code == 422, refused.text
    problems = refused.json()["details"]
    assert field_of(loc) in [p["field"] for p in problems], problems


def test_runs_per_experiment_body_size_types_and_unknown_fields(limited) -> None:
    client, settings = limited
    # 2 models x 2 data sets x 2 seeds = 8 runs > 6.
    too_many = client.post("/v1/experiments", json=merged(models=["bp", "bpff"], datasets=["mnist", "fashion_mnist"],
                                                          seeds=[0, 1], bpff={"epochs": 1, "learning_rate": 0.01}))
    assert too_many.status_code == 422 and "FFLAB_MAX_RUNS_PER_EXPERIMENT" in too_many.text
    for body, loc in ((merged(bp__epochs="many"), ["body", "bp", "epochs"]),
                      (merged(bp__epochs=-1), ["body", "bp", "epochs"]),
                      (merged(seeds=[]), ["body", "seeds"]),
                      (merged(seeds="0"), ["body", "seeds"]),
                      (merged(network__widht=64), ["body", "network", "widht"]),
                      (merged(surprise=1), ["body", "surprise"]),
                      (merged(unseen_class=10), ["body", "unseen_class"]),
                      (merged(datasets=["cifar"]), ["body", "datasets", 0]),
                      (merged(bp__epochs=10**30), ["body", "bp", "epochs"])):
        response = client.post("/v1/experiments", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field_of(loc) in [p["field"] for p in response.json()["details"]], (loc, response.json())
    huge = client.post("/v1/experiments", json=merged(name="x" * settings.max_body_bytes))
    assert huge.status_code == 413 and "FFLAB_MAX_BODY_BYTES" in huge.json()["message"]
    not_json = client.post("/v1/experiments", content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 422


# ---------------------------------------------------------------- per-user cap under concurrency


def test_per_user_cap_holds_under_concurrent_submissions(pg_database) -> None:
    """20 threads submit a one-run experiment at once against a cap of 6 on PostgreSQL:
    exactly 6 are accepted (the check and the insert are atomic per user)."""
    from concurrent.futures import ThreadPoolExecutor

    from fflab import jobs
    from fflab.db import Run, get_sessionmaker
    from fflab.spec import build_spec

    url = pg_database()
    upgrade_database(url)
    settings = Settings(database_url=url, max_queued_runs_per_user=6)
    with session_scope(url) as session:
        alice_id = accounts.create_user(session, "alice").id
    spec = build_spec(None, {"models": ["bp"], "datasets": ["mnist"], "seeds": [0], "unseen_class": None})
    barrier = threading.Barrier(20, timeout=30)

    def submit(_: int) -> str:
        with get_sessionmaker(url)() as session:
            user = session.get(accounts.User, alice_id)
            session.commit()  # start the race with a fresh transaction
            barrier.wait()
            try:
                jobs.create_experiment(session, settings, user, spec, "private")
                session.commit()
                return "accepted"
            except jobs.CapacityError:
                session.rollback()
                return "refused"

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(submit, range(20)))
    assert outcomes.count("accepted") == 6 and outcomes.count("refused") == 14
    with session_scope(url) as session:
        assert jobs.active_runs(session, alice_id) == 6
        assert session.query(Run).count() == 6
