"""The runs of an experiment, their metrics and every run document
(fflab.pipeline.documents.RUN_DOCUMENTS), served from artifact storage."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import schemas, views
from api.deps import ReadableExperiment, SessionDep, StorageDep
from api.routes import results
from fflab.db import Artifact, Experiment, Run
from fflab.pipeline.documents import RUN_DOCUMENTS

DocumentName = Annotated[RUN_DOCUMENTS.literal(), Path(description=f"One of {', '.join(RUN_DOCUMENTS)}.")]

router = APIRouter(prefix="/v1/experiments/{experiment_id}/runs", tags=["runs"])


@router.get("", response_model=schemas.RunList)
def list_runs(experiment: ReadableExperiment) -> schemas.RunList:
    return schemas.RunList(items=[views.run_out(run) for run in experiment.runs])


@router.get("/{run_id}", response_model=schemas.RunDetail)
def get_run(run_id: str, experiment: ReadableExperiment, session: SessionDep) -> schemas.RunDetail:
    run = _run(session, experiment, run_id)
    return schemas.RunDetail(**views.run_out(run).model_dump(), record=run.record, metrics=run.metrics)


def _run(session: Session, experiment: Experiment, run_id: str) -> Run:
    run = session.scalar(select(Run).where(Run.experiment_id == experiment.id, Run.run_id == run_id))
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment.id} has no run {run_id}")
    return run


def _document_artifact(run_id: str, name: str) -> str:
    return f"runs/{run_id}/{RUN_DOCUMENTS[name].file}"


@router.get("/{run_id}/documents", response_model=schemas.DocumentList)
def list_documents(run_id: str, request: Request, experiment: ReadableExperiment,
                   session: SessionDep) -> schemas.DocumentList:
    """Every registered run document, and whether this run has it yet."""
    _run(session, experiment, run_id)
    stored = set(session.scalars(select(Artifact.name).where(
        Artifact.experiment_id == experiment.id, Artifact.name.startswith(f"runs/{run_id}/", autoescape=True))))
    return schemas.DocumentList(items=[
        schemas.DocumentOut(
            name=name, description=document.description,
            available=_document_artifact(run_id, name) in stored,
            url=str(request.url_for("get_document", experiment_id=experiment.id, run_id=run_id, name=name)),
        )
        for name, document in RUN_DOCUMENTS.items()
    ])


@router.get("/{run_id}/documents/{name}", responses={200: {"content": {"application/json": {}}}})
def get_document(run_id: str, name: DocumentName, experiment: ReadableExperiment, session: SessionDep,
                 storage: StorageDep):
    """The run's document ``name`` as stored (its JSON Schema: ``fflab schemas``);
    404 until the run has been trained and analysed."""
    run = _run(session, experiment, run_id)
    artifact = session.scalar(select(Artifact).where(
        Artifact.experiment_id == experiment.id, Artifact.name == _document_artifact(run_id, name)))
    if artifact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"run {run_id} of experiment {experiment.id} is {run.status} and has no {name} document yet")
    return results._stream(storage, artifact)
