"""Object storage unreachable while a run finishes: a real worker task (in process,
SQLite, broker replaced by a recorder) uploading to a real moto S3 server on
loopback, which is stopped before the upload and restarted (or not) on the same port."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from fflab import accounts, jobs
from fflab.db import Artifact, Experiment, Run, get_sessionmaker, session_scope
from fflab.db.migrate import upgrade_database
from fflab.pipeline import experiment as experiment_pipeline
from fflab.settings import get_settings
from fflab.spec import build_spec
from service_helpers import TINY, Process, RecordingDispatcher, base_env, free_port, http_ready, wait_for
from test_service_faults import run_as_worker

BUCKET = "fflab-storage-faults"


class Moto:
    """A moto S3 server on a fixed loopback port that can be stopped and started again
    (moto keeps buckets in memory: a restart recreates the bucket)."""

    def __init__(self, log_dir: Path):
        self.port, self.log_dir, self.process, self.starts = free_port(), log_dir, None, 0
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.process = Process(f"moto{self.starts}", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                                      "-p", str(self.port)], base_env(), self.log_dir, self.log_dir)
        wait_for(http_ready(f"{self.endpoint}/moto-api/"), 30, "the moto S3 server")
        self.client().create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")


@pytest.fixture()
def moto(tmp_path: Path):
    server = Moto(tmp_path)
    server.start()
    yield server
    server.stop()


def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto: Moto, attempts: int, backoff: float):
    import worker.service as service
    import worker.tasks as tasks

    for name in ("FFLAB_DATABASE_URL", "FFLAB_BROKER_URL", "FFLAB_RESULT_BACKEND", "FFLAB_ARTIFACTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    values = {
        "VAR_DIR": str(tmp_path), "PROGRESS_INTERVAL_S": "0", "S3_BUCKET": BUCKET,
        "S3_ENDPOINT_URL": moto.endpoint, "S3_ACCESS_KEY_ID": "testing", "S3_SECRET_ACCESS_KEY": "testing",
        "UPLOAD_ATTEMPTS": str(attempts), "UPLOAD_BACKOFF_S": str(backoff),
    }
    for name, value in values.items():
        monkeypatch.setenv(f"FFLAB_{name}", value)
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.upload_attempts == attempts and settings.upload_backoff_s == backoff
    upgrade_database(settings.resolved_database_url)
    dispatcher = RecordingDispatcher()
    monkeypatch.setattr(service, "dispatcher_for", lambda settings: dispatcher)
    return tasks, settings, dispatcher


def submit_one_run(settings, dispatcher) -> tuple[str, int, str]:
    spec = build_spec(TINY["preset"], {**{k: v for k, v in TINY.items() if k != "preset"}, "models": ["bp"]})
    with session_scope(settings.resolved_database_url) as session:
        user = accounts.create_user(session, "alice")
        experiment_id = jobs.create_experiment(session, settings, user, spec, "private").id
    with get_sessionmaker(settings.resolved_database_url)() as session:
        jobs.register_worker(session, "pool", "pool@test", "test", 1, ["cpu"])  # a slot for dispatch
        jobs.dispatch(session, settings, dispatcher)
    assert len(dispatcher.runs) == 1
    run_pk, _, task_id = dispatcher.runs[0]
    return experiment_id, run_pk, task_id


def watch_uploads(tasks, monkeypatch: pytest.MonkeyPatch, settings, run_pk: int) -> list[tuple[float, str]]:
    """Records (time, the run's status) at each upload try: never 'succeeded' before the upload."""
    seen: list[tuple[float, str]] = []
    import worker.run_support as run_support

    real_put_files = run_support.put_files

    def put_files(*args, **kwargs):
        with session_scope(settings.resolved_database_url) as session:
            seen.append((time.monotonic(), session.get(Run, run_pk).status))
        return real_put_files(*args, **kwargs)

    monkeypatch.setattr(run_support, "put_files", put_files)
    return seen


def stop_storage_after_training(monkeypatch: pytest.MonkeyPatch, moto: Moto, then=None) -> None:
    real_execute = experiment_pipeline.execute_run

    def execute(*args, **kwargs):
        record = real_execute(*args, **kwargs)
        moto.stop()  # storage goes away as the run finishes
        if then is not None:
            then()
        return record

    monkeypatch.setattr(experiment_pipeline, "execute_run", execute)


def test_upload_is_retried_until_storage_comes_back(tmp_path, monkeypatch, moto: Moto, data_root) -> None:
    tasks, settings, dispatcher = configure(tmp_path, monkeypatch, moto, attempts=6, backoff=0.5)
    experiment_id, run_pk, task_id = submit_one_run(settings, dispatcher)
    seen = watch_uploads(tasks, monkeypatch, settings, run_pk)
    restarted = threading.Event()

    def restart_later() -> None:
        def restart() -> None:
            time.sleep(1.5)
            moto.start()
            restarted.set()
        threading.Thread(target=restart, daemon=True).start()

    stop_storage_after_training(monkeypatch, moto, then=restart_later)
    run_as_worker(tasks.run_task, run_pk, task_id)
    assert restarted.is_set() and moto.starts == 2

    assert len(seen) >= 2, "the first upload should have failed and been retried"
    assert len(seen) < 6, "the tries should have stopped once the storage was back"
    assert all(status == "running" for _, status in seen)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        run = session.get(Run, run_pk)
        assert run.status == "succeeded" and run.error is None and run.record is not None
        artifacts = list(session.query(Artifact).filter_by(experiment_id=experiment_id))
    assert artifacts, "the run recorded no artifacts"
    client = moto.client()
    stored = {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert {artifact.key for artifact in artifacts} <= stored
    for artifact in artifacts:
        body = client.get_object(Bucket=BUCKET, Key=artifact.key)["Body"].read()
        assert len(body) == artifact.size
        assert hashlib.sha256(body).hexdigest() == artifact.sha256, artifact.name
    assert dispatcher.aggregations == [experiment_id]


def test_run_fails_with_a_reason_when_storage_never_comes_back(tmp_path, monkeypatch, moto: Moto,
                                                               data_root) -> None:
    tasks, settings, dispatcher = configure(tmp_path, monkeypatch, moto, attempts=3, backoff=0.2)
    experiment_id, run_pk, task_id = submit_one_run(settings, dispatcher)
    seen = watch_uploads(tasks, monkeypatch, settings, run_pk)
    stop_storage_after_training(monkeypatch, moto)
    run_as_worker(tasks.run_task, run_pk, task_id)

    assert [status for _, status in seen] == ["running"] * 3
    # exponential backoff between the tries: >= 0.2 s, then >= 0.4 s
    gaps = [b - a for (a, _), (b, _) in zip(seen, seen[1:])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4
    with get_sessionmaker(settings.resolved_database_url)() as session:
        run = session.get(Run, run_pk)
        assert run.status == "failed"
        assert run.error.startswith("could not store artifacts: 3 tries failed on s3://"), run.error
        assert run.record is None
        assert session.query(Artifact).filter_by(experiment_id=experiment_id).count() == 0
        experiment = session.get(Experiment, experiment_id)
        assert experiment.status == "failed" and "could not store artifacts" in experiment.error
    assert dispatcher.aggregations == []
