"""What a run tells while a delivery holds it, besides its progress: each epoch's
loss (``run_losses`` rows, written in batches at most every
FFLAB_PROGRESS_INTERVAL_S and when training ends), its log (``run_logs``: the
worker's records of this run, warnings and a failure's traceback, redacted and
capped: fflab.run_logs), and the code that trains it (``runs.code_version``:
fflab.versions). Written only while the run is this delivery's (a delivery
that lost it to a requeue writes nothing more)."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import delete, select

from fflab.db import Run, RunLog, RunLoss, session_scope, utcnow
from fflab.models.common import ProgressCallback, TrainingProgress
from fflab.run_logs import Redactor, RunLogCapture, settings_secrets
from fflab.settings import Settings
from fflab.versions import code_version, run_device
from worker.run_support import is_last_epoch

log = logging.getLogger(__name__)


def loss_point(event: TrainingProgress) -> dict[str, Any]:
    """A RunLoss row's values from a progress event. Positions run through the
    stages one after the other (layer 2's first epoch follows layer 1's last), so
    that a run's points are one sequence whatever its model."""
    if event.layer is None:
        position, stage = event.epoch - 1, None
    else:
        position = event.layer * event.epochs + event.epoch - 1
        stage = event.layer + 1 if (event.layers or 1) > 1 else None
    return {"position": position, "stage": stage, "epoch": event.epoch, "loss": float(event.loss),
            "recorded_at": utcnow()}


class RunTelemetry:
    """A progress callback that keeps each epoch's loss, and the run's log capture,
    for one delivery of a run: ``with RunTelemetry(...) as telemetry:`` around its
    training; call it with every TrainingProgress (after the check that the loss
    is finite)."""

    def __init__(self, settings: Settings, run_pk: int, task_id: str, device: str):
        self.database_url, self.run_pk, self.task_id = settings.resolved_database_url, run_pk, task_id
        self.interval = settings.progress_interval_s
        self.pending: list[dict[str, Any]] = []
        self.last_write = self.started = time.monotonic()
        self.log_version = -1  # the capture's version last written (none yet)
        self.code_version = code_version(run_device(device))
        with session_scope(self.database_url) as session:
            earlier = session.scalar(select(RunLog.text).where(RunLog.run_pk == run_pk))
        self.capture = RunLogCapture(Redactor(settings_secrets(settings)), settings.run_log_max_bytes,
                                     earlier or "")

    def __call__(self, event: TrainingProgress) -> None:
        if event.loss is None:
            return
        self.pending.append(loss_point(event))
        if event.epoch == event.epochs:  # a stage ends: a line in the run's log
            stage = f"layer {event.layer + 1}/{event.layers}" if event.layer is not None else "the network"
            log.info("%s: %s trained, %d epochs, loss %.6g", event.model, stage, event.epochs, event.loss)
        if is_last_epoch(event):
            log.info("%s: training ended %.1f s after the delivery started; evaluating and analysing",
                     event.model, time.monotonic() - self.started)
        if is_last_epoch(event) or time.monotonic() - self.last_write >= self.interval:  # analysis follows
            self.flush()

    def after(self, progress: ProgressCallback) -> ProgressCallback:
        """A callback calling ``progress`` (which refuses a loss that is not finite)
        and then this one."""
        def both(event: TrainingProgress) -> None:
            progress(event)
            self(event)

        return both

    def redact(self, text: str) -> str:
        """``text`` without keys and secrets (a run's error message)."""
        return self.capture.redactor(text)

    def flush(self) -> None:
        """Write the points and the log gathered since the last write (best effort:
        a database that does not answer now gets them at the next write)."""
        self.last_write = time.monotonic()
        points, self.pending = self.pending, []
        text, dropped, version = self.capture.text()
        try:
            with session_scope(self.database_url) as session:
                held = session.scalar(select(Run.id).where(Run.id == self.run_pk, Run.task_id == self.task_id))
                if held is None:
                    return
                if points:  # a delivery that trains again from an earlier point replaces the points from there
                    session.execute(delete(RunLoss).where(RunLoss.run_pk == self.run_pk,
                                                          RunLoss.position >= points[0]["position"]))
                    session.add_all(RunLoss(run_pk=self.run_pk, **point) for point in points)
                if version != self.log_version:  # the log grew since its last write
                    row = session.get(RunLog, self.run_pk) or RunLog(run_pk=self.run_pk)
                    row.text, row.dropped_bytes, row.updated_at = text, dropped, utcnow()
                    session.add(row)
            self.log_version = version
        except Exception:
            self.pending = points + self.pending
            log.warning("run %s: could not store its losses and log now; trying again later", self.run_pk,
                        exc_info=True)

    def start(self) -> None:
        """Record the code version and start capturing the log."""
        self.capture.__enter__()
        log.info("code: %s", ", ".join(f"{name} {value}" for name, value in self.code_version.items()))
        with session_scope(self.database_url) as session:
            run = session.get(Run, self.run_pk)
            if run is not None and run.task_id == self.task_id:
                run.code_version = self.code_version

    def stop(self) -> None:
        """Stop capturing; write what is left of the points and the log (also once
        this delivery has ended the run: it keeps its task id until a requeue)."""
        self.capture.__exit__()
        self.flush()

    def __enter__(self) -> RunTelemetry:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
