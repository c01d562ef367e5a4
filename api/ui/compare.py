"""The web UI's comparison of experiments: the experiment list's search, sort and
accuracy columns (used by ``api.ui.routes``' list page), and the compare page
(``/ui/compare?experiment=A&experiment=B``): the specs with the differing fields
highlighted, Tables 1-3 side by side with each difference and its Welch test, the
overlaid figures and the Method 1 ensembles' overlap. It reads what ``GET
/v1/comparisons`` reads (``api.services.comparisons``), as the signed-in user."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import ScalarSelect

from api import schemas
from api.deps import DatabaseDep
from api.services import comparisons as service
from api.services.search import experiment_accuracies
from api.ui.html import HTMLRoute, render
from api.ui.queries import OrderBy
from api.ui.security import UICredentials, ui_user
from fflab import comparison
from fflab.db import Experiment, ExperimentTag, Run
from fflab.models import MODELS

router = APIRouter(prefix="/ui", route_class=HTMLRoute, include_in_schema=False)
ListSortName = Literal["-created_at", "created_at", "name", "-name", "status", "-accuracy", "accuracy"]
LIST_SORTS: dict[ListSortName, str] = {"-created_at": "newest first", "created_at": "oldest first", "name": "name A-Z",
              "-name": "name Z-A", "status": "status", "-accuracy": "best accuracy first",
              "accuracy": "lowest accuracy first"}
ListSort = Annotated[ListSortName, Query()]
ListSearch = Annotated[str, Query(max_length=64, description="A part of the name, or a tag.")]


def search_clauses(q: str) -> tuple[ColumnElement[bool], ...]:
    """The list's search: names containing ``q`` (any case), or the tag ``q``."""
    q = q.strip()
    if not q:
        return ()
    tagged = Experiment.id.in_(select(ExperimentTag.experiment_id).where(ExperimentTag.tag == q))
    return (func.lower(Experiment.name).contains(q.lower(), autoescape=True) | tagged,)


def best_accuracy() -> ScalarSelect[Any]:
    """Per experiment (correlated), the best model's mean test accuracy (``accuracy``
    of ``fflab.experiment_search``: per model the mean over its data sets of the
    finished runs' mean)."""
    per_group = (select(Run.experiment_id, Run.model, func.avg(Run.record["accuracy"].as_float()).label("mean"))
                 .where(Run.status == "succeeded", Run.unseen_class.is_(None), Run.record.is_not(None))
                 .group_by(Run.experiment_id, Run.model, Run.dataset).subquery())
    per_model = (select(per_group.c.experiment_id, func.avg(per_group.c.mean).label("mean"))
                 .group_by(per_group.c.experiment_id, per_group.c.model).subquery())
    return (select(func.max(per_model.c.mean)).where(per_model.c.experiment_id == Experiment.id)
            .scalar_subquery())


def list_order(sort: str) -> tuple[OrderBy, ...]:
    if sort not in LIST_SORTS:
        raise ValueError(f"sort must be one of {', '.join(LIST_SORTS)}; got {sort!r}")
    orders: dict[str, tuple[OrderBy, ...]] = {
        "-created_at": (Experiment.created_at.desc(), Experiment.id),
        "created_at": (Experiment.created_at.asc(), Experiment.id),
        "name": (Experiment.name.asc(), Experiment.id),
        "-name": (Experiment.name.desc(), Experiment.id),
        "status": (Experiment.status.asc(), Experiment.created_at.desc(), Experiment.id),
        "-accuracy": (best_accuracy().desc().nulls_last(), Experiment.created_at.desc(), Experiment.id),
        "accuracy": (best_accuracy().asc().nulls_last(), Experiment.created_at.desc(), Experiment.id),
    }
    return orders[sort]


def list_columns(session: Session, items: list[schemas.ExperimentSummary], q: str, sort: str) -> dict[str, Any]:
    """The list's search and sort and its accuracy columns: per experiment and model,
    the mean test accuracy of its finished runs (``accuracy.<model>``)."""
    metrics = experiment_accuracies(session, [item.id for item in items]) if items else {}
    models = [m for m in MODELS if any(f"accuracy.{m}" in found for found in metrics.values())]
    return {"q": q, "sort": sort, "sorts": LIST_SORTS, "accuracies": metrics, "accuracy_models": models,
            "model_names": {m: MODELS[m].display_name for m in MODELS}}


Sides = Annotated[list[str], Query(alias="experiment")]


@router.get("/compare")
async def compare_page(request: Request, db: DatabaseDep, credentials: UICredentials,
                       experiment: Sides = []) -> Response:  # noqa: B006
    """Two to eight experiments (or runs) side by side; the first is the reference."""

    def page(session: Session) -> Response:
        user = ui_user(session, request, credentials)
        found, _ = service.compare(session, user, experiment)
        differing = [field for field in found.spec if field.differs]
        rows = comparison.mean_jaccard(found)
        return render(request, "compare.html", {
            "c": found, "sides": experiment, "differing": differing, "tables": comparison.TABLES,
            "cell_name": comparison.cell_name, "estimate_text": comparison.estimate_text,
            "difference_text": comparison.difference_text, "number": comparison.number,
            "jaccard_rows": rows, "figures": comparison.FIGURES,
            "query": urlencode([("experiment", side) for side in experiment])})

    return await db.read(page)


@router.get("/compare/figures/{name}")
async def compare_figure(name: comparison.FigureName, request: Request, db: DatabaseDep,  # type: ignore[valid-type]
                         credentials: UICredentials, experiment: Sides = []) -> Response:  # noqa: B006
    found, sides = await db.read(lambda session: service.compare(
        session, ui_user(session, request, credentials), experiment))
    png = await run_in_threadpool(service.figure_png, name, found, sides)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
