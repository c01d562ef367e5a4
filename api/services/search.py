"""Experiments searched by their columns, spec values and metrics
(``GET /v1/experiments?filter=network.threshold=0.3&filter=accuracy>0.9``; the
syntax is ``fflab.experiment_search``'s).

A condition on a column of ``experiments`` (name, status, owner, visibility,
priority, created_at, tag) is a SQL clause. The others are read from the stored
spec (JSON) and the experiments' metrics (per model and data set, the mean test
accuracy of the finished runs trained on all classes: one SQL aggregate over
``runs.record``) of the experiments the SQL clauses leave, and become one clause:
the ids that match. The same code serves SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

from fastapi import Query
from fastapi.exceptions import RequestValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fflab import experiment_search
from fflab.analysis.experiment_comparison import flatten
from fflab.db import Experiment, ExperimentTag, Run, User
from fflab.experiment_search import Condition, FilterError


def filter_problem(error: FilterError) -> RequestValidationError:
    """A ``FilterError`` as the 422 of ``query.filter`` (the allowed values in ``allowed``)."""
    problem: dict[str, Any] = {"type": "value_error", "loc": ("query", "filter"), "input": error.expression,
                               "msg": f"{error.expression!r}: {error.message}"}
    if error.allowed:
        problem["ctx"] = {"expected": error.allowed}
    return RequestValidationError([problem])


async def search_conditions(filters: Annotated[list[str] | None, Query(
    alias="filter", description=(
        "Search expressions, all of which must hold (repeat the parameter): <field><op><value> with op one of "
        "= != < <= > >=. Fields: name, status, owner, visibility, priority, created_at, tag; every spec field as "
        "a dotted path (network.threshold, ff.epochs, models); accuracy, accuracy.<model>, "
        "accuracy.<model>.<dataset> (mean test accuracy of the finished runs). Values are JSON or plain text: "
        "network.threshold=0.3, accuracy>0.9, models=ff, tag=baseline."))] = None) -> list[Condition]:
    """The parsed ``filter`` parameters (422 naming ``query.filter`` for a bad one)."""
    try:
        return experiment_search.parse_filters(list(filters or []))
    except FilterError as error:
        raise filter_problem(error) from None


SQL_OPERATORS = {"=": "__eq__", "!=": "__ne__", "<": "__lt__", "<=": "__le__", ">": "__gt__", ">=": "__ge__"}


def column_clause(condition: Condition):
    """The SQL clause of a condition on a column (bound parameters only)."""
    if condition.field == "tag":
        tagged = Experiment.id.in_(select(ExperimentTag.experiment_id).where(ExperimentTag.tag == condition.value))
        return tagged if condition.operator == "=" else ~tagged
    if condition.field == "owner":
        owned = Experiment.owner_id.in_(select(User.id).where(User.name == condition.value))
        return owned if condition.operator == "=" else ~owned
    column = getattr(Experiment, condition.field)
    return getattr(column, SQL_OPERATORS[condition.operator])(condition.value)


def experiment_accuracies(session: Session, experiment_ids: list[str] | None) -> dict[str, dict[str, float]]:
    """Per experiment, its metric fields (``experiment_search.experiment_metrics``):
    the mean test accuracy of its finished runs trained on all classes per (model,
    data set), in one aggregate query (None: of every experiment)."""
    accuracy = Run.record["accuracy"].as_float()
    query = (select(Run.experiment_id, Run.model, Run.dataset, func.avg(accuracy))
             .where(Run.status == "succeeded", Run.unseen_class.is_(None), Run.record.is_not(None))
             .group_by(Run.experiment_id, Run.model, Run.dataset))
    if experiment_ids is not None:
        query = query.where(Run.experiment_id.in_(experiment_ids))
    groups: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for experiment_id, model, dataset, mean in session.execute(query):
        groups[experiment_id].append((model, dataset, mean))
    return {experiment_id: experiment_search.experiment_metrics(found) for experiment_id, found in groups.items()}


def search_where(session: Session, where: list, conditions: list[Condition]) -> list:
    """The clauses ``conditions`` add to a listing's ``where``."""
    clauses = [column_clause(c) for c in conditions if c.kind == "column"]
    others = [c for c in conditions if c.kind != "column"]
    if not others:
        return clauses
    candidates = list(session.execute(select(Experiment.id, Experiment.spec).where(*where, *clauses)))
    metrics = (experiment_accuracies(session, [row.id for row in candidates])
               if any(c.kind == "metric" for c in others) else {})
    kept = [row.id for row in candidates
            if all(experiment_search.matches(c, flatten(row.spec), metrics.get(row.id, {}))
                   for c in others)]
    return [*clauses, Experiment.id.in_(kept)]
