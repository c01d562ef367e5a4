"""The per-user cap on waiting runs under parallel submissions, on the
embedded default (``fflab serve``: SQLite, where the row lock of PostgreSQL does
not exist) and on PostgreSQL + Redis; every 429 carries Retry-After."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service_helpers import TINY, Serve, backend_settings

pytest_plugins = ["service_support"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_cap_holds_under_parallel_submissions(backend: str, serves: list[Serve], tmp_path: Path, pg_database,
                                              redis_prefix: str) -> None:
    """30 clients submit a one-run experiment at the same moment against a cap of 20
    (no worker: the runs stay queued): exactly 20 are accepted, and each of the 10
    others gets 429 with Retry-After."""
    serve = Serve(tmp_path, "api", "--no-worker", max_queued_runs_per_user="20",
                  **backend_settings(backend, pg_database, redis_prefix))
    serves.append(serve)
    serve.wait_up("/healthz")
    one_run = {**TINY, "models": ["bp"]}
    barrier = threading.Barrier(30, timeout=60)
    key = serve.key()

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            client.get("/healthz")  # connected before the start
            barrier.wait()
            return client.post("/v1/experiments", json=one_run)

    with ThreadPoolExecutor(30) as pool:
        responses = list(pool.map(submit, range(30)))
    codes = sorted(response.status_code for response in responses)
    assert codes == [202] * 20 + [429] * 10, [r.text for r in responses if r.status_code not in (202, 429)]
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) > 0
            assert "the limit is 20" in response.json()["message"]
            assert response.json()["code"] == "quota_exceeded"
    with serve.client() as api:
        assert api.get("/v1/experiments", params={"limit": 200}).json()["total"] == 20
