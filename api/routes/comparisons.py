"""Experiments and runs compared with each other: ``GET /v1/comparisons`` and its
overlaid figures (``api.services.comparisons`` reads the sides; ``fflab.comparison``
compares them). The comparison with the paper is ``GET
/v1/experiments/{id}/paper-comparison``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy.orm import Session

from api.deps import Credentials, DatabaseDep, authenticated_user
from api.errors import problem_responses
from api.services import comparisons as service
from fflab import comparison
from fflab.comparison import ExperimentComparison

router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"],
                   responses=problem_responses(401, 404, 409, 422))
Sides = Annotated[list[str], Query(
    alias="experiment",
    description="2-8 experiments to compare, repeated: an experiment's id (its finished runs trained on all "
                "classes, a sweep's first grid point) or <id>/<run id> (one run). The first is the reference.")]


@router.get("", response_model=ExperimentComparison,
            responses={200: {"content": {"text/csv": {}, "text/markdown": {}}}})
async def get_comparison(db: DatabaseDep, credentials: Credentials, experiment: Sides = [],  # noqa: B006
                         format: Annotated[Literal["json", "csv", "md"], Query()] = "json",
                         ) -> ExperimentComparison | PlainTextResponse:
    """Experiments (or runs) side by side, each later one against the first: their
    specs field by field (``differs`` flags the fields whose values differ); Tables
    1-3 cell by cell with each side's mean ± SE and n, and the difference with its
    combined SE, Welch's t, its Welch-Satterthwaite degrees of freedom and p (a side
    with one run: no error bar, no verdict); the Method 1 ensembles' Jaccard overlap
    per class and layer between runs of the same model, data set and seed. 404 for an
    experiment you may not read; 409 for one with no finished run yet."""

    def body(session: Session) -> ExperimentComparison:
        found, _ = service.compare(session, authenticated_user(session, credentials), experiment)
        return found

    found = await db.read(body)
    if format == "json":
        return found
    text = comparison.to_markdown(found) if format == "md" else comparison.to_csv(found)
    return PlainTextResponse(text, media_type=f"{'text/csv' if format == 'csv' else 'text/markdown'}; charset=utf-8")


@router.get("/figures/{name}", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def get_comparison_figure(name: comparison.FigureName,  # type: ignore[valid-type]
                                db: DatabaseDep, credentials: Credentials,
                                experiment: Sides = []) -> Response:  # noqa: B006
    """A figure of the comparison as PNG: ``loss_curves`` (every run's loss per
    epoch, per layer for FF, one colour per experiment) or ``layer_quantities`` (the
    mean Method 1 ensemble size and fraction of positive weights per layer ± SE)."""
    found, sides = await db.read(lambda session: service.compare(
        session, authenticated_user(session, credentials), experiment))
    png = await run_in_threadpool(service.figure_png, name, found, sides)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
