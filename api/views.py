"""Database rows -> response bodies."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import Request
from sqlalchemy import func, literal, null, select, union_all
from sqlalchemy.orm import Session, object_session

from api import run_telemetry, schemas
from api.services.results import FIGURES_PREFIX
from fflab import queueing
from fflab.db import FINAL_STATUSES, Analysis, Artifact, Experiment, ExperimentTag, Result, Run, utcnow
from fflab.representations import experiment_kind
from fflab.settings import Settings
from fflab.storage import content_type


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return round(((end or utcnow()) - start).total_seconds(), 3)


def url_for(request: Request, route: str, **params: str) -> str:
    """The absolute URL of a route: under FFLAB_PUBLIC_URL where it is set, else
    under the URL the request came to (its Host header; X-Forwarded-* count only
    from FFLAB_TRUSTED_PROXIES, api.proxies)."""
    public: str | None = request.app.state.settings.public_url
    if public:
        return public.rstrip("/") + str(request.app.url_path_for(route, **params))
    return str(request.url_for(route, **params))


def experiment_url(request: Request, experiment_id: str) -> str:
    return url_for(request, "get_experiment", experiment_id=experiment_id)


@dataclass(frozen=True)
class RunningRow:
    """What a status reads of a running run (not its JSON documents)."""

    run_id: str
    model: str
    progress: dict[str, Any] | None
    heartbeat_at: datetime | None


@dataclass
class RunStates:
    """An experiment's runs by status, its running runs in run order, and its tags."""

    counts: Counter[str] = field(default_factory=Counter)
    running: list[RunningRow] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


def run_states(session: Session, experiment_ids: list[str]) -> dict[str, RunStates]:
    """Each experiment's ``RunStates``, in one round trip: a UNION ALL of its running
    runs (only the columns progress needs), its run counts by status (counted in SQL)
    and its tags. A status poll reads this, so one query instead of three. The running
    runs' select comes first: the union's column types (JSON, timestamps) are its."""
    if not experiment_ids:
        return {}
    running = select(literal("running").label("kind"), Run.experiment_id, Run.status.label("name"),
                     Run.id.label("number"), Run.run_id, Run.model, Run.progress, Run.heartbeat_at
                     ).where(Run.experiment_id.in_(experiment_ids), Run.status == "running")
    counts = select(literal("count"), Run.experiment_id, Run.status, func.count(Run.id), null(), null(), null(), null()
                    ).where(Run.experiment_id.in_(experiment_ids)).group_by(Run.experiment_id, Run.status)
    tags = select(literal("tag"), ExperimentTag.experiment_id, ExperimentTag.tag, null(), null(), null(), null(),
                  null()).where(ExperimentTag.experiment_id.in_(experiment_ids))
    states: dict[str, RunStates] = defaultdict(RunStates)
    ordered_running: list[tuple[int, str, RunningRow]] = []
    # The union's columns mean something else in each kind of row (see the selects above).
    rows: Iterable[Sequence[Any]] = session.execute(union_all(running, counts, tags))
    for kind, experiment_id, name, number, run_id, model, run_progress, heartbeat_at in rows:
        if kind == "running":
            ordered_running.append((number, experiment_id, RunningRow(run_id, model, run_progress, heartbeat_at)))
        elif kind == "count":
            states[experiment_id].counts[name] = number
        else:
            states[experiment_id].tags.append(name)
    for _, experiment_id, run in sorted(ordered_running, key=lambda item: item[0]):
        states[experiment_id].running.append(run)
    for state in states.values():
        state.tags.sort()
    return dict(states)


def progress(experiment: Experiment, counts: Counter[str], running: list[RunningRow]) -> schemas.Progress:
    return schemas.Progress(
        runs_total=experiment.runs_total,
        runs_done=sum(counts[s] for s in FINAL_STATUSES),
        runs_by_status=dict(counts),
        running=[
            schemas.RunningRun(
                run_id=run.run_id, model=run.model, layer=run.progress.get("layer"),
                layers=run.progress.get("layers"), epoch=run.progress["epoch"],
                epochs=run.progress["epochs"], eta_seconds=run_telemetry.remaining_seconds(run.progress),
                phase=run.progress.get("phase", "training"),
                run_fraction_done=run.progress.get("run_fraction_done", run.progress.get("fraction_done")),
                heartbeat_age_seconds=_seconds(run.heartbeat_at, None),
            )
            for run in running
            if run.progress
        ],
    )


def experiment_summary(request: Request, experiment: Experiment, states: RunStates) -> dict[str, Any]:
    return dict(
        id=experiment.id,
        url=experiment_url(request, experiment.id),
        name=experiment.name,
        kind=experiment_kind(experiment.spec),
        owner=experiment.owner.name,
        visibility=experiment.visibility,
        tags=states.tags,
        status=experiment.status,
        error=experiment.error,
        progress=progress(experiment, states.counts, states.running),
        timings=schemas.ExperimentTimings(
            created_at=experiment.created_at,
            started_at=experiment.started_at,
            finished_at=experiment.finished_at,
            queued_seconds=_seconds(experiment.created_at, experiment.started_at or experiment.finished_at),
            elapsed_seconds=_seconds(experiment.started_at, experiment.finished_at),
        ),
    )


def experiment_summaries(request: Request, session: Session,
                         experiments: list[Experiment]) -> list[schemas.ExperimentSummary]:
    states = run_states(session, [experiment.id for experiment in experiments])
    return [schemas.ExperimentSummary(**experiment_summary(request, experiment, states.get(experiment.id, RunStates())))
            for experiment in experiments]


def experiment_detail(request: Request, experiment: Experiment) -> schemas.Experiment:
    session = object_session(experiment)
    states = run_states(session, [experiment.id]).get(experiment.id, RunStates())  # type: ignore[arg-type]
    place = None
    if states.counts.get("queued"):  # where its next run stands in the fair-share order
        found = request.app.state.queue_places.place(session, request.app.state.settings, experiment.id)
        place = schemas.QueuePlace(**vars(found)) if found else None
    return schemas.Experiment(**experiment_summary(request, experiment, states),
                              priority=schemas.stored_priority(experiment.priority), queue=place,
                              results=results_state(request, session, experiment, states), spec=experiment.spec)


def results_state(request: Request, session: Session | None, experiment: Experiment,
                  states: RunStates) -> schemas.ResultsState | None:
    """Whether its results are written, and partial (of its succeeded runs only);
    one small query (the results' row without its documents)."""
    if session is None or experiment.status not in FINAL_STATUSES:
        return None
    row = session.execute(select(Result.analysis_id).where(Result.experiment_id == experiment.id)).first()
    if row is None:
        return None
    succeeded = states.counts.get("succeeded", 0)
    return schemas.ResultsState(
        url=url_for(request, "get_results", experiment_id=experiment.id), partial=succeeded < experiment.runs_total,
        runs_included=succeeded, runs_total=experiment.runs_total, analysis_id=row.analysis_id)


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
            users=[schemas.QueueUser(name=share.name, share_weight=share.weight,
                                     max_priority=schemas.stored_priority(share.max_priority),
                                     usage_seconds=share.usage_s, share=share.share, target_share=share.target,
                                     running=share.running, waiting=share.waiting,
                                     oldest_wait_seconds=share.oldest_wait_s)
                   for share in queueing.user_shares(snapshot, name)],
            experiments=[schemas.QueuedExperiment(
                id=experiment_id, name=experiments[experiment_id].name,
                owner=experiments[experiment_id].owner.name,
                priority=schemas.stored_priority(experiments[experiment_id].priority),
                position=position, runs_waiting=waiting[experiment_id],
                estimated_start=places[experiment_id].estimated_start)
                for position, experiment_id in listed],
        ))
    return schemas.QueuesOut(queues=out)


def run_out(run: Run) -> schemas.Run:
    return schemas.Run(
        run_id=run.run_id, model=run.model, dataset=run.dataset, seed=run.seed,
        unseen_class=run.unseen_class, status=schemas.stored_status(run.status), queue=run.queue,
        attempts=run.attempts,
        progress=run.progress, error=run.error, created_at=run.created_at, started_at=run.started_at,
        finished_at=run.finished_at, accuracy=(run.record or {}).get("accuracy"),
        heartbeat_at=run.heartbeat_at if run.status == "running" else None,
        heartbeat_age_seconds=_seconds(run.heartbeat_at, None) if run.status == "running" else None,
        code_version=run.code_version,
    )



def artifact_out(request: Request, artifact: Artifact) -> schemas.ArtifactOut:
    """An item of /artifacts: its name is the artifact's whole name."""
    return schemas.ArtifactOut(
        name=artifact.name, url=url_for(request, "get_artifact", experiment_id=artifact.experiment_id,
                                        name=artifact.name),
        size=artifact.size, sha256=artifact.sha256, content_type=content_type(artifact.name),
    )


def figure_out(request: Request, artifact: Artifact) -> schemas.ArtifactOut:
    """An item of /figures: its name is the figure's name under /figures/."""
    name = artifact.name.removeprefix(FIGURES_PREFIX)
    return schemas.ArtifactOut(
        name=name, url=url_for(request, "get_figure", experiment_id=artifact.experiment_id, name=name),
        size=artifact.size, sha256=artifact.sha256, content_type=content_type(artifact.name),
    )


def analysis_out(request: Request, analysis: Analysis) -> schemas.AnalysisOut:
    return schemas.AnalysisOut(
        id=analysis.id, experiment_id=analysis.experiment_id,
        url=url_for(request, "get_analysis", experiment_id=analysis.experiment_id, analysis_id=analysis.id),
        results_url=url_for(request, "get_analysis_results", experiment_id=analysis.experiment_id,
                            analysis_id=analysis.id) if analysis.status == "succeeded" else None,
        status=schemas.stored_status(analysis.status), spec=analysis.spec, error=analysis.error,
        created_at=analysis.created_at,
        started_at=analysis.started_at, finished_at=analysis.finished_at,
    )


