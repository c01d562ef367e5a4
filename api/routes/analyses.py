"""Re-analyses: new ensembles, tables and figures from stored representations."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import schemas, views
from api.deps import (
    Credentials,
    DatabaseDep,
    DispatcherDep,
    ExperimentId,
    OwnedExperiment,
    SettingsDep,
    authenticated_user,
    current_experiment,
    readable_experiment,
)
from api.errors import api_error, problem_responses
from api.paging import Page, PageDep
from fflab import jobs
from fflab.db import Analysis
from fflab.spec import AnalysisSpec

router = APIRouter(prefix="/v1/experiments/{experiment_id}/analyses", tags=["analyses"],
                   responses=problem_responses(401, 404, 422))


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.AnalysisOut,
             responses=problem_responses(403, 409, 413))
async def create_analysis(body: AnalysisSpec, experiment: OwnedExperiment, request: Request, response: Response,
                          db: DatabaseDep, settings: SettingsDep, dispatcher: DispatcherDep) -> schemas.AnalysisOut:
    """Queue a re-analysis without retraining; when it succeeds, the experiment's
    ensembles, results and figures are those of this AnalysisSpec."""
    out = await db.write(lambda session: queue_analysis(session, request, experiment.id, body, settings,
                                                        dispatcher))
    response.headers["Location"] = out.url
    return out


def queue_analysis(session: Session, request: Request, experiment_id: str, body: AnalysisSpec,
                   settings, dispatcher) -> schemas.AnalysisOut:
    """Create the analysis (409 if one is running), commit, and send it to the cpu queue."""
    experiment = current_experiment(session, experiment_id)
    try:
        analysis = jobs.create_analysis(session, experiment, body.model_dump(mode="json"))
    except jobs.ConflictError as error:
        raise api_error(status.HTTP_409_CONFLICT, str(error), "conflict") from None
    session.commit()
    dispatcher.send_analysis(analysis.id, settings.queue_name("cpu"))
    return views.analysis_out(request, analysis)


def _readable(session: Session, credentials: HTTPAuthorizationCredentials | None, experiment_id: str):
    return readable_experiment(session, authenticated_user(session, credentials), experiment_id)


@router.get("", response_model=schemas.AnalysisList)
async def list_analyses(experiment_id: ExperimentId, request: Request, db: DatabaseDep, credentials: Credentials,
                        page: PageDep) -> schemas.AnalysisList:
    """The experiment's re-analyses, oldest first."""
    return await db.read(lambda session: analyses_of(session, request, _readable(session, credentials,
                                                                                 experiment_id), page))


def analyses_of(session: Session, request: Request, experiment, page: Page) -> schemas.AnalysisList:
    analyses, next_token = page.cut(list(session.scalars(
        select(Analysis).where(Analysis.experiment_id == experiment.id)
        .order_by(Analysis.created_at, Analysis.id).limit(page.limit + 1).offset(page.offset)
    )))
    return schemas.AnalysisList(items=[views.analysis_out(request, a) for a in analyses], next_page_token=next_token)


@router.get("/{analysis_id}", response_model=schemas.AnalysisOut)
async def get_analysis(analysis_id: str, experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                       credentials: Credentials) -> schemas.AnalysisOut:
    def one(session: Session) -> schemas.AnalysisOut:
        experiment = _readable(session, credentials, experiment_id)
        analysis = session.get(Analysis, analysis_id)
        if analysis is None or analysis.experiment_id != experiment.id:
            raise api_error(status.HTTP_404_NOT_FOUND, f"experiment {experiment.id} has no analysis {analysis_id}",
                            "not_found")
        return views.analysis_out(request, analysis)

    return await db.read(one)
