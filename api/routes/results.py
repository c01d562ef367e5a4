"""Tables, ensembles, shared units, weight statistics, figures and artifacts."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from api import schemas, views
from api.deps import ReadableExperiment, SessionDep, StorageDep
from fflab.db import Artifact, Ensemble, Experiment, Result, Run
from fflab import paper
from fflab.results import PAPER_TABLES, TABLES, ExperimentResults, PaperComparison
from fflab.spec import DatasetName, ExperimentSpec, ModelName
from fflab.storage import Storage, StorageError

router = APIRouter(prefix="/v1/experiments/{experiment_id}", tags=["results"])

Method = Literal["method1", "method2"]
ModelFilter = Annotated[ModelName | None, Query(description="ff, bpff or bp.")]
DatasetFilter = Annotated[DatasetName | None, Query(description="mnist or fashion_mnist.")]
MAX_LAYER = 1024  # far above any network's depth (NetworkSpec.layers); fits any integer column
LayerFilter = Annotated[int | None, Query(ge=1, le=MAX_LAYER, description="Hidden layer, from 1.")]
MethodFilter = Annotated[Method | None, Query()]


def _result(session: Session, experiment: Experiment) -> Result:
    result = session.get(Result, experiment.id)
    if result is None:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"experiment {experiment.id} is {experiment.status}: its results are not ready")
    return result


@router.get("/results", response_model=ExperimentResults,
            responses={200: {"content": {"text/csv": {}, "text/markdown": {}}}})
def get_results(
    experiment: ReadableExperiment, session: SessionDep,
    format: Annotated[Literal["json", "csv", "md"], Query()] = "json",
    table: Annotated[Literal[TABLES] | None, Query(
        description="Only this table (csv, md): table1-3, or one of the other aggregates "
        "(sparseness_treves_rolls, sparseness_hoyer, shared_units, unseen_class, sweep).")] = None,
):
    """Tables 1-3 (accuracy, ensemble sizes, fraction of positive weights) and the
    other aggregates with the run records and figure list (JSON), or the tables as
    CSV or markdown: one table with ``table``, else Tables 1-3 (and the sweep's
    table, with a sweep), each preceded by a '# <name>' line."""
    result = _result(session, experiment)
    if format == "json":
        return result.results
    if table:
        if table not in result.tables:
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                f"experiment {experiment.id} has no table {table}; it has: "
                                f"{', '.join(result.tables)}")
        text = result.tables[table][format]
    else:
        separator = "\n\n" if format == "md" else "\n"
        names = PAPER_TABLES + (("sweep",) if "sweep" in result.tables else ())
        text = "\n".join(f"# {name}{separator}{result.tables[name][format]}" for name in names)
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


@router.get("/ensembles", response_model=schemas.EnsemblesOut)
def get_ensembles(
    experiment: ReadableExperiment, session: SessionDep,
    model: ModelFilter = None, dataset: DatasetFilter = None, layer: LayerFilter = None,
    class_index: Annotated[int | None, Query(alias="class", ge=0, le=9, description="Class 0-9.")] = None,
    method: MethodFilter = None,
    quantile: Annotated[float | None, Query(gt=0, lt=1, description="Method 1 quantile.")] = None,
    run_id: Annotated[str | None, Query()] = None,
) -> schemas.EnsemblesOut:
    """Per finished run, its ensembles.json (schema: fflab/schemas/ensembles.schema.json)
    with only the ensembles matching the filters."""
    runs = _runs(session, experiment, model, dataset, run_id, columns=(Run.run_id, Run.ensemble_summary))
    fields = ("layer", "class_index", "class_name", "method", "quantile", "threshold", "epsilon", "rho_cut",
              "nh_cut", "n_images", "units", "size")
    # Plain rows, not ORM objects: an experiment has hundreds of ensembles per run.
    query = select(Ensemble.run_id, *(getattr(Ensemble, field) for field in fields)).where(
        Ensemble.experiment_id == experiment.id, Ensemble.run_id.in_([run.run_id for run in runs]))
    for column, value in ((Ensemble.layer, layer), (Ensemble.class_index, class_index),
                          (Ensemble.method, method), (Ensemble.quantile, quantile)):
        if value is not None:
            query = query.where(column == value)
    rows = defaultdict(list)
    for run_id_, *values in session.execute(query.order_by(Ensemble.id)):
        rows[run_id_].append(dict(zip(fields, values)))
    return schemas.EnsemblesOut(experiment_id=experiment.id, runs=[
        {**run.ensemble_summary, "ensembles": rows[run.run_id]} for run in runs if run.ensemble_summary
    ])


@router.get("/shared-units", response_model=schemas.SharedUnitsOut)
def get_shared_units(experiment: ReadableExperiment, session: SessionDep, model: ModelFilter = None,
                     dataset: DatasetFilter = None, layer: LayerFilter = None,
                     method: MethodFilter = None) -> schemas.SharedUnitsOut:
    """Per finished run, the number of units shared by each pair of class ensembles."""
    documents = []
    for run in _runs(session, experiment, model, dataset):
        if run.shared_units is None:
            continue
        matrices = [m for m in run.shared_units["matrices"]
                    if (layer is None or m["layer"] == layer) and (method is None or m["method"] == method)]
        documents.append({**run.shared_units, "matrices": matrices})
    return schemas.SharedUnitsOut(experiment_id=experiment.id, runs=documents)


@router.get("/weights", response_model=schemas.WeightsOut)
def get_weights(experiment: ReadableExperiment, session: SessionDep, model: ModelFilter = None,
                dataset: DatasetFilter = None, layer: LayerFilter = None) -> schemas.WeightsOut:
    """Per finished run, the fraction of positive weights per layer and of negative
    incoming weights per unit."""
    documents = []
    for run in _runs(session, experiment, model, dataset):
        if run.weight_stats is None:
            continue
        layers = [entry for entry in run.weight_stats["layers"] if layer is None or entry["layer"] == layer]
        documents.append({**run.weight_stats, "layers": layers})
    return schemas.WeightsOut(experiment_id=experiment.id, runs=documents)


def _artifacts(session: Session, experiment: Experiment, prefix: str = "") -> list[Artifact]:
    query = select(Artifact).where(Artifact.experiment_id == experiment.id)
    if prefix:
        query = query.where(Artifact.name.startswith(prefix, autoescape=True))
    return list(session.scalars(query.order_by(Artifact.name)))


def _stream(storage: Storage, artifact: Artifact) -> StreamingResponse:
    chunks = storage.iter_bytes(artifact.key)
    try:
        first = next(chunks, b"")
    except (StorageError, FileNotFoundError):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"artifact {artifact.name} is recorded but storage cannot deliver it") from None
    file_name = artifact.name.rsplit("/", 1)[-1]
    return StreamingResponse(
        itertools.chain([first], chunks), media_type=artifact.content_type,
        headers={"Content-Length": str(artifact.size), "ETag": f'"{artifact.sha256}"',
                 "Content-Disposition": f'inline; filename="{file_name}"'},
    )


def _one_artifact(session: Session, experiment: Experiment, name: str) -> Artifact:
    artifact = session.scalar(
        select(Artifact).where(Artifact.experiment_id == experiment.id, Artifact.name == name)
    )
    if artifact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment.id} has no artifact {name}")
    return artifact


@router.get("/figures", response_model=schemas.ArtifactList)
def list_figures(experiment: ReadableExperiment, request: Request, session: SessionDep) -> schemas.ArtifactList:
    return schemas.ArtifactList(items=[views.artifact_out(request, a) for a in _artifacts(session, experiment, "figures/")])


@router.get("/figures/{name}", response_class=StreamingResponse,
            responses={200: {"content": {"image/png": {}}}})
def get_figure(name: str, request: Request, experiment: ReadableExperiment, session: SessionDep, storage: StorageDep):
    """A figure as PNG; ``name`` with or without ``.png`` (figure1a, figure2.png, ...)."""
    file_name = name if name.endswith(".png") else f"{name}.png"
    raw_path = request.scope.get("raw_path", b"").lower()
    check_artifact_name(file_name, "name", "/" in name or b"%2f" in raw_path or b"%5c" in raw_path)
    return _stream(storage, _one_artifact(session, experiment, f"figures/{file_name}"))


@router.get("/artifacts", response_model=schemas.ArtifactList)
def list_artifacts(experiment: ReadableExperiment, request: Request, session: SessionDep) -> schemas.ArtifactList:
    """Every stored file: runs/<run_id>/{weights.pt, representations.npz, *.json},
    tables/*, figures/*.png, results.json."""
    return schemas.ArtifactList(items=[views.artifact_out(request, a) for a in _artifacts(session, experiment)])


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


@router.get("/artifacts/{name:path}", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def get_artifact(name: str, request: Request, experiment: ReadableExperiment, session: SessionDep,
                 storage: StorageDep):
    """One stored file by name (see the list)."""
    raw_path = request.scope.get("raw_path", b"").lower()
    check_artifact_name(name, "name", b"%2f" in raw_path or b"%5c" in raw_path)
    return _stream(storage, _one_artifact(session, experiment, name))


@router.get("/paper-comparison", response_model=PaperComparison,
            responses={200: {"content": {"text/csv": {}, "text/markdown": {}}}})
def get_paper_comparison(
    experiment: ReadableExperiment, session: SessionDep,
    format: Annotated[Literal["json", "csv", "md"], Query()] = "json",
):
    """Every number of the paper against this experiment's, cell by cell: the
    paper's mean ± SE, this experiment's mean ± SE and n, the difference in combined
    standard errors and a verdict (consistent within 2, differs, not comparable),
    and the protocol settings where the experiment departs from the paper's.
    409 until the experiment's results are ready."""
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
