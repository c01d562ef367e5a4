"""The runs of an experiment, their training histories and every run document
(fflab.pipeline.documents.RUN_DOCUMENTS), served from artifact storage."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import run_telemetry, schemas, views
from api.deps import Credentials, DatabaseDep, ExperimentId, StorageDep, authenticated_user
from api.errors import api_error, problem_responses
from api.files import file_response
from api.paging import PageDep
from api.services.experiments import experiment_run, readable_experiment
from fflab.db import Artifact, Experiment, Run
from fflab.pipeline.documents import RUN_DOCUMENTS
from fflab.results import RunMetrics

# Checked inside the route's unit, after authentication (a client without a valid key
# gets 401 whatever the name), with the 422 the Literal would have given.
DocumentName = Annotated[str, Path(description=f"One of {', '.join(RUN_DOCUMENTS)}.",
                                   json_schema_extra={"enum": list(RUN_DOCUMENTS)})]
DOCUMENT_NAMES = TypeAdapter(RUN_DOCUMENTS.literal())


def check_document_name(name: str) -> None:
    try:
        DOCUMENT_NAMES.validate_python(name)
    except ValidationError as error:
        raise RequestValidationError([{**problem, "loc": ("path", "name")}
                                      for problem in error.errors(include_url=False)]) from None

router = APIRouter(prefix="/v1/experiments/{experiment_id}/runs", tags=["runs"],
                   responses=problem_responses(401, 404, 422))


def _readable(session: Session, credentials: HTTPAuthorizationCredentials | None, experiment_id: str) -> Experiment:
    return readable_experiment(session, authenticated_user(session, credentials), experiment_id)


@router.get("", response_model=schemas.RunList)
async def list_runs(experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
                    page: PageDep) -> schemas.RunList:
    """The experiment's runs in the order they were created (spec.runs())."""

    def runs_page(session: Session) -> schemas.RunList:
        experiment = _readable(session, credentials, experiment_id)
        runs, next_token = page.cut(list(session.scalars(
            select(Run).where(Run.experiment_id == experiment.id).order_by(Run.id).limit(page.limit + 1)
            .offset(page.offset))))
        return schemas.RunList(items=[views.run_out(run) for run in runs], next_page_token=next_token,
                               experiment_status=schemas.stored_status(experiment.status))

    return await db.read(runs_page)


@router.get("/{run_id}", response_model=schemas.RunDetail)
async def get_run(run_id: str, experiment_id: ExperimentId, db: DatabaseDep,
                  credentials: Credentials) -> schemas.RunDetail:
    def detail(session: Session) -> schemas.RunDetail:
        run = _run(session, _readable(session, credentials, experiment_id), run_id)
        metrics = RunMetrics.model_validate(run.metrics) if run.metrics is not None else None
        return schemas.RunDetail(**views.run_out(run).model_dump(), record=run.record, metrics=metrics)

    return await db.read(detail)


def _run(session: Session, experiment: Experiment, run_id: str) -> Run:
    return experiment_run(session, experiment, run_id)


@router.get("/{run_id}/metrics", response_model=schemas.RunMetricsOut)
async def get_run_metrics(run_id: str, experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
                          since: Annotated[int, Query(ge=0, le=10**9, description=(
                              "Only the losses from this position on: the next_since of the previous answer "
                              "(to follow a run while it trains)."))] = 0) -> schemas.RunMetricsOut:
    """The run's training curve: the loss at the end of each epoch, one series per
    layer for FF (trained layer by layer) and one for BP/FF and BP; while the run
    trains, the epochs its worker has reported so far (at most FFLAB_PROGRESS_INTERVAL_S
    old), and once it has succeeded the test accuracy measured after training
    (null before). ``since``/``next_since`` page through the losses as they come."""

    def metrics(session: Session) -> schemas.RunMetricsOut:
        run = _run(session, _readable(session, credentials, experiment_id), run_id)
        return run_telemetry.run_metrics(session, run, since)

    return await db.read(metrics)


@router.get("/{run_id}/log", response_model=schemas.RunLogOut)
async def get_run_log(run_id: str, experiment_id: ExperimentId, db: DatabaseDep,
                      credentials: Credentials) -> schemas.RunLogOut:
    """What the worker logged while it held the run (every delivery of it): its
    records and warnings and the traceback of a failure, with API keys, secrets and
    URL passwords redacted, capped at FFLAB_RUN_LOG_MAX_BYTES (head and tail kept).
    Written as the run trains (every FFLAB_PROGRESS_INTERVAL_S at most) and when it ends."""

    def run_log(session: Session) -> schemas.RunLogOut:
        run = _run(session, _readable(session, credentials, experiment_id), run_id)
        return run_telemetry.run_log(session, run)

    return await db.read(run_log)


def _document_artifact(run_id: str, name: str) -> str:
    return f"runs/{run_id}/{RUN_DOCUMENTS[name].file}"


@router.get("/{run_id}/documents", response_model=schemas.DocumentList)
async def list_documents(run_id: str, experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                         credentials: Credentials, page: PageDep) -> schemas.DocumentList:
    """Every registered run document, and whether this run has it yet, in
    registry order, a page at a time."""

    def documents(session: Session) -> schemas.DocumentList:
        experiment = _readable(session, credentials, experiment_id)
        _run(session, experiment, run_id)
        stored = set(session.scalars(select(Artifact.name).where(
            Artifact.experiment_id == experiment.id, Artifact.name.startswith(f"runs/{run_id}/", autoescape=True))))
        names, next_token = page.cut(list(RUN_DOCUMENTS)[page.offset:page.offset + page.limit + 1])
        return schemas.DocumentList(items=[
            schemas.DocumentOut(
                name=name, description=RUN_DOCUMENTS[name].description,
                available=_document_artifact(run_id, name) in stored,
                url=views.url_for(request, "get_document", experiment_id=experiment.id, run_id=run_id, name=name),
            )
            for name in names
        ], next_page_token=next_token)

    return await db.read(documents)


@router.get("/{run_id}/documents/{name}", responses={200: {"content": {"application/json": {}}},
                                                     304: {"description": "If-None-Match matched the ETag."},
                                                     **problem_responses(409, 416, 503)})
@router.head("/{run_id}/documents/{name}", responses={200: {"description": "The headers of GET, no body."}})
async def get_document(run_id: str, name: DocumentName, experiment_id: ExperimentId, request: Request,
                       db: DatabaseDep, credentials: Credentials, storage: StorageDep) -> Response:
    """The run's document ``name`` as stored (its JSON Schema: ``fflab schemas``),
    with HEAD, ETag and Range like every stored file; 409 until the run has been
    trained and analysed."""

    def document(session: Session) -> Artifact:
        experiment = _readable(session, credentials, experiment_id)
        check_document_name(name)
        run = _run(session, experiment, run_id)
        artifact = session.scalar(select(Artifact).where(
            Artifact.experiment_id == experiment.id, Artifact.name == _document_artifact(run_id, name)))
        if artifact is None:
            raise api_error(status.HTTP_409_CONFLICT, f"run {run_id} of experiment {experiment.id} is "
                                                      f"{run.status} and has no {name} document yet", "conflict")
        return artifact

    return await file_response(request, storage, await db.read(document))
