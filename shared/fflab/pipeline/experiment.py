"""A whole experiment: its runs in this process, the aggregation of their
documents into tables, figures and results.json, re-analysis with other
settings, and the comparison of results folders with the paper. A sweep's
part of the aggregation is in fflab.pipeline.sweeps."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fflab import analysis, figures, paper
from fflab.data import PAPER_DATASETS
from fflab.models.common import Checkpoint, ProgressCallback, StopCheck
from fflab.pipeline import paper_analyses, sweeps
from fflab.pipeline.documents import RUN_DOCUMENTS, analyse_run, document_figures, is_analysed
from fflab.pipeline.folders import read_spec, run_dir_of, write_spec
from fflab.pipeline.paper_analyses import run_record
from fflab.pipeline.paper_figures import FigureContext, comparison_quantile, write_paper_figures
from fflab.pipeline.train import train_and_evaluate
from fflab.results import (
    ExperimentResults,
    MethodComparison,
    MissingRun,
    PaperComparison,
    RunEnsembles,
    SizeFit,
    finite_or_none,
    partial_note,
    read_document,
    write_document,
)
from fflab.spec import AnalysisSpec, ExperimentSpec, RunKey


def execute_run(
    spec: ExperimentSpec,
    key: RunKey,
    run_dir: Path,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int | None = None,
    data_root: Path | None = None,
) -> dict[str, Any]:
    """Train, evaluate and analyse one run; return its summary record. See
    ``train_and_evaluate`` for ``checkpoint`` and ``data_root``."""
    train_and_evaluate(spec, key, run_dir, progress, should_stop, checkpoint, checkpoint_every, data_root)
    return analyse_run(spec, key, run_dir)



def figure_spec(spec: ExperimentSpec, included: Collection[str] | None = None) -> ExperimentSpec:
    """The spec the figures are drawn for: with partial results (``included``: the
    run ids aggregated), its seeds reordered so that the first, whose runs the
    single-run figures show, is the first seed with a run there is (that of the
    main model on the main data set where one is)."""
    if included is None:
        return spec
    keys = [key for key in spec.runs_at(spec.paper_point()) if key.run_id in included]
    if not keys:
        return spec
    main = "ff" if "ff" in spec.models else spec.models[0]
    seed = next((key.seed for key in keys if key.model == main and key.unseen_class is None), keys[0].seed)
    return spec.model_copy(update={"seeds": [seed, *(s for s in spec.seeds if s != seed)]})


def figure_runs(spec: ExperimentSpec, included: Collection[str] | None = None) -> list[RunKey]:
    """The runs whose representations the figures read: the first seed of each
    (model, data set), and the first seed's unseen-class runs (of the first grid
    point, with a sweep); with partial results, of those in ``included`` (the seed
    of ``figure_spec``)."""
    spec = figure_spec(spec, included)
    seed = spec.seeds[0]
    return [key for key in spec.runs_at(spec.paper_point())
            if key.seed == seed and (included is None or key.run_id in included)]


def method_comparison(
    spec: ExperimentSpec, run_dirs: dict[str, Path], records: list[dict[str, Any]]
) -> tuple[MethodComparison, np.ndarray, np.ndarray]:
    """Method 1 vs Method 2 sizes over every (run, layer, class) of the
    trained-on-all-classes runs where the class was analysed: the paper's pooled
    fit, the fit where both methods find an ensemble, and one per model.
    ``run_dirs`` maps each record's run_id to its folder."""
    quantile = comparison_quantile(spec.analysis)
    sizes1, sizes2, models = [], [], []
    documents: list[tuple[str, RunEnsembles]] = []
    for record in records:
        if record["unseen_class"] is not None:
            continue
        stored = read_document(RunEnsembles, run_dirs[record["run_id"]] / RUN_DOCUMENTS["ensembles"].file)
        documents.append((record["model"], stored))
        by_place = {}
        for e in stored.ensembles:
            if e.n_images > 0 and (e.method == "method2" or e.quantile == quantile):
                by_place[(e.method, e.layer, e.class_index)] = e.size
        for (method, layer, c), size in by_place.items():
            if method == "method1":
                sizes1.append(size)
                sizes2.append(by_place[("method2", layer, c)])
                models.append(record["model"])
    sizes1_arr, sizes2_arr = np.array(sizes1), np.array(sizes2)
    fits = analysis.method_size_fits(sizes1_arr, sizes2_arr, np.array(models, dtype=object))

    def document(fit: analysis.LinearFit | None) -> SizeFit | None:
        if fit is None:
            return None
        return SizeFit(slope=fit.slope, intercept=fit.intercept, r2=finite_or_none(fit.r2),
                       n_points=fit.n_points)

    pooled = fits.all_points
    comparison = MethodComparison(
        quantile=quantile, epsilon=spec.analysis.epsilon,
        slope=None if pooled is None else pooled.slope,
        intercept=None if pooled is None else pooled.intercept,
        r2=None if pooled is None else finite_or_none(pooled.r2),
        n_points=len(sizes1),
        both_found=document(fits.both_found), left_out=fits.left_out,
        per_model={model: document(fit) for model, fit in fits.per_group.items()},
        by_cut_rule=paper_analyses.cut_rule_fits(documents, quantile),
    )
    return comparison, sizes1_arr, sizes2_arr


def experiment_tables(spec: ExperimentSpec, records: list[dict[str, Any]]) -> dict[str, analysis.Table]:
    """The paper's Tables 1-3, then the other aggregates over runs: sparseness
    (every measure of SPARSENESS_MEASURES), units shared by a pair of classes and, with unseen-class runs,
    the unseen class's activity. With a sweep, each table has the rows of every
    grid point, its values in the leading columns (analysis.stack_tables)."""
    if spec.sweep:
        per_point = [(point.values, experiment_tables(spec.at(point.index),
                                                      [r for r in records if r["point"] == point.index]))
                     for point in spec.points()]
        return {name: analysis.stack_tables(list(spec.sweep), [(values, tables[name]) for values, tables in per_point])
                for name in per_point[0][1]}
    trained_on_all = [r for r in records if r["unseen_class"] is None]
    # A recorded run without predictions (fflab.pipeline.recorded) has no accuracy: no Table 1.
    with_accuracy = all(r["accuracy"] is not None for r in trained_on_all)
    tables = {
        **({"table1": analysis.accuracy_table(trained_on_all)} if with_accuracy else {}),
        "table2": analysis.ensemble_size_table(trained_on_all, spec.analysis.table_quantile),
        "table3": analysis.weight_sign_table(trained_on_all),
        **{f"sparseness_{measure}": analysis.sparseness_table(trained_on_all, measure)
           for measure in analysis.SPARSENESS_MEASURES},
        "shared_units": analysis.shared_units_table(trained_on_all, spec.analysis.figure_quantile),
    }
    unseen = [r for r in records if r["unseen_class"] is not None]
    if unseen:
        tables["unseen_class"] = analysis.unseen_activity_table(unseen)
    return tables


def write_tables(tables: dict[str, Any], tables_dir: Path) -> None:
    """Each table as ``<name>.json``, ``.md`` and ``.csv`` in ``tables_dir``."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        (tables_dir / f"{name}.json").write_text(json.dumps(table.to_dict(), indent=2) + "\n")
        (tables_dir / f"{name}.md").write_text(table.to_markdown() + "\n")
        (tables_dir / f"{name}.csv").write_text(table.to_csv())


def aggregate(spec: ExperimentSpec, experiment_dir: Path, missing: list[MissingRun] | None = None) -> dict[str, Any]:
    """Tables, the paper's figures, the run documents' figures, the comparison with
    the paper and results.json, from the runs' stored results. With a sweep, also
    its section, table and figure (fflab.pipeline.sweeps); the figures and fits of
    the paper show its first grid point.

    ``missing``: runs that did not succeed (a cancelled experiment, failed runs).
    The results are then partial, of the other runs only: results.json says
    ``partial`` and which runs are in and which are not, each table's title and
    each figure's caption ``partial: n of m runs``, the comparison with the paper
    likewise; a figure whose run is missing is not drawn."""
    missing = list(missing or ())
    left_out = {run.run_id for run in missing}
    keys = [key for key in spec.runs() if key.run_id not in left_out]
    if not keys:
        raise ValueError("no run of the experiment succeeded: nothing to aggregate")
    included = [key.run_id for key in keys] if missing else None
    note = partial_note(len(keys), len(missing)) if missing else ""
    records = sweeps.run_records(spec, experiment_dir, keys)
    tables = experiment_tables(spec, records)
    sweep = sweeps.sweep_results(spec, records) if spec.sweep else None
    if sweep is not None:
        tables["sweep"] = sweeps.sweep_table(sweep)
    if note:
        tables = {name: replace(table, title=f"{table.title} ({note})") for name, table in tables.items()}
    write_tables(tables, experiment_dir / "tables")

    run_dirs = {key.run_id: run_dir_of(experiment_dir, key) for key in keys}
    point = spec.paper_point()
    paper_spec, paper_records = figure_spec(spec.at(point), included), [r for r in records if r.get("point") == point]
    comparison, sizes1, sizes2 = method_comparison(paper_spec, run_dirs, paper_records)
    point_note = paper.sweep_note(spec).strip(" ()")  # "sweep point 0: network.threshold=0.1"
    figure_note = "; ".join(part for part in (point_note, note) if part)
    written = write_paper_figures(FigureContext(paper_spec, experiment_dir, paper_records, comparison,
                                                (sizes1, sizes2), point=point, sweep_note=figure_note,
                                                partial=bool(missing)))
    for name, figure in document_figures(spec, experiment_dir).items():
        figures.caption(figure, figure_note)
        written += [path.name for path in figures.save_figure(figure, experiment_dir / "figures" / name)]
    if sweep is not None:
        written += [path.name for path in figures.save_figure(
            sweeps.sweep_figure(sweep), experiment_dir / "figures" / sweeps.FIGURE)]
    # The paper's numbers are MNIST's and Fashion-MNIST's: its Method 1 vs Method 2 fit is
    # compared with the fit over the runs on those data sets only.
    on_paper_data = [r for r in paper_records if r["dataset"] in PAPER_DATASETS]
    paper_fit = comparison if len(on_paper_data) == len(paper_records) else \
        method_comparison(paper_spec, run_dirs, on_paper_data)[0]
    comparison_with_paper = paper.paper_comparison(
        spec, records, paper_fit.model_dump(mode="json"), experiment=spec.name + (f" ({note})" if note else "")
    )
    written += write_paper_comparison(comparison_with_paper, experiment_dir)
    results = ExperimentResults(
        name=spec.name,
        runs=records,
        tables={name: table.to_dict() for name, table in tables.items()},
        figures=sorted(written),
        method_comparison=comparison,
        sweep=sweep,
        partial=bool(missing),
        runs_included=included,
        runs_missing=missing or None,
    )
    write_document(results, experiment_dir / "results.json")
    return results.model_dump(mode="json")


def write_paper_comparison(comparison: PaperComparison, experiment_dir: Path) -> list[str]:
    """tables/paper_comparison.{json,md,csv} and figures/paper_comparison.{png,svg}; returns
    the figure files' names."""
    write_document(comparison, experiment_dir / "tables" / "paper_comparison.json")
    (experiment_dir / "tables" / "paper_comparison.md").write_text(paper.to_markdown(comparison))
    (experiment_dir / "tables" / "paper_comparison.csv").write_text(paper.to_csv(comparison))
    return [path.name for path in figures.save_figure(
        paper.comparison_figure(comparison), experiment_dir / "figures" / "paper_comparison")]


def compare_folders(experiment_dirs: list[Path]) -> PaperComparison:
    """The comparison with the paper of one or several results folders, their
    runs pooled (each (model, data set, seed, left-out class) at most once).

    A folder whose experiment has not finished contributes the runs that have
    been analysed, and the comparison's name says how many of how many. The
    analysis settings of the first folder decide what is comparable; the protocol
    lists each folder's differences from the paper."""
    if not experiment_dirs:
        raise ValueError("give at least one results folder")
    records: list[dict[str, Any]] = []
    protocol = []
    seen: dict[tuple[Any, ...], Path] = {}
    specs = []
    run_dirs: dict[str, Path] = {}
    names = []
    for folder in experiment_dirs:
        swept = read_spec(folder)
        keys = swept.runs_at(swept.paper_point())  # a sweep's first grid point
        spec = swept.at(swept.paper_point())
        specs.append(spec)
        done = [key for key in keys if is_analysed(run_dir_of(folder, key))]
        if not done:
            raise FileNotFoundError(f"{folder} has no analysed run yet")
        for key in done:
            record = run_record(run_dir_of(folder, key))
            identity = (key.model, key.dataset, key.seed, key.unseen_class)
            if identity in seen:
                raise ValueError(f"run {key.run_id} is in both {seen[identity]} and {folder}")
            seen[identity] = folder
            records.append(record)
            run_dirs[key.run_id] = run_dir_of(folder, key)
        protocol += paper.protocol_differences(spec, source=folder.name if len(experiment_dirs) > 1 else "")
        names.append(str(folder) + ("" if len(done) == len(keys) else f" ({len(done)} of {len(keys)} runs)")
                     + paper.sweep_note(swept))
    on_paper_data = [r for r in records if r["dataset"] in PAPER_DATASETS]  # the paper's numbers are theirs
    fits = method_comparison(specs[0], run_dirs, on_paper_data)[0].model_dump(mode="json")
    return paper.paper_comparison(specs[0], records, fits, experiment=" + ".join(names), protocol=protocol)


RunProgress = Callable[[RunKey, int, int], None]


def run_experiment(
    spec: ExperimentSpec,
    experiment_dir: Path,
    progress: ProgressCallback | None = None,
    on_run: RunProgress | None = None,
    data_root: Path | None = None,
) -> dict[str, Any]:
    """Every run of the experiment in this process, then the aggregation."""
    write_spec(spec, experiment_dir)
    keys = spec.runs()
    for index, key in enumerate(keys):
        if on_run is not None:
            on_run(key, index, len(keys))
        execute_run(spec, key, run_dir_of(experiment_dir, key), progress, data_root=data_root)
    return aggregate(spec, experiment_dir)


def reanalyse(experiment_dir: Path, settings: AnalysisSpec) -> dict[str, Any]:
    """Recompute ensembles, tables and figures with other analysis settings,
    from the stored representations, without retraining."""
    spec = read_spec(experiment_dir).model_copy(update={"analysis": settings})
    write_spec(spec, experiment_dir)
    for key in spec.runs():
        analyse_run(spec, key, run_dir_of(experiment_dir, key))
    return aggregate(spec, experiment_dir)
