"""Experiments: who may read and change one, submission (the spec, this server's
limits, the default name, Idempotency-Key, creation and dispatch), renaming,
tags and visibility, cancellation, deletion, and the listings."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError
from sqlalchemy import delete, false, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.sql.elements import ColumnElement, UnaryExpression

from api import schemas
from api.services.errors import Conflict, Forbidden, Invalid, LimitReached, NotFound
from api.services.search import search_where
from fflab import accounts, jobs
from fflab.db import Experiment, ExperimentTag, Run, User, utcnow
from fflab.db.models import IdempotencyKey
from fflab.experiment_search import Condition
from fflab.settings import Settings
from fflab.spec import ExperimentSpec, build_spec
from fflab.storage import experiment_prefix

if TYPE_CHECKING:
    from api.deps import Database, Files
    from api.paging import Page
    from api.status_cache import StatusCache

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- who may read and change


def may_read(user: User, owner_id: int, visibility: str) -> bool:
    """Who may read an experiment: its owner, anyone if it is visible to the lab, an admin."""
    return owner_id == user.id or visibility == "lab" or user.role == "admin"


def may_change(user: User, owner_id: int) -> bool:
    """Who may change an experiment (rename, tag, share, cancel, delete, re-analyse): its owner or an admin."""
    return owner_id == user.id or user.role == "admin"


def readable_experiment(session: Session, user: User, experiment_id: str) -> Experiment:
    """The experiment if ``may_read``; otherwise NotFound, so that others' ids are not disclosed."""
    experiment = session.get(Experiment, experiment_id)
    if experiment is None or not may_read(user, experiment.owner_id, experiment.visibility):
        raise NotFound(f"no experiment {experiment_id}")
    return experiment


MAX_RUN_IDS_LISTED = 20


def experiment_run(session: Session, experiment: Experiment, run_id: str) -> Run:
    """The run ``run_id`` of ``experiment``; NotFound naming the runs it has (the
    first MAX_RUN_IDS_LISTED) where it has no such run."""
    run = session.scalar(select(Run).where(Run.experiment_id == experiment.id, Run.run_id == run_id))
    if run is not None:
        return run
    ids = list(session.scalars(select(Run.run_id).where(Run.experiment_id == experiment.id).order_by(Run.id)
                               .limit(MAX_RUN_IDS_LISTED + 1)))
    listed = ", ".join(ids[:MAX_RUN_IDS_LISTED]) + (", ..." if len(ids) > MAX_RUN_IDS_LISTED else "")
    raise NotFound(f"experiment {experiment.id} has no run {run_id}; its runs: {listed or 'none'}"
                   + (" (GET .../runs lists them all)" if len(ids) > MAX_RUN_IDS_LISTED else ""))


def check_may_change(experiment: Experiment, user: User) -> Experiment:
    """The experiment if ``may_change`` (Forbidden otherwise)."""
    if not may_change(user, experiment.owner_id):
        raise Forbidden("only the experiment's owner or an admin may change it")
    return experiment


def owned_experiment(session: Session, user: User, experiment_id: str) -> Experiment:
    """``readable_experiment`` that the user may change (``check_may_change``)."""
    return check_may_change(readable_experiment(session, user, experiment_id), user)


def current_experiment(session: Session, experiment_id: str) -> Experiment:
    """The experiment in this session (a write unit, its rights checked in an earlier
    one); NotFound if it was deleted meanwhile."""
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFound(f"no experiment {experiment_id}")
    return experiment


# ----------------------------------------------------------------------------- submission


def spec_from_body(body: schemas.ExperimentSubmit) -> ExperimentSpec:
    """The spec a submission stands for; build_spec's errors as Invalid naming the
    field in the body."""
    try:
        return build_spec(body.preset, body.overrides())
    except ValidationError as error:
        problems = error.errors(include_url=False, include_context=False)
        raise Invalid([{**problem, "loc": ("body", *problem["loc"])} for problem in problems]) from None
    except ValueError as error:
        raise Invalid([{"type": "value_error", "loc": ("body", "preset"), "msg": str(error),
                        "input": body.preset}]) from None


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
    """The deployment's limits (Settings.max_*): Invalid naming each field above its
    limit, a swept value as ``sweep.<path>``; the runs counted over a sweep's grid."""
    def path(problem: dict[str, Any]) -> str:
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
        raise Invalid(problems)


def limit_problems(spec: ExperimentSpec, settings: Settings) -> list[dict[str, Any]]:
    """The settings of ``spec`` above this deployment's limits, as problems."""
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


def checked_spec(body: schemas.ExperimentSubmit, settings: Settings) -> ExperimentSpec:
    """The spec of a submission within this server's limits (Invalid otherwise):
    what a submission checks before it touches the database, and the submit form's
    preview."""
    spec = spec_from_body(body)
    check_limits(spec, settings)
    return spec


@dataclass(frozen=True)
class Submitted:
    """What a submission created (or, for a repeated Idempotency-Key, had created)."""

    id: str
    status: str
    runs_total: int
    name: str

    @classmethod
    def of(cls, stored: dict[str, Any]) -> Submitted:
        return cls(stored["id"], stored["status"], stored["runs_total"], stored["name"])


IDEMPOTENCY_TTL = timedelta(hours=24)


def body_digest(body: schemas.ExperimentSubmit) -> str:
    """What tells two submissions under one Idempotency-Key apart: the fields sent."""
    canonical = json.dumps(body.model_dump(mode="json", exclude_unset=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def submit(db: Database, settings: Settings, dispatcher: jobs.Dispatcher, user: User,
                 body: schemas.ExperimentSubmit, idempotency_key: str | None = None) -> Submitted:
    """Check the spec (``checked_spec``), then create the experiment, its runs and
    tags in one write unit and dispatch them. With ``idempotency_key``, the same key
    from the same user within 24 h answers the first submission and creates nothing
    (Conflict if it came with another body)."""
    spec = checked_spec(body, settings)
    if idempotency_key is None:
        return await db.write(lambda session: create(session, settings, dispatcher, user.id, body, spec))
    digest = body_digest(body)
    try:
        return await db.write(lambda session: replayed(session, user.id, idempotency_key, digest) or create(
            session, settings, dispatcher, user.id, body, spec, idempotency=(idempotency_key, digest)))
    except (IntegrityError, OperationalError):  # a concurrent request with this key won
        created = await db.read(lambda session: replayed(session, user.id, idempotency_key, digest))
        if created is None:
            raise
        return created


def replayed(session: Session, user_id: int, key: str, digest: str) -> Submitted | None:
    """The earlier submission with this key (within 24 h) if there is one; Conflict
    if that one had another body. An expired key, or one whose experiment was
    deleted, is forgotten (None: submit anew)."""
    row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.user_id == user_id,
                                                      IdempotencyKey.key == key))
    if row is None:
        return None
    if row.created_at < utcnow() - IDEMPOTENCY_TTL or session.get(Experiment, row.experiment_id) is None:
        session.delete(row)
        session.flush()
        return None
    if row.body_sha256 != digest:
        raise Conflict("header Idempotency-Key: this key was used in the last 24 h with another body "
                       f"(experiment {row.experiment_id}); use a new key for a new submission",
                       [{"loc": ("header", "Idempotency-Key"), "msg": "used with another body",
                         "type": "idempotency_conflict"}])
    return Submitted.of(row.response)


def create(session: Session, settings: Settings, dispatcher: jobs.Dispatcher, user_id: int,
           body: schemas.ExperimentSubmit, spec: ExperimentSpec,
           idempotency: tuple[str, str] | None = None) -> Submitted:
    """The write unit of a submission: the experiment, its runs and tags, committed,
    then dispatched. Forbidden for a priority above the user's max_priority,
    LimitReached when their cap on waiting runs is, Invalid for a run no worker
    could ever hold."""
    user = session.get_one(User, user_id)
    try:
        experiment = jobs.create_experiment(session, settings, user, spec, body.visibility, body.priority)
    except jobs.PriorityNotAllowed as error:
        raise Forbidden(str(error)) from None
    except jobs.CapacityError as error:
        raise LimitReached(str(error), error.retry_after_s) from None
    except jobs.TooLarge as error:  # no registered worker could ever hold a run (fflab.gpu's estimate)
        raise Invalid([{"type": "too_large", "loc": error.loc, "input": None, "msg": str(error)}]) from None
    if "name" not in body.model_fields_set:
        experiment.name = default_name(body.preset, spec, experiment.id)
        experiment.spec = {**experiment.spec, "name": experiment.name}
    set_tags(session, experiment.id, body.tags)
    created = Submitted(experiment.id, experiment.status, experiment.runs_total, experiment.name)
    if idempotency is not None:  # with the experiment: a concurrent twin fails on its unique key
        session.add(IdempotencyKey(user_id=user_id, key=idempotency[0], body_sha256=idempotency[1],
                                   experiment_id=experiment.id, response=asdict(created)))
        session.flush()
    session.commit()
    dispatch(session, settings, dispatcher)
    return created


def dispatch(session: Session, settings: Settings, dispatcher: jobs.Dispatcher) -> None:
    """Hand waiting runs to the broker now; if it is unreachable, the workers'
    periodic sweep does it (FFLAB_SWEEP_INTERVAL_S)."""
    try:
        jobs.dispatch(session, settings, dispatcher)
    except Exception:
        session.rollback()
        log.warning("could not dispatch runs now; the workers' sweep will", exc_info=True)


def set_tags(session: Session, experiment_id: str, tags: Sequence[str]) -> None:
    session.execute(delete(ExperimentTag).where(ExperimentTag.experiment_id == experiment_id))
    session.add_all(ExperimentTag(experiment_id=experiment_id, tag=tag) for tag in dict.fromkeys(tags))
    session.flush()


# ----------------------------------------------------------------------------- changes


def check_patch(patch: schemas.ExperimentPatch) -> dict[str, Any]:
    """The fields a change sets (Invalid for a null: leaving a field out keeps it)."""
    changes = patch.model_dump(exclude_unset=True)
    nulls = [field for field, value in changes.items() if value is None]
    if nulls:
        raise Invalid([{"type": "value_error", "loc": ("body", field), "input": None,
                        "msg": f"{field} cannot be null: leave it out to keep it"} for field in nulls])
    return changes


def update(session: Session, experiment_id: str, patch: schemas.ExperimentPatch,
           status_cache: StatusCache) -> Experiment:
    """Rename it, replace its tags or change its visibility (the user's right to
    change it checked in an earlier unit); the spec keeps the name."""
    changes = check_patch(patch)
    current = current_experiment(session, experiment_id)
    for field in ("name", "visibility"):
        if field in changes:
            setattr(current, field, changes[field])
    if "name" in changes:
        current.spec = {**current.spec, "name": changes["name"]}
    if "tags" in changes:
        set_tags(session, current.id, changes["tags"])
    session.commit()
    status_cache.forget(current.id)
    return current


def cancel(session: Session, user: User, experiment_id: str, settings: Settings, dispatcher: jobs.Dispatcher,
           status_cache: StatusCache) -> Experiment:
    """Queued runs are dropped, running ones stop at their next epoch (Conflict for a
    finished experiment; cancelling one again changes nothing); the freed slots are
    dispatched. With no run still training and some succeeded, the aggregation of
    their partial results is sent (the experiment is ``cancelling`` until it is
    recorded; if it cannot be sent, the workers' sweep sends it). One write unit."""
    experiment = owned_experiment(session, user, experiment_id)
    try:
        task_ids = jobs.cancel_experiment(session, experiment)
    except jobs.ConflictError as error:
        raise Conflict(str(error)) from None
    aggregate = jobs.aggregation_due(session, experiment)
    session.commit()
    status_cache.forget(experiment.id)
    dispatcher.revoke(task_ids)
    if aggregate:
        try:
            dispatcher.send_aggregate(experiment.id, settings.queue_name("cpu"))
        except Exception:
            experiment.aggregation_queued_at = None  # the sweep's unsent_aggregations sends it
            session.commit()
    dispatch(session, settings, dispatcher)
    return experiment


async def remove(db: Database, files: Files, user: User, experiment_id: str, settings: Settings,
                 dispatcher: jobs.Dispatcher, status_cache: StatusCache) -> None:
    """Cancel the experiment if needed, then delete it, its runs, results and
    artifacts, in three units: check the user's right (reading only), delete its
    files, then cancel its runs and delete its rows. Files first: on a full disk
    (SQLite on it) no row can be written until they are gone. No session is open
    while the storage works; a worker still training one of its runs finds the run
    gone and removes what it stored meanwhile (worker.service.train_and_store)."""

    def remove_rows(session: Session) -> None:
        experiment = session.get(Experiment, experiment_id)
        task_ids: list[str] = []
        if experiment is not None:
            if experiment.status in ("queued", "running"):
                task_ids = jobs.cancel_experiment(session, experiment)
            session.delete(experiment)
            session.commit()
        dispatcher.revoke(task_ids)
        status_cache.forget(experiment_id)
        dispatch(session, settings, dispatcher)

    await db.read(lambda session: owned_experiment(session, user, experiment_id))
    await files.run(lambda storage: storage.delete_prefix(experiment_prefix(experiment_id)))
    await db.write(remove_rows)


# ----------------------------------------------------------------------------- listings

SORTS: dict[str, tuple[UnaryExpression[Any], ...]] = {
    "-created_at": (Experiment.created_at.desc(), Experiment.id.desc()),
    "created_at": (Experiment.created_at.asc(), Experiment.id.asc()),
    "name": (Experiment.name.asc(), Experiment.id.asc()),
    "-name": (Experiment.name.desc(), Experiment.id.desc()),
    "status": (Experiment.status.asc(), Experiment.created_at.desc(), Experiment.id.desc()),
}
Scope = Literal["mine", "lab", "all"]


@dataclass(frozen=True)
class ExperimentFilters:
    """What ``GET /v1/experiments`` lists."""

    scope: Scope = "mine"
    statuses: tuple[str, ...] = ()
    name: str | None = None
    tags: tuple[str, ...] = ()
    owner: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    sort: str = "-created_at"


def owned_by(name: str) -> ColumnElement[bool]:
    """The WHERE clause of experiments owned by the user called ``name``, compared as
    user names are (``accounts.normalise_name``)."""
    try:
        normal = accounts.normalise_name(name)
    except accounts.InvalidName:
        return false()
    return Experiment.owner_id.in_(select(User.id).where(func.lower(User.name) == normal))


def visible_where(user: User, filters: ExperimentFilters) -> list[ColumnElement[bool]]:
    """The WHERE clauses of a listing (Forbidden: scope=all without the admin role)."""
    if filters.scope == "all" and user.role != "admin":
        raise Forbidden("scope=all needs the admin role; use scope=lab for the experiments shared with the lab")
    where: list[ColumnElement[bool]] = {"mine": [Experiment.owner_id == user.id], "lab": [Experiment.visibility == "lab"],
                   "all": []}[filters.scope]
    if filters.statuses:
        where.append(Experiment.status.in_(filters.statuses))
    if filters.name:
        where.append(Experiment.name.startswith(filters.name, autoescape=True))
    for tag in filters.tags:
        where.append(Experiment.id.in_(select(ExperimentTag.experiment_id).where(ExperimentTag.tag == tag)))
    if filters.owner:
        where.append(owned_by(filters.owner))
    if filters.created_after:
        where.append(Experiment.created_at >= filters.created_after)
    if filters.created_before:
        where.append(Experiment.created_at < filters.created_before)
    return where


def experiment_page(session: Session, user: User, filters: ExperimentFilters,
                    page: Page, search: tuple[Condition, ...] = ()) -> tuple[list[Experiment], str | None, int]:
    """A page of the listing (owners loaded), the next page's token and the total;
    ``search``: the conditions of ``filter=`` (``api.services.search``)."""
    where = visible_where(user, filters)
    if search:
        where += search_where(session, where, list(search))
    total = session.scalar(select(func.count(Experiment.id)).where(*where)) or 0
    rows = list(session.scalars(
        select(Experiment).options(joinedload(Experiment.owner)).where(*where).order_by(*SORTS[filters.sort])
        .limit(page.limit + 1).offset(page.offset)
    ))
    experiments, next_token = page.cut(rows)
    return experiments, next_token, total
