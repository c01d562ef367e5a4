"""Results folders compared with each other (``fflab diff`` on folders): each side
is an experiment's folder (its analysed runs trained on all classes, at the first
grid point of a sweep) or one run's folder (``<experiment>/runs/<run_id>``);
``fflab.comparison`` does the comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fflab import comparison
from fflab.pipeline.documents import RUN_DOCUMENTS, is_analysed
from fflab.pipeline.folders import read_spec, run_dir_of
from fflab.pipeline.paper_analyses import run_record
from fflab.results import RunEnsembles, RunMetrics, read_document


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is one run's folder of a results folder."""
    return folder.parent.name == "runs" and (folder.parent.parent / "spec.json").is_file()


def _run_dirs(folder: Path) -> tuple[Path, dict[str, Any], list[Path], int]:
    """The experiment folder, its spec (JSON, at the compared grid point), the
    analysed run folders compared and the runs it would have."""
    if is_run_folder(folder):
        experiment_dir = folder.parent.parent
        if not is_analysed(folder):
            raise FileNotFoundError(f"{folder} is not an analysed run")
        swept = read_spec(experiment_dir)
        return experiment_dir, swept.model_dump(mode="json"), [folder], 1
    swept = read_spec(folder)
    keys = [key for key in swept.runs_at(swept.paper_point()) if key.unseen_class is None]
    done = [run_dir_of(folder, key) for key in keys if is_analysed(run_dir_of(folder, key))]
    if not done:
        raise FileNotFoundError(f"{folder} has no analysed run yet")
    return folder, swept.at(swept.paper_point()).model_dump(mode="json"), done, len(keys)


def method1_units(run_dir: Path, quantile: float | None) -> comparison.RunEnsembleUnits:
    """The run's Method 1 ensembles at ``quantile``: (layer, class) -> units, for the
    classes with analysed images."""
    if quantile is None:
        return {}
    stored = read_document(RunEnsembles, run_dir / RUN_DOCUMENTS["ensembles"].file)
    return {(e.layer, e.class_index): list(e.units) for e in stored.ensembles
            if e.method == "method1" and e.quantile == quantile and e.n_images > 0}


def folder_sides(folders: list[Path]) -> tuple[list[comparison.Side], float | None]:
    """The sides of ``folders`` and the Method 1 quantile of their overlaps."""
    found = [_run_dirs(folder) for folder in folders]
    quantile = comparison.common_quantile([spec for _, spec, _, _ in found])
    sides = []
    for folder, (experiment_dir, spec, run_dirs, total) in zip(folders, found):
        records = [run_record(run_dir) for run_dir in run_dirs]
        losses = {record["run_id"]: read_document(RunMetrics, run_dir / "metrics.json").loss_history
                  for record, run_dir in zip(records, run_dirs)}
        single = is_run_folder(folder)
        sides.append(comparison.Side(
            label=str(folder), experiment=str(experiment_dir), run_id=records[0]["run_id"] if single else None,
            name=spec.get("name", experiment_dir.name), spec=spec, records=records, losses=losses,
            ensembles={record["run_id"]: method1_units(run_dir, quantile)
                       for record, run_dir in zip(records, run_dirs)},
            runs_total=total,
            note="" if single or len(records) == total else f"{len(records)} of {total} runs analysed"))
    return sides, quantile


def compare_folders_with_each_other(folders: list[Path]) -> tuple[comparison.ExperimentComparison,
                                                                   list[comparison.Side]]:
    """The comparison of 2-8 results folders (or run folders), and their sides
    (for ``comparison.figure``)."""
    if not comparison.MIN_SIDES <= len(folders) <= comparison.MAX_SIDES:
        raise ValueError(f"compare {comparison.MIN_SIDES}-{comparison.MAX_SIDES} folders; got {len(folders)}")
    sides, quantile = folder_sides(folders)
    return comparison.compare_sides(sides, quantile), sides
