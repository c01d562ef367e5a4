"""Submit, list, inspect, cancel and delete experiments."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, joinedload

from api import schemas, views
from api.errors import api_error, problem_responses
from api.paging import Page, PageDep
from api.status_cache import StatusCache
from api.deps import (
    Credentials,
    CurrentUser,
    Database,
    DatabaseDep,
    DispatcherDep,
    ExperimentId,
    Files,
    OwnedExperiment,
    SettingsDep,
    StorageDep,
    authenticated_user,
    current_experiment,
    may_read,
    owned_experiment,
    readable_experiment,
)
from fflab import jobs
from fflab.db import Experiment, ExperimentTag, User, utcnow
from fflab.db.models import IdempotencyKey
from fflab.settings import Settings
from fflab.spec import ExperimentSpec, build_spec
from fflab.storage import experiment_prefix

router = APIRouter(prefix="/v1/experiments", tags=["experiments"], responses=problem_responses(401, 422))
log = logging.getLogger(__name__)


def dispatch(session: Session, settings: Settings, dispatcher: jobs.Dispatcher) -> None:
    """Hand waiting runs to the broker now; if it is unreachable, the workers'
    periodic sweep does it (FFLAB_SWEEP_INTERVAL_S)."""
    try:
        jobs.dispatch(session, settings, dispatcher)
    except Exception:
        session.rollback()
        log.warning("could not dispatch runs now; the workers' sweep will", exc_info=True)


def spec_from_body(body: schemas.ExperimentSubmit) -> ExperimentSpec:
    """build_spec's errors as 422s naming the field in the body."""
    overrides = body.overrides()
    try:
        spec = build_spec(body.preset, overrides)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_context=False)
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in problems]
        ) from None
    except ValueError as error:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "preset"), "msg": str(error), "input": body.preset}]
        ) from None
    return spec


def default_name(preset: str | None, spec: ExperimentSpec, experiment_id: str, now: datetime | None = None) -> str:
    """What an experiment runs, when, and which, for one submitted without a name:
    ``quick-ff.bp-mnist-s3-20261128T0615-1a2b3c`` (preset or "custom", models, data
    sets, number of seeds, UTC submission minute, the id's first characters). It
    starts with the preset, so that ``?name=quick`` lists a preset's experiments."""
    datasets = ".".join("fmnist" if d == "fashion_mnist" else d for d in spec.datasets)
    stamp = (now or utcnow()).strftime("%Y%m%dT%H%M")
    prefix = f"{preset or 'custom'}-{'.'.join(spec.models)}-{datasets}-s{len(spec.seeds)}-{stamp}"
    return f"{prefix[:56]}-{experiment_id[:6]}"


FULL_SET_SIZES = {"train_subset": 60_000, "test_subset": 10_000}


def check_limits(spec: ExperimentSpec, settings: Settings) -> None:
    """The deployment's limits (Settings.max_*): 422 naming each field above its
    limit, a swept value as ``sweep.<path>``; the runs counted over a sweep's grid."""
    def path(problem: dict) -> str:
        return ".".join(problem["loc"][1:])

    # A swept setting's own value is used by no run: its swept values are checked instead.
    problems = [problem for problem in limit_problems(spec, settings) if path(problem) not in (spec.sweep or {})]
    for point in spec.points():
        problems += [{**problem, "loc": ("body", "sweep", path(problem))}
                     for problem in limit_problems(spec.at(point.index), settings) if path(problem) in point.values]
    runs = len(spec.runs())
    if runs > settings.max_runs_per_experiment:
        problems.append({"type": "less_than_equal", "loc": ("body", "sweep" if spec.sweep else "seeds"), "input": runs,
                         "msg": f"the spec makes {runs} runs; this server allows at most "
                                f"{settings.max_runs_per_experiment} per experiment (FFLAB_MAX_RUNS_PER_EXPERIMENT)"})
    if problems:
        raise RequestValidationError(problems)


def limit_problems(spec: ExperimentSpec, settings: Settings) -> list[dict]:
    """The settings of ``spec`` above this deployment's limits, as 422 problems."""
    checks: list[tuple[tuple[str, ...], int, int, str]] = []
    for model in spec.models:
        checks.append(((model, "epochs"), getattr(spec, model).epochs, settings.max_epochs, "MAX_EPOCHS"))
    checks += [
        (("network", "width"), spec.network.width, settings.max_width, "MAX_WIDTH"),
        (("network", "layers"), spec.network.layers, settings.max_layers, "MAX_LAYERS"),
        (("seeds",), len(spec.seeds), settings.max_seeds, "MAX_SEEDS"),
    ]
    for field in ("train_subset", "test_subset"):
        value = getattr(spec.data, field)
        checks.append((("data", field), FULL_SET_SIZES[field] if value is None else value,
                        getattr(settings, f"max_{field}"), f"MAX_{field.upper()}"))
    return [
        {"type": "less_than_equal", "loc": ("body", *loc), "input": value,
         "msg": f"Input should be less than or equal to {limit} (this server's FFLAB_{variable})"}
        for loc, value, limit, variable in checks if value > limit
    ]


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
    spec = spec_from_body(body)
    check_limits(spec, settings)
    if key is None:
        created = await db.write(lambda session: create(session, request, settings, dispatcher, user.id, body, spec))
    else:
        digest = body_digest(body)
        try:
            created = await db.write(lambda session: replayed(session, user.id, key, digest) or create(
                session, request, settings, dispatcher, user.id, body, spec, idempotency=(key, digest)))
        except (IntegrityError, OperationalError):  # a concurrent request with this key won
            created = await db.read(lambda session: replayed(session, user.id, key, digest))
            if created is None:
                raise
    response.headers["Location"] = created.url
    return created


IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_TTL = timedelta(hours=24)
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


def body_digest(body: schemas.ExperimentSubmit) -> str:
    canonical = json.dumps(body.model_dump(mode="json", exclude_unset=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def replayed(session: Session, user_id: int, key: str, digest: str) -> schemas.ExperimentCreated | None:
    """The answer to the earlier submission with this key (within 24 h) if there is
    one; 409 if that one had another body. An expired key, or one whose experiment
    was deleted, is forgotten (None: submit anew)."""
    row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.user_id == user_id,
                                                      IdempotencyKey.key == key))
    if row is None:
        return None
    if row.created_at < utcnow() - IDEMPOTENCY_TTL or session.get(Experiment, row.experiment_id) is None:
        session.delete(row)
        session.flush()
        return None
    if row.body_sha256 != digest:
        raise api_error(status.HTTP_409_CONFLICT,
                        "header Idempotency-Key: this key was used in the last 24 h with another body "
                        f"(experiment {row.experiment_id}); use a new key for a new submission", "conflict",
                        [{"field": f"header.{IDEMPOTENCY_HEADER}", "message": "used with another body",
                          "type": "idempotency_conflict"}])
    return schemas.ExperimentCreated.model_validate(row.response)


def create(session: Session, request: Request, settings: Settings, dispatcher: jobs.Dispatcher, user_id: int,
           body: schemas.ExperimentSubmit, spec: ExperimentSpec,
           idempotency: tuple[str, str] | None = None) -> schemas.ExperimentCreated:
    """The write unit of a submission: the experiment, its runs and tags, committed,
    then dispatched."""
    user = session.get(User, user_id)
    try:
        experiment = jobs.create_experiment(session, settings, user, spec, body.visibility, body.priority)
    except jobs.PriorityNotAllowed as error:
        raise api_error(status.HTTP_403_FORBIDDEN, str(error), "forbidden") from None
    except jobs.CapacityError as error:
        raise api_error(status.HTTP_429_TOO_MANY_REQUESTS, str(error), "quota_exceeded",
                        headers={"Retry-After": str(error.retry_after_s)}) from None
    except jobs.TooLarge as error:  # no registered worker could ever hold a run (fflab.gpu's estimate)
        raise RequestValidationError([{"type": "too_large", "loc": ("body",), "input": None,
                                       "msg": str(error)}]) from None
    if "name" not in body.model_fields_set:
        experiment.name = default_name(body.preset, spec, experiment.id)
        experiment.spec = {**experiment.spec, "name": experiment.name}
    set_tags(session, experiment.id, body.tags)
    created = schemas.ExperimentCreated(id=experiment.id, url=views.experiment_url(request, experiment.id),
                                        status=experiment.status, runs_total=experiment.runs_total,
                                        name=experiment.name)
    if idempotency is not None:  # with the experiment: a concurrent twin fails on its unique key
        session.add(IdempotencyKey(user_id=user_id, key=idempotency[0], body_sha256=idempotency[1],
                                   experiment_id=experiment.id, response=created.model_dump(mode="json")))
        session.flush()
    session.commit()
    dispatch(session, settings, dispatcher)
    return created


def set_tags(session: Session, experiment_id: str, tags: list[str]) -> None:
    session.execute(delete(ExperimentTag).where(ExperimentTag.experiment_id == experiment_id))
    session.add_all(ExperimentTag(experiment_id=experiment_id, tag=tag) for tag in dict.fromkeys(tags))
    session.flush()


SORTS = {
    "-created_at": (Experiment.created_at.desc(), Experiment.id.desc()),
    "created_at": (Experiment.created_at.asc(), Experiment.id.asc()),
    "name": (Experiment.name.asc(), Experiment.id.asc()),
    "-name": (Experiment.name.desc(), Experiment.id.desc()),
    "status": (Experiment.status.asc(), Experiment.created_at.desc(), Experiment.id.desc()),
}
Scope = Literal["mine", "lab", "all"]


@dataclass(frozen=True)
class ExperimentFilters:
    scope: Scope = "mine"
    statuses: tuple[str, ...] = ()
    name: str | None = None
    tags: tuple[str, ...] = ()
    owner: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    sort: str = "-created_at"


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
) -> schemas.ExperimentPage:
    """Experiments you may see, filtered and sorted: yours by default, those shared
    with the lab (``scope=lab``), or everyone's (``scope=all``, admins)."""

    def page_of(session: Session) -> schemas.ExperimentPage:
        user = authenticated_user(session, credentials)
        return experiment_page(session, request, user, filters, page)

    return await db.read(page_of)  # clients poll it: one unit


def visible_where(user: User, filters: ExperimentFilters) -> list:
    """The WHERE clauses of a listing (403 for scope=all without the admin role)."""
    if filters.scope == "all" and user.role != "admin":
        raise api_error(status.HTTP_403_FORBIDDEN, "scope=all needs the admin role; use scope=lab for "
                                                   "the experiments shared with the lab", "forbidden")
    where: list = {"mine": [Experiment.owner_id == user.id], "lab": [Experiment.visibility == "lab"],
                   "all": []}[filters.scope]
    if filters.statuses:
        where.append(Experiment.status.in_(filters.statuses))
    if filters.name:
        where.append(Experiment.name.startswith(filters.name, autoescape=True))
    for tag in filters.tags:
        where.append(Experiment.id.in_(select(ExperimentTag.experiment_id).where(ExperimentTag.tag == tag)))
    if filters.owner:
        where.append(Experiment.owner_id.in_(select(User.id).where(User.name == filters.owner)))
    if filters.created_after:
        where.append(Experiment.created_at >= filters.created_after)
    if filters.created_before:
        where.append(Experiment.created_at < filters.created_before)
    return where


def experiment_page(session: Session, request: Request, user: User, filters: ExperimentFilters,
                    page: Page) -> schemas.ExperimentPage:
    where = visible_where(user, filters)
    total = session.scalar(select(func.count(Experiment.id)).where(*where)) or 0
    rows = list(session.scalars(
        select(Experiment).options(joinedload(Experiment.owner)).where(*where).order_by(*SORTS[filters.sort])
        .limit(page.limit + 1).offset(page.offset)
    ))
    experiments, next_token = page.cut(rows)
    items = views.experiment_summaries(request, session, experiments)
    return schemas.ExperimentPage(items=items, next_page_token=next_token, total=total)


@router.get("/{experiment_id}", response_model=schemas.Experiment, responses=problem_responses(401, 404))
async def get_experiment(experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                         credentials: Credentials) -> schemas.Experiment:
    """Status, progress (runs done of total; model, layer, epoch, ETA and heartbeat
    age of running runs), timings, the error if it failed, and the spec."""

    cache: StatusCache = request.app.state.status_cache
    base_url = str(request.base_url)

    def detail(session: Session) -> bytes:
        user = authenticated_user(session, credentials)
        cached = cache.get(experiment_id, base_url)
        if cached is not None and may_read(user, cached.owner_id, cached.visibility):
            return cached.body
        epoch = cache.epoch()
        experiment = readable_experiment(session, user, experiment_id)
        body = views.experiment_detail(request, experiment).model_dump_json(by_alias=True).encode()
        cache.put(experiment_id, base_url, experiment.owner_id, experiment.visibility, body, epoch)
        return body

    # What clients poll: one unit, and a body rendered for this experiment within
    # status_cache_ttl_s is served again (api.status_cache).
    return Response(await db.read(detail), media_type="application/json")


@router.patch("/{experiment_id}", response_model=schemas.Experiment,
              responses=problem_responses(401, 403, 404, 413, 422))
async def update_experiment(body: schemas.ExperimentPatch, experiment: OwnedExperiment, request: Request,
                            db: DatabaseDep) -> schemas.Experiment:
    """Rename it, replace its tags or change its visibility, at any time (owner or
    admin). Fields left out are unchanged; the spec is not: submit another experiment."""
    changes = body.model_dump(exclude_unset=True)
    nulls = [field for field, value in changes.items() if value is None]
    if nulls:
        raise RequestValidationError([{"type": "value_error", "loc": ("body", field), "input": None,
                                       "msg": f"{field} cannot be null: leave it out to keep it"} for field in nulls])

    def update(session: Session) -> schemas.Experiment:
        current = current_experiment(session, experiment.id)
        for field in ("name", "visibility"):
            if field in changes:
                setattr(current, field, changes[field])
        if "name" in changes:
            current.spec = {**current.spec, "name": changes["name"]}
        if "tags" in changes:
            set_tags(session, current.id, changes["tags"])
        session.commit()
        request.app.state.status_cache.forget(current.id)
        return views.experiment_detail(request, current)

    return await db.write(update)


@router.post("/{experiment_id}/cancel", response_model=schemas.Experiment,
             responses=problem_responses(401, 403, 404, 409))
async def cancel_experiment(experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                            credentials: Credentials, settings: SettingsDep,
                            dispatcher: DispatcherDep) -> schemas.Experiment:
    """Queued runs are dropped; running runs stop at their next epoch. The experiment
    is ``cancelling`` until they have, then ``cancelled``; cancelling it again
    changes nothing (200); a finished one gets 409."""
    return await db.write(lambda session: cancel(
        session, request, owned_experiment(session, authenticated_user(session, credentials), experiment_id),
        settings, dispatcher))


def cancel(session: Session, request: Request, experiment: Experiment, settings: Settings,
           dispatcher: jobs.Dispatcher) -> schemas.Experiment:
    """The write unit of a cancellation (the experiment loaded in ``session``)."""
    try:
        task_ids = jobs.cancel_experiment(session, experiment)
    except jobs.ConflictError as error:
        raise api_error(status.HTTP_409_CONFLICT, str(error), "conflict") from None
    session.commit()
    request.app.state.status_cache.forget(experiment.id)
    dispatcher.revoke(task_ids)
    dispatch(session, settings, dispatcher)
    return views.experiment_detail(request, experiment)


@router.delete("/{experiment_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=problem_responses(401, 403, 404, 503))
async def delete_experiment(experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                            credentials: Credentials, settings: SettingsDep, dispatcher: DispatcherDep,
                            storage: StorageDep) -> None:
    """Cancel it if needed, then delete it, its runs, results and artifacts."""
    await remove_experiment(db, storage, request, settings, dispatcher, lambda session: owned_experiment(
        session, authenticated_user(session, credentials), experiment_id))


async def remove_experiment(db: Database, files: Files, request: Request, settings: Settings,
                            dispatcher: jobs.Dispatcher, experiment_of: Callable[[Session], Experiment]) -> None:
    """Three units: check the experiment (``experiment_of(session)``, reading only),
    delete its files, then cancel its runs and delete its rows. Files first: on a full
    disk (SQLite on it) no row can be written until they are gone. No session is open
    while the storage works; a worker still training one of its runs finds the run
    gone and removes what it stored meanwhile (worker.service.train_and_store)."""

    def remove(session: Session, experiment_id: str) -> None:
        experiment = session.get(Experiment, experiment_id)
        task_ids: list[str] = []
        if experiment is not None:
            if experiment.status in ("queued", "running"):
                task_ids = jobs.cancel_experiment(session, experiment)
            session.delete(experiment)
            session.commit()
        dispatcher.revoke(task_ids)
        request.app.state.status_cache.forget(experiment_id)
        dispatch(session, settings, dispatcher)

    experiment_id = await db.read(lambda session: experiment_of(session).id)
    await files.run(lambda storage: storage.delete_prefix(experiment_prefix(experiment_id)))
    await db.write(lambda session: remove(session, experiment_id))
