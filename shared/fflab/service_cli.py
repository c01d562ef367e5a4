"""The service's verbs of the ``fflab`` command: server side (serve, worker,
admin) and client side (submit, status, wait, results, ensembles, figures,
cancel, delete).

Client verbs talk to $FFLAB_API_URL (default http://127.0.0.1:8000) with
$FFLAB_API_KEY, or else the key that ``fflab serve`` wrote to var/admin.key.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import httpx
from tqdm import tqdm

from fflab.client import ApiError, Client, format_detail
from fflab.data import DATASETS
from fflab.models import MODELS
from fflab.results import TABLES
from fflab.settings import Settings, get_settings
from fflab.spec import PRESETS

QUEUE_KINDS = ("cpu", "gpu")


# --------------------------------------------------------------------------- server side


def _start_database(settings: Settings) -> None:
    from fflab.db.migrate import upgrade_database

    upgrade_database(settings.resolved_database_url)


def _declare_queues(settings: Settings) -> None:
    from worker.celery_app import declare_queues, ensure_sqlite_folders

    ensure_sqlite_folders(settings)
    declare_queues(settings.resolved_broker_url, [settings.queue_name(kind) for kind in QUEUE_KINDS])


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
        self.process: subprocess.Popen | None = None
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

    from api.main import create_app
    from api.protocol import HttpProtocol
    from fflab import accounts
    from fflab.db import session_scope

    settings = get_settings()
    _start_database(settings)
    key_file = settings.resolved_admin_key_file
    with session_scope(settings.resolved_database_url) as session:
        created = accounts.bootstrap_admin(session, key_file)
    if created:
        click.echo(f"created user 'admin'; its API key is in {key_file} (mode 600)")
    # Before the worker and the API start: both would otherwise create the queues on
    # first use, at the same moment (a UNIQUE constraint race on the SQLite broker).
    _declare_queues(settings)
    supervisor = None
    if with_worker:
        supervisor = WorkerSupervisor(settings, f"fflab-serve@{socket.gethostname()}")
        supervisor.start()
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit
    # so that the worker is stopped below instead of being orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(create_app(settings), host=host or settings.api_host, port=port or settings.api_port,
                    http=HttpProtocol)
    finally:
        if supervisor is not None:
            supervisor.stop()


def run_worker(gpu: int | None, queues: tuple[str, ...], concurrency: int, pool: str, name: str | None,
               parent_pid: int | None = None) -> None:
    settings = get_settings()
    if parent_pid is not None:
        from fflab.processes import die_with_parent

        die_with_parent(parent_pid)
    if gpu is not None:
        # Before anything initialises CUDA: this process and its children see one GPU,
        # N as nvidia-smi numbers it. Up to FFLAB_RUNS_PER_GPU runs share it, each
        # admitted by its memory estimate (worker.gpu_runs).
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        queues, concurrency = queues or ("gpu",), settings.runs_per_gpu
    else:
        queues = queues or ("cpu",)
        if "gpu" not in queues:
            # device "auto" must mean the CPU on a CPU worker, even on a GPU machine.
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from worker.celery_app import app

    if settings.worker_nice:
        os.nice(settings.worker_nice)
    _declare_queues(settings)  # a lost race with the API is retried here, not in the consumer
    kind = f"gpu{gpu}" if gpu is not None else "-".join(queues)
    app.worker_main([
        "worker",
        f"--queues={','.join(settings.queue_name(queue) for queue in queues)}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--hostname={name or f'fflab-{kind}@%h'}",
        "--loglevel=INFO",
    ])


# --------------------------------------------------------------------------- client side


def api_key(settings: Settings) -> str | None:
    if settings.api_key:
        return settings.api_key
    key_file = settings.resolved_admin_key_file
    return key_file.read_text().strip() if key_file.is_file() else None


@contextmanager
def client() -> Iterator[Client]:
    settings = get_settings()
    url = settings.resolved_api_url
    try:
        with Client(url, api_key(settings)) as api:
            yield api
    except ApiError as error:
        raise click.ClickException(f"{error.status_code}: {format_detail(error.detail)}") from None
    except httpx.TransportError as error:
        raise click.ClickException(
            f"cannot reach the fflab API at {url} ({error}); start it with `fflab serve` "
            f"or set FFLAB_API_URL"
        ) from None


def echo_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2))


def describe(experiment: dict[str, Any]) -> str:
    progress = experiment["progress"]
    lines = [
        f"{experiment['id']}  {experiment['name']}  {experiment['status']}  "
        f"runs {progress['runs_done']}/{progress['runs_total']}",
    ]
    for run in progress["running"]:
        layer = f" layer {run['layer']}/{run['layers']}" if run["layer"] else ""
        eta = f" ETA {run['eta_seconds']:.0f} s" if run["eta_seconds"] is not None else ""
        age = run.get("heartbeat_age_seconds")
        beat = f" (last heartbeat {age:.0f} s ago)" if age is not None else ""
        lines.append(f"  {run['run_id']}:{layer} epoch {run['epoch']}/{run['epochs']}{eta}{beat}")
    if experiment.get("error"):
        lines.append(f"  error: {experiment['error']}")
    return "\n".join(lines)


def wait_with_bar(api: Client, experiment_id: str, timeout: float | None) -> dict[str, Any]:
    first = api.experiment(experiment_id)
    with tqdm(total=first["progress"]["runs_total"], unit="run", file=sys.stderr) as bar:
        def update(experiment: dict[str, Any]) -> None:
            progress = experiment["progress"]
            bar.update(progress["runs_done"] - bar.n)
            running = progress["running"]
            detail = describe(experiment).splitlines()[1].strip() if running else experiment["status"]
            bar.set_postfix_str(detail)

        return api.wait(experiment_id, timeout=timeout, on_update=update)


@contextmanager
def embedded_service(settings: Settings, log_path: Path) -> Iterator[bool]:
    """Use the API at settings' URL if it answers, else start ``fflab serve`` for
    the duration; yields whether it was started here."""
    url = settings.resolved_api_url
    if _answers(url):
        yield False
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "fflab", "serve"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while not _answers(url, "/readyz"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"the embedded service did not start; see {log_path}")
            time.sleep(0.5)
        click.echo(f"started the embedded service at {url} (log: {log_path})")
        yield True
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def _answers(url: str, path: str = "/healthz") -> bool:
    try:
        return httpx.get(f"{url}{path}", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def fetch_results(api: Client, experiment_id: str, folder: Path) -> None:
    """Tables (md, csv, json) and figures of a finished experiment into ``folder``."""
    tables = folder / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    for fmt in ("md", "csv"):
        (tables / f"tables.{fmt}").write_text(api.results(experiment_id, fmt))
    (folder / "results.json").write_text(json.dumps(api.results(experiment_id, "json"), indent=2))
    for fmt in ("md", "csv", "json"):
        comparison = api.paper_comparison(experiment_id, fmt)
        text = json.dumps(comparison, indent=2) + "\n" if fmt == "json" else comparison
        (tables / f"paper_comparison.{fmt}").write_text(text)
    for figure in api.figures(experiment_id):
        api.download(experiment_id, figure["name"], folder / figure["name"])


def register(cli: click.Group) -> None:
    """Add the service verbs to the ``fflab`` command group."""

    @cli.command("serve")
    @click.option("--host", default=None, help="Default $FFLAB_API_HOST (127.0.0.1).")
    @click.option("--port", type=int, default=None, help="Default $FFLAB_API_PORT (8000).")
    @click.option("--worker/--no-worker", "with_worker", default=True,
                  help="Also start a worker process (default).")
    def serve_command(host: str | None, port: int | None, with_worker: bool) -> None:
        """Run the API and a worker on this machine. With nothing configured:
        SQLite, a SQLite-backed broker and local artifacts under var/; on first
        start, creates user 'admin' and writes its key to var/admin.key."""
        serve(host, port, with_worker)

    @cli.command("worker")
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

    @cli.group("admin")
    def admin() -> None:
        """Manage users and keys, directly in the database ($FFLAB_DATABASE_URL)."""

    @admin.command("create-user")
    @click.argument("name")
    @click.option("--admin", "is_admin", is_flag=True, help="Give the admin role.")
    def create_user_command(name: str, is_admin: bool) -> None:
        """Create a user and print its new API key (shown only once)."""
        from fflab import accounts
        from fflab.db import session_scope

        settings = get_settings()
        _start_database(settings)
        try:
            with session_scope(settings.resolved_database_url) as session:
                key = accounts.issue_key(session, accounts.create_user(session, name, "admin" if is_admin else "member"))
        except ValueError as error:
            raise click.ClickException(str(error)) from None
        click.echo(key)

    @admin.command("revoke-key")
    @click.argument("key_or_prefix", required=False)
    @click.option("--user", "user_name", default=None, help="Revoke every key of this user instead.")
    def revoke_key_command(key_or_prefix: str | None, user_name: str | None) -> None:
        """Revoke a key, given whole or by its first 14 characters."""
        from fflab import accounts
        from fflab.db import session_scope

        if (key_or_prefix is None) == (user_name is None):
            raise click.UsageError("give either KEY_OR_PREFIX or --user NAME")
        settings = get_settings()
        _start_database(settings)
        with session_scope(settings.resolved_database_url) as session:
            count = accounts.revoke_keys(session, key_or_prefix, user_name)
        if not count:
            raise click.ClickException("no matching active key")
        click.echo(f"revoked {count} key(s)")

    @cli.command("submit")
    @click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None)
    @click.option("--spec", "spec_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
                  help="JSON spec (or partial spec over the preset).")
    @click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                  help="Override one setting, e.g. --set ff.epochs=3.")
    @click.option("--visibility", type=click.Choice(["private", "lab"]), default="private", show_default=True)
    @click.option("--wait", "wait", is_flag=True, help="Then wait for the end with a progress bar.")
    def submit_command(preset: str | None, spec_file: Path | None, assignments: tuple[str, ...],
                       visibility: str, wait: bool) -> None:
        """Submit an experiment to the service; prints its id and URL."""
        from fflab.cli import read_overrides

        body = read_overrides(spec_file, assignments)
        body["visibility"] = visibility
        if preset is not None:
            body["preset"] = preset
        with client() as api:
            created = api.submit(body)
            click.echo(f"{created['id']} {created['url']}")
            if wait:
                final = wait_with_bar(api, created["id"], None)
                click.echo(describe(final))
                if final["status"] != "succeeded":
                    sys.exit(1)

    @cli.command("status")
    @click.argument("experiment_id", required=False)
    @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
    def status_command(experiment_id: str | None, as_json: bool) -> None:
        """One experiment's status and progress, or a list of yours."""
        with client() as api:
            if experiment_id:
                experiment = api.experiment(experiment_id)
                click.echo(json.dumps(experiment, indent=2) if as_json else describe(experiment))
                return
            page = api.experiments()
            if as_json:
                echo_json(page)
                return
            for item in page["items"]:
                click.echo(describe(item).splitlines()[0])

    @cli.command("wait")
    @click.argument("experiment_id")
    @click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
    def wait_command(experiment_id: str, timeout: float | None) -> None:
        """Show a progress bar until the experiment ends; exit 1 unless it succeeded."""
        with client() as api:
            try:
                final = wait_with_bar(api, experiment_id, timeout)
            except TimeoutError as error:
                raise click.ClickException(str(error)) from None
        click.echo(describe(final))
        if final["status"] != "succeeded":
            sys.exit(1)

    @cli.command("results")
    @click.argument("experiment_id")
    @click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
    @click.option("--table", type=click.Choice(TABLES), default=None,
                  help="Only this table.")
    def results_command(experiment_id: str, fmt: str, table: str | None) -> None:
        """Tables 1-3 of a finished experiment."""
        with client() as api:
            document = api.results(experiment_id, fmt, table)
        if fmt == "json":
            echo_json(document["tables"][table] if table else document["tables"])
        else:
            click.echo(document)

    @cli.command("ensembles")
    @click.argument("experiment_id")
    @click.option("--model", type=click.Choice(list(MODELS)), default=None)
    @click.option("--dataset", type=click.Choice(list(DATASETS)), default=None)
    @click.option("--layer", type=int, default=None)
    @click.option("--class", "class_", type=click.IntRange(0, 9), default=None)
    @click.option("--method", type=click.Choice(["method1", "method2"]), default=None)
    @click.option("--quantile", type=float, default=None)
    def ensembles_command(experiment_id: str, **filters: Any) -> None:
        """Ensembles (JSON), filtered."""
        with client() as api:
            echo_json(api.ensembles(experiment_id, **filters))

    @cli.command("figures")
    @click.argument("experiment_id")
    @click.option("--download", "folder", type=click.Path(path_type=Path, file_okay=False), default=None,
                  help="Save every figure into this folder.")
    def figures_command(experiment_id: str, folder: Path | None) -> None:
        """List an experiment's figures, or download them."""
        with client() as api:
            for figure in api.figures(experiment_id):
                if folder is None:
                    click.echo(f"{figure['name'].removeprefix('figures/')}  {figure['size']} bytes  {figure['url']}")
                else:
                    path = api.download(experiment_id, figure["name"], folder / figure["name"].removeprefix("figures/"))
                    click.echo(path)

    @cli.command("quickstart")
    @click.option("--preset", type=click.Choice(sorted(PRESETS)), default="quick", show_default=True)
    @click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("results"),
                  show_default=True, help="Tables and figures go into OUT/<experiment id>/.")
    def quickstart_command(preset: str, out_dir: Path) -> None:
        """Start the embedded service (unless one answers), submit a preset through
        the client, show it finishing, and fetch its tables and figures."""
        settings = get_settings()
        with embedded_service(settings, settings.var_dir / "serve.log") as started, client() as api:
            created = api.submit({"preset": preset})
            click.echo(f"submitted {created['id']}: {created['url']}")
            final = wait_with_bar(api, created["id"], None)
            click.echo(describe(final))
            if final["status"] != "succeeded":
                raise click.ClickException(f"experiment {final['status']}")
            folder = out_dir / created["id"]
            fetch_results(api, created["id"], folder)
            click.echo(api.results(created["id"], "md"))
            click.echo(api.paper_comparison(created["id"], "md"))
            click.echo(f"results URL: {created['url']}/results")
            click.echo(f"comparison:  {created['url']}/paper-comparison?format=md")
            click.echo(f"tables:      {(folder / 'tables').resolve()}")
            click.echo(f"figures:     {(folder / 'figures').resolve()}")
            if started:
                click.echo("the service stops now; `make serve` starts it again with these results")

    @cli.command("cancel")
    @click.argument("experiment_id")
    def cancel_command(experiment_id: str) -> None:
        """Cancel an experiment: queued runs are dropped, running ones stop at the next epoch."""
        with client() as api:
            click.echo(describe(api.cancel(experiment_id)))

    @cli.command("delete")
    @click.argument("experiment_id")
    def delete_command(experiment_id: str) -> None:
        """Delete an experiment and all its artifacts."""
        with client() as api:
            api.delete(experiment_id)
        click.echo(f"deleted {experiment_id}")
