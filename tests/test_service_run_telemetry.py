"""Following a run while it trains (issue 29): its losses served before it ends
(the API with ``since``, the client, ``fflab metrics --follow``), its log with a
failure's traceback and no key or secret, the code version that trained it, and a
device no worker here can give refused at submission. On the embedded default
(``fflab serve``) and on PostgreSQL + Redis; the log's capture, redaction and cap
also in this process, with known text."""

from __future__ import annotations

import logging
import secrets
import threading
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from fflab.cli import main
from fflab.models.common import TrainingProgress
from fflab.run_logs import CappedText, Redactor, RunLogCapture, settings_secrets
from fflab.settings import Settings, get_settings
from fflab.versions import code_version
from service_helpers import TINY, Serve, backend_settings, poll_experiment, wait_for
from worker.run_telemetry import loss_point

pytest_plugins = ["service_support"]

FINAL = ("succeeded", "failed", "cancelled")
# One FF run of three layers of 40 epochs: long enough to be watched while it trains.
LONG = {**TINY, "name": "long", "models": ["ff"], "ff": {"epochs": 40, "batch_size": 100, "learning_rate": 0.003}}
BACKENDS = [pytest.param("sqlite", id="embedded_default"), pytest.param("postgresql", id="postgresql_redis")]


def planted_key() -> str:
    return "fflab_" + secrets.token_urlsafe(32)[:43]


# ----------------------------------------------------------------------------- in this process


def test_capped_text_keeps_its_head_and_tail_and_counts_what_it_cut() -> None:
    lines = [f"line {i:04d} " + "x" * 40 + "\n" for i in range(200)]  # 51 bytes each
    capped = CappedText(1024)
    for line in lines:
        capped.write(line)
    text = capped.text()
    head, _, tail = text.partition("\n[... ")
    assert head.startswith("line 0000") and len(head.encode()) == 512
    assert tail.endswith("line 0199 " + "x" * 40 + "\n")
    kept_tail = tail.split(" ...]\n", 1)[1]
    assert len(kept_tail.encode()) == 512
    assert capped.dropped_bytes == 200 * 51 - 1024
    assert f"{capped.dropped_bytes} bytes cut" in text
    small = CappedText(1024)
    small.write("short\n")
    assert small.text() == "short\n" and small.dropped_bytes == 0


def test_redaction_of_keys_settings_secrets_and_url_passwords() -> None:
    key = planted_key()
    settings = Settings(s3_secret_access_key="s3-very-secret", metrics_token="scrape-token-123",
                        database_url="postgresql+psycopg://fflab:db-pass-456@db:5432/fflab",
                        broker_url="redis://:redis-pass-789@redis:6379/0")
    assert {"s3-very-secret", "scrape-token-123", "db-pass-456", "redis-pass-789"} <= set(settings_secrets(settings))
    redact = Redactor(settings_secrets(settings))
    text = redact(f"key {key}; s3 s3-very-secret; token scrape-token-123; "
                  f"url redis://:redis-pass-789@redis:6379/0; other http://u:p4ss@h/x")
    for secret in (key, "s3-very-secret", "scrape-token-123", "redis-pass-789", "p4ss"):
        assert secret not in text
    assert f"key {key[:14]}[redacted]" in text and "http://u:[redacted]@h/x" in text


def test_run_log_capture_keeps_this_threads_records_warnings_and_tracebacks_redacted() -> None:
    key = planted_key()
    logger = logging.getLogger("fflab.test_run_log")
    logger.setLevel(logging.INFO)
    with RunLogCapture(Redactor(["hunter2-secret"]), 64 * 1024) as capture:
        logger.info("training with %s", key)
        warnings.warn("a warning of this run", UserWarning, stacklevel=1)
        other = threading.Thread(target=lambda: logger.warning("another run's line"))
        other.start()
        other.join()
        try:
            raise RuntimeError(f"failed with hunter2-secret and {key}")
        except RuntimeError:
            logger.exception("the run failed")
    logger.info("after the capture")
    text, dropped, _ = capture.text()
    assert dropped == 0
    assert "training with fflab_" in text and "a warning of this run" in text
    assert "Traceback (most recent call last)" in text and "RuntimeError: failed with [redacted] and" in text
    assert key not in text and "hunter2-secret" not in text
    assert "another run's line" not in text and "after the capture" not in text


def test_run_log_capture_routes_warnings_after_someone_put_showwarning_back() -> None:
    """captureWarnings(True) was on already (an earlier run in this worker) and
    something restored warnings.showwarning since (catch_warnings does): the
    capture still gets the run's warnings."""
    with warnings.catch_warnings():
        logging.captureWarnings(True)
    with RunLogCapture(Redactor(), 64 * 1024) as capture:
        warnings.warn("a warning after showwarning was put back", UserWarning, stacklevel=1)
    assert "a warning after showwarning was put back" in capture.text()[0]


def test_run_log_capture_holds_its_cap() -> None:
    logger = logging.getLogger("fflab.test_run_log_cap")
    logger.setLevel(logging.INFO)
    with RunLogCapture(Redactor(), 2048) as capture:
        logger.info("first line")
        for i in range(500):
            logger.info("epoch %d of a long run", i)
        try:
            raise ValueError("the end")
        except ValueError:
            logger.exception("failed at the end")
    text, dropped, _ = capture.text()
    assert dropped > 0 and len(text.encode()) <= 2048 + len(f"\n[... {dropped} bytes cut (FFLAB_RUN_LOG_MAX_BYTES) ...]\n")
    assert "first line" in text and text.rstrip().endswith("ValueError: the end")


def test_loss_positions_run_through_the_stages() -> None:
    per_layer = [loss_point(TrainingProgress("ff", epoch, 3, 0.5, layer, 2)) for layer in (0, 1) for epoch in (1, 2, 3)]
    assert [(p["position"], p["stage"], p["epoch"]) for p in per_layer] == [
        (0, 1, 1), (1, 1, 2), (2, 1, 3), (3, 2, 1), (4, 2, 2), (5, 2, 3)]
    assert loss_point(TrainingProgress("ff", 2, 3, 0.5, 0, 1))["stage"] is None  # one layer: the network
    assert (loss_point(TrainingProgress("bp", 4, 9, 0.5))["position"], loss_point(
        TrainingProgress("bp", 4, 9, 0.5))["stage"]) == (3, None)


def test_code_version_names_what_trains() -> None:
    version = code_version("cpu")
    assert set(version) == {"fflab", "git_commit", "torch", "numpy", "python", "device"}
    assert version["device"] == "cpu" and version["torch"] and version["numpy"] and version["python"].count(".") == 2
    assert version["git_commit"] is None or len(version["git_commit"].removesuffix("+dirty")) == 40


# ----------------------------------------------------------------------------- through the service


@pytest.fixture()
def cli_env(monkeypatch: pytest.MonkeyPatch):
    """Point the CLI's client verbs (in this process) at a server."""
    def point(url: str, key: str) -> None:
        monkeypatch.setenv("FFLAB_API_URL", url)
        monkeypatch.setenv("FFLAB_API_KEY", key)
        get_settings.cache_clear()

    yield point
    get_settings.cache_clear()


@pytest.mark.parametrize("backend", BACKENDS)
def test_follow_a_run_while_it_trains(backend: str, serves: list[Serve], tmp_path: Path, pg_database,
                                      redis_prefix: str, cli_env) -> None:
    """A spec for a GPU on a server without one is a 422 naming device; a run's losses
    are served while it trains (accuracy null, ``since`` gives only the newer ones),
    ``fflab metrics --follow`` prints every epoch and ends with the run, and the
    finished run has the same shape plus its accuracy, its code version and its log."""
    serve = Serve(tmp_path, "serve", progress_interval_s="0.2", stop_check_interval_s="0.2",
                  **backend_settings(backend, pg_database, redis_prefix))
    serves.append(serve)
    serve.wait_up(timeout=240)
    with serve.client() as api:
        refused = api.post("/v1/experiments", json={**LONG, "device": "cuda"})
        assert refused.status_code == 422, refused.text
        assert "device: 'cuda' needs a GPU worker and none has registered" in refused.json()["message"]
        assert [problem["field"] for problem in refused.json()["details"]] == ["device"]
        assert "(cpu)" in refused.json()["message"]  # what is registered: serve's worker, a CPU

        experiment_id = api.post("/v1/experiments", json=LONG).json()["id"]
        base = f"/v1/experiments/{experiment_id}/runs/ff-mnist-seed0"
        early = api.get(f"{base}/metrics")
        assert early.status_code == 200  # no longer 409 before the run has succeeded
        assert early.json()["accuracy"] is None and early.json()["final"] is False

        def live() -> dict | None:
            body = api.get(f"{base}/metrics").json()
            return body if body["status"] == "running" and 2 <= body["next_since"] < 120 else None

        first = wait_for(live, 120, "losses of the running run", 0.1)
        assert first["accuracy"] is None and first["n_test"] is None
        assert first["loss"][0]["layer"] == 1 and first["loss"][0]["epochs"][:2] == [1, 2]
        assert all(isinstance(x, float) for x in first["loss"][0]["loss"])
        assert len(first["loss"][0]["recorded_at"]) == len(first["loss"][0]["loss"])

        newer = wait_for(lambda: (lambda b: b if b["loss"] else None)(
            api.get(f"{base}/metrics", params={"since": first["next_since"]}).json()), 120, "newer losses", 0.1)
        assert newer["since"] == first["next_since"] and newer["next_since"] > first["next_since"]
        assert sum(len(s["loss"]) for s in newer["loss"]) == newer["next_since"] - newer["since"]
        assert api.get(f"{base}/metrics", params={"since": -1}).status_code == 422
        running = api.get(base).json()
        assert running["code_version"]["device"] == "cpu" and running["code_version"]["torch"]

        cli_env(serve.url, serve.key())
        followed = CliRunner().invoke(main, ["metrics", experiment_id, "ff-mnist-seed0", "--follow",
                                             "--interval", "0.2"], catch_exceptions=False)
        assert followed.exit_code == 0, followed.output
        lines = followed.output.splitlines()
        assert lines[0] == "layer 1 epoch 1: loss " + lines[0].rsplit(" ", 1)[1]
        assert sum(line.startswith("layer ") for line in lines) == 120  # 3 layers x 40 epochs, each once
        assert lines[-2].startswith("layer 3 epoch 40: loss ")
        assert lines[-1].startswith("ff-mnist-seed0: succeeded, accuracy ")

        assert poll_experiment(api, experiment_id, FINAL, timeout=120)["status"] == "succeeded"
        final = api.get(f"{base}/metrics").json()
        assert final["final"] and final["next_since"] == 120 and 0 <= final["accuracy"] <= 1
        assert [(s["layer"], len(s["loss"])) for s in final["loss"]] == [(1, 40), (2, 40), (3, 40)]
        assert final["loss"][0]["loss"][:len(first["loss"][0]["loss"])] == pytest.approx(first["loss"][0]["loss"])
        assert [line.split("loss ")[1] for line in lines[:3]] == [f"{x:.6g}" for x in final["loss"][0]["loss"][:3]]
        log = api.get(f"{base}/log").json()
        assert log["final"] and log["dropped_bytes"] == 0
        assert "code: fflab " in log["text"] and "run ff-mnist-seed0 of experiment" in log["text"]
        assert "ended succeeded" in log["text"] and "ff: layer 3/3 trained, 40 epochs, loss " in log["text"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_runs_log_has_its_traceback_and_no_key(backend: str, serves: list[Serve], tmp_path: Path,
                                                         pg_database, redis_prefix: str, cli_env) -> None:
    """The data root's path holds an API key and the server's secret, so the run's
    error and traceback do: the log (API, ``fflab logs``) has the traceback with both
    redacted, and so has the run's error."""
    key, secret = planted_key(), f"planted-{secrets.token_hex(8)}"
    data_root = tmp_path / f"data-{key}-{secret}"
    data_root.mkdir()
    serve = Serve(tmp_path, "serve", progress_interval_s="0.2", data_root=str(data_root), secret_key=secret,
                  **backend_settings(backend, pg_database, redis_prefix))
    serves.append(serve)
    serve.wait_up(timeout=240)
    with serve.client() as api:
        experiment_id = api.post("/v1/experiments", json={**TINY, "models": ["bp"]}).json()["id"]
        assert poll_experiment(api, experiment_id, FINAL, timeout=120)["status"] == "failed"
        run = api.get(f"/v1/experiments/{experiment_id}/runs/bp-mnist-seed0").json()
        assert run["error"].startswith("DataError: mnist is not in the data root")
        log = api.get(f"/v1/experiments/{experiment_id}/runs/bp-mnist-seed0/log").json()
    assert log["final"] and log["status"] == "failed"
    text = log["text"]
    assert "Traceback (most recent call last)" in text and "fflab.data.DataError: mnist is not in the data root" in text
    assert "ended failed" in text
    for planted in (key, secret):
        assert planted not in text and planted not in run["error"]
    assert f"{key[:14]}[redacted]" in text and f"{key[:14]}[redacted]" in run["error"]

    cli_env(serve.url, serve.key())
    printed = CliRunner().invoke(main, ["logs", experiment_id, "bp-mnist-seed0"], catch_exceptions=False)
    assert printed.exit_code == 0 and printed.output == text


# ----------------------------------------------------------------------------- the ETA and the wait bar


def test_the_eta_covers_analysis_measured_on_the_experiments_finished_runs(tmp_path: Path) -> None:
    """A sibling run that took 10 s to train and 20 s to evaluate and analyse makes
    the ratio 2: at half of 10 s of training the ETA is 10 s of training left plus
    40 s of analysis; at the last epoch the phase is analysing and the ETA 20 s."""
    import time

    from fflab import accounts, jobs
    from fflab.db import Run, get_sessionmaker, session_scope
    from fflab.db.migrate import upgrade_database
    from fflab.spec import build_spec
    from worker.run_support import ProgressWriter

    settings = Settings(var_dir=tmp_path)
    upgrade_database(settings.resolved_database_url)
    spec = build_spec("quick", {**{k: v for k, v in TINY.items() if k != "preset"}, "models": ["ff"], "seeds": [0, 1]})
    with session_scope(settings.resolved_database_url) as session:
        experiment = jobs.create_experiment(session, settings, accounts.create_user(session, "alice"), spec, "private")
        done, running = experiment.runs
        done.status, running.status = "succeeded", "running"
        done.metrics = {"timings": {"train_seconds": 10.0, "evaluate_seconds": 2.0, "analyse_seconds": 18.0}}
        running_pk = running.id
    writer = ProgressWriter(settings.resolved_database_url, running_pk, interval=1000.0)
    writer.started = time.monotonic() - 10.0  # ten seconds of training so far

    def progress() -> dict:
        with get_sessionmaker(settings.resolved_database_url)() as session:
            return session.get(Run, running_pk).progress

    writer(TrainingProgress("ff", 2, 2, 0.3, 0, 2))  # half: layer 1 of 2 done
    half = progress()
    assert half["phase"] == "training" and half["fraction_done"] == 0.5
    assert half["eta_seconds"] == pytest.approx(10.0 + 2.0 * 20.0, abs=0.5)
    assert half["run_fraction_done"] == pytest.approx(10.0 / 60.0, abs=0.01)
    writer(TrainingProgress("ff", 1, 2, 0.3, 1, 2))  # within the interval: not written
    assert progress() == half
    writer(TrainingProgress("ff", 2, 2, 0.2, 1, 2))  # the last epoch: written whatever the interval
    last = progress()
    assert last["phase"] == "analysing" and last["fraction_done"] == 1.0
    assert last["eta_seconds"] == pytest.approx(2.0 * 10.0, abs=0.5)

    from api.run_telemetry import remaining_seconds
    assert 10.0 < remaining_seconds(last) <= last["eta_seconds"]  # counted down to ends_at
    assert remaining_seconds({"eta_seconds": 7.0}) == 7.0  # reported before ends_at existed


def test_the_wait_bar_counts_running_runs_by_their_share() -> None:
    from fflab.cli.service import bar_detail, run_step, runs_done_so_far

    running = [{"run_id": "ff-mnist-seed0", "layer": 2, "layers": 3, "epoch": 5, "epochs": 40,
                "phase": "training", "run_fraction_done": 0.25},
               {"run_id": "bp-mnist-seed0", "layer": None, "layers": None, "epoch": 20, "epochs": 20,
                "phase": "analysing", "run_fraction_done": 0.8}]
    experiment = {"status": "running", "progress": {"runs_done": 3, "runs_total": 6, "running": running}}
    assert runs_done_so_far(experiment["progress"]) == pytest.approx(4.05)
    assert run_step(running[0]) == "layer 2/3 epoch 5/40" and run_step(running[1]) == "analysing"
    assert bar_detail(experiment) == "ff-mnist-seed0 layer 2/3 epoch 5/40 +1 running"
    assert len(bar_detail(experiment, width=20)) <= 20
    assert bar_detail({"status": "queued", "progress": {"running": []}}) == "queued"
