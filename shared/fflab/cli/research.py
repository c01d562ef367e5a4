"""Client verbs of the ``fflab`` command for what researchers do with submitted
experiments: rename, tag and share them (``fflab edit``), read a run's training
curve, also while it trains (``fflab metrics [--follow]``), read its log
(``fflab logs``), and list or rotate their own API keys (``fflab keys``).
They talk to the API like the other client verbs (fflab.cli.service.client): an
error prints the API's message and exits non-zero."""

from __future__ import annotations

import json

import click

from fflab.cli.service import client, echo_json


def register(cli: click.Group) -> None:
    @cli.command("edit")
    @click.argument("experiment_id")
    @click.option("--name", default=None, help="A new name.")
    @click.option("--tag", "tags", multiple=True, help="Replace the tags with these (repeatable).")
    @click.option("--clear-tags", is_flag=True, help="Remove every tag.")
    @click.option("--visibility", type=click.Choice(["private", "lab"]), default=None)
    def edit_command(experiment_id: str, name: str | None, tags: tuple[str, ...], clear_tags: bool,
                     visibility: str | None) -> None:
        """Rename an experiment, replace its tags or share it with the lab."""
        new_tags = [] if clear_tags else (list(tags) or None)
        if name is None and new_tags is None and visibility is None:
            raise click.UsageError("give --name, --tag, --clear-tags or --visibility")
        with client() as api:
            experiment = api.update(experiment_id, name=name, tags=new_tags, visibility=visibility)
        click.echo(f"{experiment['id']}  {experiment['name']}  {experiment['visibility']}  "
                   f"tags: {', '.join(experiment['tags']) or '-'}")

    @cli.command("metrics")
    @click.argument("experiment_id")
    @click.argument("run_id")
    @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
    @click.option("--follow", is_flag=True, help="Print each new epoch's loss as it comes, until the run ends.")
    @click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True,
                  help="With --follow: seconds between polls.")
    def metrics_command(experiment_id: str, run_id: str, as_json: bool, follow: bool, interval: float) -> None:
        """A run's loss per epoch (per layer for FF), also while it trains, and its
        test accuracy once it has succeeded. --follow prints the losses as they come."""
        with client() as api:
            if follow:
                for point in api.follow_metrics(experiment_id, run_id, interval):
                    if as_json:
                        click.echo(json.dumps(point, default=str))
                    else:
                        label = f"layer {point['layer']} " if point["layer"] is not None else ""
                        click.echo(f"{label}epoch {point['epoch']}: loss {point['loss']:.6g}")
            metrics = api.run_metrics(experiment_id, run_id)
        if follow:
            click.echo(f"{metrics['run_id']}: {metrics['status']}" + (
                f", accuracy {metrics['accuracy']:.4f} on {metrics['n_test']} test images"
                if metrics["accuracy"] is not None else ""))
            return
        if as_json:
            echo_json(metrics)
            return
        accuracy = (f"accuracy {metrics['accuracy']:.4f} on {metrics['n_test']} test images"
                    if metrics["accuracy"] is not None else "no accuracy yet")
        click.echo(f"{metrics['run_id']}: {metrics['status']}, {accuracy}")
        for series in metrics["loss"]:
            label = f"layer {series['layer']}" if series["layer"] is not None else "network"
            losses = series["loss"]
            click.echo(f"  {label}: {len(losses)} epochs, loss {losses[0]:.4g} -> {losses[-1]:.4g}"
                       if losses else f"  {label}: no epochs")

    @cli.command("logs")
    @click.argument("experiment_id")
    @click.argument("run_id")
    def logs_command(experiment_id: str, run_id: str) -> None:
        """What the worker logged while it held a run: warnings, and the traceback
        of a failure (keys and secrets redacted)."""
        with client() as api:
            run_log = api.run_log(experiment_id, run_id)
        click.echo(run_log["text"], nl=False)
        if not run_log["text"]:
            click.echo(f"run {run_id} is {run_log['status']} and has logged nothing yet")

    @cli.command("keys")
    @click.option("--rotate", is_flag=True, help="Issue a new key and revoke the one in use; prints the new key.")
    @click.option("--keep-current", is_flag=True, help="With --rotate: keep the key in use valid too.")
    def keys_command(rotate: bool, keep_current: bool) -> None:
        """List your API keys (their public prefixes), or rotate the one in use."""
        with client() as api:
            if rotate:
                click.echo(api.rotate_key(revoke_current=not keep_current))
                return
            for key in api.keys():
                state = "revoked " + key["revoked_at"] if key["revoked_at"] else "active"
                click.echo(f"{key['prefix']}  created {key['created_at']}  {state}"
                           f"{'  (this one)' if key['current'] else ''}")
