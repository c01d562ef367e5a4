"""The service looks after itself (issue 11), against the real embedded default
(``fflab serve`` with nothing configured: SQLite, the SQLite broker, a local
folder) and, where stated, against PostgreSQL and Redis: a supervised worker that
comes back after ``kill -9``, readiness judged from worker heartbeats, runs of a
dead worker requeued, a worker that dies with its serve,
experiments that are final only once their runs are. (The per-user cap under
parallel submissions: test_service_quota.py.)"""

from __future__ import annotations

import os
import re
import secrets
import signal
import sys
from pathlib import Path

import httpx
import pytest

from fflab.processes import process_alive
from fflab.settings import Settings
from service_helpers import TINY, Process, Serve, backend_settings, poll_experiment, readyz, wait_for

pytest_plugins = ["service_support"]

FINAL = ("succeeded", "failed", "cancelled")
# One FF run of several seconds: long enough to be killed mid-training.
LONG = {**TINY, "name": "long", "models": ["ff"], "ff": {"epochs": 60, "batch_size": 100, "learning_rate": 0.003}}
# Trains until cancelled.
ENDLESS = {**TINY, "name": "endless", "ff": {"epochs": 5000, "batch_size": 100, "learning_rate": 0.003}}


def run_rows(api: httpx.Client, experiment_id: str) -> list[dict]:
    return api.get(f"/v1/experiments/{experiment_id}/runs").json()["items"]


def training(api: httpx.Client, experiment_id: str) -> dict | None:
    runs = [run for run in run_rows(api, experiment_id) if run["status"] == "running" and run["progress"]]
    return runs[0] if runs else None


# ----------------------------------------------------------------------------- supervision


def test_default_requeue_bound_is_at_most_a_minute() -> None:
    settings = Settings()
    assert settings.worker_heartbeat_timeout_s + settings.sweep_interval_s <= 60


def test_serve_restarts_its_killed_worker_and_requeues_its_run(serves: list[Serve], tmp_path: Path) -> None:
    """kill -9 of serve's worker mid-run: serve reaps it (no defunct process), says so,
    /readyz answers 503 until a new worker has registered, the run is requeued at
    once (not after minutes of "running") and the experiment succeeds on the new
    worker. While the run trains its status shows the age of its last heartbeat."""
    serve = Serve(tmp_path, "serve", progress_interval_s="0.2", stop_check_interval_s="0.2")
    serves.append(serve)
    serve.wait_up()
    with serve.client() as api:
        experiment_id = api.post("/v1/experiments", json=LONG).json()["id"]
        before = wait_for(lambda: training(api, experiment_id), 90, "the run to train", 0.1)
        assert before["attempts"] == 1 and 0 <= before["heartbeat_age_seconds"] < 10
        assert before["heartbeat_at"] is not None
        running = api.get(f"/v1/experiments/{experiment_id}").json()["progress"]["running"]
        assert running and 0 <= running[0]["heartbeat_age_seconds"] < 10

        [first] = serve.worker_pids()
        os.kill(first, signal.SIGKILL)  # the fault
        wait_for(lambda: not Path(f"/proc/{first}").exists(), 5, "the killed worker to be reaped")
        wait_for(lambda: readyz(serve.url).status_code == 503, 5, "/readyz to answer 503", 0.05)
        assert "none: no worker consuming cpu" in readyz(serve.url, serve.key()).json()["checks"]["workers"]
        assert readyz(serve.url).json()["checks"]["workers"] == "none"  # the details only for an operator

        def requeued() -> dict | None:
            run = run_rows(api, experiment_id)[0]
            return run if run["status"] == "queued" or run["attempts"] == 2 else None

        wait_for(requeued, 10, "the killed worker's run to be requeued", 0.1)
        wait_for(lambda: len(serve.worker_pids()) == 2, 15, "serve to start a new worker")
        second = serve.worker_pids()[1]
        assert second != first and process_alive(second)
        wait_for(lambda: readyz(serve.url).status_code == 200, 90, "/readyz to answer 200 again", 0.2)
        finished = poll_experiment(api, experiment_id, FINAL, timeout=120)
        assert finished["status"] == "succeeded", finished
        run = run_rows(api, experiment_id)[0]
        assert run["status"] == "succeeded" and run["attempts"] == 2
        assert run["heartbeat_age_seconds"] is None  # no longer running
    log = serve.log()
    assert f"worker (pid {first}) died: killed by SIGKILL" in log
    assert "1 runs of the dead worker requeued" in log


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_readiness_and_requeue_follow_worker_heartbeats(backend: str, serves: list[Serve], tmp_path: Path,
                                                        pg_database, redis_prefix: str) -> None:
    """No supervisor (serve --no-worker and a standalone worker, on the embedded default
    and on PostgreSQL + Redis): /readyz answers 503 while no worker consumes the queue,
    200 once one beats, and 503 again once a worker killed with -9 has been silent for
    FFLAB_WORKER_HEARTBEAT_TIMEOUT_S. Its run is requeued by another worker's sweep on
    the worker heartbeat alone (the run's own timeout is left at 300 s) and succeeds."""
    settings = dict(worker_heartbeat_timeout_s="3", sweep_interval_s="1", progress_interval_s="0.2",
                    stop_check_interval_s="0.2", **backend_settings(backend, pg_database, redis_prefix))
    serve = Serve(tmp_path, "api", "--no-worker", **settings)
    serves.append(serve)
    serve.wait_up("/healthz")
    ready = readyz(serve.url, serve.key())
    assert ready.status_code == 503 and ready.json()["checks"]["workers"].startswith("none: no worker consuming")

    def worker(number: int) -> Process:
        process = Process(f"worker{number}", [
            sys.executable, "-m", "fflab", "worker", "--queue", "cpu", "--queue", "gpu", "--pool", "solo",
            "--name", f"w{number}@{secrets.token_hex(3)}"], serve.env, tmp_path, tmp_path)
        wait_for(lambda: process.check_alive() or "ready." in process.log.read_text(), 90, f"worker {number}")
        return process

    first = worker(1)
    try:
        wait_for(lambda: readyz(serve.url).status_code == 200, 10, "/readyz to count the worker", 0.2)
        with serve.client() as api:
            experiment_id = api.post("/v1/experiments", json=LONG).json()["id"]
            wait_for(lambda: training(api, experiment_id), 90, "the run to train", 0.1)
            first.popen.kill()  # the fault: SIGKILL, no goodbye
            first.popen.wait()
            wait_for(lambda: readyz(serve.url).status_code == 503, 10, "/readyz to see the worker gone", 0.2)
            assert run_rows(api, experiment_id)[0]["status"] == "running"  # nobody else sweeps yet
            second = worker(2)
            try:
                finished = poll_experiment(api, experiment_id, FINAL, timeout=120)
                assert finished["status"] == "succeeded", finished
                assert run_rows(api, experiment_id)[0]["attempts"] == 2
                assert "1 runs lost their worker and were requeued" in second.log.read_text()
                assert readyz(serve.url).status_code == 200
            finally:
                second.stop()
    finally:
        first.stop()


def test_killing_serve_kills_its_worker_and_the_next_serve_starts_one(serves: list[Serve], tmp_path: Path) -> None:
    """kill -9 of serve itself mid-run: its worker dies too (it is not orphaned to
    train on); the next serve in the same folder starts one worker under the same
    name, forgets the dead one, requeues its run at once and finishes it."""
    first = Serve(tmp_path, "serve1", progress_interval_s="0.2", stop_check_interval_s="0.2")
    serves.append(first)
    first.wait_up()
    with first.client() as api:
        experiment_id = api.post("/v1/experiments", json=LONG).json()["id"]
        wait_for(lambda: training(api, experiment_id), 90, "the run to train", 0.1)
    [worker] = first.worker_pids()
    first.process.popen.kill()  # the fault: serve only, not its process group
    first.process.popen.wait()
    wait_for(lambda: not process_alive(worker), 5, "the orphaned worker to die")

    second = Serve(tmp_path, "serve2", progress_interval_s="0.2", stop_check_interval_s="0.2")
    serves.append(second)
    second.wait_up()
    [new_worker] = second.worker_pids()
    with second.client() as api:
        finished = poll_experiment(api, experiment_id, FINAL, timeout=120)
        assert finished["status"] == "succeeded", finished
        assert run_rows(api, experiment_id)[0]["attempts"] == 2
    from fflab import jobs
    from fflab.db import session_scope

    settings = Settings(var_dir=tmp_path / "var")
    with session_scope(settings.resolved_database_url) as session:
        workers = [(w.name, w.pid) for w in jobs.live_workers(session, settings)]
    assert len(workers) == 1 and workers[0][1] == new_worker and workers[0][0].startswith("fflab-serve@")


# ----------------------------------------------------------------------------- final states


def test_an_experiment_is_cancelled_only_once_its_runs_have_stopped(serves: list[Serve], tmp_path: Path) -> None:
    """Cancelling while a run trains answers ``cancelling`` (no finished_at); cancelling
    again changes nothing; once the running run has stopped the experiment is
    ``cancelled``, its finished_at not before any run's; the worker logs the run as
    cancelled, never as succeeded; a further cancel is 409, worded as such."""
    serve = Serve(tmp_path, "serve", progress_interval_s="0.2", stop_check_interval_s="3")
    serves.append(serve)
    serve.wait_up()
    with serve.client() as api:
        experiment_id = api.post("/v1/experiments", json=ENDLESS).json()["id"]
        wait_for(lambda: training(api, experiment_id), 90, "a run to train", 0.1)
        cancelled = api.post(f"/v1/experiments/{experiment_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        body = cancelled.json()
        assert body["status"] == "cancelling" and body["timings"]["finished_at"] is None
        assert body["progress"]["runs_by_status"] == {"running": 1, "cancelled": 1}
        again = api.post(f"/v1/experiments/{experiment_id}/cancel").json()
        assert again["status"] in ("cancelling", "cancelled")

        def ended() -> dict | None:
            body = api.get(f"/v1/experiments/{experiment_id}").json()  # before the runs: if it is
            runs = run_rows(api, experiment_id)  # final already, no run may be running any more
            assert body["status"] in ("cancelling", "cancelled"), body["status"]
            assert body["status"] == "cancelling" or not any(run["status"] == "running" for run in runs), runs
            return body if body["status"] == "cancelled" else None

        body = wait_for(ended, 60, "the experiment to be cancelled", 0.1)
        runs = run_rows(api, experiment_id)
        assert all(run["status"] == "cancelled" for run in runs)
        assert body["timings"]["finished_at"] >= max(run["finished_at"] for run in runs)
        conflict = api.post(f"/v1/experiments/{experiment_id}/cancel")
        assert conflict.status_code == 409
        assert conflict.json()["code"] == "conflict"
        assert conflict.json()["message"] == (f"experiment {experiment_id} already ended (cancelled); "
                                             f"only a queued or running experiment can be cancelled")
    log = serve.log()
    trained = next(run["run_id"] for run in runs if run["started_at"])
    assert re.search(rf"run {trained} of experiment {experiment_id} ended cancelled after", log), log[-3000:]
    assert not re.search(r"Task fflab\.run\[[0-9a-f]+\] succeeded", log)
