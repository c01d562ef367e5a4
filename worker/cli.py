"""``fflab worker``: a Celery worker that trains and analyses runs. Registered as
an entry point of the ``fflab.commands`` group (pyproject.toml), so the library's
CLI finds it without importing this package."""

from __future__ import annotations

import os

import click

from fflab.processes import lower_priority
from fflab.settings import QUEUE_KINDS, get_settings


def run_worker(gpu: int | None, queues: tuple[str, ...], concurrency: int, pool: str, name: str | None,
               parent_pid: int | None = None) -> None:
    settings = get_settings()
    from fflab.startup import exit_unless_reachable

    exit_unless_reachable(settings)  # FFLAB_DATABASE_URL / FFLAB_BROKER_URL: one line, exit code 2
    if parent_pid is not None:
        from fflab.processes import die_with_parent

        die_with_parent(parent_pid)
    if gpu is not None:
        # Before anything initialises CUDA: this process and its children see one GPU,
        # N as nvidia-smi numbers it. Up to FFLAB_RUNS_PER_GPU runs share it (the
        # worker's concurrency, so its slots in fair-share dispatch), each admitted by
        # its memory estimate (worker.gpu_runs).
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        queues, concurrency = queues or ("gpu",), settings.runs_per_gpu
    else:
        queues = queues or ("cpu",)
        if "gpu" not in queues:
            # device "auto" must mean the CPU on a CPU worker, even on a GPU machine.
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from worker.celery_app import app
    from worker.dispatch import declare_run_queues

    lower_priority(settings.worker_nice)
    declare_run_queues(settings)  # a lost race with the API is retried here, not in the consumer
    kind = f"gpu{gpu}" if gpu is not None else "-".join(queues)
    app.worker_main([
        "worker",
        f"--queues={','.join(settings.queue_name(queue) for queue in queues)}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--hostname={name or f'fflab-{kind}@%h'}",
        "--loglevel=INFO",
    ])


@click.command("worker")
@click.option("--gpu", type=int, default=None, metavar="N",
              help="Use GPU N only (CUDA_VISIBLE_DEVICES=N), consume the gpu queue, train up to "
                   "FFLAB_RUNS_PER_GPU runs at once, as their memory allows.")
@click.option("--queue", "queues", multiple=True, type=click.Choice(QUEUE_KINDS),
              help="Queue to consume (repeatable); default gpu with --gpu, else cpu.")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs at once (CPU workers only).")
@click.option("--pool", type=click.Choice(["prefork", "solo"]), default="prefork", show_default=True,
              help="prefork trains in a child process, so the worker answers pings and a lost "
                   "child's run is redelivered; solo trains in the worker process itself.")
@click.option("--name", default=None,
              help="Celery node name; default fflab-<gpuN|queues>@<host>.")
@click.option("--parent-pid", type=int, default=None, hidden=True,
              help="End when this process (the parent, fflab serve) ends.")
def worker_command(gpu: int | None, queues: tuple[str, ...], concurrency: int, pool: str,
                   name: str | None, parent_pid: int | None) -> None:
    """Run a Celery worker that trains and analyses runs. One per GPU:
    `fflab worker --gpu N`; CPU workers: `fflab worker` (queue cpu)."""
    run_worker(gpu, queues, concurrency, pool, name, parent_pid)
