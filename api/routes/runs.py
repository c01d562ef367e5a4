"""The runs of an experiment, their training histories and every run document
(fflab.pipeline.documents.RUN_DOCUMENTS), served from artifact storage."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import schemas, views
from api.deps import ReadableExperiment, SessionDep, StorageDep
from api.errors import api_error, problem_responses
from api.files import file_response
from api.paging import PageDep
from fflab.db import Artifact, Experiment, Run
from fflab.pipeline.documents import RUN_DOCUMENTS

DocumentName = Annotated[RUN_DOCUMENTS.literal(), Path(description=f"One of {', '.join(RUN_DOCUMENTS)}.")]

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


@router.get("/{run_id}", response_model=schemas.RunDetail)
def get_run(run_id: str, experiment: ReadableExperiment, session: SessionDep) -> schemas.RunDetail:
    run = _run(session, experiment, run_id)
    return schemas.RunDetail(**views.run_out(run).model_dump(), record=run.record, metrics=run.metrics)


def _run(session: Session, experiment: Experiment, run_id: str) -> Run:
    run = session.scalar(select(Run).where(Run.experiment_id == experiment.id, Run.run_id == run_id))
    if run is None:
        raise api_error(status.HTTP_404_NOT_FOUND, f"experiment {experiment.id} has no run {run_id}", "not_found")
    return run


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
            url=views.url_for(request, "get_document", experiment_id=experiment.id, run_id=run_id, name=name),
        )
        for name, document in RUN_DOCUMENTS.items()
    ])


@router.get("/{run_id}/documents/{name}", responses={200: {"content": {"application/json": {}}},
                                                     304: {"description": "If-None-Match matched the ETag."},
                                                     **problem_responses(409, 416, 503)})
@router.head("/{run_id}/documents/{name}", responses={200: {"description": "The headers of GET, no body."}})
def get_document(run_id: str, name: DocumentName, request: Request, experiment: ReadableExperiment,
                 session: SessionDep, storage: StorageDep):
    """The run's document ``name`` as stored (its JSON Schema: ``fflab schemas``),
    with HEAD, ETag and Range like every stored file; 409 until the run has been
    trained and analysed."""
    run = _run(session, experiment, run_id)
    artifact = session.scalar(select(Artifact).where(
        Artifact.experiment_id == experiment.id, Artifact.name == _document_artifact(run_id, name)))
    if artifact is None:
        raise api_error(status.HTTP_409_CONFLICT, f"run {run_id} of experiment {experiment.id} is {run.status} "
                                                  f"and has no {name} document yet", "conflict")
    return file_response(request, storage, artifact)
