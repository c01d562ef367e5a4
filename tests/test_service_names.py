"""User names (normalised with NFKC and case folding, refused when confusable
with an existing user's by Unicode TR39's skeleton), through the API and through
``fflab admin create-user`` (one validation function for both), on the embedded
default and on PostgreSQL; and start-up with an unreachable database or broker:
one line naming the setting, a non-zero exit code, quickly."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fflab import accounts
from service_helpers import ROOT, Serve, backend_settings, base_env, free_port

pytest_plugins = ["service_support"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, pg_database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    folder = tmp_path_factory.mktemp(f"names-{request.param}")
    serve = Serve(folder, f"serve-{request.param}", "--no-worker",
                  **backend_settings(request.param, pg_database, f"n{secrets.token_hex(4)}-"))
    try:
        serve.wait_up("/healthz")
        yield serve
    finally:
        serve.process.stop()


def create(serve: Serve, name: str) -> httpx.Response:
    with serve.client() as admin:
        return admin.post("/v1/admin/users", json={"name": name})


def cli(serve: Serve, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fflab", "admin", *args], cwd=serve.folder, env=serve.env,
                          capture_output=True, text=True, timeout=120)


def test_names_are_normalised_and_confusables_refused(served: Serve) -> None:
    created = create(served, "Alice")
    assert created.status_code == 201, created.text
    assert created.json()["user"]["name"] == "alice"
    for clash in ("alice", "ALICE", "aIice", "a1ice", "Admin", "ADMIN", "ａｌｉｃｅ"):
        response = create(served, clash)
        assert response.status_code in (409, 422), (clash, response.text)
        body = response.json()
        assert "name" in body["message"] and [d["field"] for d in body["details"]] == ["name"], body
        if response.status_code == 409:
            assert "alice" in body["message"] or "admin" in body["message"], body
    for invalid in ("alice\n", "al ice", "", "x" * 65):
        response = create(served, invalid)
        assert response.status_code == 422, (invalid, response.text)
    with served.client() as admin:
        names = [user["name"] for user in admin.get("/v1/admin/users").json()["items"]]
    assert sorted(names) == ["admin", "alice"]


def test_the_cli_refuses_what_the_api_refuses(served: Serve) -> None:
    newline = cli(served, "create-user", "alice\n")
    assert newline.returncode != 0 and "name: must be" in newline.stderr, newline.stderr
    assert "Traceback" not in newline.stderr
    shouting = cli(served, "create-user", "ADMIN")
    assert shouting.returncode != 0 and "too like the existing user 'admin'" in shouting.stderr, shouting.stderr
    with served.client() as admin:
        names = [user["name"] for user in admin.get("/v1/admin/users").json()["items"]]
    assert "alice\n" not in names and "ADMIN" not in names


def test_every_lookup_by_name_finds_the_user_however_the_name_is_written(served: Serve) -> None:
    """The admin routes of a user, ``?owner=`` and ``fflab admin set-share`` look a
    name up as it is stored (``accounts.find_user``): ALICE and Ａlice are alice; a
    name no user has, or one that is not a name, is 404."""
    with served.client() as admin:
        if "alice" not in [user["name"] for user in admin.get("/v1/admin/users").json()["items"]]:
            assert create(served, "alice").status_code == 201
        shared = admin.patch("/v1/admin/users/ALICE", json={"share_weight": 2.5})
        assert shared.status_code == 200 and shared.json()["name"] == "alice", shared.text
        assert shared.json()["share_weight"] == 2.5
        issued = admin.post("/v1/admin/users/\uff21lice/keys")
        assert issued.status_code == 201 and issued.json()["user"]["name"] == "alice", issued.text
        for nobody in ("bob", "al ice"):
            missing = admin.patch(f"/v1/admin/users/{nobody}", json={"share_weight": 1})
            assert missing.status_code == 404 and missing.json()["code"] == "not_found", missing.text
        with httpx.Client(base_url=served.url, timeout=30,
                          headers={"Authorization": f"Bearer {issued.json()['api_key']}"}) as alice:
            submitted = alice.post("/v1/experiments", json={"preset": "quick", "models": ["ff"], "seeds": [0],
                                                            "data": {"train_subset": 200, "test_subset": 200}})
            assert submitted.status_code == 202, submitted.text
        listed = admin.get("/v1/experiments", params={"scope": "all", "owner": "ALICE"}).json()["items"]
        assert submitted.json()["id"] in [item["id"] for item in listed]
        assert admin.get("/v1/experiments", params={"scope": "all", "owner": "al ice"}).json()["items"] == []
    set_share = cli(served, "set-share", "ALICE", "--weight", "3")
    assert set_share.returncode == 0 and set_share.stdout.startswith("alice: weight 3"), set_share.stderr


def test_one_validation_function() -> None:
    for name in ("alice\n", " alice", "al/ice"):
        with pytest.raises(accounts.InvalidName, match="^name: "):
            accounts.normalise_name(name)
    assert accounts.normalise_name("ＡＬＩＣＥ") == "alice"
    assert accounts.skeleton("aIice") == accounts.skeleton("alice") == accounts.skeleton("a1ice")
    assert accounts.skeleton("rnary") == accounts.skeleton("mary")


# ----------------------------------------------------------------------------- start-up


def unreachable_url(kind: str) -> dict[str, str]:
    port = free_port()  # nothing listens there
    if kind == "database":
        return {"database_url": f"postgresql://postgres:secret@127.0.0.1:{port}/fflab"}
    return {"broker_url": f"redis://127.0.0.1:{port}/0", "result_backend": f"redis://127.0.0.1:{port}/0"}


@pytest.mark.parametrize("kind,setting", [("database", "FFLAB_DATABASE_URL"), ("broker", "FFLAB_BROKER_URL")])
@pytest.mark.parametrize("how", ["serve", "uvicorn", "worker"])
def test_start_up_with_an_unreachable_service_fails_in_one_line(tmp_path: Path, kind: str, setting: str,
                                                                how: str) -> None:
    env = base_env(var_dir=str(tmp_path / "var"), api_port=str(free_port()), startup_connect_timeout_s="3",
                   **unreachable_url(kind))
    command = {"serve": [sys.executable, "-m", "fflab", "serve", "--no-worker"],
               "uvicorn": [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--http",
                           "api.protocol:HttpProtocol", "--host", "127.0.0.1", "--port", env["FFLAB_API_PORT"]],
               "worker": [sys.executable, "-m", "fflab", "worker"]}[how]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stderr
    assert time.monotonic() - started < 45
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"{setting}: could not connect")]
    assert len(errors) == 1, done.stderr
    assert "secret" not in done.stderr
