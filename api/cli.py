"""``fflab serve``: the API and a supervised worker on this machine. Registered
as an entry point of the ``fflab.commands`` group (pyproject.toml), so the
library's CLI finds it without importing this package. The worker runs as a
``fflab worker`` process, never imported here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import click

from fflab.cli.service import start_database
from fflab.settings import Settings, get_settings


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


class WorkerSupervisor:
    """``fflab serve``'s worker: a ``fflab worker`` process started, watched and,
    when it dies, restarted by a thread of serve. When the process ends (reaped at
    once: no defunct process is left), its Worker row is forgotten and the runs it
    held are requeued (fflab.jobs.forget_worker), so that /readyz answers 503 until
    the new worker has registered and the runs go to it. Restarts wait
    FFLAB_WORKER_RESTART_BACKOFF_S, doubled while the worker keeps dying within a
    minute of its start (at most 30 s). The worker dies with serve: it is told
    serve's pid (``--parent-pid``, fflab.processes.die_with_parent), and this thread,
    which starts it, lives as long as serve does. Before each start, a worker of the
    same name still alive on this host (one orphaned by a serve killed before its
    worker could notice) is waited for, so that two never run under one name."""

    POLL_S, STABLE_S, MAX_BACKOFF_S = 0.2, 60.0, 30.0

    def __init__(self, settings: Settings, name: str):
        self.settings, self.name = settings, name
        self.command = [sys.executable, "-m", "fflab", "worker", "--queue", "cpu", "--queue", "gpu",
                        "--pool", "solo", "--name", name, "--parent-pid", str(os.getpid())]
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._supervise, name="fflab-worker-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _supervise(self) -> None:
        backoff = self.settings.worker_restart_backoff_s
        while not self.stopping.is_set():
            try:
                self._wait_for_namesakes()
            except click.ClickException as error:
                click.echo(f"not starting the worker: {error.message}", err=True)
                return
            started = time.monotonic()
            self.process = subprocess.Popen(self.command)
            click.echo(f"worker started (pid {self.process.pid}): {' '.join(self.command[1:])}")
            while self.process.poll() is None and not self.stopping.wait(self.POLL_S):
                pass
            if self.process.poll() is None:  # serve stops
                break
            click.echo(f"worker (pid {self.process.pid}) died: {describe_exit(self.process.returncode)}", err=True)
            self._forget(self.process.pid)
            backoff = (self.settings.worker_restart_backoff_s if time.monotonic() - started > self.STABLE_S
                       else backoff)
            click.echo(f"restarting the worker in {backoff:g} s", err=True)
            if self.stopping.wait(backoff):
                return
            backoff = min(self.MAX_BACKOFF_S, max(backoff, 0.5) * 2)
        self._stop_process()

    def _forget(self, pid: int) -> None:
        from fflab import jobs
        from fflab.db import get_sessionmaker

        try:
            with get_sessionmaker(self.settings.resolved_database_url)() as session:
                for worker in jobs.workers_named(session, self.name, socket.gethostname()):
                    if worker.pid == pid:
                        requeued, failed = jobs.forget_worker(session, self.settings, worker.id,
                                                              f"its worker {self.name} (pid {pid}) died")
                        if requeued or failed:
                            click.echo(f"{requeued} runs of the dead worker requeued, {failed} failed for good",
                                       err=True)
        except Exception as error:  # the sweep requeues them once the heartbeat is stale
            click.echo(f"could not requeue the dead worker's runs now: {error}", err=True)

    def _wait_for_namesakes(self, timeout_s: float = 15.0) -> None:
        from fflab import jobs
        from fflab.db import session_scope
        from fflab.processes import process_alive

        deadline = time.monotonic() + timeout_s
        while True:
            with session_scope(self.settings.resolved_database_url) as session:
                pids = [worker.pid for worker in jobs.live_workers(session, self.settings)
                        if worker.name == self.name and worker.hostname == socket.gethostname()
                        and process_alive(worker.pid)]
            if not pids:
                return
            if time.monotonic() > deadline or self.stopping.is_set():
                raise click.ClickException(
                    f"a worker named {self.name} is still running on this machine (pid "
                    f"{', '.join(map(str, pids))}); stop it first")
            time.sleep(0.5)

    def _stop_process(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Stop the worker (SIGTERM: a warm shutdown, then SIGKILL after 30 s)."""
        self.stopping.set()
        self.thread.join(timeout=60)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def serve(host: str | None, port: int | None, with_worker: bool) -> None:
    """The API, and a supervised worker consuming both queues, on this machine."""
    import uvicorn

    from api.connection_limits import server_options
    from api.main import create_app
    from fflab import accounts
    from fflab.db import session_scope

    settings = get_settings()
    from fflab.startup import exit_unless_reachable
    from worker.dispatch import declare_run_queues

    exit_unless_reachable(settings)  # FFLAB_DATABASE_URL / FFLAB_BROKER_URL: one line, exit code 2
    start_database(settings)
    key_file = settings.resolved_admin_key_file
    with session_scope(settings.resolved_database_url) as session:
        created = accounts.bootstrap_admin(session, key_file)
    if created:
        click.echo(f"created user 'admin'; its API key is in {key_file} (mode 600)")
    # Before the worker and the API start: both would otherwise create the queues on
    # first use, at the same moment (a UNIQUE constraint race on the SQLite broker).
    declare_run_queues(settings)
    supervisor = None
    if with_worker:
        supervisor = WorkerSupervisor(settings, f"fflab-serve@{socket.gethostname()}")
        supervisor.start()
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit
    # so that the worker is stopped below instead of being orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(create_app(settings), host=host or settings.api_host, port=port or settings.api_port,
                    proxy_headers=False,  # the app trusts FFLAB_TRUSTED_PROXIES only
                    **server_options(settings))  # header, idle and connection limits (api.connection_limits)
    finally:
        if supervisor is not None:
            supervisor.stop()


@click.command("serve")
@click.option("--host", default=None, help="Default $FFLAB_API_HOST (127.0.0.1).")
@click.option("--port", type=int, default=None, help="Default $FFLAB_API_PORT (8000).")
@click.option("--worker/--no-worker", "with_worker", default=True,
              help="Also start a worker process (default).")
def serve_command(host: str | None, port: int | None, with_worker: bool) -> None:
    """Run the API and a worker on this machine. With nothing configured:
    SQLite, a SQLite-backed broker and local artifacts under var/; on first
    start, creates user 'admin' and writes its key to var/admin.key."""
    serve(host, port, with_worker)
