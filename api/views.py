"""Database rows -> response bodies."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session, load_only, object_session

from api import schemas
from fflab import queueing
from fflab.db import FINAL_STATUSES, Analysis, Artifact, Experiment, Run, utcnow
from fflab.settings import Settings


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return round(((end or utcnow()) - start).total_seconds(), 3)


def experiment_url(request: Request, experiment_id: str) -> str:
    return str(request.url_for("get_experiment", experiment_id=experiment_id))


def progress(experiment: Experiment, counts: Counter[str], running: list[Run]) -> schemas.Progress:
    return schemas.Progress(
        runs_total=experiment.runs_total,
        runs_done=sum(counts[s] for s in FINAL_STATUSES),
        runs_by_status=dict(counts),
        running=[
            schemas.RunningRun(
                run_id=run.run_id, model=run.model, layer=run.progress.get("layer"),
                layers=run.progress.get("layers"), epoch=run.progress["epoch"],
                epochs=run.progress["epochs"], eta_seconds=run.progress.get("eta_seconds"),
                heartbeat_age_seconds=_seconds(run.heartbeat_at, None),
            )
            for run in running
            if run.progress
        ],
    )


def experiment_summary(request: Request, experiment: Experiment, counts: Counter[str],
                       running: list[Run]) -> dict:
    return dict(
        id=experiment.id,
        url=experiment_url(request, experiment.id),
        name=experiment.name,
        owner=experiment.owner.name,
        visibility=experiment.visibility,
        status=experiment.status,
        error=experiment.error,
        progress=progress(experiment, counts, running),
        timings=schemas.Timings(
            created_at=experiment.created_at,
            started_at=experiment.started_at,
            finished_at=experiment.finished_at,
            queued_seconds=_seconds(experiment.created_at, experiment.started_at or experiment.finished_at),
            elapsed_seconds=_seconds(experiment.started_at, experiment.finished_at),
        ),
    )


def experiment_detail(request: Request, experiment: Experiment) -> schemas.Experiment:
    # Status counts in SQL and only the columns progress needs: the runs' JSON
    # documents (metrics, shared units, ...) are not loaded for a status poll.
    session = object_session(experiment)
    counts = Counter(dict(session.execute(  # type: ignore[union-attr]
        select(Run.status, func.count(Run.id)).where(Run.experiment_id == experiment.id).group_by(Run.status)
    ).all()))
    running = list(session.scalars(  # type: ignore[union-attr]
        select(Run).options(load_only(Run.run_id, Run.model, Run.progress, Run.status, Run.heartbeat_at))
        .where(Run.experiment_id == experiment.id, Run.status == "running").order_by(Run.id)
    ))
    place = None
    if counts.get("queued"):  # where its next run stands in the fair-share order
        snapshot = queueing.read_queues(session, request.app.state.settings)  # type: ignore[arg-type]
        found = queueing.experiment_places(snapshot).get(experiment.id)
        place = schemas.QueuePlace(**vars(found)) if found else None
    return schemas.Experiment(**experiment_summary(request, experiment, counts, running),
                              priority=experiment.priority, queue=place, spec=experiment.spec)


def queues_out(session: Session, settings: Settings) -> schemas.QueuesOut:
    """Every queue: its slots, each user's usage and share, and the active experiments
    with waiting runs in the order they would start."""
    snapshot = queueing.read_queues(session, settings)
    places = queueing.experiment_places(snapshot)
    waiting = Counter(experiment_id for experiment_id in snapshot.experiment_of.values())
    experiments = {e.id: e for e in session.scalars(select(Experiment).where(Experiment.id.in_(list(places))))}
    free = snapshot.free()
    out = []
    for name, state in snapshot.queues.items():
        listed = sorted((place.position, experiment_id) for experiment_id, place in places.items()
                        if place.queue == name and experiment_id in experiments)
        out.append(schemas.QueueOut(
            queue=name, slots=state.slots, free_slots=free.get(name, 0), running_cap=state.cap,
            expected_run_seconds=round(state.charge_s, 3),
            users=[schemas.QueueUser(name=share.name, share_weight=share.weight, max_priority=share.max_priority,
                                     usage_seconds=share.usage_s, share=share.share, target_share=share.target,
                                     running=share.running, waiting=share.waiting,
                                     oldest_wait_seconds=share.oldest_wait_s)
                   for share in queueing.user_shares(snapshot, name)],
            experiments=[schemas.QueuedExperiment(
                id=experiment_id, name=experiments[experiment_id].name,
                owner=experiments[experiment_id].owner.name, priority=experiments[experiment_id].priority,
                position=position, runs_waiting=waiting[experiment_id],
                estimated_start=places[experiment_id].estimated_start)
                for position, experiment_id in listed],
        ))
    return schemas.QueuesOut(queues=out)


def run_out(run: Run) -> schemas.Run:
    return schemas.Run(
        run_id=run.run_id, model=run.model, dataset=run.dataset, seed=run.seed,
        unseen_class=run.unseen_class, status=run.status, queue=run.queue, attempts=run.attempts,
        progress=run.progress, error=run.error, created_at=run.created_at, started_at=run.started_at,
        finished_at=run.finished_at, accuracy=(run.record or {}).get("accuracy"),
        heartbeat_at=run.heartbeat_at if run.status == "running" else None,
        heartbeat_age_seconds=_seconds(run.heartbeat_at, None) if run.status == "running" else None,
    )


def artifact_out(request: Request, artifact: Artifact) -> schemas.ArtifactOut:
    route, params = "get_artifact", {"name": artifact.name}
    if artifact.name.startswith("figures/"):
        route, params = "get_figure", {"name": artifact.name.removeprefix("figures/")}
    return schemas.ArtifactOut(
        name=artifact.name,
        url=str(request.url_for(route, experiment_id=artifact.experiment_id, **params)),
        size=artifact.size, sha256=artifact.sha256, content_type=artifact.content_type,
    )


def analysis_out(request: Request, analysis: Analysis) -> schemas.AnalysisOut:
    return schemas.AnalysisOut(
        id=analysis.id, experiment_id=analysis.experiment_id,
        url=str(request.url_for("get_analysis", experiment_id=analysis.experiment_id, analysis_id=analysis.id)),
        status=analysis.status, spec=analysis.spec, error=analysis.error, created_at=analysis.created_at,
        started_at=analysis.started_at, finished_at=analysis.finished_at,
    )
