"""The ``filter`` query parameter of ``GET /v1/experiments``: search expressions
(``fflab.experiment_search``), parsed by ``api.services.search.parse_conditions``
(a bad one: 422 naming ``query.filter``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from api.services.search import parse_conditions
from fflab.experiment_search import Condition


async def search_conditions(filters: Annotated[list[str] | None, Query(
    alias="filter", description=(
        "Search expressions, all of which must hold (repeat the parameter): <field><op><value> with op one of "
        "= != < <= > >=. Fields: name, status, owner, visibility, priority, created_at, tag; every spec field as "
        "a dotted path (network.threshold, ff.epochs, models); accuracy, accuracy.<model>, "
        "accuracy.<model>.<dataset> (mean test accuracy of the finished runs). Values are JSON or plain text: "
        "network.threshold=0.3, accuracy>0.9, models=ff, tag=baseline."))] = None) -> list[Condition]:
    return parse_conditions(list(filters or []))
