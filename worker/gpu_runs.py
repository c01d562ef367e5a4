"""GPU runs in a worker: memory admission before a run starts, a requeue when a
run runs out of GPU memory anyway, and what a worker registers about its GPUs.

A GPU worker trains up to FFLAB_RUNS_PER_GPU runs at once (one pool child each):
that is its registered concurrency, so fair-share dispatch hands it at most that
many runs. Before a delivery claims its run, ``admitted_run`` (called by
worker.service.execute_run_task) reserves the run's estimated memory in the
GPU's ledger (fflab.gpu: the rule, the estimate and the ledger):

* admitted: the run is claimed and trains; its reservation ends with the task;
* it fits the GPU but not now (other runs hold the memory): the delivery waits,
  the run still queued, polling every ``POLL_S`` until the memory is free or
  FFLAB_GPU_ADMISSION_WAIT_S has passed; then the run goes back to the queue
  (``fflab.jobs.release_run``), its error saying why, to be sent again;
* it cannot fit even on the empty GPU: the run fails at once, naming its
  estimate and the GPU's memory.

Runs on the CPU are admitted the same way against this machine's RAM (its
ledger: ``cpu_ledger_for``; "free now" is MemAvailable), so that several CPU runs
never together need more than the machine has; one that cannot fit even in the
whole RAM fails at once. A run that runs out of GPU memory while
training is requeued (``requeue_out_of_memory``), resuming from its checkpoint
on its next delivery, and fails after FFLAB_TASK_MAX_ATTEMPTS tries.
"""

from __future__ import annotations

import gc
import logging
import socket
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select

from fflab import gpu, jobs
from fflab.db import ACTIVE_STATUSES, Experiment, Run, session_scope
from fflab.models.common import resolve_device
from fflab.settings import Settings
from fflab.spec import ExperimentSpec, RunKey

log = logging.getLogger(__name__)

POLL_S = 2.0


def trains_on_gpu(spec: ExperimentSpec) -> bool:
    """Whether a run of this spec trains on a GPU in this process."""
    try:
        return resolve_device(spec.device).type == "cuda"
    except RuntimeError:  # "cuda" asked for without one: training fails with that message
        return False


def ledger_for(settings: Settings) -> gpu.DeviceLedger:
    """The ledger of the GPU this process trains on (the first it may see), kept
    under FFLAB_VAR_DIR per host and GPU; memory from nvidia-smi."""
    gpu_id = (gpu.visible_gpu_ids() or ["0"])[0]
    path = settings.var_dir.resolve() / "gpus" / f"{socket.gethostname()}-gpu{gpu_id}.json"
    return gpu.DeviceLedger(path, lambda: gpu.gpu_memory_now(gpu_id), settings.runs_per_gpu,
                            settings.gpu_memory_margin)


CPU_RUNS_AT_ONCE = 64  # the ledger's own cap on CPU runs; dispatch (the worker's slots) bounds them first


def cpu_ledger_for(settings: Settings) -> gpu.DeviceLedger:
    """The ledger of this machine's RAM for runs trained on its CPU, shared by every
    worker process of the host (under FFLAB_VAR_DIR); memory from /proc/meminfo and
    the cgroup limit (fflab.gpu.machine_memory), the margin FFLAB_GPU_MEMORY_MARGIN."""
    path = settings.var_dir.resolve() / "gpus" / f"{socket.gethostname()}-cpu.json"
    return gpu.DeviceLedger(path, gpu.machine_memory, CPU_RUNS_AT_ONCE, settings.gpu_memory_margin)


def _waiting_run(settings: Settings, run_pk: int, task_id: str) -> tuple[ExperimentSpec, RunKey] | None:
    """The run's spec and key while it is this delivery's to start, else None."""
    with session_scope(settings.resolved_database_url) as session:
        row = session.execute(
            select(Run.status, Run.task_id, Run.run_id, Experiment.spec)
            .join(Experiment).where(Run.id == run_pk)
        ).first()
    if row is None or row.task_id != task_id or row.status not in ACTIVE_STATUSES:
        return None
    return ExperimentSpec.model_validate(row.spec), RunKey.parse(row.run_id)  # the id holds its grid point


@contextmanager
def admitted_run(
    settings: Settings,
    run_pk: int,
    task_id: str,
    fail: Callable[[int, str, str, str], None],
    dispatch: Callable[[], None],
    ledger: gpu.DeviceLedger | None = None,
    on_gpu: Callable[[ExperimentSpec], bool] = trains_on_gpu,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[bool]:
    """Yields True when the delivery may claim and train its run (a GPU run with
    its memory reserved until the block ends, or a CPU run), False when it must
    not: the run failed for good (``fail(run_pk, "failed", reason, task_id)``),
    went back to the queue (then ``dispatch()``), or is no longer this delivery's."""
    waiting = _waiting_run(settings, run_pk, task_id)
    if waiting is None:
        yield True  # no longer this delivery's: claim_run turns it down
        return
    spec, key = waiting
    trains_on_gpu_now = on_gpu(spec)
    memory = "GPU memory" if trains_on_gpu_now else "RAM"
    ledger = ledger or (ledger_for(settings) if trains_on_gpu_now else cpu_ledger_for(settings))
    estimate = gpu.estimate_run_memory(spec, key)
    deadline, reported = clock() + settings.gpu_admission_wait_s, None
    while True:
        decision = ledger.admit(str(run_pk), estimate)
        if decision.admitted:
            break
        if not decision.fits_empty:
            log.error("run %s (%s) cannot start here (%s): %s", run_pk, key.run_id, memory, decision.reason)
            fail(run_pk, "failed", f"not started: it {decision.reason}", task_id)
            yield False
            return
        if _waiting_run(settings, run_pk, task_id) is None:  # cancelled or taken meanwhile
            yield False
            return
        if clock() >= deadline:
            with session_scope(settings.resolved_database_url) as session:
                released = jobs.release_run(session, run_pk, task_id, (
                    f"no {memory} came free within FFLAB_GPU_ADMISSION_WAIT_S="
                    f"{settings.gpu_admission_wait_s:g} s: it {decision.reason}"))
            if released:
                log.warning("run %s (%s) goes back to the queue: %s", run_pk, key.run_id, decision.reason)
                dispatch()
            yield False
            return
        if decision.reason != reported:
            log.info("run %s (%s) waits for %s: %s", run_pk, key.run_id, memory, decision.reason)
            reported = decision.reason
        sleep(POLL_S)
    log.info("run %s (%s) %s", run_pk, key.run_id, decision.reason)
    try:
        yield True
    finally:
        ledger.release(str(run_pk))


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError)


def requeue_out_of_memory(settings: Settings, run_pk: int, task_id: str, error: BaseException) -> str | None:
    """The run's GPU ran out of memory while it trained: free this process's cached
    blocks and requeue the run (or fail it after FFLAB_TASK_MAX_ATTEMPTS tries).
    Returns what became of it (fflab.jobs.requeue_run)."""
    import torch

    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    reason = f"the GPU ran out of memory ({first_line})"
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with session_scope(settings.resolved_database_url) as session:
        outcome = jobs.requeue_run(session, settings, run_pk, task_id, reason)
    log.warning("run %s: %s; %s", run_pk, reason, outcome or "it was no longer this delivery's")
    return outcome


def worker_devices(settings: Settings, queues: Collection[str]) -> list[dict[str, Any]]:
    """The devices of a worker consuming ``queues``, for its Worker row: the GPUs
    it holds (nvidia-smi; no CUDA context is created) when it consumes the gpu queue,
    and this machine's RAM (kind "cpu") when it consumes the cpu queue."""
    devices = []
    if settings.queue_name("gpu") in queues:
        devices += [device.device_info().as_dict() for device in gpu.visible_gpus()]
    if settings.queue_name("cpu") in queues:  # its RAM, for admission at submission (fflab.jobs.check_memory)
        devices.append(gpu.cpu_device().as_dict())
    return devices
