"""The worker's service layer: what each Celery task hands over to (worker.tasks
holds only the tasks). A run's delivery (claim, train, upload, record, end), an
experiment's aggregation, a re-analysis, and the sweep that repairs what a lost
worker, a lost broker message or a failed send left behind.

Each task trains or analyses in a temporary folder laid out like a results folder
(fflab.results), then copies the files to artifact storage and their documents to
the database. The database is the source of truth: a task whose run or experiment
was cancelled or deleted meanwhile ends without effect. Every state transition is
a function of fflab.jobs; the run's companions (progress, heartbeat, checkpoint,
uploads) are in worker.run_support.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from fflab import jobs, queueing
from fflab.db import (
    ACTIVE_STATUSES,
    Analysis,
    Artifact,
    Ensemble,
    Experiment,
    Result,
    Run,
    get_sessionmaker,
    session_scope,
    utcnow,
)
from fflab.models.common import Cancelled
from fflab.pipeline import documents, recorded, snapshots
from fflab.pipeline import experiment as experiment_pipeline
from fflab.representations import REPRESENTATIONS_KIND, experiment_kind, limits_from_settings, read_representations
from fflab.results import MissingRun
from fflab.settings import Settings
from fflab.spec import AnalysisSpec, ExperimentSpec, RunKey
from fflab.storage import (
    UPLOADED_REPRESENTATIONS,
    LowDisk,
    Storage,
    StorageError,
    check_disk,
    experiment_prefix,
    get_storage,
)
from worker import gpu_runs, run_support
from worker.dispatch import (
    ANALYSIS_ID_PREFIX,
    dispatcher_for,
    experiment_of_aggregate_task,
    redis_task_ids,
    subject_of_task,
)
from worker.run_support import (
    ArtifactsNotStored,
    DiskCheck,
    Heartbeat,
    ProgressWriter,
    StopCheck,
    StoredCheckpoint,
    StoredFile,
    delete_checkpoint,
    files_under,
    heartbeat_interval,
    preemption_check,
    put_files,
    put_files_retrying,
)
from worker.run_telemetry import RunTelemetry

log = logging.getLogger(__name__)

# Infrastructure errors worth another delivery; anything else fails the run at once.
TRANSIENT = (OperationalError, StorageError, ConnectionError)
# The run documents that also have a column of the Run row (read by /runs/{id} and
# the results routes); every document is an artifact besides (fflab.pipeline.documents).
DOCUMENT_COLUMNS = {
    "metrics.json": "metrics",
    "shared_units.json": "shared_units",
    "weight_stats.json": "weight_stats",
}


def execute_run_task(settings: Settings, run_pk: int, task_id: str) -> str | None:
    """A run task's delivery: a GPU run first waits for its memory to be admitted
    (worker.gpu_runs: it may go back to the queue, or fail if it can never fit);
    then claim the run, train, store and record it, end it. Returns how the run
    ended, as it was recorded (None when this delivery did not hold the run to its end)."""
    if run_kind(settings, run_pk) == REPRESENTATIONS_KIND:  # an uploaded file: analysed, not trained
        return claim_and_analyse(settings, run_pk, task_id)
    with gpu_runs.admitted_run(settings, run_pk, task_id, partial(end_run, settings),
                               partial(dispatch_or_leave_to_sweep, settings)) as admitted:
        return claim_and_train(settings, run_pk, task_id) if admitted else None


def run_kind(settings: Settings, run_pk: int) -> str:
    """The kind of the run's experiment (fflab.representations.experiment_kind)."""
    with session_scope(settings.resolved_database_url) as session:
        spec = session.scalar(select(Experiment.spec).join(Run, Run.experiment_id == Experiment.id)
                              .where(Run.id == run_pk))
    return experiment_kind(spec or {})


def claim_and_analyse(settings: Settings, run_pk: int, task_id: str) -> str | None:
    """The delivery of the one run of an experiment of kind ``representations``:
    claim it, fetch the uploaded file from storage, analyse it as a recorded run
    (fflab.pipeline.recorded: the registry's documents that apply), store and
    record its files and documents as a trained run's, end it (its aggregation
    follows as for any experiment). No GPU and no memory admission: nothing is
    trained; the file was held to FFLAB_REPRESENTATIONS_MAX_* when it was uploaded."""
    with session_scope(settings.resolved_database_url) as session:
        worker_id = run_support.presence.id if run_support.presence else None
        run = jobs.claim_run(session, settings, run_pk, task_id, worker_id)
        if run is not None:
            spec, key, experiment_id = dict(run.experiment.spec), run_key(run), run.experiment_id
    dispatch_or_leave_to_sweep(settings)
    if run is None:
        log.info("task %s: its run is no longer waiting for it (cancelled, ended or requeued)", task_id)
        return None
    return deliver(settings, run_pk, task_id, key, experiment_id, "cpu", "analysing the uploaded representations",
                   lambda telemetry: analyse_and_store(settings, run_pk, task_id, spec, key, experiment_id, telemetry))


def analyse_and_store(settings: Settings, run_pk: int, task_id: str, spec: dict[str, Any], key: RunKey,
                      experiment_id: str, telemetry: RunTelemetry) -> str | None:
    """Analyse a claimed run of uploaded representations and store it (see
    ``train_and_store``, whose end it shares)."""
    try:
        check_disk(settings, "before the run started")
    except LowDisk as error:
        log.error("run %s of experiment %s not started: %s", key.run_id, experiment_id, error)
        end_run(settings, run_pk, "failed", f"LowDisk: {error}", task_id)
        return None
    storage = get_storage(settings)
    with tempfile.TemporaryDirectory(prefix="fflab-recorded-") as tmp:
        base = Path(tmp)
        run_dir = base / "runs" / key.run_id
        try:
            upload = base / "upload.npz"
            storage.download(f"{experiment_prefix(experiment_id)}/{UPLOADED_REPRESENTATIONS}", upload)
            representations = read_representations(upload, limits_from_settings(settings))
            upload.unlink()
            recorded.write_recorded(representations, base, str(spec.get("name") or experiment_id),
                                    AnalysisSpec.model_validate(spec.get("analysis") or {}))
            del representations
            record = recorded.analyse_recorded_run(base)
        except TRANSIENT:
            raise
        except Exception as error:
            log.exception("run %s of experiment %s failed", key.run_id, experiment_id)
            end_run(settings, run_pk, "failed", telemetry.redact(f"{type(error).__name__}: {error}"), task_id)
            return None
        shutil.copyfile(base / recorded.RECORDING_FILE, run_dir / recorded.RECORDING_FILE)  # stored with the run
        return store_and_record(settings, run_pk, task_id, key, experiment_id, base, run_dir,
                                files_under(run_dir, base), record)


def claim_and_train(settings: Settings, run_pk: int, task_id: str) -> str | None:
    """Claim the run for this delivery, train, store and record it, end it (see
    ``execute_run_task``)."""
    with session_scope(settings.resolved_database_url) as session:
        worker_id = run_support.presence.id if run_support.presence else None
        run = jobs.claim_run(session, settings, run_pk, task_id, worker_id)
        if run is not None:
            spec = ExperimentSpec.model_validate(run.experiment.spec)
            key, experiment_id = run_key(run), run.experiment_id
    dispatch_or_leave_to_sweep(settings)  # this run left the broker: a slot is free
    if run is None:
        log.info("task %s: its run is no longer waiting for it (cancelled, ended or requeued)", task_id)
        return None
    return deliver(settings, run_pk, task_id, key, experiment_id, spec.device, "training",
                   lambda telemetry: train_and_store(settings, run_pk, task_id, spec, key, experiment_id, telemetry))


def deliver(settings: Settings, run_pk: int, task_id: str, key: RunKey, experiment_id: str, device: str,
            doing: str, work: Callable[[RunTelemetry], str | None]) -> str | None:
    """A claimed run's delivery: ``work`` (train or analyse, then store and record)
    under its telemetry (losses, log, code version) and heartbeat, then the run
    ended with the outcome ``work`` returns (None: ended there already); returns
    the outcome as it was recorded."""
    started = time.monotonic()
    with RunTelemetry(settings, run_pk, task_id, device) as telemetry:
        log.info("run %s of experiment %s started: %s", key.run_id, experiment_id, doing)
        with Heartbeat(settings.resolved_database_url, run_pk, task_id,
                       heartbeat_interval(settings.run_heartbeat_timeout_s)):
            outcome = work(telemetry)
        if outcome is not None:
            end_run(settings, run_pk, outcome, task_id=task_id)
        recorded = recorded_outcome(settings, run_pk, task_id)
        log.info("run %s of experiment %s ended %s after %.1f s", key.run_id, experiment_id,
                 recorded or "elsewhere (requeued or deleted meanwhile)", time.monotonic() - started)
    return recorded


def train_and_store(settings: Settings, run_pk: int, task_id: str, spec: ExperimentSpec, key: RunKey, experiment_id: str,
                    telemetry: RunTelemetry | None = None) -> str | None:
    """Train, upload and record a claimed run; returns the status to end it with
    ("succeeded" or "cancelled"), or None when it was ended here already (failed,
    cancelled while training), deleted, or requeued for another task meanwhile.
    ``telemetry`` keeps each epoch's loss and the run's log (worker.run_telemetry)."""
    try:  # fail it while there is still room to record why (FFLAB_MIN_FREE_DISK_BYTES)
        check_disk(settings, "before the run started")
    except LowDisk as error:
        log.error("run %s of experiment %s not started: %s", key.run_id, experiment_id, error)
        end_run(settings, run_pk, "failed", f"LowDisk: {error}", task_id)
        return None
    with tempfile.TemporaryDirectory(prefix="fflab-run-") as tmp:
        base = Path(tmp)
        run_dir = base / "runs" / key.run_id
        progress = ProgressWriter(settings.resolved_database_url, run_pk, settings.progress_interval_s)
        # Outside run_dir: the checkpoint is not one of the run's artifacts.
        checkpoint = StoredCheckpoint(get_storage(settings), experiment_id, key, base / "checkpoint.pt", progress,
                                      preemption_check(settings.resolved_database_url, run_pk, task_id))
        checkpoint.fetch()
        try:
            record = experiment_pipeline.execute_run(
                spec, key, run_dir,
                progress=progress if telemetry is None else telemetry.after(progress),
                should_stop=StopCheck(settings.resolved_database_url, run_pk, task_id, settings.stop_check_interval_s,
                                      DiskCheck(settings, settings.disk_check_interval_s)),
                checkpoint=checkpoint,
                checkpoint_every=settings.checkpoint_every_epochs,
                data_root=settings.data_root,
            )
        except Cancelled:
            end_run(settings, run_pk, "cancelled", task_id=task_id)
            return None
        except queueing.Preempted:
            requeue_preempted(settings, run_pk, task_id)
            return None
        except TRANSIENT:
            raise
        except Exception as error:
            if gpu_runs.is_out_of_memory(error):  # requeued with its reason, or failed after the last try
                if gpu_runs.requeue_out_of_memory(settings, run_pk, task_id, error) in ("failed", "cancelled"):
                    delete_checkpoint(get_storage(settings), experiment_id, key.run_id)
                dispatch_or_leave_to_sweep(settings)
                return None
            log.exception("run %s of experiment %s failed", key.run_id, experiment_id)
            message = f"{type(error).__name__}: {error}"
            end_run(settings, run_pk, "failed", message if telemetry is None else telemetry.redact(message), task_id)
            return None
        return store_and_record(settings, run_pk, task_id, key, experiment_id, base, run_dir,
                                files_under(run_dir, base), record)


def store_and_record(settings: Settings, run_pk: int, task_id: str, key: RunKey, experiment_id: str, base: Path,
                     run_dir: Path, names: list[str], record: dict[str, Any]) -> str | None:
    """The end of a run's delivery: its files ``names`` (under ``base``) stored,
    then its artifacts and documents recorded; returns the status to end it with,
    or None (failed here, requeued for another task, or deleted meanwhile: then
    what was stored is removed)."""
    storage = get_storage(settings)
    try:  # the run stays "running" until every artifact is stored
        check_disk(settings, "before the run's artifacts were stored")
        files = put_files_retrying(storage, experiment_id, base, names,
                                   settings.upload_attempts, settings.upload_backoff_s)
    except (ArtifactsNotStored, LowDisk) as error:
        log.error("run %s of experiment %s: %s", key.run_id, experiment_id, error)
        try:  # the partial files, where the storage answers; the run fails either way
            storage.delete_prefix(f"{experiment_prefix(experiment_id)}/runs/{key.run_id}")
        except StorageError as cleanup_error:
            log.warning("run %s: partial artifacts left in storage: %s", key.run_id, cleanup_error)
        end_run(settings, run_pk, "failed", str(error), task_id)  # each message says what happened
        return None
    with session_scope(settings.resolved_database_url) as session:
        run = session.get(Run, run_pk)
        if run is None:
            outcome = "deleted"
        elif run.task_id != task_id:  # requeued as lost meanwhile: the newer delivery records it
            return None
        elif jobs.should_stop(session, run_pk, task_id):
            outcome = "cancelled"
        else:
            outcome = "succeeded"
            record_artifacts(session, experiment_id, files)
            store_run_documents(session, run, run_dir, record)
    if outcome == "deleted":  # while training: leave nothing behind
        storage.delete_prefix(f"{experiment_prefix(experiment_id)}/runs/{key.run_id}")
        return None
    return outcome


def end_run(settings: Settings, run_pk: int, status: str, error: str | None = None, task_id: str | None = None) -> None:
    """finish_run, then the aggregation if it was the last, then refill the queue.
    A run already final is left as it is (a task giving up after its run ended), and
    so is a run now held by another task than ``task_id`` (the sweep requeued it while
    this task was thought lost: the newer delivery ends it). Once
    the run's end is committed, a broker that cannot be reached does not fail the
    task: the sweep sends the aggregation and the waiting runs later."""
    with session_scope(settings.resolved_database_url) as session:
        run = session.get(Run, run_pk)  # finish_run locks the experiment first, then writes the run
        aggregate_id, ended = None, None
        if run is not None and (task_id is None or run.task_id == task_id):
            if run.status in ACTIVE_STATUSES:
                aggregate_id = jobs.finish_run(session, run, status, error)
            ended = (run.experiment_id, run.run_id)
    if ended is not None:  # the run is over: its checkpoint is of no more use
        delete_checkpoint(get_storage(settings), *ended)
    if aggregate_id is not None:
        try:
            send_aggregation(settings, aggregate_id)
        except Exception:
            log.warning("could not send the aggregation of experiment %s; the sweep will", aggregate_id,
                        exc_info=True)
    dispatch_or_leave_to_sweep(settings)


def requeue_preempted(settings: Settings, run_pk: int, task_id: str) -> None:
    """A run stopped at its checkpoint for preemption goes back to waiting (the
    checkpoint stays: its next delivery resumes from it); then refill the slots."""
    with session_scope(settings.resolved_database_url) as session:
        requeued = jobs.requeue_preempted(session, run_pk, task_id)
    log.info("run %s was preempted at its checkpoint%s", run_pk,
             ": back to waiting" if requeued else " (no longer held by this task)")
    dispatch_or_leave_to_sweep(settings)


def aggregate_experiment(settings: Settings, experiment_id: str) -> None:
    """An aggregation task's delivery: tables, figures and results.json from the
    experiment's succeeded runs, stored and recorded; the experiment then succeeds.
    With runs that did not succeed (cancelled, failed) the results are partial, of
    the others, and the experiment then ends cancelled or failed
    (jobs.finish_experiment)."""
    storage = get_storage(settings)
    with session_scope(settings.resolved_database_url) as session:
        experiment = session.get(Experiment, experiment_id)
        if experiment is None or experiment.status not in jobs.AGGREGATED_STATUSES:
            return
        kind = experiment_kind(experiment.spec)
        spec = None if kind == REPRESENTATIONS_KIND else ExperimentSpec.model_validate(experiment.spec)
        runs = [run for run in experiment.runs if run.status == "succeeded"]
        missing = [MissingRun.model_validate({"run_id": run.run_id, "status": run.status, "error": run.error})
                   for run in experiment.runs if run.status != "succeeded"]
    with tempfile.TemporaryDirectory(prefix="fflab-aggregate-") as tmp:
        base = Path(tmp)
        try:
            if spec is None:  # uploaded representations: the recorded run's tables and figures
                fetch_recorded(storage, experiment_id, runs, base)
                results = recorded.aggregate_recorded(base)
            else:
                included = {run.run_id for run in runs} if missing else None
                fetch_runs(storage, experiment_id, runs, base, False,
                           {k.run_id for k in experiment_pipeline.figure_runs(spec, included)})
                results = experiment_pipeline.aggregate(spec, base, missing)
        except TRANSIENT:
            raise
        except Exception as error:
            log.exception("aggregation of experiment %s failed", experiment_id)
            fail_experiment(settings, experiment_id, f"aggregation failed: {type(error).__name__}: {error}")
            return
        files = put_aggregate(storage, experiment_id, base)
        with session_scope(settings.resolved_database_url) as session:
            experiment = session.get(Experiment, experiment_id, with_for_update=True)
            if experiment is not None and experiment.status in jobs.AGGREGATED_STATUSES:
                record_aggregate(session, experiment, base, files, results, None)
                jobs.finish_experiment(session, experiment)
    if experiment is None:  # deleted meanwhile: leave nothing behind
        storage.delete_prefix(experiment_prefix(experiment_id))


def analyse_experiment(settings: Settings, analysis_id: str) -> None:
    """An analysis task's delivery: every run analysed again with the analysis's
    settings from its stored representations, then the aggregation; stored and
    recorded as the experiment's current results."""
    storage = get_storage(settings)
    with session_scope(settings.resolved_database_url) as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None or analysis.status not in ACTIVE_STATUSES:
            return
        jobs.start_analysis(analysis)
        loaded = session.get_one(Experiment, analysis.experiment_id)
        settings_now = AnalysisSpec.model_validate(analysis.spec)
        spec: ExperimentSpec | dict[str, Any]
        if experiment_kind(loaded.spec) == REPRESENTATIONS_KIND:
            spec = {**loaded.spec, "analysis": settings_now.model_dump(mode="json")}
        else:
            spec = ExperimentSpec.model_validate(loaded.spec).model_copy(update={"analysis": settings_now})
        experiment_id, runs = loaded.id, list(loaded.runs)
    with tempfile.TemporaryDirectory(prefix="fflab-analysis-") as tmp:
        base = Path(tmp)
        try:
            if isinstance(spec, dict):  # uploaded representations: the recorded run analysed again
                fetch_recorded(storage, experiment_id, runs, base)
                results = recorded.analyse_recorded(base, settings_now)
                run_dir = base / "runs" / runs[0].run_id
                shutil.copyfile(base / recorded.RECORDING_FILE, run_dir / recorded.RECORDING_FILE)
                records = {runs[0].run_id: results["runs"][0]}
                analysed = [f"runs/{runs[0].run_id}/{name}"
                            for name in (*documents.analysed_run_files(), recorded.RECORDING_FILE)
                            if (run_dir / name).is_file()]
            else:
                fetch_runs(storage, experiment_id, runs, base, True, set())
                records = {run.run_id: documents.analyse_run(spec, run_key(run), base / "runs" / run.run_id)
                           for run in runs}
                results = experiment_pipeline.aggregate(spec, base)
                analysed = [f"runs/{run.run_id}/{name}" for run in runs for name in documents.analysed_run_files()]
            files = put_files(storage, experiment_id, base, analysed) + put_aggregate(storage, experiment_id, base)
        except TRANSIENT:
            raise
        except Exception as error:
            log.exception("analysis %s failed", analysis_id)
            fail_analysis(settings, analysis_id, f"{type(error).__name__}: {error}")
            return
        with session_scope(settings.resolved_database_url) as session:
            experiment = session.get(Experiment, experiment_id, with_for_update=True)
            analysis = session.get(Analysis, analysis_id)
            if experiment is not None and analysis is not None and analysis.status == "running":
                for run in experiment.runs:
                    store_run_documents(session, run, base / "runs" / run.run_id, records[run.run_id])
                record_aggregate(session, experiment, base, files, results, analysis_id)
                jobs.finish_analysis(analysis, experiment, spec)
    if experiment is None:  # deleted meanwhile: leave nothing behind
        storage.delete_prefix(experiment_prefix(experiment_id))


def fail_experiment(settings: Settings, experiment_id: str, error: str) -> None:
    with session_scope(settings.resolved_database_url) as session:
        jobs.fail_experiment(session, experiment_id, error)


def fail_analysis(settings: Settings, analysis_id: str, error: str) -> None:
    with session_scope(settings.resolved_database_url) as session:
        jobs.fail_analysis(session, analysis_id, error)


def requeue_lost(settings: Settings) -> None:
    """Runs whose worker vanished (stale heartbeat) and, on Redis, runs and
    aggregations whose messages the broker lost, back to waiting for a send."""
    with get_sessionmaker(settings.resolved_database_url)() as session:  # these commit on their own
        requeued, failed = jobs.reap_lost_runs(session, settings)
    if requeued or failed:
        log.warning("sweep: %d runs lost their worker and were requeued, %d failed for good", requeued, failed)
    in_broker = redis_task_ids(settings.resolved_broker_url,
                               [settings.queue_name(kind) for kind in ("cpu", "gpu")])
    if in_broker is None:
        return
    with get_sessionmaker(settings.resolved_database_url)() as session:
        runs = jobs.requeue_lost_messages(session, settings, in_broker)
        aggregations = jobs.requeue_lost_aggregations(
            session, settings, {aggregated for task_id in in_broker
                                if (aggregated := experiment_of_aggregate_task(task_id)) is not None})
        analyses = jobs.lost_analyses(
            session, settings, {analysed for task_id in in_broker
                                if (analysed := subject_of_task(ANALYSIS_ID_PREFIX, task_id)) is not None})
    for analysis_id in analyses:
        dispatcher_for(settings).send_analysis(analysis_id, settings.queue_name("cpu"))
    if runs or aggregations or analyses:
        log.warning("sweep: the broker lost %d runs, %d aggregations and %d analyses; sending them again",
                    runs, aggregations, len(analyses))


def sweep(settings: Settings) -> None:
    """What a lost worker, a lost broker message or a failed send left behind:
    running runs without a heartbeat, waiting runs, unsent aggregations."""
    requeue_lost(settings)
    dispatch_waiting(settings)
    with session_scope(settings.resolved_database_url) as session:
        experiment_ids = jobs.unsent_aggregations(session)
    for experiment_id in experiment_ids:
        send_aggregation(settings, experiment_id)


def sweep_forever(settings: Settings) -> None:
    while True:
        try:
            sweep(settings)
        except Exception:
            log.warning("sweep failed; retrying in %s s", settings.sweep_interval_s, exc_info=True)
        time.sleep(settings.sweep_interval_s)


def dispatch_waiting(settings: Settings) -> None:
    with get_sessionmaker(settings.resolved_database_url)() as session:  # dispatch commits on its own
        jobs.dispatch(session, settings, dispatcher_for(settings))


def send_aggregation(settings: Settings, experiment_id: str) -> None:
    try:
        dispatcher_for(settings).send_aggregate(experiment_id, settings.queue_name("cpu"))
    except Exception:
        with session_scope(settings.resolved_database_url) as session:  # the sweep sends it again
            experiment = session.get(Experiment, experiment_id)
            if experiment is not None:
                experiment.aggregation_queued_at = None
        raise


def dispatch_or_leave_to_sweep(settings: Settings) -> None:
    try:
        dispatch_waiting(settings)
    except Exception:
        log.warning("could not dispatch waiting runs; the sweep will", exc_info=True)


def recorded_outcome(settings: Settings, run_pk: int, task_id: str) -> str | None:
    """The run's final status if this task's delivery ended it, else None."""
    with session_scope(settings.resolved_database_url) as session:
        row = session.execute(select(Run.status, Run.task_id).where(Run.id == run_pk)).first()
    if row is None or row.task_id != task_id or row.status in ACTIVE_STATUSES:
        return None
    status: str = row.status
    return status


def run_key(run: Run) -> RunKey:
    """The run's key, from its run id: the only column that holds its grid point."""
    return RunKey.parse(run.run_id)


def record_artifacts(session: Session, experiment_id: str, files: list[StoredFile]) -> None:
    for file in files:
        artifact = session.scalar(
            select(Artifact).where(Artifact.experiment_id == experiment_id, Artifact.name == file.name)
        )
        if artifact is None:
            artifact = Artifact(experiment_id=experiment_id, name=file.name)
            session.add(artifact)
        artifact.key, artifact.size, artifact.sha256 = file.stored.key, file.stored.size, file.stored.sha256
        artifact.content_type, artifact.created_at = file.content_type, utcnow()


def store_run_documents(session: Session, run: Run, run_dir: Path, record: dict[str, Any]) -> None:
    """The run's JSON documents into its row, its ensembles into Ensemble rows."""
    run.record = record
    for file_name, column in DOCUMENT_COLUMNS.items():  # a recorded run may lack some (no predictions, weights)
        path = run_dir / file_name
        setattr(run, column, json.loads(path.read_text()) if path.is_file() else None)
    ensembles = json.loads((run_dir / "ensembles.json").read_text())
    records = ensembles.pop("ensembles")
    run.ensemble_summary = ensembles
    session.execute(delete(Ensemble).where(Ensemble.experiment_id == run.experiment_id, Ensemble.run_id == run.run_id))
    session.add_all(
        Ensemble(
            experiment_id=run.experiment_id, run_id=run.run_id, model=run.model, dataset=run.dataset,
            seed=run.seed, unseen_class=run.unseen_class, **item,
        )
        for item in records
    )


def fetch_runs(storage: Storage, experiment_id: str, runs: list[Run], base: Path,
               all_files: bool, representations_of: set[str]) -> None:
    """Download the runs' JSON documents, their representations for the runs in
    ``representations_of``, and everything they have if ``all_files``. A document
    registered after a run was trained is not in storage: it is left out (a
    re-analysis computes it; the aggregation draws no figure from it)."""
    prefix = experiment_prefix(experiment_id)
    for run in runs:
        wanted = set(documents.run_files() if all_files else documents.analysed_run_files())
        if run.run_id in representations_of:
            wanted.add("representations.npz")
        if all_files:
            wanted.add(snapshots.SNAPSHOT_FILE)  # absent when training took none
        run_prefix = f"runs/{run.run_id}/"
        stored = {key.removeprefix(f"{prefix}/{run_prefix}") for key in storage.list(f"{prefix}/{run_prefix}")}
        for file_name in sorted(wanted & stored):
            storage.download(f"{prefix}/{run_prefix}{file_name}", base / run_prefix / file_name)


def fetch_recorded(storage: Storage, experiment_id: str, runs: list[Run], base: Path) -> None:
    """Download the recorded run of uploaded representations, every file of it, and
    put its recording.json where fflab.pipeline.recorded reads it (the folder's top)."""
    prefix = experiment_prefix(experiment_id)
    for run in runs:
        run_prefix = f"{prefix}/runs/{run.run_id}/"
        for key in storage.list(run_prefix):
            storage.download(key, base / "runs" / run.run_id / key.removeprefix(run_prefix))
        shutil.copyfile(base / "runs" / run.run_id / recorded.RECORDING_FILE, base / recorded.RECORDING_FILE)


def put_aggregate(storage: Storage, experiment_id: str, base: Path) -> list[StoredFile]:
    """Upload tables, figures and results.json; figures of an earlier analysis go first."""
    storage.delete_prefix(f"{experiment_prefix(experiment_id)}/figures")
    names = files_under(base / "tables", base) + files_under(base / "figures", base) + ["results.json"]
    return put_files(storage, experiment_id, base, names)


def record_aggregate(session: Session, experiment: Experiment, base: Path, files: list[StoredFile],
                     results: dict[str, Any], analysis_id: str | None) -> None:
    """Artifacts and the Result row of an aggregation."""
    session.execute(
        delete(Artifact).where(Artifact.experiment_id == experiment.id, Artifact.name.like("figures/%"))
    )
    record_artifacts(session, experiment.id, files)
    tables = {
        name: {fmt: (base / "tables" / f"{name}.{fmt}").read_text() for fmt in ("md", "csv")}
        for name in results["tables"]
    }
    result = session.get(Result, experiment.id) or Result(experiment_id=experiment.id)
    result.analysis_id, result.tables, result.results, result.updated_at = analysis_id, tables, results, utcnow()
    session.add(result)
    analysis = None if analysis_id is None else session.get(Analysis, analysis_id)
    if analysis is not None:  # this version stays readable after later re-analyses
        analysis.results, analysis.tables = results, tables
