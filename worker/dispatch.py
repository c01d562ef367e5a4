"""Sending work to the workers, apart from the worker's Celery app: task names
and ids, a Celery client configured from the settings, the Dispatcher over it
(fflab.jobs.Dispatcher), declaring the queues, and reading a Redis broker's
task ids. The API and the worker's service layer send through this module; only
the worker process imports worker.celery_app.

Broker and result backend come from the settings: kombu's SQLAlchemy transport
on SQLite and the database backend by default, Redis in production. Run tasks
need no result backend (the database tracks every run); it is configured so that
Celery's own tooling works.
"""

from __future__ import annotations

import logging
import uuid

from celery import Celery

from fflab.settings import QUEUE_KINDS, Settings  # QUEUE_KINDS: the run queues
from fflab.var_dir import private_sqlite_file

log = logging.getLogger(__name__)

RUN_TASK = "fflab.run"
AGGREGATE_TASK = "fflab.aggregate"
ANALYSIS_TASK = "fflab.analysis"
# Aggregation and analysis task ids name their experiment or analysis, so that the
# sweep can tell which of them a broker still holds (fflab.jobs.requeue_lost_aggregations,
# fflab.jobs.lost_analyses).
AGGREGATE_ID_PREFIX = "aggregate-"
ANALYSIS_ID_PREFIX = "analysis-"


def named_task_id(prefix: str, subject: str) -> str:
    return f"{prefix}{subject}-{uuid.uuid4().hex[:8]}"


def subject_of_task(prefix: str, task_id: str) -> str | None:
    """The experiment or analysis id a task id names, None for another kind of task."""
    if not task_id.startswith(prefix):
        return None
    return task_id[len(prefix):].rsplit("-", 1)[0]


def aggregate_task_id(experiment_id: str) -> str:
    return named_task_id(AGGREGATE_ID_PREFIX, experiment_id)


def experiment_of_aggregate_task(task_id: str) -> str | None:
    return subject_of_task(AGGREGATE_ID_PREFIX, task_id)


def ensure_sqlite_folders(settings: Settings) -> None:
    """kombu's SQLAlchemy transport and the database result backend create their
    SQLite files, but not the folders: create both, readable by their owner only."""
    for url in (settings.resolved_broker_url, settings.resolved_result_backend):
        private_sqlite_file(url)


def create_celery(settings: Settings, include: tuple[str, ...] = ()) -> Celery:
    """A Celery app configured from ``settings``: the worker's (``include`` names its
    task modules) or, with none, a client that only sends tasks by name."""
    broker = settings.resolved_broker_url
    app = Celery("fflab", broker=broker, backend=settings.resolved_result_backend, include=list(include),
                 set_as_current=bool(include))
    transport_options = {}
    if broker.startswith(("redis://", "rediss://")):
        # acks_late: a run is redelivered if unacknowledged this long, so it must
        # outlast the longest run (a shorter one would run a healthy run twice). A
        # killed worker's run is requeued sooner by the sweep (run heartbeats).
        transport_options["visibility_timeout"] = settings.broker_visibility_timeout_s
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.queue_name("cpu"),
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app



class CeleryDispatcher:
    """fflab.jobs.Dispatcher over the Celery app."""

    def __init__(self, celery: Celery):
        self.celery = celery

    def send_run(self, run_pk: int, queue: str, task_id: str) -> None:
        self.celery.send_task(RUN_TASK, args=[run_pk], queue=queue, task_id=task_id)

    def send_aggregate(self, experiment_id: str, queue: str) -> None:
        self.celery.send_task(AGGREGATE_TASK, args=[experiment_id], queue=queue,
                              task_id=aggregate_task_id(experiment_id))

    def send_analysis(self, analysis_id: str, queue: str) -> None:
        self.celery.send_task(ANALYSIS_TASK, args=[analysis_id], queue=queue,
                              task_id=named_task_id(ANALYSIS_ID_PREFIX, analysis_id))

    def revoke(self, task_ids: list[str]) -> None:
        """Best effort: a revoked or not, a cancelled run's task ends at once when a
        worker sees the run's status. Remote control needs a fanout exchange, which
        the SQLAlchemy transport lacks."""
        if not task_ids:
            return
        try:
            with self.celery.connection_for_write() as connection:
                if "fanout" not in connection.transport.implements.exchange_type:
                    return
            self.celery.control.revoke(task_ids)
        except Exception:
            log.warning("could not revoke %d tasks", len(task_ids), exc_info=True)



def declare_queues(broker_url: str, names: list[str], attempts: int = 5, backoff_s: float = 0.2) -> None:
    """Declare the run queues (as Celery declares them: a direct exchange of the same
    name) once, before a worker or the API publishes. kombu's SQLAlchemy transport
    creates a queue's row on first use, and two processes doing so at the same moment
    hit its UNIQUE constraint (the loser's channel is left unusable): each try here
    uses a fresh connection, and a lost race finds the row on the next try."""
    import tenacity
    from kombu.connection import Connection
    from kombu.entity import Exchange, Queue

    # Any error is retried: IntegrityError (the race), or the broker not up yet.
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_attempt(attempts),
                                     wait=tenacity.wait_incrementing(start=backoff_s, increment=backoff_s),
                                     before_sleep=lambda state: log.warning(
                                         "declaring queues %s failed (try %d of %d): %s", names,
                                         state.attempt_number, attempts,
                                         state.outcome.exception() if state.outcome else None),
                                     reraise=True):
        with attempt, Connection(broker_url, connect_timeout=10) as connection:
            channel = connection.channel()
            try:
                for name in names:
                    Queue(name, Exchange(name, type="direct"), routing_key=name)(channel).declare()
            finally:
                channel.close()


def declare_run_queues(settings: Settings) -> None:
    """Declare every run queue (``QUEUE_KINDS``) of these settings' broker."""
    ensure_sqlite_folders(settings)
    declare_queues(settings.resolved_broker_url, [settings.queue_name(kind) for kind in QUEUE_KINDS])


# kombu's Redis transport: a queue's messages are a list under the queue's name (one
# per priority step above 0, after a separator) and unacknowledged ones a hash.
REDIS_PRIORITY_SEPARATOR, REDIS_PRIORITY_STEPS, REDIS_UNACKED_KEY = "\x06\x16", (3, 6, 9), "unacked"


def redis_task_ids(broker_url: str, queues: list[str]) -> set[str] | None:
    """Every task id in these queues and among the unacknowledged messages of a Redis
    broker; None for another broker (kombu's SQLAlchemy transport keeps its messages
    in its database: a restart loses nothing)."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    import json

    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=10, socket_connect_timeout=5)
    try:
        with client.pipeline(transaction=True) as pipe:  # one snapshot of queues and unacked
            for queue in queues:
                for key in [queue] + [f"{queue}{REDIS_PRIORITY_SEPARATOR}{step}" for step in REDIS_PRIORITY_STEPS]:
                    pipe.lrange(key, 0, -1)
            pipe.hvals(REDIS_UNACKED_KEY)
            *lists, unacked = pipe.execute()
    finally:
        client.close()
    ids: set[str] = set()
    for raw in [item for items in lists for item in items]:
        ids.add(str(json.loads(raw).get("headers", {}).get("id")))
    for raw in unacked:
        ids.add(str(json.loads(raw)[0].get("headers", {}).get("id")))
    return ids


_dispatchers: dict[str, CeleryDispatcher] = {}


def dispatcher_for(settings: Settings) -> CeleryDispatcher:
    """One dispatcher per configuration in this process (its Celery client keeps a
    connection pool)."""
    key = settings.model_dump_json()
    if key not in _dispatchers:
        _dispatchers[key] = CeleryDispatcher(create_celery(settings))
    return _dispatchers[key]
