"""The runs of an experiment, their documents and training histories."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy import select

from api import schemas, views
from api.deps import ReadableExperiment, SessionDep
from api.errors import api_error, problem_responses
from api.paging import PageDep
from fflab.db import Experiment, Run

router = APIRouter(prefix="/v1/experiments/{experiment_id}/runs", tags=["runs"],
                   responses=problem_responses(401, 404, 422))


@router.get("", response_model=schemas.RunList)
def list_runs(experiment: ReadableExperiment, session: SessionDep, page: PageDep) -> schemas.RunList:
    """The experiment's runs in the order they were created (spec.runs())."""
    runs, next_token = page.cut(list(session.scalars(
        select(Run).where(Run.experiment_id == experiment.id).order_by(Run.id).limit(page.limit + 1)
        .offset(page.offset))))
    return schemas.RunList(items=[views.run_out(run) for run in runs], next_page_token=next_token,
                           experiment_status=experiment.status)


def _run(session, experiment: Experiment, run_id: str) -> Run:
    run = session.scalar(select(Run).where(Run.experiment_id == experiment.id, Run.run_id == run_id))
    if run is None:
        raise api_error(status.HTTP_404_NOT_FOUND, f"experiment {experiment.id} has no run {run_id}", "not_found")
    return run


@router.get("/{run_id}", response_model=schemas.RunDetail)
def get_run(run_id: str, experiment: ReadableExperiment, session: SessionDep) -> schemas.RunDetail:
    run = _run(session, experiment, run_id)
    return schemas.RunDetail(**views.run_out(run).model_dump(), record=run.record, metrics=run.metrics)


@router.get("/{run_id}/metrics", response_model=schemas.RunMetricsOut, responses=problem_responses(409))
def get_run_metrics(run_id: str, experiment: ReadableExperiment, session: SessionDep) -> schemas.RunMetricsOut:
    """The run's training curve: the loss at the end of each epoch, one series per
    layer for FF (trained layer by layer) and one for BP/FF and BP, and the test
    accuracy measured after training. 409 until the run has succeeded (a running
    run's progress is in GET .../runs/{run_id})."""
    run = _run(session, experiment, run_id)
    if run.metrics is None:
        raise api_error(status.HTTP_409_CONFLICT, f"run {run_id} is {run.status}: its metrics are written when "
                                                  "it succeeds", "conflict")
    return views.run_metrics(run)
