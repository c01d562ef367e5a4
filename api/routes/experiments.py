"""Submit, list, inspect, cancel and delete experiments."""

from __future__ import annotations

import logging

from collections import Counter, defaultdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, load_only

from api import schemas, views
from api.deps import (
    Credentials,
    CurrentUser,
    DispatcherDep,
    ExperimentId,
    OwnedExperiment,
    SessionDep,
    SettingsDep,
    StorageDep,
    authenticated_user,
    in_one_trip,
    readable_experiment,
)
from fflab import jobs
from fflab.db import Experiment, Run, User
from fflab.settings import Settings
from fflab.spec import ExperimentSpec, build_spec
from fflab.storage import experiment_prefix

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
log = logging.getLogger(__name__)
MAX_OFFSET = 2**31 - 1


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
    overrides = dict(body.model_extra or {})
    try:
        return build_spec(body.preset, overrides)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_context=False)
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in problems]
        ) from None
    except ValueError as error:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "preset"), "msg": str(error), "input": body.preset}]
        ) from None


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
             responses={429: {"description": "The user's cap on queued plus running runs is reached."}})
def submit_experiment(body: schemas.ExperimentSubmit, request: Request, response: Response,
                      session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep,
                      user: CurrentUser) -> schemas.ExperimentCreated:
    """Queue an experiment: one run per spec.runs() key, then an aggregation step."""
    spec = spec_from_body(body)
    check_limits(spec, settings)
    try:
        experiment = jobs.create_experiment(session, settings, user, spec, body.visibility)
    except jobs.CapacityError as error:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(error),
                            headers={"Retry-After": str(error.retry_after_s)}) from None
    session.commit()
    dispatch(session, settings, dispatcher)
    url = views.experiment_url(request, experiment.id)
    response.headers["Location"] = url
    return schemas.ExperimentCreated(id=experiment.id, url=url, status=experiment.status,
                                     runs_total=experiment.runs_total)


@router.get("", response_model=schemas.ExperimentPage)
async def list_experiments(
    request: Request, settings: SettingsDep, credentials: Credentials,
    status_filter: Annotated[schemas.Status | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> schemas.ExperimentPage:
    """Your experiments, newest first."""

    def page_of(session: Session) -> schemas.ExperimentPage:
        user = authenticated_user(session, credentials)
        return experiment_page(session, request, user, status_filter, limit, offset)

    return await in_one_trip(settings, page_of)  # clients poll it


def experiment_page(session: Session, request: Request, user: User, status_filter: str | None, limit: int,
                    offset: int) -> schemas.ExperimentPage:
    where = [Experiment.owner_id == user.id]
    if status_filter is not None:
        where.append(Experiment.status == status_filter)
    total = session.scalar(select(func.count(Experiment.id)).where(*where)) or 0
    page = list(session.scalars(
        select(Experiment).where(*where).order_by(Experiment.created_at.desc(), Experiment.id)
        .limit(limit).offset(offset)
    ))
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    running: dict[str, list[Run]] = defaultdict(list)
    ids = [experiment.id for experiment in page]
    for experiment_id, run_status, count in session.execute(
        select(Run.experiment_id, Run.status, func.count(Run.id))
        .where(Run.experiment_id.in_(ids)).group_by(Run.experiment_id, Run.status)
    ):
        counts[experiment_id][run_status] = count
    for run in session.scalars(
        select(Run).options(load_only(Run.experiment_id, Run.run_id, Run.model, Run.progress, Run.status,
                                      Run.heartbeat_at))
        .where(Run.experiment_id.in_(ids), Run.status == "running").order_by(Run.id)
    ):
        running[run.experiment_id].append(run)
    items = [
        schemas.ExperimentSummary(**views.experiment_summary(request, e, counts[e.id], running[e.id]))
        for e in page
    ]
    return schemas.ExperimentPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{experiment_id}", response_model=schemas.Experiment)
async def get_experiment(experiment_id: ExperimentId, request: Request, settings: SettingsDep,
                         credentials: Credentials) -> schemas.Experiment:
    """Status, progress (runs done of total; model, layer, epoch, ETA and heartbeat
    age of running runs), timings, the error if it failed, and the spec."""

    def detail(session: Session) -> schemas.Experiment:
        user = authenticated_user(session, credentials)
        return views.experiment_detail(request, readable_experiment(session, user, experiment_id))

    return await in_one_trip(settings, detail)  # what clients poll


@router.post("/{experiment_id}/cancel", response_model=schemas.Experiment)
def cancel_experiment(experiment: OwnedExperiment, request: Request, session: SessionDep,
                      settings: SettingsDep, dispatcher: DispatcherDep) -> schemas.Experiment:
    """Queued runs are dropped; running runs stop at their next epoch. The experiment
    is ``cancelling`` until they have, then ``cancelled``; cancelling it again
    changes nothing (200); a finished one gets 409."""
    try:
        task_ids = jobs.cancel_experiment(session, experiment)
    except jobs.ConflictError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    session.commit()
    dispatcher.revoke(task_ids)
    dispatch(session, settings, dispatcher)
    return views.experiment_detail(request, experiment)


@router.delete("/{experiment_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_experiment(experiment: OwnedExperiment, session: SessionDep, settings: SettingsDep,
                      dispatcher: DispatcherDep, storage: StorageDep) -> None:
    """Cancel it if needed, then delete it, its runs, results and artifacts."""
    task_ids: list[str] = []
    if experiment.status in ("queued", "running"):
        task_ids = jobs.cancel_experiment(session, experiment)
    session.commit()
    dispatcher.revoke(task_ids)
    storage.delete_prefix(experiment_prefix(experiment.id))
    session.delete(experiment)
    session.commit()
    dispatch(session, settings, dispatcher)
