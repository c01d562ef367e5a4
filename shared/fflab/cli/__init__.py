"""The ``fflab`` command line.

- ``local``: verbs that work in this process on results folders (fetch-data,
  spec, run, analyse, tables, compare, schemas);
- ``service``: verbs that talk to the service (submit, status, wait, results,
  ensembles, figures, quickstart, cancel, delete, queue) and ``admin`` (the database);
- ``research``: client verbs for what researchers do with submitted experiments
  (edit, metrics, logs, keys);
- ``options``: what the verbs share (specs from presets, files and ``--set``);
- ``serve`` and ``worker`` start the API and a worker: they live in api/cli.py and
  worker/cli.py and are found through the ``fflab.commands`` entry points
  (pyproject.toml), so that this library never imports the API or the worker.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from fflab.cli import local, research, service

PLUGIN_GROUP = "fflab.commands"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Forward-Forward networks and their ensembles: train, analyse, serve."""


for command in local.COMMANDS:
    main.add_command(command)
service.register(main)
research.register(main)


def add_plugin_commands(group: click.Group) -> None:
    """The commands other installed packages register under ``fflab.commands``.
    One whose package is not importable here (a checkout without it) is left out."""
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            command = entry.load()
        except ModuleNotFoundError as error:
            if error.name and entry.module.startswith(error.name):
                continue
            raise
        group.add_command(command, entry.name)


add_plugin_commands(main)
