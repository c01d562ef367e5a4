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
from typing import Any

from sqlalchemy import false, func, select, true
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from api.services.errors import Invalid
from fflab import accounts, experiment_search
from fflab.analysis.experiment_comparison import flatten
from fflab.db import Experiment, ExperimentTag, Run, User
from fflab.experiment_search import Condition, FilterError


def parse_conditions(filters: list[str]) -> list[Condition]:
    """The parsed ``filter`` parameters; Invalid naming ``query.filter`` (what is
    allowed in ``ctx.expected``) for a bad one."""
    try:
        return experiment_search.parse_filters(list(filters))
    except FilterError as error:
        problem: dict[str, Any] = {"type": "value_error", "loc": ("query", "filter"), "input": error.expression,
                   "msg": f"{error.expression!r}: {error.message}"}
        if error.allowed:
            problem["ctx"] = {"expected": error.allowed}
        raise Invalid([problem]) from None


SQL_OPERATORS = {"=": "__eq__", "!=": "__ne__", "<": "__lt__", "<=": "__le__", ">": "__gt__", ">=": "__ge__"}


def column_clause(condition: Condition) -> ColumnElement[bool]:
    """The SQL clause of a condition on a column (bound parameters only)."""
    if condition.field == "tag":
        tagged = Experiment.id.in_(select(ExperimentTag.experiment_id).where(ExperimentTag.tag == condition.value))
        return tagged if condition.operator == "=" else ~tagged
    if condition.field == "owner":  # user names compared as accounts normalises them (the owner= filter too)
        try:
            name = accounts.normalise_name(condition.value)
        except accounts.InvalidName:
            return false() if condition.operator == "=" else true()
        owned = Experiment.owner_id.in_(select(User.id).where(func.lower(User.name) == name))
        return owned if condition.operator == "=" else ~owned
    column = getattr(Experiment, condition.field)
    clause: ColumnElement[bool] = getattr(column, SQL_OPERATORS[condition.operator])(condition.value)
    return clause


def experiment_accuracies(session: Session, experiment_ids: list[str] | None) -> dict[str, dict[str, float]]:
    """Per experiment, its metric fields (``experiment_search.experiment_metrics``):
    the mean test accuracy of its finished runs trained on all classes per (model,
    data set), in one aggregate query (None: of every experiment)."""
    accuracy: ColumnElement[float] = Run.record["accuracy"].as_float()
    mean: ColumnElement[float | None] = func.avg(accuracy)  # None where no run recorded one
    query = (select(Run.experiment_id, Run.model, Run.dataset, mean)
             .where(Run.status == "succeeded", Run.unseen_class.is_(None), Run.record.is_not(None))
             .group_by(Run.experiment_id, Run.model, Run.dataset))
    if experiment_ids is not None:
        query = query.where(Run.experiment_id.in_(experiment_ids))
    groups: dict[str, list[tuple[str, str, float | None]]] = defaultdict(list)
    for experiment_id, model, dataset, value in session.execute(query):
        groups[experiment_id].append((model, dataset, value))
    return {experiment_id: experiment_search.experiment_metrics(found) for experiment_id, found in groups.items()}


def search_where(session: Session, where: list[ColumnElement[bool]],
                 conditions: list[Condition]) -> list[ColumnElement[bool]]:
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
