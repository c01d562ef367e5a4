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

Start-up is kept light (``benchmarks/cli_startup.py``): importing this package
loads no torch, scikit-learn or matplotlib (the verbs that train, analyse or
draw import them when they run), and the entry-point commands are imported
only when they are run or listed (``fflab --help``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from fflab.cli import local, research, service

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

PLUGIN_GROUP = "fflab.commands"


class CommandGroup(click.Group):
    """A group that finds the entry-point commands (``fflab.commands``) only when a
    name is not one of its own or the commands are listed, and loads each when
    first named: ``fflab status`` neither scans the installed packages nor
    imports the API or the worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._entry_points: dict[str, EntryPoint] | None = None

    def entry_points(self) -> dict[str, EntryPoint]:
        """The ``fflab.commands`` entry points not loaded yet, by name."""
        if self._entry_points is None:
            from importlib.metadata import entry_points

            self._entry_points = {entry.name: entry for entry in entry_points(group=PLUGIN_GROUP)
                                  if entry.name not in self.commands}
        return self._entry_points

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.entry_points()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.entry_points():
            entry = self.entry_points().pop(name)
            try:
                command = entry.load()
            except ModuleNotFoundError as error:
                # A checkout without that package: the command is left out.
                if error.name and entry.module.startswith(error.name):
                    return None
                raise
            self.add_command(command, name)
        return super().get_command(ctx, name)


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Forward-Forward networks and their ensembles: train, analyse, serve."""


# The verbs that talk to the service (through ``service.client``; compare and analyse
# with an experiment id): each takes --key.
SERVICE_VERBS = ("submit", "upload-representations", "status", "queue", "usage", "wait", "results", "ensembles",
                 "run-analysis", "figures", "quickstart", "cancel", "delete", "edit", "metrics", "logs", "keys",
                 "diff", "compare", "analyse")

for command in local.COMMANDS:
    main.add_command(command)
service.register(main)
research.register(main)
for name in SERVICE_VERBS:
    main.commands[name].params.append(service.key_parameter())
