"""The worker's Celery application, and nothing else: created from the settings
with the task modules it runs (worker.tasks), and the worker's lifecycle hooks
(migrate and register on start, unregister on stop, the periodic sweep). Only
the worker process imports this module (``fflab worker``, ``celery -A
worker.celery_app``); the API and the service layer send tasks through
worker.dispatch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals

from fflab.settings import get_settings
from worker import run_support, service
from worker.dispatch import create_celery, ensure_sqlite_folders

app = create_celery(get_settings(), include=("worker.tasks",))


def _migrate_on_worker_start(sender: Any, **_kwargs: Any) -> None:
    """Migrate, then register this worker (before it consumes: the runs it claims
    name it); run tasks log their run's outcome instead of Celery's "succeeded"."""
    from fflab.db.migrate import upgrade_database
    from fflab.db.session import configure_pool

    settings = get_settings()
    configure_pool(settings.database_pool_size, settings.database_max_overflow)  # its task processes inherit it
    ensure_sqlite_folders(settings)
    upgrade_database(settings.resolved_database_url)
    logging.getLogger("celery.app.trace").addFilter(run_support.RunOutcomeLogFilter())
    run_support.start_presence(settings, sender.hostname, sorted(sender.app.amqp.queues.consume_from),
                               sender.concurrency or 1)


def _unregister_on_worker_stop(**_kwargs: Any) -> None:
    run_support.stop_presence()


def _fresh_connections_in_child(**_kwargs: Any) -> None:
    from fflab.db.session import forget_inherited_connections

    forget_inherited_connections()


def _sweep_in_the_background(**_kwargs: Any) -> None:
    """Dispatch waiting runs now, and every sweep_interval_s in case a send failed."""
    threading.Thread(target=service.sweep_forever, args=(get_settings(),), name="fflab-sweep", daemon=True).start()


# Connected by call rather than as decorators: celery ships no types, and its
# decorators would leave the hooks untyped.
signals.worker_init.connect(_migrate_on_worker_start)
signals.worker_shutdown.connect(_unregister_on_worker_stop)
signals.worker_process_init.connect(_fresh_connections_in_child)
signals.worker_ready.connect(_sweep_in_the_background)
