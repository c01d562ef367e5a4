"""Re-analyses: new ensembles, tables and figures from stored representations."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import select

from api import schemas, views
from api.deps import DispatcherDep, OwnedExperiment, ReadableExperiment, SessionDep, SettingsDep
from api.errors import api_error, problem_responses
from api.paging import PageDep
from fflab import jobs
from fflab.db import Analysis
from fflab.spec import AnalysisSpec

router = APIRouter(prefix="/v1/experiments/{experiment_id}/analyses", tags=["analyses"],
                   responses=problem_responses(401, 404, 422))


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.AnalysisOut,
             responses=problem_responses(403, 409, 413))
def create_analysis(body: AnalysisSpec, experiment: OwnedExperiment, request: Request, response: Response,
                    session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep) -> schemas.AnalysisOut:
    """Queue a re-analysis without retraining; when it succeeds, the experiment's
    ensembles, results and figures are those of this AnalysisSpec."""
    try:
        analysis = jobs.create_analysis(session, experiment, body.model_dump(mode="json"))
    except jobs.ConflictError as error:
        raise api_error(status.HTTP_409_CONFLICT, str(error), "conflict") from None
    session.commit()
    dispatcher.send_analysis(analysis.id, settings.queue_name("cpu"))
    out = views.analysis_out(request, analysis)
    response.headers["Location"] = out.url
    return out


@router.get("", response_model=schemas.AnalysisList)
def list_analyses(experiment: ReadableExperiment, request: Request, session: SessionDep,
                  page: PageDep) -> schemas.AnalysisList:
    """The experiment's re-analyses, oldest first."""
    analyses, next_token = page.cut(list(session.scalars(
        select(Analysis).where(Analysis.experiment_id == experiment.id)
        .order_by(Analysis.created_at, Analysis.id).limit(page.limit + 1).offset(page.offset)
    )))
    return schemas.AnalysisList(items=[views.analysis_out(request, a) for a in analyses], next_page_token=next_token)


@router.get("/{analysis_id}", response_model=schemas.AnalysisOut)
def get_analysis(analysis_id: str, experiment: ReadableExperiment, request: Request,
                 session: SessionDep) -> schemas.AnalysisOut:
    analysis = session.get(Analysis, analysis_id)
    if analysis is None or analysis.experiment_id != experiment.id:
        raise api_error(status.HTTP_404_NOT_FOUND, f"experiment {experiment.id} has no analysis {analysis_id}",
                        "not_found")
    return views.analysis_out(request, analysis)
