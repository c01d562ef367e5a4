"""The runs of an experiment and their metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from api import schemas, views
from api.deps import ReadableExperiment, SessionDep
from fflab.db import Run

router = APIRouter(prefix="/v1/experiments/{experiment_id}/runs", tags=["runs"])


@router.get("", response_model=schemas.RunList)
def list_runs(experiment: ReadableExperiment) -> schemas.RunList:
    return schemas.RunList(items=[views.run_out(run) for run in experiment.runs])


@router.get("/{run_id}", response_model=schemas.RunDetail)
def get_run(run_id: str, experiment: ReadableExperiment, session: SessionDep) -> schemas.RunDetail:
    run = session.scalar(select(Run).where(Run.experiment_id == experiment.id, Run.run_id == run_id))
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment.id} has no run {run_id}")
    return schemas.RunDetail(**views.run_out(run).model_dump(), record=run.record, metrics=run.metrics)
