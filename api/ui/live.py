"""What an experiment's page shows while its runs train, refreshed with its
progress card: each run's row (status, attempts, accuracy, error, loss curve) and
a larger live loss chart of each running run, drawn from the losses its worker
reports (``run_losses``) until the run has its metrics.json."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import NamedTuple, TypedDict

from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from api import run_telemetry, schemas, views
from api.services.experiments import experiment_run
from api.ui.charts import LossChart, loss_chart
from fflab.db import Experiment, Run, RunLoss
from fflab.representations import REPRESENTATIONS_KIND, experiment_kind


class ChartSize(TypedDict):
    width: int
    height: int
    pad: float


LIVE_CHART: ChartSize = {"width": 480, "height": 160, "pad": 4.0}


class RunRow(NamedTuple):
    run: schemas.Run
    chart: LossChart | None


@dataclass(frozen=True)
class LiveChart:
    run_id: str
    chart: LossChart | None
    points: int  # epochs reported so far, every stage together
    last_loss: float | None


def reported_histories(session: Session, run_pks: list[int]) -> dict[int, list[list[float]]]:
    """Each run's reported losses, one list per stage, in order."""
    if not run_pks:
        return {}
    rows = session.execute(select(RunLoss.run_pk, RunLoss.stage, RunLoss.loss)
                           .where(RunLoss.run_pk.in_(run_pks)).order_by(RunLoss.run_pk, RunLoss.position)).all()
    return {run_pk: [[row.loss for row in stage_rows] for _, stage_rows in groupby(list(run_rows),
                                                                                    key=lambda row: row.stage)]
            for run_pk, run_rows in groupby(rows, key=lambda row: row.run_pk)}


def run_rows(session: Session, experiment: Experiment) -> tuple[list[RunRow], list[LiveChart]]:
    """The runs table's rows, and the live charts of the running runs."""
    runs = list(session.scalars(
        select(Run).options(load_only(
            Run.run_id, Run.model, Run.dataset, Run.seed, Run.unseen_class, Run.status, Run.queue, Run.attempts,
            Run.progress, Run.error, Run.created_at, Run.started_at, Run.finished_at, Run.heartbeat_at,
            Run.record, Run.metrics, Run.code_version,
        )).where(Run.experiment_id == experiment.id).order_by(Run.id)))
    if experiment_kind(experiment.spec) == REPRESENTATIONS_KIND:  # uploaded, not trained: no loss, no live chart
        return [RunRow(views.run_out(run), None) for run in runs], []
    reported = reported_histories(session, [run.id for run in runs if run.metrics is None])
    rows, live = [], []
    for run in runs:
        histories = (run.metrics or {}).get("loss_history") if run.metrics is not None else reported.get(run.id, [])
        rows.append(RunRow(views.run_out(run), loss_chart(histories or [])))
        if run.status == "running":
            flat = [loss for history in histories or [] for loss in history]
            live.append(LiveChart(run.run_id, loss_chart(histories or [], **LIVE_CHART), len(flat),
                                  flat[-1] if flat else None))
    return rows, live


def run_and_log(session: Session, experiment: Experiment, run_id: str) -> tuple[schemas.Run, schemas.RunLogOut]:
    """A run of ``experiment`` and its log (404 when it has no such run)."""
    run = experiment_run(session, experiment, run_id)
    return views.run_out(run), run_telemetry.run_log(session, run)
