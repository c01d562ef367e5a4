"""Faults a run survives, in process: a real worker task (Celery's eager apply) on
SQLite and a local artifact folder, with the broker replaced by a recorder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fflab import accounts, jobs
from fflab.db import Experiment, Result, Run, get_sessionmaker, session_scope
from fflab.db.migrate import upgrade_database
from fflab.models.common import TrainingProgress
from fflab.pipeline import experiment as experiment_pipeline
from fflab.settings import get_settings
from fflab.spec import build_spec
from service_helpers import TINY, RecordingDispatcher


@pytest.fixture()
def worker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path):
    """worker.tasks configured for a SQLite database and artifact folder under tmp_path."""
    import worker.service as service
    import worker.tasks as tasks

    for name in ("FFLAB_DATABASE_URL", "FFLAB_BROKER_URL", "FFLAB_S3_BUCKET", "FFLAB_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FFLAB_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FFLAB_PROGRESS_INTERVAL_S", "0")
    get_settings.cache_clear()
    settings = get_settings()
    upgrade_database(settings.resolved_database_url)
    dispatcher = RecordingDispatcher()
    monkeypatch.setattr(service, "dispatcher_for", lambda settings: dispatcher)
    yield tasks, settings, dispatcher
    get_settings.cache_clear()


def run_as_worker(task, argument, task_id: str) -> None:
    """The task's body as a worker runs it for this delivery (no result backend)."""
    task.push_request(id=task_id, args=[argument])
    try:
        task(argument)
    finally:
        task.pop_request()


def test_non_finite_loss_is_a_readable_error() -> None:
    from worker.run_support import NonFiniteLoss, check_loss

    check_loss(TrainingProgress("ff", 3, 5, 0.7, 1, 3))
    with pytest.raises(NonFiniteLoss, match="ff: loss became NaN at layer 2 epoch 3"):
        check_loss(TrainingProgress("ff", 3, 5, math.nan, 1, 3))
    with pytest.raises(NonFiniteLoss, match="bp: loss became infinite at epoch 4"):
        check_loss(TrainingProgress("bp", 4, 5, math.inf))


def test_a_run_that_raises_fails_alone_with_its_reason(worker_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three runs: one raises (bad data), one's loss becomes NaN, one trains for real.
    The failures keep their reasons, the third run still succeeds, and the experiment
    ends failed once all three are final and the third's partial results are
    aggregated, naming both reasons; GET /runs shows them."""
    tasks, settings, dispatcher = worker_env
    real_execute = experiment_pipeline.execute_run

    def faulty_execute(spec, key, run_dir, progress=None, should_stop=None, **checkpointing):
        if key.seed == 0:
            raise ValueError("bad data: label 11 out of range")
        if key.seed == 1:
            progress(TrainingProgress("bp", 2, 5, 0.5))
            progress(TrainingProgress("bp", 3, 5, math.nan))
            raise AssertionError("not reached: the progress callback raises")
        return real_execute(spec, key, run_dir, progress=progress, should_stop=should_stop, **checkpointing)

    monkeypatch.setattr(experiment_pipeline, "execute_run", faulty_execute)
    spec = build_spec(TINY["preset"], {**{k: v for k, v in TINY.items() if k != "preset"},
                                       "models": ["bp"], "seeds": [0, 1, 2]})
    with session_scope(settings.resolved_database_url) as session:
        user = accounts.create_user(session, "alice")
        key = accounts.issue_key(session, user)
        experiment_id = jobs.create_experiment(session, settings, user, spec, "private").id
    with get_sessionmaker(settings.resolved_database_url)() as session:
        jobs.register_worker(session, "pool", "pool@test", "test", 1, ["cpu"], concurrency=3)  # 3 slots
        jobs.dispatch(session, settings, dispatcher)
    assert len(dispatcher.runs) == 3
    for run_pk, _, task_id in dispatcher.runs:
        run_as_worker(tasks.run_task, run_pk, task_id)

    with get_sessionmaker(settings.resolved_database_url)() as session:
        runs = {run.seed: run for run in session.query(Run).filter_by(experiment_id=experiment_id)}
        experiment = session.get(Experiment, experiment_id)
        assert runs[0].status == "failed" and runs[0].error == "ValueError: bad data: label 11 out of range"
        assert runs[1].status == "failed" and "bp: loss became NaN at epoch 3" in runs[1].error
        assert runs[2].status == "succeeded" and runs[2].record is not None
        assert experiment.status == "running"  # its partial aggregation is queued
    assert dispatcher.aggregations == [experiment_id]
    run_as_worker(tasks.aggregate_task, experiment_id, "aggregate")
    with get_sessionmaker(settings.resolved_database_url)() as session:
        experiment = session.get(Experiment, experiment_id)
        result = session.get(Result, experiment_id)
        assert result is not None and result.results["partial"] is True
        assert result.results["runs_included"] == ["bp-mnist-seed2"]
        assert [(run["run_id"], run["status"]) for run in result.results["runs_missing"]] == [
            ("bp-mnist-seed0", "failed"), ("bp-mnist-seed1", "failed")]
        assert result.results["runs_missing"][0]["error"] == "ValueError: bad data: label 11 out of range"
        assert experiment.status == "failed"
        assert experiment.error.startswith("2 of 3 runs failed: run bp-mnist-seed0: ValueError: bad data")
        assert "run bp-mnist-seed1: NonFiniteLoss: bp: loss became NaN at epoch 3" in experiment.error

    from api.main import create_app

    with TestClient(create_app(settings)) as client:
        listed = client.get(f"/v1/experiments/{experiment_id}/runs", headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200
    reasons = {run["run_id"]: (run["status"], run["error"]) for run in listed.json()["items"]}
    assert reasons["bp-mnist-seed0"] == ("failed", "ValueError: bad data: label 11 out of range")
    assert reasons["bp-mnist-seed1"][0] == "failed" and "NaN" in reasons["bp-mnist-seed1"][1]
    assert reasons["bp-mnist-seed2"] == ("succeeded", None)
