"""``fflab diff``: experiments and runs compared with each other (``fflab compare``
compares one with the paper). Each side is a results folder (or a run's folder,
``<folder>/runs/<run_id>``) compared in this process, or a service experiment by
id (``<id>`` or ``<id>/<run id>``) compared by the service (GET /v1/comparisons)."""

from __future__ import annotations

from pathlib import Path

import click

from fflab.cli.service import client as service_client


@click.command("diff")
@click.argument("sides", nargs=-1, required=True, metavar="EXPERIMENT EXPERIMENT [...]")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--figures", "figures_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also write the overlaid figures here (loss_curves, layer_quantities: PNG, and SVG "
                   "for results folders).")
def diff_command(sides: tuple[str, ...], fmt: str, figures_dir: Path | None) -> None:
    """Compare 2-8 experiments or runs with each other; the first is the reference.

    Each EXPERIMENT is a results folder, a run's folder (results/x/runs/ff-mnist-seed0),
    or a service experiment's id, or <id>/<run id> for one of its runs. Prints the
    spec fields that differ, Tables 1-3 cell by cell (each side's mean ± SE and n; the
    difference from the reference ± its combined SE, Welch's t, degrees of freedom, p
    and a verdict; a side with one run: no error bar, no verdict) and the overlap
    (Jaccard) of the Method 1 ensembles of runs with the same model, data set and seed.

    \b
    fflab diff results/theta03 results/theta05
    fflab diff 3f2a... 9c1b... --figures cmp/
    fflab diff 3f2a.../ff-mnist-seed0 3f2a.../ff-mnist-seed1"""
    # Here, not at the top: the statistics and the figures load when the verb runs.
    from fflab import comparison
    from fflab.figures import save_figure
    from fflab.pipeline.comparisons import compare_folders_with_each_other

    folders = [Path(side).is_dir() for side in sides]
    if not comparison.MIN_SIDES <= len(sides) <= comparison.MAX_SIDES:
        raise click.UsageError(f"give {comparison.MIN_SIDES} to {comparison.MAX_SIDES} experiments or runs; "
                               f"got {len(sides)}")
    if any(folders) and not all(folders):
        raise click.UsageError("give results folders or service experiment ids, not both: "
                               + ", ".join(s for s, f in zip(sides, folders) if not f) + " is not a folder here")
    figures: dict[str, bytes] = {}
    if all(folders):
        try:
            found, data = compare_folders_with_each_other([Path(side) for side in sides])
        except (FileNotFoundError, ValueError) as error:
            raise click.ClickException(str(error)) from None
        if figures_dir is not None:
            for name in comparison.FIGURES:
                try:
                    save_figure(comparison.figure(name, found, data), figures_dir / name)
                except ValueError as error:
                    click.echo(f"{name}: {error}", err=True)
    else:
        with service_client() as api:
            found = comparison.ExperimentComparison.model_validate(api.compare(list(sides)))
            if figures_dir is not None:
                figures = {name: api.comparison_figure(list(sides), name) for name in comparison.FIGURES}
        for name, png in figures.items():
            assert figures_dir is not None  # figures are fetched only for a folder to write them to
            figures_dir.mkdir(parents=True, exist_ok=True)
            (figures_dir / f"{name}.png").write_bytes(png)
    if fmt == "json":
        click.echo(found.model_dump_json(indent=2))
    else:
        click.echo(comparison.to_markdown(found) if fmt == "md" else comparison.to_csv(found), nl=False)
    if figures_dir is not None:
        click.echo(f"figures: {figures_dir.resolve()}", err=True)
