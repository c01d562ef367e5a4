"""The Celery tasks: one per run, one aggregation per experiment, one per
re-analysis. Each is a few lines that hand over to worker.service; retries on
infrastructure errors are Celery's (``RetryingTask``), and giving up records the
failure through the same service.

Tasks are shared tasks: they belong to whichever Celery app the worker process
creates (worker.celery_app), so this module imports no app. The settings are
read when a task runs, never at import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task

from fflab.settings import Settings, get_settings
from worker import service
from worker.dispatch import AGGREGATE_TASK, ANALYSIS_TASK, RUN_TASK

log = logging.getLogger(__name__)


class RetryingTask(Task):  # type: ignore[misc]  # celery ships no types: Task is Any
    """Retries on infrastructure errors (``service.TRANSIENT``), with backoff, up
    to ``task_max_attempts`` deliveries in all; ``give_up`` records the final failure."""

    autoretry_for = service.TRANSIENT
    retry_backoff = True

    @property
    def settings(self) -> Settings:
        return get_settings()

    @property
    def max_retries(self) -> int:  # read when a retry is decided, not at import
        return self.settings.task_max_attempts - 1

    def give_up(self, argument: Any, error: str, task_id: str) -> None:
        raise NotImplementedError

    def on_failure(self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                   einfo: Any) -> None:
        try:
            self.give_up(args[0], f"gave up after {self.max_retries} retries: {type(exc).__name__}: {exc}",
                         task_id)
        except Exception:
            log.exception("could not record the failure of task %s", task_id)


class RunTask(RetryingTask):
    def give_up(self, run_pk: int, error: str, task_id: str) -> None:
        service.end_run(self.settings, run_pk, "failed", error, task_id)


class AggregateTask(RetryingTask):
    def give_up(self, experiment_id: str, error: str, task_id: str) -> None:
        service.fail_experiment(self.settings, experiment_id, error)


class AnalysisTask(RetryingTask):
    def give_up(self, analysis_id: str, error: str, task_id: str) -> None:
        service.fail_analysis(self.settings, analysis_id, error)


def bound_task(name: str, base: type[RetryingTask]) -> Callable[[Callable[..., Any]], Any]:
    """``shared_task(name=name, bind=True, base=base)``: the task function's body is
    typed; the task Celery makes of it is not (celery ships no types)."""
    decorator: Callable[[Callable[..., Any]], Any] = shared_task(name=name, bind=True, base=base)
    return decorator


@bound_task(RUN_TASK, RunTask)
def run_task(self: RunTask, run_pk: int) -> str | None:
    """Train one run; returns how it ended, as recorded (None when this delivery
    did not hold the run to its end)."""
    return service.execute_run_task(self.settings, run_pk, self.request.id)


@bound_task(AGGREGATE_TASK, AggregateTask)
def aggregate_task(self: AggregateTask, experiment_id: str) -> None:
    service.aggregate_experiment(self.settings, experiment_id)


@bound_task(ANALYSIS_TASK, AnalysisTask)
def analysis_task(self: AnalysisTask, analysis_id: str) -> None:
    service.analyse_experiment(self.settings, analysis_id)
