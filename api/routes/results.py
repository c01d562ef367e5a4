"""Tables, ensembles, shared units, weight statistics, figures and artifacts.

One readiness rule: a collection (ensembles, shared units, weights, figures,
artifacts, and the runs and analyses of their own routers) answers 200 with what
exists so far, and ``experiment_status`` says whether more may come (runs add their
documents as they finish); a document the experiment's aggregation writes
(``/results``, ``/paper-comparison``) answers 409 ``conflict`` until it exists; an item
asked for by name that does not exist answers 404 ``not_found``. The rules (what is
ready, which names are allowed) are ``api.services.results``'s."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy.orm import Session

from api import schemas, views
from api.deps import (
    Credentials,
    DatabaseDep,
    ExperimentId,
    StorageDep,
    authenticated_user,
)
from api.errors import problem_responses
from api.files import encoded_slash, file_response
from api.paging import Page, PageDep, page_params
from api.per_run import check_layer_filter, page_of_runs
from api.services import results as service
from api.services.experiments import readable_experiment
from api.services.results import MAX_LAYER, EnsembleFilters, Method
from fflab.db import Artifact
from fflab.results import TABLES, ExperimentResults, PaperComparison, RunSharedUnits, RunWeightStats
from fflab.spec import DatasetName, ModelName

router = APIRouter(prefix="/v1/experiments/{experiment_id}", tags=["results"],
                   responses=problem_responses(401, 404, 422))
FILE_HEADERS = {
    "ETag": {"description": "The file's sha256, quoted.", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "bytes", "schema": {"type": "string"}},
    "Content-Range": {"description": "206 only: bytes start-end/size.", "schema": {"type": "string"}},
}

ModelFilter = Annotated[ModelName | None, Query(description="ff, bpff or bp.")]
DatasetFilter = Annotated[DatasetName | None, Query(description="mnist or fashion_mnist.")]
LayerFilter = Annotated[int | None, Query(ge=1, le=MAX_LAYER, description="Hidden layer, from 1.")]
MethodFilter = Annotated[Method | None, Query()]
JSONDocument = dict[str, Any] | PaperComparison  # a JSON answer: results.json, or the paper comparison


@router.get("/results", response_model=ExperimentResults,
            responses={200: {"content": {"text/csv": {}, "text/markdown": {}}}, **problem_responses(409)})
async def get_results(
    experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
    format: Annotated[Literal["json", "csv", "md"], Query()] = "json",
    table: Annotated[Literal[TABLES] | None, Query(  # type: ignore[valid-type]  # a Literal of the tuple TABLES
        description="One table: table1-3, or one of the other aggregates (sparseness_treves_rolls, "
        "sparseness_hoyer, shared_units, unseen_class, sweep). Required with format=csv.")] = None,
) -> JSONDocument | str | PlainTextResponse:
    """Tables 1-3 (accuracy, ensemble sizes, fraction of positive weights) and the
    other aggregates with the run records and figure list (JSON); one table as CSV
    (``table`` required: one CSV document per response); one table, or Tables 1-3
    (and the sweep's table, with a sweep) each under a '# <name>' heading, as
    markdown. 409 until the results are ready."""

    def results(session: Session) -> JSONDocument | str | PlainTextResponse:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        if format == "csv" and table is None:
            raise RequestValidationError([{
                "type": "missing", "loc": ("query", "table"), "msg": "format=csv answers one table per response: "
                f"name it with table= (one of {', '.join(TABLES)})", "ctx": {"expected": " or ".join(TABLES)}}])
        return as_text(service.results_document(session, experiment, format, table), format)

    return await db.read(results)


def as_text(document: JSONDocument | str, format: str) -> JSONDocument | str | PlainTextResponse:
    """A document as JSON, or its text as CSV or markdown."""
    if format == "json":
        return document
    media = "text/csv" if format == "csv" else "text/markdown"
    return PlainTextResponse(document, media_type=f"{media}; charset=utf-8")


async def ensemble_filters(
    model: ModelFilter = None, dataset: DatasetFilter = None, layer: LayerFilter = None,
    class_index: Annotated[int | None, Query(ge=0, le=9, description="Class 0-9.")] = None,
    method: MethodFilter = None,
    quantile: Annotated[float | None, Query(gt=0, lt=1, description=(
        "Method 1 quantile: one of the experiment's analysis.quantiles (the response's quantiles); "
        "POST an analysis to compute another."))] = None,
    run_id: Annotated[str | None, Query(max_length=128)] = None,
    old_class: Annotated[str | None, Query(alias="class", include_in_schema=False)] = None,
) -> EnsembleFilters:
    return EnsembleFilters(model, dataset, layer, class_index, method, quantile, run_id, old_class)


@router.get("/ensembles", response_model=schemas.EnsemblesOut)
async def get_ensembles(
    experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
    page: Annotated[Page, page_params(default=200)],
    filters: Annotated[EnsembleFilters, Depends(ensemble_filters)],
) -> schemas.EnsemblesOut:
    """Per finished run, its ensembles.json (schema: fflab/schemas/ensembles.schema.json)
    with only the ensembles matching the filters, a page of ensembles at a time
    (``limit`` ensembles, runs in order)."""

    def ensembles_page(session: Session) -> schemas.EnsemblesOut:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        check_layer_filter(experiment, filters.layer)
        return service.ensembles_page(session, experiment, page, filters)

    return await db.read(ensembles_page)  # dashboards poll it: one unit


@router.get("/shared-units", response_model=schemas.SharedUnitsOut)
async def get_shared_units(experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
                           page: PageDep, model: ModelFilter = None, dataset: DatasetFilter = None,
                           layer: LayerFilter = None, method: MethodFilter = None) -> schemas.SharedUnitsOut:
    """Per finished run, the number of units shared by each pair of class ensembles,
    a page of runs at a time."""

    def shared_units(session: Session) -> schemas.SharedUnitsOut:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        check_layer_filter(experiment, layer)
        runs, next_token = page_of_runs(session, experiment, page, model, dataset,
                                        columns=("shared_units",))
        documents: list[RunSharedUnits] = []
        for run in runs:
            if run.shared_units is None:
                continue
            matrices = [m for m in run.shared_units["matrices"]
                        if (layer is None or m["layer"] == layer) and (method is None or m["method"] == method)]
            documents.append(RunSharedUnits.model_validate({**run.shared_units, "matrices": matrices}))
        return schemas.SharedUnitsOut(experiment_id=experiment.id,
                                      experiment_status=schemas.stored_status(experiment.status),
                                      runs=documents, next_page_token=next_token)

    return await db.read(shared_units)


@router.get("/weights", response_model=schemas.WeightsOut)
async def get_weights(experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
                      page: PageDep, model: ModelFilter = None, dataset: DatasetFilter = None,
                      layer: LayerFilter = None) -> schemas.WeightsOut:
    """Per finished run, the fraction of positive weights per layer and of negative
    incoming weights per unit, a page of runs at a time."""

    def weights(session: Session) -> schemas.WeightsOut:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        check_layer_filter(experiment, layer)
        runs, next_token = page_of_runs(session, experiment, page, model, dataset,
                                        columns=("weight_stats",))
        documents: list[RunWeightStats] = []
        for run in runs:
            if run.weight_stats is None:
                continue
            layers = [entry for entry in run.weight_stats["layers"] if layer is None or entry["layer"] == layer]
            documents.append(RunWeightStats.model_validate({**run.weight_stats, "layers": layers}))
        return schemas.WeightsOut(experiment_id=experiment.id,
                                  experiment_status=schemas.stored_status(experiment.status), runs=documents,
                                  next_page_token=next_token)

    return await db.read(weights)


@router.get("/figures", response_model=schemas.ArtifactList)
async def list_figures(experiment_id: ExperimentId, request: Request, db: DatabaseDep, credentials: Credentials,
                       page: PageDep) -> schemas.ArtifactList:
    """The experiment's figures; each ``name`` is what GET /figures/{name} takes."""

    def figures_page(session: Session) -> schemas.ArtifactList:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        artifacts, next_token = service.artifacts_page(session, experiment, page, service.FIGURES_PREFIX)
        return schemas.ArtifactList(items=[views.figure_out(request, a) for a in artifacts],
                                    next_page_token=next_token,
                                    experiment_status=schemas.stored_status(experiment.status))

    return await db.read(figures_page)


@router.get("/figures/{name}", response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}, "headers": FILE_HEADERS},
                       206: {"description": "The requested range.", "headers": FILE_HEADERS},
                       304: {"description": "If-None-Match matched the ETag."}, **problem_responses(416, 503)})
@router.head("/figures/{name}", response_class=Response, responses={200: {"description": "The headers of GET, no body."}})
async def get_figure(name: str, experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                     credentials: Credentials, storage: StorageDep) -> Response:
    """A figure as PNG or SVG; ``name`` as in the list (figure1a.png, figure1a.svg), or without
    a suffix for the PNG. An SVG comes with ``Content-Security-Policy: default-src 'none';
    style-src 'unsafe-inline'; sandbox``: opened on its own, nothing in it runs or loads."""
    artifact = await db.read(lambda session: service.figure_artifact(
        session, readable_experiment(session, authenticated_user(session, credentials), experiment_id),
        name, encoded_slash(request)))
    return await file_response(request, storage, artifact)  # the session is closed: the file streams without it


@router.get("/artifacts", response_model=schemas.ArtifactList)
async def list_artifacts(experiment_id: ExperimentId, request: Request, db: DatabaseDep, credentials: Credentials,
                         page: PageDep) -> schemas.ArtifactList:
    """Every stored file: runs/<run_id>/{weights.pt, representations.npz, *.json},
    tables/*, figures/*.png, results.json; each ``name`` is what GET /artifacts/{name} takes."""

    def artifacts_page(session: Session) -> schemas.ArtifactList:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        artifacts, next_token = service.artifacts_page(session, experiment, page)
        return schemas.ArtifactList(items=[views.artifact_out(request, a) for a in artifacts],
                                    next_page_token=next_token,
                                    experiment_status=schemas.stored_status(experiment.status))

    return await db.read(artifacts_page)


@router.get("/artifacts/{name:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}, "headers": FILE_HEADERS},
                       206: {"description": "The requested range.", "headers": FILE_HEADERS},
                       304: {"description": "If-None-Match matched the ETag."}, **problem_responses(416, 503)})
@router.head("/artifacts/{name:path}", response_class=Response, responses={200: {"description": "The headers of GET, no body."}})
async def get_artifact(name: str, experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                       credentials: Credentials, storage: StorageDep) -> Response:
    """One stored file by name (see the list), with HEAD, ETag/If-None-Match and Range."""

    def artifact(session: Session) -> Artifact:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        return service.artifact_named(session, experiment, name, encoded_slash(request))

    return await file_response(request, storage, await db.read(artifact))


@router.get("/paper-comparison", response_model=PaperComparison,
            responses={200: {"content": {"text/csv": {}, "text/markdown": {}}}, **problem_responses(409)})
async def get_paper_comparison(
    experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
    format: Annotated[Literal["json", "csv", "md"], Query()] = "json",
) -> JSONDocument | str | PlainTextResponse:
    """Every number of the paper against this experiment's, cell by cell: the
    paper's mean ± SE, this experiment's mean ± SE and n, the difference in combined
    standard errors and a verdict (consistent within 2, differs, not comparable),
    and the protocol settings where the experiment departs from the paper's.
    409 until the experiment's results are ready."""
    return await db.read(lambda session: as_text(service.paper_comparison(
        session, readable_experiment(session, authenticated_user(session, credentials), experiment_id), format),
        format))
