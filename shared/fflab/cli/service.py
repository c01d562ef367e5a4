"""The service's verbs of ``fflab``: the client side (submit, status, wait,
results, ensembles, figures, quickstart, cancel, delete) and ``admin``, which
works on the database directly. ``serve`` and ``worker``, which start the API
and a worker, are registered by api/cli.py and worker/cli.py (entry points of
the group ``fflab.commands``), so the library never imports them.

Client verbs talk to $FFLAB_API_URL (default http://127.0.0.1:8000) with --key,
$FFLAB_API_KEY, or else the key that ``fflab serve`` wrote to var/admin.key
(``fflab.client.service_connection``, which ``Client()`` reads them with too).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
from tqdm import tqdm

from fflab.cli.options import read_overrides
from fflab.client import ApiError, Client, run_analysis_names, service_connection
from fflab.data import DATASETS
from fflab.models import MODELS
from fflab.results import PAPER_TABLES, TABLES
from fflab.settings import Settings, get_settings
from fflab.spec import PRESETS


class RunAnalysisChoice(click.Choice[str]):
    """The registered per-run analyses (``run_analysis_names``), read when the
    command runs, so that an analysis registered after import is a choice too."""

    def __init__(self) -> None:
        super().__init__(())

    @property  # type: ignore[override]  # click's attribute, read when the command runs
    def choices(self) -> tuple[str, ...]:
        return run_analysis_names()

    @choices.setter
    def choices(self, _value: Any) -> None:
        pass


# --------------------------------------------------------------------------- the database


def start_database(settings: Settings) -> None:
    """Create or migrate the database to the latest revision."""
    from fflab.db.migrate import upgrade_database

    upgrade_database(settings.resolved_database_url)


def admin_database(settings: Settings) -> None:
    """``start_database`` for the admin verbs, which work on the database directly:
    where the SQLite file does not exist yet (run outside the server's var dir), say
    on stderr that a new one is being created, and where."""
    from fflab.var_dir import sqlite_path  # sqlalchemy: not imported by the client verbs

    path = sqlite_path(settings.resolved_database_url)
    if path is not None and not path.exists():
        click.echo(f"warning: no database at {path}: creating a new one. The server's is under its var dir: "
                   f"run this where `fflab serve` runs, or set FFLAB_VAR_DIR (or FFLAB_DATABASE_URL).", err=True)
    start_database(settings)


# --------------------------------------------------------------------------- client side

KEY_META = "fflab.api_key"  # where --key keeps the key for ``client`` (click's ctx.meta)
NO_KEY = "no API key: set FFLAB_API_KEY (or pass --key)"


def _remember_key(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[KEY_META] = value


def key_parameter() -> click.Option:
    """``--key KEY`` of a verb that talks to the service: kept for ``client``, not
    passed to the verb's function."""
    return click.Option(["--key"], metavar="KEY", expose_value=False, callback=_remember_key,
                        help="The API key (default $FFLAB_API_KEY, else the admin key `fflab serve` wrote "
                             "to var/admin.key).")


@contextmanager
def client() -> Iterator[Client]:
    """A client of the service (``service_connection``: --key, else as Client() reads
    them); a click error without a key, an error of the API or no answer."""
    context = click.get_current_context(silent=True)
    url, key = service_connection(None, context.meta.get(KEY_META) if context else None)
    if key is None:
        raise click.ClickException(NO_KEY)
    try:
        with Client(url, key) as api:
            yield api
    except ApiError as error:
        raise click.ClickException(str(error)) from None
    except httpx.TransportError as error:
        raise click.ClickException(
            f"cannot reach the fflab API at {url} ({error}); start it with `fflab serve` "
            f"or set FFLAB_API_URL"
        ) from None


def echo_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2))


def partial_results_note(experiment: dict[str, Any]) -> str:
    """"partial results: 1 of 2 runs ..." for an experiment whose results are of
    only some of its runs; "" otherwise."""
    state = experiment.get("results") or {}
    if not state.get("partial"):
        return ""
    return (f"partial results: {state['runs_included']} of {state['runs_total']} runs (experiment "
            f"{experiment['status']}; the others were cancelled or failed: results.json's runs_missing "
            f"says which, and why)")


def no_results(api: Client, experiment_id: str, error: ApiError) -> str:
    """Why an experiment has no results (the API's 409), and how its runs ended."""
    experiment = api.experiment(experiment_id)
    counts = experiment["progress"]["runs_by_status"]
    runs = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    return f"{error.message} (runs: {runs or 'none'})"


def describe(experiment: dict[str, Any]) -> str:
    progress = experiment["progress"]
    lines = [
        f"{experiment['id']}  {experiment['name']}  {experiment['status']}  "
        f"runs {progress['runs_done']}/{progress['runs_total']}",
    ]
    for run in progress["running"]:
        eta = f" ETA {run['eta_seconds']:.0f} s" if run["eta_seconds"] is not None else ""
        age = run.get("heartbeat_age_seconds")
        beat = f" (last heartbeat {age:.0f} s ago)" if age is not None else ""
        lines.append(f"  {run['run_id']}: {run_step(run)}{eta}{beat}")
    place = experiment.get("queue")
    if place:
        lines.append("  " + describe_place(place))
    if experiment.get("error"):
        lines.append(f"  error: {experiment['error']}")
    return "\n".join(lines)


def describe_place(place: dict[str, Any], now: datetime | None = None) -> str:
    """'queue gpu: position 3 (2 runs ahead), estimated start in 12 min'."""
    start = place.get("estimated_start")
    if start is None:
        when = "no worker serves this queue yet"
    else:
        seconds = (datetime.fromisoformat(start) - (now or datetime.now(UTC))).total_seconds()
        when = "estimated start now" if seconds < 1 else f"estimated start in {format_duration(seconds)}"
    return f"queue {place['queue']}: position {place['position']} ({place['runs_ahead']} runs ahead), {when}"


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_queues(view: dict[str, Any]) -> str:
    """The admin queue view as text: per queue, users' usage and share, then the
    experiments in the order they would start."""
    lines = []
    for queue in view["queues"]:
        lines.append(f"queue {queue['queue']}: {queue['slots']} slots, {queue['free_slots']} free, "
                     f"at most {queue['running_cap']} running per user, expected run "
                     f"{format_duration(queue['expected_run_seconds'])}")
        lines.append(f"  {'user':<16} {'weight':>6} {'max prio':>8} {'usage':>9} {'share':>6} {'target':>6} "
                     f"{'running':>7} {'waiting':>7}")
        for user in queue["users"]:
            lines.append(f"  {user['name']:<16} {user['share_weight']:>6g} {user['max_priority']:>8} "
                         f"{format_duration(user['usage_seconds']):>9} {user['share']:>6.1%} "
                         f"{user['target_share']:>6.1%} {user['running']:>7} {user['waiting']:>7}")
        for experiment in queue["experiments"]:
            start = experiment["estimated_start"] or "no worker"
            lines.append(f"  {experiment['position']:>4}. {experiment['id']}  {experiment['name']}  "
                         f"{experiment['owner']}  {experiment['priority']}  {experiment['runs_waiting']} runs "
                         f"waiting  start {start}")
    return "\n".join(lines)


def run_step(run: dict[str, Any]) -> str:
    """'layer 2/3 epoch 10/40', 'epoch 4/20' or 'analysing' (training has ended)."""
    if run.get("phase") == "analysing":
        return "analysing"
    layer = f"layer {run['layer']}/{run['layers']} " if run["layer"] else ""
    return f"{layer}epoch {run['epoch']}/{run['epochs']}"


def runs_done_so_far(progress: dict[str, Any]) -> float:
    """Runs ended, plus the share done of each running run (training and analysis)."""
    done: float = progress["runs_done"]
    return done + sum(min(1.0, run.get("run_fraction_done") or 0.0) for run in progress["running"])


def bar_detail(experiment: dict[str, Any], width: int = 50) -> str:
    """The bar's short postfix: the status, or the first running run's step and how many run."""
    running = experiment["progress"]["running"]
    if not running:
        status: str = experiment["status"]
        return status
    first = f"{running[0]['run_id']} {run_step(running[0])}"
    more = f" +{len(running) - 1} running" if len(running) > 1 else ""
    return (first[:width - len(more) - 1] + "…" if len(first) + len(more) > width else first) + more


def wait_with_bar(api: Client, experiment_id: str, timeout: float | None) -> dict[str, Any]:
    """One bar for the experiment: runs done (running runs by their share done,
    training and analysis), so that its ETA is the whole experiment's; at most
    100 columns wide."""
    first = api.experiment(experiment_id)
    total = first["progress"]["runs_total"]
    with tqdm(total=total, unit="run", file=sys.stderr, ncols=min(100, shutil.get_terminal_size().columns),
              bar_format="{l_bar}{bar}| {n:.1f}/{total} runs [{elapsed}<{remaining}{postfix}]") as bar:
        def update(experiment: dict[str, Any]) -> None:
            bar.n = min(float(total), runs_done_so_far(experiment["progress"]))
            bar.set_postfix_str(bar_detail(experiment), refresh=False)
            bar.refresh()

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
    """Tables (md, csv, json; with a sweep, its table too) and figures of a finished
    experiment into ``folder``."""
    tables = folder / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    (tables / "tables.md").write_text(api.results(experiment_id, "md"))
    document = api.results(experiment_id, "json")
    swept = ("sweep",) if "sweep" in document["tables"] else ()
    for table in PAPER_TABLES + swept:  # CSV: one table per document
        (tables / f"{table}.csv").write_text(api.results(experiment_id, "csv", table))
    (folder / "results.json").write_text(json.dumps(document, indent=2))
    for fmt in ("md", "csv", "json"):
        comparison = api.paper_comparison(experiment_id, fmt)
        text = json.dumps(comparison, indent=2) + "\n" if fmt == "json" else comparison
        (tables / f"paper_comparison.{fmt}").write_text(text)
    for figure in api.figures(experiment_id):
        (folder / "figures").mkdir(parents=True, exist_ok=True)
        (folder / "figures" / figure["name"]).write_bytes(api.figure(experiment_id, figure["name"]))


def describe_usage(item: dict[str, Any]) -> str:
    """``alice: stores 1.20 GB (+300.00 MB to come) of 5.00 GB; 2 runs waiting or running, 0.41 of 8 run-hours``."""
    from fflab.usage import human_bytes, runs_text

    quota = "no quota" if item["storage_quota_bytes"] is None else human_bytes(item["storage_quota_bytes"])
    limit = "no limit" if item["max_active_run_hours"] is None else f"{item['max_active_run_hours']:g}"
    to_come = f" (+{human_bytes(item['pending_bytes'])} to come)" if item["pending_bytes"] else ""
    return (f"{item['user']}: stores {human_bytes(item['stored_bytes'])}{to_come} of {quota}; "
            f"{runs_text(item['active_runs'])} waiting or running, {item['active_run_hours']:.3g} of {limit} run-hours")


def register(cli: click.Group) -> None:
    """Add the service verbs to the ``fflab`` command group."""

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
        admin_database(settings)
        try:
            with session_scope(settings.resolved_database_url) as session:
                key = accounts.issue_key(session, accounts.create_user(session, name, "admin" if is_admin else "member"))
        except ValueError as error:
            raise click.ClickException(str(error)) from None
        click.echo(key)

    @admin.command("set-share")
    @click.argument("name")
    @click.option("--weight", type=click.FloatRange(min=0, min_open=True, max=1000), default=None,
                  help="Fair-share weight: the user's usage counts divided by it (default 1).")
    @click.option("--max-priority", type=click.Choice(["low", "normal", "high"]), default=None,
                  help="The highest priority the user's experiments may ask for (default normal).")
    def set_share_command(name: str, weight: float | None, max_priority: str | None) -> None:
        """Set a user's fair-share weight and highest allowed priority."""
        from fflab import accounts
        from fflab.db import session_scope

        if weight is None and max_priority is None:
            raise click.UsageError("give --weight and/or --max-priority")
        settings = get_settings()
        admin_database(settings)
        with session_scope(settings.resolved_database_url) as session:
            user = accounts.find_user(session, name, for_update=True)
            if user is None:
                raise click.ClickException(f"no user {name}")
            accounts.set_share(user, weight, max_priority)
            click.echo(f"{user.name}: weight {user.share_weight:g}, max priority {user.max_priority}")

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
        admin_database(settings)
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
    @click.option("--priority", type=click.Choice(["low", "normal", "high"]), default="normal", show_default=True,
                  help="Within the fair-share order; at most your max priority (an admin sets it).")
    @click.option("--wait", "wait", is_flag=True, help="Then wait for the end with a progress bar.")
    def submit_command(preset: str | None, spec_file: Path | None, assignments: tuple[str, ...],
                       visibility: str, priority: str, wait: bool) -> None:
        """Submit an experiment to the service; prints its id, its page in the web UI
        and its API URL."""
        body = read_overrides(spec_file, assignments)
        body["visibility"] = visibility
        body["priority"] = priority
        if preset is not None:
            body["preset"] = preset
        with client() as api:
            created = api.submit(body)
            click.echo(f"{created['id']} {created['url']}")
            click.echo(f"web page: {api.web_page(created['id'])}")
            if wait:
                final = wait_with_bar(api, created["id"], None)
                click.echo(describe(final))
                if final["status"] != "succeeded":
                    sys.exit(1)

    @cli.command("upload-representations")
    @click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
    @click.option("--name", default=None, help="The experiment's name (default: representations-<time>-<id>).")
    @click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
    @click.option("--visibility", type=click.Choice(["private", "lab"]), default="private", show_default=True)
    @click.option("--wait", "wait", is_flag=True, help="Then wait for its analysis with a progress bar.")
    def upload_representations_command(file: Path, name: str | None, tags: tuple[str, ...], visibility: str,
                                       wait: bool) -> None:
        """Upload a representations file (docs/representations.md) to be analysed on the service as an
        experiment of kind representations; prints its id and URL. A file the service refuses is reported
        naming the key and what is allowed."""
        size = file.stat().st_size
        with client() as api:
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                      ncols=min(100, shutil.get_terminal_size().columns), desc="upload") as bar:
                def sent(count: int) -> None:
                    bar.update(count)

                created = api.upload_representations(file, name=name, tags=list(tags), visibility=visibility,
                                                     on_bytes=sent)
            click.echo(f"{created['id']} {created['url']}")
            if wait:
                final = wait_with_bar(api, created["id"], None)
                click.echo(describe(final))
                if final["status"] != "succeeded":
                    sys.exit(1)

    @cli.command("status")
    @click.argument("experiment_id", required=False)
    @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
    @click.option("--scope", type=click.Choice(["mine", "lab", "all"]), default="mine", show_default=True,
                  help="List yours, the lab's (shared) or everyone's (admins).")
    @click.option("--status", "statuses", multiple=True, help="Only this status (repeatable).")
    @click.option("--name", default=None, help="Only names starting with this.")
    @click.option("--tag", "tags", multiple=True, help="Only experiments with this tag (repeatable: all of them).")
    @click.option("--filter", "filters", multiple=True, metavar="EXPR",
                  help="Only experiments where EXPR holds (repeatable: all of them), e.g. network.threshold=0.3, "
                       "accuracy>0.9, accuracy.ff.mnist>=0.95, models=ff, tag=baseline.")
    def status_command(experiment_id: str | None, as_json: bool, scope: str, statuses: tuple[str, ...],
                       name: str | None, tags: tuple[str, ...], filters: tuple[str, ...]) -> None:
        """One experiment's status and progress, or a list of yours."""
        with client() as api:
            if experiment_id:
                experiment = api.experiment(experiment_id)
                click.echo(json.dumps(experiment, indent=2) if as_json else describe(experiment))
                return
            items = list(api.experiments(scope=scope, status=list(statuses) or None, name=name,
                                         tag=list(tags) or None, filters=list(filters) or None))
            if as_json:
                echo_json(items)
                return
            for item in items:
                click.echo(describe(item).splitlines()[0])

    @cli.command("queue")
    @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
    def queue_command(as_json: bool) -> None:
        """The queues (admin): slots, each user's recent usage and share, and the
        waiting experiments in the order they would start."""
        with client() as api:
            view = api.queue()
        click.echo(json.dumps(view, indent=2) if as_json else describe_queues(view))

    @cli.command("usage")
    @click.option("--all", "every_user", is_flag=True, help="Every user's (admin).")
    @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
    def usage_command(every_user: bool, as_json: bool) -> None:
        """Your stored bytes and estimated run-hours against the per-user storage quota
        and run-hours limit (with --all, every user's)."""
        with client() as api:
            items = api.usage_by_user() if every_user else [api.usage()]
        if as_json:
            echo_json(items if every_user else items[0])
            return
        for item in items:
            click.echo(describe_usage(item))

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
        """Tables 1-3 of a finished experiment (and the sweep's table, with a sweep).
        Of a cancelled experiment, or one with failed runs: the partial results of
        its succeeded runs (it says so, and which runs are left out and why), or that
        there are none (exit 1)."""
        if fmt == "csv" and table is None:
            raise click.UsageError("--format csv prints one table: name it with --table")
        with client() as api:
            try:
                document = api.results(experiment_id, fmt, table)
            except ApiError as error:
                if error.status_code != 409:
                    raise
                raise click.ClickException(no_results(api, experiment_id, error)) from None
            if fmt != "md":  # markdown says it in its first line; CSV and JSON stay as they are
                note = partial_results_note(api.experiment(experiment_id))
                if note:
                    click.echo(note, err=True)
        if fmt == "json":
            echo_json(document["tables"][table] if table else document["tables"])
        else:
            click.echo(document)

    @cli.command("ensembles")
    @click.argument("experiment_id")
    @click.option("--model", type=click.Choice(list(MODELS)), default=None)
    @click.option("--dataset", type=click.Choice(list(DATASETS)), default=None)
    @click.option("--layer", type=int, default=None)
    @click.option("--class", "class_index", type=click.IntRange(0, 9), default=None)
    @click.option("--method", type=click.Choice(["method1", "method2"]), default=None)
    @click.option("--quantile", type=float, default=None)
    def ensembles_command(experiment_id: str, **filters: Any) -> None:
        """Ensembles (JSON), filtered."""
        with client() as api:
            echo_json(api.ensembles(experiment_id, **filters))

    @cli.command("run-analysis")
    @click.argument("experiment")
    @click.argument("analysis", type=RunAnalysisChoice())
    @click.option("--model", type=click.Choice(list(MODELS)), default=None)
    @click.option("--dataset", type=click.Choice(list(DATASETS)), default=None)
    @click.option("--layer", type=click.IntRange(1), default=None)
    @click.option("--run-id", default=None)
    def run_analysis_command(experiment: str, analysis: str, **filters: Any) -> None:
        """One per-run analysis beyond the paper (JSON): of an experiment of the
        service by id, or of a local results folder by path."""
        folder = Path(experiment)
        if folder.is_dir():
            from fflab.pipeline.documents import folder_documents

            try:
                echo_json(folder_documents(folder, analysis, **filters))
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="'--layer'") from None
            return
        with client() as api:
            echo_json(api.run_analysis(experiment, analysis, **filters))

    @cli.command("figures")
    @click.argument("experiment_id")
    @click.option("--download", "folder", type=click.Path(path_type=Path, file_okay=False), default=None,
                  help="Save every figure into this folder.")
    def figures_command(experiment_id: str, folder: Path | None) -> None:
        """List an experiment's figures, or download them; exit 1 when it has none
        (yet: they are drawn when its results are aggregated)."""
        with client() as api:
            found = api.figures(experiment_id)
            if not found:
                experiment = api.experiment(experiment_id)
                why = {"succeeded": "its results have none",
                       "cancelled": "it was cancelled before any of its runs succeeded",
                       "failed": "none of its runs succeeded" if not experiment.get("results")
                       else "its aggregation drew none"}.get(experiment["status"],
                                                              "they are drawn once its runs have finished")
                raise click.ClickException(f"experiment {experiment_id} ({experiment['status']}) has no figures: {why}")
            note = partial_results_note(api.experiment(experiment_id))
            if note:
                click.echo(note, err=True)
            for figure in found:
                if folder is None:
                    click.echo(f"{figure['name']}  {figure['size']} bytes  {figure['url']}")
                else:
                    path = folder / figure["name"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(api.figure(experiment_id, figure["name"]))
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
