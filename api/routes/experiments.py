"""Submit, list, inspect, cancel and delete experiments: HTTP in and out; the rules
are ``api.services.experiments``'s."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response, status
from pydantic import AwareDatetime
from sqlalchemy.orm import Session

from api import schemas, views
from api.deps import (
    Credentials,
    CurrentUser,
    DatabaseDep,
    DispatcherDep,
    ExperimentId,
    OwnedExperiment,
    SettingsDep,
    StatusCacheDep,
    StorageDep,
    authenticated_user,
)
from api.errors import api_error, problem_responses
from api.paging import PageDep
from api.search_query import search_conditions
from api.services import experiments
from api.services.experiments import SORTS, ExperimentFilters, Scope
from fflab.experiment_search import Condition

router = APIRouter(prefix="/v1/experiments", tags=["experiments"], responses=problem_responses(401, 422))


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.ExperimentCreated,
             responses=problem_responses(401, 403, 409, 413, 422, 429, 503))
async def submit_experiment(body: Annotated[schemas.ExperimentSubmit, Body(openapi_examples=schemas.SUBMIT_EXAMPLES)],
                            request: Request, response: Response, db: DatabaseDep, settings: SettingsDep,
                            dispatcher: DispatcherDep, user: CurrentUser,
                            idempotency: Annotated[str | None, Header(
                                alias="Idempotency-Key", description=(
                                    "Retry safely: the same key from the same user within 24 h answers the "
                                    "first submission (same id) and creates nothing; with another body, 409. "
                                    "1-255 visible ASCII characters."))] = None) -> schemas.ExperimentCreated:
    """Queue an experiment: one run per spec.runs() key, then an aggregation step.
    The body is a preset and any spec fields to override (each documented in the
    schema, with the presets' values), or a complete spec. 403 for a priority above
    the user's max_priority; 429 when the user's cap on waiting runs is reached."""
    key = idempotency_key(request)
    created = await experiments.submit(db, settings, dispatcher, user, body, key)
    url = views.experiment_url(request, created.id)
    response.headers["Location"] = url
    return schemas.ExperimentCreated(id=created.id, url=url, status=schemas.stored_status(created.status),
                                     runs_total=created.runs_total, name=created.name)


IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header: 1-255 visible ASCII characters (422 otherwise)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise api_error(status.HTTP_422_UNPROCESSABLE_ENTITY,
                        "header Idempotency-Key: must be 1-255 visible ASCII characters", "validation_error",
                        [{"field": f"header.{IDEMPOTENCY_HEADER}", "message": "1-255 visible ASCII characters",
                          "type": "value_error"}])
    return key


async def experiment_filters(
    scope: Annotated[Scope, Query(description="mine: yours; lab: every experiment shared with the lab "
                                              "(visibility lab, yours included); all: everyone's (admin).")] = "mine",
    status_filter: Annotated[list[schemas.Status] | None, Query(
        alias="status", description="Only these statuses (repeat the parameter for several).")] = None,
    name: Annotated[str | None, Query(max_length=64, description=(
        "Names starting with this (default names start with the preset: name=quick)."))] = None,
    tag: Annotated[list[schemas.Tag] | None, Query(description="Only experiments with every tag given.")] = None,
    owner: Annotated[str | None, Query(max_length=64, description="Only this user's (with scope lab or all).")] = None,
    created_after: Annotated[AwareDatetime | None, Query(description="ISO 8601 with a time zone.")] = None,
    created_before: Annotated[AwareDatetime | None, Query(description="ISO 8601 with a time zone.")] = None,
    sort: Annotated[Literal[tuple(SORTS)], Query(  # type: ignore[valid-type]
        description="Order: -created_at (newest first), created_at, name, -name, status.")] = "-created_at",
) -> ExperimentFilters:
    return ExperimentFilters(scope, tuple(status_filter or ()), name, tuple(tag or ()), owner, created_after,
                             created_before, sort)


@router.get("", response_model=schemas.ExperimentPage, responses=problem_responses(401, 403, 422))
async def list_experiments(
    request: Request, db: DatabaseDep, credentials: Credentials, page: PageDep,
    filters: Annotated[ExperimentFilters, Depends(experiment_filters)],
    search: Annotated[list[Condition], Depends(search_conditions)],
) -> schemas.ExperimentPage:
    """Experiments you may see, filtered and sorted: yours by default, those shared
    with the lab (``scope=lab``), or everyone's (``scope=all``, admins); ``filter``
    searches spec values and metrics (``network.threshold=0.3``, ``accuracy>0.9``)."""

    def page_of(session: Session) -> schemas.ExperimentPage:
        user = authenticated_user(session, credentials)
        rows, next_token, total = experiments.experiment_page(session, user, filters, page, tuple(search))
        return schemas.ExperimentPage(items=views.experiment_summaries(request, session, rows),
                                      next_page_token=next_token, total=total)

    return await db.read(page_of)  # clients poll it: one unit


@router.get("/{experiment_id}", response_model=schemas.Experiment, responses=problem_responses(401, 404))
async def get_experiment(experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                         credentials: Credentials, cache: StatusCacheDep) -> Response:
    """Status, progress (runs done of total; model, layer, epoch, ETA and heartbeat
    age of running runs), timings, the error if it failed, and the spec."""

    base_url = str(request.base_url)

    def detail(session: Session) -> bytes:
        user = authenticated_user(session, credentials)
        cached = cache.get(experiment_id, base_url)
        if cached is not None and experiments.may_read(user, cached.owner_id, cached.visibility):
            return cached.body
        epoch = cache.epoch()
        experiment = experiments.readable_experiment(session, user, experiment_id)
        body = views.experiment_detail(request, experiment).model_dump_json(by_alias=True).encode()
        cache.put(experiment_id, base_url, experiment.owner_id, experiment.visibility, body, epoch)
        return body

    # What clients poll: one unit, and a body rendered for this experiment within
    # status_cache_ttl_s is served again (api.status_cache).
    return Response(await db.read(detail), media_type="application/json")


@router.patch("/{experiment_id}", response_model=schemas.Experiment,
              responses=problem_responses(401, 403, 404, 413, 422))
async def update_experiment(body: schemas.ExperimentPatch, experiment: OwnedExperiment, request: Request,
                            db: DatabaseDep, cache: StatusCacheDep) -> schemas.Experiment:
    """Rename it, replace its tags or change its visibility, at any time (owner or
    admin). Fields left out are unchanged; the spec is not: submit another experiment."""
    experiments.check_patch(body)  # before the write unit: a 422 takes no slot
    return await db.write(lambda session: views.experiment_detail(
        request, experiments.update(session, experiment.id, body, cache)))


@router.post("/{experiment_id}/cancel", response_model=schemas.Experiment,
             responses=problem_responses(401, 403, 404, 409))
async def cancel_experiment(experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                            credentials: Credentials, settings: SettingsDep, dispatcher: DispatcherDep,
                            cache: StatusCacheDep) -> schemas.Experiment:
    """Queued runs are dropped; running runs stop at their next epoch. The experiment
    is ``cancelling`` until they have, then ``cancelled``; cancelling it again
    changes nothing (200); a finished one gets 409."""
    return await db.write(lambda session: views.experiment_detail(request, experiments.cancel(
        session, authenticated_user(session, credentials), experiment_id, settings, dispatcher, cache)))


@router.delete("/{experiment_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=problem_responses(401, 403, 404, 503))
async def delete_experiment(experiment_id: ExperimentId, user: CurrentUser, db: DatabaseDep,
                            settings: SettingsDep, dispatcher: DispatcherDep, storage: StorageDep,
                            cache: StatusCacheDep) -> None:
    """Cancel it if needed, then delete it, its runs, results and artifacts."""
    await experiments.remove(db, storage, user, experiment_id, settings, dispatcher, cache)
