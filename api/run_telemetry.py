"""A run's losses (while it trains and after) and its log, as response bodies.

Losses while a run trains are the ``run_losses`` rows its worker writes
(worker.run_telemetry); once it has succeeded, its metrics.json (the same
positions: the stages' epochs one after the other). ``since`` keeps the positions
from there on, so that a client following a run asks only for what is new."""

from __future__ import annotations

from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import schemas
from fflab.db import FINAL_STATUSES, Run, RunLog, RunLoss, utcnow

# (position, stage, epoch, loss, recorded_at)
LossPoint = tuple[int, int | None, int, float, datetime | None]


def _all_recorded(times: list[datetime | None]) -> list[datetime] | None:
    """``times`` where every one is known, else None."""
    known = [time for time in times if time is not None]
    return known if len(known) == len(times) else None


def _series(points: list[LossPoint]) -> list[schemas.LossSeries]:
    """(position, stage, epoch, loss, recorded_at) in position order -> one series per stage run."""
    return [
        schemas.LossSeries(layer=stage, epochs=[p[2] for p in group], loss=[p[3] for p in group],
                           recorded_at=_all_recorded([p[4] for p in group]))
        for stage, group in ((stage, list(group)) for stage, group in groupby(points, key=lambda p: p[1]))
    ]


def finished_points(metrics: dict[str, Any]) -> list[LossPoint]:
    """metrics.json's loss_history as positioned points (one list per stage; a
    single one is the network: stage null)."""
    history = metrics.get("loss_history") or []
    per_stage = len(history) > 1
    points: list[LossPoint] = []
    position = 0
    for index, losses in enumerate(history):
        for epoch, loss in enumerate(losses, start=1):
            points.append((position, index + 1 if per_stage else None, epoch, loss, None))
            position += 1
    return points


def run_metrics(session: Session, run: Run, since: int = 0) -> schemas.RunMetricsOut:
    """The run's losses from position ``since`` on, and its accuracy once it has one."""
    metrics = run.metrics
    if metrics is not None:
        points = finished_points(metrics)
        recorded = dict(session.execute(select(RunLoss.position, RunLoss.recorded_at)
                                        .where(RunLoss.run_pk == run.id)).all())
        if len(recorded) == len(points):
            points = [(*p[:4], recorded.get(p[0])) for p in points]
        total = len(points)
        points = [p for p in points if p[0] >= since]
    else:
        rows = session.execute(select(RunLoss.position, RunLoss.stage, RunLoss.epoch, RunLoss.loss,
                                      RunLoss.recorded_at)
                               .where(RunLoss.run_pk == run.id, RunLoss.position >= since)
                               .order_by(RunLoss.position)).all()
        points = [(*row._tuple(),) for row in rows]
        last = session.scalar(select(func.max(RunLoss.position)).where(RunLoss.run_pk == run.id))
        total = 0 if last is None else last + 1
    return schemas.RunMetricsOut(
        run_id=run.run_id, model=run.model, dataset=run.dataset, seed=run.seed, unseen_class=run.unseen_class,
        status=schemas.stored_status(run.status), loss=_series(points),
        accuracy=(metrics or {}).get("accuracy"), per_class_accuracy=(metrics or {}).get("per_class_accuracy"),
        n_train=(metrics or {}).get("n_train"), n_test=(metrics or {}).get("n_test"),
        train_seconds=((metrics.get("timings") or {}).get("train_seconds", 0.0)) if metrics is not None else None,
        since=since, next_since=max(total, since), final=run.status in FINAL_STATUSES,
    )


def run_log(session: Session, run: Run) -> schemas.RunLogOut:
    row = session.get(RunLog, run.id)
    return schemas.RunLogOut(run_id=run.run_id, status=schemas.stored_status(run.status), text=row.text if row else "",
                             dropped_bytes=row.dropped_bytes if row else 0,
                             updated_at=row.updated_at if row else None, final=run.status in FINAL_STATUSES)


def remaining_seconds(progress: dict[str, Any]) -> float | None:
    """A running run's ETA now: the seconds left to the end its worker estimated
    (``ends_at``: training, evaluation and analysis), counted down between reports;
    the ``eta_seconds`` it reported where it gave no end (written before ``ends_at``)."""
    ends_at = progress.get("ends_at")
    if ends_at is None:
        return progress.get("eta_seconds")
    return round(max(0.0, (datetime.fromisoformat(ends_at) - utcnow()).total_seconds()), 1)
