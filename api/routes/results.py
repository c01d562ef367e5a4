"""Tables, ensembles, shared units, weight statistics, figures and artifacts.

One readiness rule: a collection (ensembles, shared units, weights, figures,
artifacts, and the runs and analyses of their own routers) answers 200 with what
exists so far, and ``experiment_status`` says whether more may come (runs add their
documents as they finish); a document the experiment's aggregation writes
(``/results``, ``/paper-comparison``) answers 409 ``conflict`` until it exists; an item
asked for by name that does not exist answers 404 ``not_found``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from api import schemas, views
from api.deps import (
    Credentials,
    DatabaseDep,
    ExperimentId,
    StorageDep,
    authenticated_user,
    readable_experiment,
)
from api.errors import api_error, problem_responses
from api.files import file_response
from api.paging import Page, PageDep, page_params
from api.per_run import check_layer_filter, page_of_runs
from fflab.db import Artifact, Ensemble, Experiment, Result, Run
from fflab import paper
from fflab.results import PAPER_TABLES, TABLES, ExperimentResults, PaperComparison
from fflab.spec import DatasetName, ExperimentSpec, ModelName

router = APIRouter(prefix="/v1/experiments/{experiment_id}", tags=["results"],
                   responses=problem_responses(401, 404, 422))
FILE_HEADERS = {
    "ETag": {"description": "The file's sha256, quoted.", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "bytes", "schema": {"type": "string"}},
    "Content-Range": {"description": "206 only: bytes start-end/size.", "schema": {"type": "string"}},
}

Method = Literal["method1", "method2"]
ModelFilter = Annotated[ModelName | None, Query(description="ff, bpff or bp.")]
DatasetFilter = Annotated[DatasetName | None, Query(description="mnist or fashion_mnist.")]
MAX_LAYER = 1024  # far above any network's depth (NetworkSpec.layers); fits any integer column
LayerFilter = Annotated[int | None, Query(ge=1, le=MAX_LAYER, description="Hidden layer, from 1.")]
MethodFilter = Annotated[Method | None, Query()]


def _result(session: Session, experiment: Experiment) -> Result:
    result = session.get(Result, experiment.id)
    if result is None:
        raise api_error(status.HTTP_409_CONFLICT,
                        f"experiment {experiment.id} is {experiment.status}: its results are not ready (they are "
                        "written when its last run has finished and been aggregated)", "conflict")
    return result


@router.get("/results", response_model=ExperimentResults,
            responses={200: {"content": {"text/csv": {}, "text/markdown": {}}}, **problem_responses(409)})
async def get_results(
    experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
    format: Annotated[Literal["json", "csv", "md"], Query()] = "json",
    table: Annotated[Literal[TABLES] | None, Query(
        description="One table: table1-3, or one of the other aggregates (sparseness_treves_rolls, "
        "sparseness_hoyer, shared_units, unseen_class, sweep). Required with format=csv.")] = None,
):
    """Tables 1-3 (accuracy, ensemble sizes, fraction of positive weights) and the
    other aggregates with the run records and figure list (JSON); one table as CSV
    (``table`` required: one CSV document per response); one table, or Tables 1-3
    (and the sweep's table, with a sweep) each under a '# <name>' heading, as
    markdown. 409 until the results are ready."""

    def results(session: Session):
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        if format == "csv" and table is None:
            raise RequestValidationError([{
                "type": "missing", "loc": ("query", "table"), "msg": "format=csv answers one table per response: "
                f"name it with table= (one of {', '.join(TABLES)})", "ctx": {"expected": " or ".join(TABLES)}}])
        return results_of(session, experiment, format, table)

    return await db.read(results)


def results_of(session: Session, experiment: Experiment, format: str, table: str | None):
    """The body of ``GET /results`` (``table`` given with format=csv)."""
    result = _result(session, experiment)
    if format == "json":
        return result.results
    if table:
        if table not in result.tables:
            raise api_error(status.HTTP_404_NOT_FOUND, f"experiment {experiment.id} has no table {table}; it "
                                                       f"has: {', '.join(result.tables)}", "not_found")
        text = result.tables[table][format]
    else:
        names = PAPER_TABLES + (("sweep",) if "sweep" in result.tables else ())
        text = "\n".join(f"# {name}\n\n{result.tables[name]['md']}" for name in names)
    media = "text/csv" if format == "csv" else "text/markdown"
    return PlainTextResponse(text, media_type=f"{media}; charset=utf-8")


def _runs(session: Session, experiment: Experiment, model: str | None, dataset: str | None,
          run_id: str | None = None, columns: tuple = ()) -> list[Run]:
    """The experiment's succeeded runs matching the filters; with ``columns``, only
    those are loaded (each run carries several JSON documents)."""
    query = select(Run).where(Run.experiment_id == experiment.id, Run.status == "succeeded")
    if columns:
        query = query.options(load_only(*columns))
    for column, value in ((Run.model, model), (Run.dataset, dataset), (Run.run_id, run_id)):
        if value is not None:
            query = query.where(column == value)
    return list(session.scalars(query.order_by(Run.id)))


@dataclass(frozen=True)
class EnsembleFilters:
    """What ``GET /ensembles`` keeps (None: any)."""

    model: str | None
    dataset: str | None
    layer: int | None
    class_index: int | None
    method: str | None
    quantile: float | None
    run_id: str | None
    old_class: str | None  # the class filter's old name, refused with its new one


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
        return ensembles_of(session, experiment, page, filters)

    return await db.read(ensembles_page)  # dashboards poll it: one unit


def ensembles_of(session: Session, experiment: Experiment, page: Page, filters: EnsembleFilters) -> schemas.EnsemblesOut:
    """The page of ``GET /ensembles`` (the 422s of the filters that need the experiment included)."""
    if filters.old_class is not None:  # the filter's old name: it must not be ignored silently
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", "class"),
                                       "input": filters.old_class,
                                       "msg": "the class filter is class_index (as in the ensembles' records)"}])
    quantiles = computed_quantiles(experiment)
    quantile = filters.quantile
    if quantile is not None and quantile not in quantiles:
        raise RequestValidationError([{
            "type": "value_error", "loc": ("query", "quantile"), "input": quantile,
            "ctx": {"expected": " or ".join(map(str, quantiles))},
            "msg": f"quantile {quantile} was not computed for this experiment (its quantiles: "
                   f"{', '.join(map(str, quantiles))}); to get it, POST /v1/experiments/{experiment.id}/analyses "
                   f"with quantiles that include it"}])
    runs = {run.run_id: run for run in _runs(session, experiment, filters.model, filters.dataset, filters.run_id,
                                             columns=(Run.run_id, Run.ensemble_summary))}
    fields = ("layer", "class_index", "class_name", "method", "quantile", "threshold", "epsilon", "rho_cut",
              "nh_cut", "n_images", "units", "size")
    # Plain rows, not ORM objects: an experiment has hundreds of ensembles per run.
    query = select(Ensemble.run_id, *(getattr(Ensemble, field) for field in fields)).where(
        Ensemble.experiment_id == experiment.id, Ensemble.run_id.in_(list(runs)))
    for column, value in ((Ensemble.layer, filters.layer), (Ensemble.class_index, filters.class_index),
                          (Ensemble.method, filters.method), (Ensemble.quantile, quantile)):
        if value is not None:
            query = query.where(column == value)
    found, next_token = page.cut(list(session.execute(query.order_by(Ensemble.id)
                                                      .limit(page.limit + 1).offset(page.offset))))
    rows = defaultdict(list)
    for run_id_, *values in found:
        rows[run_id_].append(dict(zip(fields, values)))
    return schemas.EnsemblesOut(
        experiment_id=experiment.id, experiment_status=experiment.status, quantiles=quantiles,
        next_page_token=next_token,
        runs=[{**runs[name].ensemble_summary, "ensembles": ensembles} for name, ensembles in rows.items()
              if runs[name].ensemble_summary],
    )


def computed_quantiles(experiment: Experiment) -> list[float]:
    """The Method 1 quantiles of the experiment's current analysis (a re-analysis
    replaces them)."""
    return list((experiment.spec.get("analysis") or {}).get("quantiles") or [])


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
        documents = []
        for run in runs:
            if run.shared_units is None:
                continue
            matrices = [m for m in run.shared_units["matrices"]
                        if (layer is None or m["layer"] == layer) and (method is None or m["method"] == method)]
            documents.append({**run.shared_units, "matrices": matrices})
        return schemas.SharedUnitsOut(experiment_id=experiment.id, experiment_status=experiment.status,
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
        documents = []
        for run in runs:
            if run.weight_stats is None:
                continue
            layers = [entry for entry in run.weight_stats["layers"] if layer is None or entry["layer"] == layer]
            documents.append({**run.weight_stats, "layers": layers})
        return schemas.WeightsOut(experiment_id=experiment.id, experiment_status=experiment.status, runs=documents,
                                  next_page_token=next_token)

    return await db.read(weights)


def _artifacts(session: Session, experiment: Experiment, page: Page, prefix: str = "") -> tuple[list[Artifact], str | None]:
    query = select(Artifact).where(Artifact.experiment_id == experiment.id)
    if prefix:
        query = query.where(Artifact.name.startswith(prefix, autoescape=True))
    return page.cut(list(session.scalars(query.order_by(Artifact.name).limit(page.limit + 1).offset(page.offset))))


def _one_artifact(session: Session, experiment: Experiment, name: str) -> Artifact:
    artifact = session.scalar(
        select(Artifact).where(Artifact.experiment_id == experiment.id, Artifact.name == name)
    )
    if artifact is None:
        raise api_error(status.HTTP_404_NOT_FOUND, f"experiment {experiment.id} has no artifact {name}", "not_found")
    return artifact


@router.get("/figures", response_model=schemas.ArtifactList)
async def list_figures(experiment_id: ExperimentId, request: Request, db: DatabaseDep, credentials: Credentials,
                       page: PageDep) -> schemas.ArtifactList:
    """The experiment's figures; each ``name`` is what GET /figures/{name} takes."""
    return await db.read(lambda session: figures_of(
        session, request, readable_experiment(session, authenticated_user(session, credentials), experiment_id),
        page))


def figures_of(session: Session, request: Request, experiment: Experiment, page: Page) -> schemas.ArtifactList:
    artifacts, next_token = _artifacts(session, experiment, page, views.FIGURES_PREFIX)
    return schemas.ArtifactList(items=[views.figure_out(request, a) for a in artifacts], next_page_token=next_token,
                                experiment_status=experiment.status)


def figure_artifact(session: Session, request: Request, experiment: Experiment, name: str) -> Artifact:
    """The artifact of the figure ``name`` (with or without ``.png``), checked as a name."""
    file_name = name if name.endswith(".png") else f"{name}.png"
    raw_path = request.scope.get("raw_path", b"").lower()
    check_artifact_name(file_name, "name", "/" in name or b"%2f" in raw_path or b"%5c" in raw_path)
    return _one_artifact(session, experiment, f"{views.FIGURES_PREFIX}{file_name}")


@router.get("/figures/{name}", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "headers": FILE_HEADERS},
                       206: {"description": "The requested range.", "headers": FILE_HEADERS},
                       304: {"description": "If-None-Match matched the ETag."}, **problem_responses(416, 503)})
@router.head("/figures/{name}", response_class=Response, responses={200: {"description": "The headers of GET, no body."}})
async def get_figure(name: str, experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                     credentials: Credentials, storage: StorageDep):
    """A figure as PNG; ``name`` as in the list (figure1a.png), or without ``.png``."""
    artifact = await db.read(lambda session: figure_artifact(
        session, request, readable_experiment(session, authenticated_user(session, credentials), experiment_id),
        name))
    return await file_response(request, storage, artifact)  # the session is closed: the file streams without it


@router.get("/artifacts", response_model=schemas.ArtifactList)
async def list_artifacts(experiment_id: ExperimentId, request: Request, db: DatabaseDep, credentials: Credentials,
                         page: PageDep) -> schemas.ArtifactList:
    """Every stored file: runs/<run_id>/{weights.pt, representations.npz, *.json},
    tables/*, figures/*.png, results.json; each ``name`` is what GET /artifacts/{name} takes."""

    def artifacts_page(session: Session) -> schemas.ArtifactList:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        artifacts, next_token = _artifacts(session, experiment, page)
        return schemas.ArtifactList(items=[views.artifact_out(request, a) for a in artifacts],
                                    next_page_token=next_token, experiment_status=experiment.status)

    return await db.read(artifacts_page)


def check_artifact_name(name: str, field: str, encoded_slash: bool) -> None:
    """Names are relative paths inside the experiment: no '..', no absolute path, no
    backslash, no percent-encoded slash."""
    parts = name.split("/")
    control = any(ord(c) < 32 or ord(c) == 127 for c in name)
    if (encoded_slash or control or name.startswith("/") or "\\" in name or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise RequestValidationError([{
            "type": "value_error", "loc": ("path", field), "input": name,
            "msg": "must be a relative artifact name such as runs/<run_id>/weights.pt or "
                   "figures/figure1a.png: no '..' or '.' segments, leading '/', drive letter, backslash, "
                   "control character (NUL) or encoded '/'",
        }])


@router.get("/artifacts/{name:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}, "headers": FILE_HEADERS},
                       206: {"description": "The requested range.", "headers": FILE_HEADERS},
                       304: {"description": "If-None-Match matched the ETag."}, **problem_responses(416, 503)})
@router.head("/artifacts/{name:path}", response_class=Response, responses={200: {"description": "The headers of GET, no body."}})
async def get_artifact(name: str, experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                       credentials: Credentials, storage: StorageDep):
    """One stored file by name (see the list), with HEAD, ETag/If-None-Match and Range."""

    def artifact(session: Session) -> Artifact:
        experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
        raw_path = request.scope.get("raw_path", b"").lower()
        check_artifact_name(name, "name", b"%2f" in raw_path or b"%5c" in raw_path)
        return _one_artifact(session, experiment, name)

    return await file_response(request, storage, await db.read(artifact))


@router.get("/paper-comparison", response_model=PaperComparison,
            responses={200: {"content": {"text/csv": {}, "text/markdown": {}}}, **problem_responses(409)})
async def get_paper_comparison(
    experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
    format: Annotated[Literal["json", "csv", "md"], Query()] = "json",
):
    """Every number of the paper against this experiment's, cell by cell: the
    paper's mean ± SE, this experiment's mean ± SE and n, the difference in combined
    standard errors and a verdict (consistent within 2, differs, not comparable),
    and the protocol settings where the experiment departs from the paper's.
    409 until the experiment's results are ready."""
    return await db.read(lambda session: paper_comparison_of(
        session, readable_experiment(session, authenticated_user(session, credentials), experiment_id), format))


def paper_comparison_of(session: Session, experiment: Experiment, format: str):
    """The body of ``GET /paper-comparison``."""
    result = _result(session, experiment)
    comparison = paper.paper_comparison(
        ExperimentSpec.model_validate(experiment.spec), result.results["runs"],
        result.results.get("method_comparison"), experiment=experiment.id,
    )
    if format == "json":
        return comparison
    text = paper.to_markdown(comparison) if format == "md" else paper.to_csv(comparison)
    media = "text/csv" if format == "csv" else "text/markdown"
    return PlainTextResponse(text, media_type=f"{media}; charset=utf-8")
