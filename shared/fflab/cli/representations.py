"""``fflab analyse-representations``: fflab's analyses on representations recorded
elsewhere (a representations file, docs/representations.md), into a results folder."""

from __future__ import annotations

from pathlib import Path

import click

from fflab.representations import RepresentationsError, limits_from_settings, read_representations
from fflab.settings import Settings
from fflab.spec import AnalysisSpec


@click.command("analyse-representations")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The results folder to write (documents, tables, figures, results.json).")
@click.option("--name", default=None, help="The analysis's name (default: the file's stem).")
@click.option("--quantile", "quantiles", multiple=True, type=float, help="Method 1 quantile (repeatable).")
@click.option("--epsilon", type=float, default=None, help="Method 2 density radius.")
@click.option("--all-images/--correct-only", default=None,
              help="Analyse every image, or only the correctly predicted ones (default: those, when the file "
                   "has predictions).")
def analyse_representations_command(file: Path, out_dir: Path, name: str | None, quantiles: tuple[float, ...],
                                    epsilon: float | None, all_images: bool | None) -> None:
    """Run fflab's analyses (ensembles by Methods 1 and 2, sparseness, shared units, weight statistics,
    and the further analyses that need only activities and labels) on a representations file."""
    from pydantic import ValidationError

    from fflab.cli.options import validation_message
    from fflab.pipeline.recorded import PAPER_COMPARISON_NOTE, analyse_representations

    changes: dict[str, object] = {}
    if quantiles:
        changes.update(quantiles=list(quantiles), table_quantile=quantiles[0], figure_quantile=quantiles[0])
    if epsilon is not None:
        changes["epsilon"] = epsilon
    if all_images is not None:
        changes["correct_only"] = not all_images
    try:
        settings = AnalysisSpec.model_validate({**AnalysisSpec().model_dump(), **changes})
    except ValidationError as error:
        raise click.ClickException(validation_message(error)) from None
    try:
        representations = read_representations(file, limits_from_settings(Settings()))
    except RepresentationsError as error:
        raise click.ClickException(f"{file}: {error}") from None
    click.echo(f"{file}: {len(representations.layers)} layers ({', '.join(representations.layer_names)}), "
               f"{representations.n_images} images, {representations.n_classes} classes")
    results = analyse_representations(representations, out_dir, name or file.stem, settings)
    for table in ("table2", "table3"):
        path = out_dir / "tables" / f"{table}.md"
        if path.is_file():
            click.echo(path.read_text())
    click.echo(PAPER_COMPARISON_NOTE)
    click.echo(f"{len(results['figures'])} figures, tables and documents in {out_dir}")
