"""What the pages list that the JSON API does not serve as such: the
experiments a user may read (their own, the lab's, everyone's for an admin),
and how many waiting runs are ahead of a queued experiment (the runs of an
experiment with their losses: ``api.ui.live``). Each item is rendered by ``api.views``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, joinedload
from sqlalchemy.sql.elements import ColumnElement

from api import schemas, views
from fflab.db import Experiment, Run, User

Scope = Literal["visible", "mine", "lab"]
OrderBy = ColumnElement[Any] | InstrumentedAttribute[Any]  # what a listing is ordered by
SCOPES: tuple[str, ...] = ("visible", "mine", "lab")


def visible_experiments(session: Session, request: Request, user: User, scope: Scope = "visible",
                        status: str | None = None, limit: int = 100,
                        extra: tuple[ColumnElement[bool], ...] = (),
                        order: tuple[OrderBy, ...] = ()) -> list[schemas.ExperimentSummary]:
    """Newest first (or by ``order``): ``mine``, the user's; ``lab``, other users'
    lab-visible ones (an admin: every other user's); ``visible``, both; ``extra``:
    more WHERE clauses (the list's search, ``api.ui.compare``)."""
    mine = Experiment.owner_id == user.id
    others = Experiment.owner_id != user.id
    if user.role != "admin":
        others &= Experiment.visibility == "lab"
    where = [{"mine": mine, "lab": others, "visible": mine | others}[scope]]
    if status is not None:
        where.append(Experiment.status == status)
    page = list(session.scalars(
        select(Experiment).options(joinedload(Experiment.owner)).where(*where, *extra)
        .order_by(*(order or (Experiment.created_at.desc(), Experiment.id))).limit(limit)
    ))
    return views.experiment_summaries(request, session, page)


def runs_ahead(session: Session, experiment_ids: list[str]) -> dict[str, int]:
    """For each experiment with waiting runs, the waiting runs of other experiments
    submitted before its first waiting one: an upper bound on what runs first,
    since dispatch interleaves users fairly (fflab.jobs)."""
    firsts = dict(session.execute(
        select(Run.experiment_id, func.min(Run.id))
        .where(Run.experiment_id.in_(experiment_ids), Run.status == "queued").group_by(Run.experiment_id)
    ).all())
    return {
        experiment_id: session.scalar(
            select(func.count(Run.id)).where(Run.status == "queued", Run.id < first,
                                             Run.experiment_id != experiment_id)
        ) or 0
        for experiment_id, first in firsts.items()
    }
