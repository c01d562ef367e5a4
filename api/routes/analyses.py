"""Re-analyses: new ensembles, tables and figures from stored representations
(the rules: ``api.services.analyses``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
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
)
from api.errors import problem_responses
from api.paging import PageDep
from api.routes.results import JSONDocument, as_text
from api.services import analyses
from api.services import results as results_service
from api.services.experiments import readable_experiment
from fflab.results import TABLES, ExperimentResults
from fflab.spec import AnalysisSpec

router = APIRouter(prefix="/v1/experiments/{experiment_id}/analyses", tags=["analyses"],
                   responses=problem_responses(401, 404, 422))


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.AnalysisOut,
             responses=problem_responses(403, 409, 413, 429))
async def create_analysis(body: AnalysisSpec, experiment: OwnedExperiment, request: Request, response: Response,
                          db: DatabaseDep, settings: SettingsDep, dispatcher: DispatcherDep) -> schemas.AnalysisOut:
    """Queue a re-analysis without retraining; when it succeeds, the experiment's
    ensembles, results and figures are those of this AnalysisSpec. 409 unless the
    experiment has succeeded and no other re-analysis of it runs; 429 when its
    owner's storage is at or over FFLAB_STORAGE_QUOTA_BYTES_PER_USER."""
    out = await db.write(lambda session: views.analysis_out(request, analyses.queue_analysis(
        session, experiment.id, body, settings, dispatcher)))
    response.headers["Location"] = out.url
    return out


@router.get("", response_model=schemas.AnalysisList)
async def list_analyses(experiment_id: ExperimentId, request: Request, db: DatabaseDep, credentials: Credentials,
                        page: PageDep) -> schemas.AnalysisList:
    """The experiment's re-analyses, oldest first."""

    def analyses_page(session: Session) -> schemas.AnalysisList:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        found, next_token = analyses.analyses_page(session, experiment, page)
        return schemas.AnalysisList(items=[views.analysis_out(request, a) for a in found], next_page_token=next_token)

    return await db.read(analyses_page)


@router.get("/{analysis_id}", response_model=schemas.AnalysisOut)
async def get_analysis(analysis_id: str, experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                       credentials: Credentials) -> schemas.AnalysisOut:
    def one(session: Session) -> schemas.AnalysisOut:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        return views.analysis_out(request, analyses.analysis_of(session, experiment, analysis_id))

    return await db.read(one)


@router.get("/{analysis_id}/results", response_model=ExperimentResults,
            responses={200: {"content": {"text/csv": {}, "text/markdown": {}}}, **problem_responses(409)})
async def get_analysis_results(
    analysis_id: str, experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
    format: Annotated[Literal["json", "csv", "md"], Query()] = "json",
    table: Annotated[Literal[TABLES] | None,  # type: ignore[valid-type]  # a Literal of the tuple TABLES
                     Query(description="One table, as for GET .../results.")] = None,
) -> JSONDocument | str | PlainTextResponse:
    """This re-analysis's results (results.json, one table, or Tables 1-3 as
    markdown), as GET .../results gives the experiment's latest: each re-analysis is
    a version with its settings (its ``spec``), readable after later ones. 409 until
    it has succeeded."""

    def results(session: Session) -> JSONDocument | str | PlainTextResponse:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        if format == "csv" and table is None:
            raise RequestValidationError([{
                "type": "missing", "loc": ("query", "table"), "msg": "format=csv answers one table per response: "
                f"name it with table= (one of {', '.join(TABLES)})", "ctx": {"expected": " or ".join(TABLES)}}])
        return as_text(results_service.analysis_results_document(session, experiment, analysis_id, format, table),
                       format)

    return await db.read(results)
