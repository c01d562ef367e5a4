"""Re-analyses of an experiment: new ensembles, tables and figures from its stored
representations, without retraining."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.services.errors import Conflict, LimitReached, NotFound
from api.services.experiments import current_experiment
from fflab import jobs
from fflab.db import Analysis, Experiment
from fflab.settings import Settings
from fflab.spec import AnalysisSpec

if TYPE_CHECKING:
    from api.paging import Page


def queue_analysis(session: Session, experiment_id: str, spec: AnalysisSpec, settings: Settings,
                   dispatcher: jobs.Dispatcher) -> Analysis:
    """Create the analysis (Conflict unless the experiment has succeeded and no
    other analysis of it is running; LimitReached when its owner's storage is at or
    over the quota; the user's right to change it checked in an earlier unit),
    commit, and send it to the cpu queue."""
    experiment = current_experiment(session, experiment_id)
    try:
        analysis = jobs.create_analysis(session, experiment, spec.model_dump(mode="json"), settings)
    except jobs.ConflictError as error:
        raise Conflict(str(error)) from None
    except jobs.CapacityError as error:
        raise LimitReached(str(error), error.retry_after_s) from None
    session.commit()
    dispatcher.send_analysis(analysis.id, settings.queue_name("cpu"))
    return analysis


def analyses_page(session: Session, experiment: Experiment, page: Page) -> tuple[list[Analysis], str | None]:
    """The experiment's re-analyses, oldest first, and the next page's token."""
    return page.cut(list(session.scalars(
        select(Analysis).where(Analysis.experiment_id == experiment.id)
        .order_by(Analysis.created_at, Analysis.id).limit(page.limit + 1).offset(page.offset)
    )))


def analysis_of(session: Session, experiment: Experiment, analysis_id: str) -> Analysis:
    analysis = session.get(Analysis, analysis_id)
    if analysis is None or analysis.experiment_id != experiment.id:
        raise NotFound(f"experiment {experiment.id} has no analysis {analysis_id}")
    return analysis
