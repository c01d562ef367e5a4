"""The per-user storage quota and run-hours limit (fflab.usage), through real
HTTP on the embedded default (``fflab serve``: SQLite) and on PostgreSQL +
Redis: a submission past either is refused with 429 ``quota_exceeded`` naming
the use, the estimate and the limit; a finished run stores all its files
whatever the quota; each user sees their use, admins everyone's."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from fflab import jobs, usage
from fflab.cli import main
from fflab.cli.service import describe_usage
from fflab.client import Client
from fflab.db import Artifact, Experiment, Run, User, get_sessionmaker
from fflab.db.migrate import upgrade_database
from fflab.settings import Settings, get_settings
from fflab.spec import build_spec
from service_helpers import TINY, Serve, backend_settings, poll_experiment

pytest_plugins = ["service_support"]

ONE_RUN = {**TINY, "models": ["bp"]}
SPEC = build_spec(ONE_RUN["preset"], {name: value for name, value in ONE_RUN.items() if name != "preset"})


def refused(response) -> str:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "quota_exceeded"
    assert int(response.headers["retry-after"]) > 0
    return response.json()["message"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_run_hours_limit(backend: str, serves: list[Serve], tmp_path: Path, pg_database, redis_prefix: str) -> None:
    """With room for one run's estimated hours (no worker: runs stay queued), the
    second submission is refused naming its estimate, what is queued and the limit;
    cancelling the first frees its hours."""
    hours = usage.estimate_experiment_hours(SPEC)
    limit = hours * 1.5
    serve = Serve(tmp_path, "api", "--no-worker", max_queued_run_hours_per_user=repr(limit),
                  **backend_settings(backend, pg_database, redis_prefix))
    serves.append(serve)
    serve.wait_up("/healthz")
    with serve.client() as api:
        first = api.post("/v1/experiments", json=ONE_RUN)
        assert first.status_code == 202, first.text
        with Client(serve.url, serve.key()) as client:  # the Python client and the CLI's line
            mine = client.usage()
        assert mine["active_runs"] == 1 and mine["active_run_hours"] == pytest.approx(hours)
        assert mine["max_active_run_hours"] == pytest.approx(limit) and mine["storage_quota_bytes"] is None
        pending = usage.human_bytes(usage.estimate_experiment_bytes(SPEC))
        assert describe_usage(mine) == (f"admin: stores 0 bytes (+{pending} to come) of no quota; 1 run waiting or "
                                        f"running, {hours:.3g} of {limit:g} run-hours")
        get_settings.cache_clear()  # the CLI reads this server's URL and key
        line = CliRunner().invoke(main, ["usage"], env={"FFLAB_API_URL": serve.url, "FFLAB_API_KEY": serve.key()})
        get_settings.cache_clear()
        assert line.exit_code == 0 and line.output == describe_usage(mine) + "\n", line.output
        message = refused(api.post("/v1/experiments", json=ONE_RUN))
        assert (f"estimated at {hours:.3g} run-hours and you have {hours:.3g} run-hours waiting or running "
                f"(1 run); the limit is {limit:g} run-hours") in message, message
        assert api.get("/v1/experiments").json()["total"] == 1
        member_key = api.post("/v1/admin/users", json={"name": "carol"}).json()["api_key"]
        with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {member_key}"}) as carol:
            assert carol.get("/v1/admin/usage").status_code == 403  # admins only
            carols = carol.get("/v1/users/me/usage").json()  # her own, not the admin's
            assert carols["user"] == "carol" and carols["active_runs"] == 0
            assert carol.post("/v1/experiments", json=ONE_RUN).status_code == 202  # the limit is per user
        assert httpx.get(f"{serve.url}/v1/users/me/usage").status_code == 401
        assert api.post(f"/v1/experiments/{first.json()['id']}/cancel").status_code == 200
        assert api.post("/v1/experiments", json=ONE_RUN).status_code == 202


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_storage_quota(backend: str, serves: list[Serve], tmp_path: Path, pg_database, redis_prefix: str) -> None:
    """A quota of one experiment's estimate: a second submission is refused while the
    first waits (its estimate counts) and after it has stored its files (its stored
    bytes count); the finished run keeps every file, and the use the user and the
    admin see is the sum of the stored artifacts."""
    estimate = usage.estimate_experiment_bytes(SPEC)
    serve = Serve(tmp_path, "api", storage_quota_bytes_per_user=str(estimate),
                  **backend_settings(backend, pg_database, redis_prefix))
    serves.append(serve)
    serve.wait_up("/healthz")
    with serve.client() as api:
        first = api.post("/v1/experiments", json=ONE_RUN)
        assert first.status_code == 202, first.text
        message = refused(api.post("/v1/experiments", json=ONE_RUN))
        assert f"this experiment would store an estimated {usage.human_bytes(estimate)}" in message, message
        assert f"the quota is {usage.human_bytes(estimate)} per user" in message
        experiment_id = first.json()["id"]
        poll_experiment(api, experiment_id, ("succeeded",), timeout=600)  # a loaded machine

        artifacts = api.get(f"/v1/experiments/{experiment_id}/artifacts").json()["items"]
        names = {item["name"] for item in artifacts}
        assert {"runs/bp-mnist-seed0/representations.npz", "runs/bp-mnist-seed0/weights.pt", "results.json"} <= names
        stored = sum(item["size"] for item in artifacts)
        mine = api.get("/v1/users/me/usage").json()
        assert mine["stored_bytes"] == stored and mine["pending_bytes"] == 0 and mine["active_runs"] == 0
        assert mine["storage_quota_bytes"] == estimate
        everyone = api.get("/v1/admin/usage").json()["items"]
        assert [(u["user"], u["stored_bytes"]) for u in everyone] == [(mine["user"], stored)]

        message = refused(api.post("/v1/experiments", json=ONE_RUN))
        assert f"your experiments store {usage.human_bytes(stored)}; this experiment" in message, message
        assert api.delete(f"/v1/experiments/{experiment_id}").status_code == 204  # frees the space
        assert api.get("/v1/users/me/usage").json()["stored_bytes"] == 0
        assert api.post("/v1/experiments", json=ONE_RUN).status_code == 202


def test_admission_counts_stored_pending_and_estimate(tmp_path: Path) -> None:
    """The rule on known numbers (a real SQLite database): stored artifacts count,
    at the quota a re-analysis is refused too, and the limits are per user."""
    estimate = usage.estimate_experiment_bytes(SPEC)
    settings = Settings(var_dir=tmp_path, storage_quota_bytes_per_user=int(2.5 * estimate))
    upgrade_database(settings.resolved_database_url)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        alice, bob = User(name="alice"), User(name="bob")
        session.add_all([alice, bob])
        session.flush()
        done = Experiment(id="done", owner=alice, name="done", spec=SPEC.model_dump(mode="json"), runs_total=1,
                          status="succeeded")
        session.add(done)
        session.flush()
        session.add(Artifact(experiment_id="done", name="runs/x/representations.npz", key="k", size=estimate,
                             sha256="0" * 64, content_type="application/octet-stream"))
        session.flush()
        assert usage.stored_bytes(session, alice.id) == estimate and usage.stored_bytes(session, bob.id) == 0
        assert usage.submission_refusal(session, settings, alice.id, SPEC) is None  # stored + estimate <= 2.5 x
        jobs.create_experiment(session, settings, alice, SPEC, "private")  # its estimate is now pending
        assert usage.user_usage(session, settings, alice.id).pending_bytes == estimate
        with pytest.raises(jobs.CapacityError, match="storage quota"):
            jobs.create_experiment(session, settings, alice, SPEC, "private")
        assert usage.submission_refusal(session, settings, bob.id, SPEC) is None
        # A waiting run whose stored spec this version cannot read counts FFLAB_EXPECTED_RUN_S.
        unreadable = Experiment(id="old", owner=bob, name="old", spec={"models": ["retired"]}, runs_total=1)
        unreadable.runs = [Run(run_id="retired-mnist-seed0", model="retired", dataset="mnist", seed=0, queue="cpu")]
        session.add(unreadable)
        session.flush()
        bobs = usage.user_usage(session, settings, bob.id)
        assert bobs.active_runs == 1 and bobs.active_run_hours == pytest.approx(settings.expected_run_s / 3600)
        assert usage.analysis_refusal(session, settings, alice.id) is None
        session.add(Artifact(experiment_id="done", name="figures/a.png", key="f", size=2 * estimate,
                             sha256="0" * 64, content_type="image/png"))
        session.flush()
        with pytest.raises(jobs.CapacityError, match="at or over the quota"):
            jobs.create_analysis(session, done, {}, settings)
