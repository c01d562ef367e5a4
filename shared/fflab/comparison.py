"""Experiments and runs compared with each other (``fflab diff``, ``GET
/v1/comparisons``, the UI's compare page); ``fflab.paper`` compares one with the paper.

A *side* is an experiment (its finished runs trained on all classes, at its first
grid point with a sweep) or one run of it. ``compare_sides`` sets 2-8 sides
against the first (the reference) and returns one ``ExperimentComparison``:

- the specs side by side, every dotted field with each side's value, the
  differing ones flagged;
- Tables 1-3 cell by cell (model, data set, layer): each side's mean ± SE and n,
  and each later side's difference from the reference with its combined SE,
  Welch's t, its Welch-Satterthwaite degrees of freedom and p
  (``fflab.analysis.compare_samples``); a side with one run has no error bar and
  no verdict;
- the Method 1 ensembles' overlap (Jaccard) per class and layer between paired
  runs: the same (model, data set, seed) on the reference and a later side, or
  the two runs where both sides are single runs; at one quantile every side
  computed (``common_quantile``).

The figures (``fflab.comparison_figures``) overlay the sides' loss curves and
their ensemble sizes and fractions of positive weights per layer. The statistics
are pure functions of ``fflab.analysis.experiment_comparison``; the service and
the command line only gather each side's records, losses and ensembles.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from fflab.analysis import experiment_comparison as stats
from fflab.data import DATASETS
from fflab.models import MODELS
from fflab.results import Document

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIN_SIDES, MAX_SIDES = 2, 8
# The tables compared: name -> (title, the run record's key, per layer?)
TABLES = {
    "table1": ("Table 1: test accuracy", "accuracy", False),
    "table2": ("Table 2: mean size of the Method 1 ensembles (at each side's table quantile)",
               "ensemble_sizes_method1", True),
    "table3": ("Table 3: fraction of positive weights", "fraction_positive_weights", True),
}
FIGURES = ("loss_curves", "layer_quantities")
# A figure's name as the figure routes take it, with or without ".png".
FigureName = Literal[FIGURES + tuple(f"{name}.png" for name in FIGURES)]  # type: ignore[valid-type]
# Ensembles of one run: (layer, class_index) -> unit indices.
RunEnsembleUnits = dict[tuple[int, int], list[int]]


@dataclass
class Side:
    """What a side contributes (gathered by the service or from a results folder).

    Attributes
    ----------
    label : str
        How the side is named in tables and figures.
    experiment : str
        The experiment's id, or its results folder.
    run_id : str or None
        The single run this side stands for; None: every finished run.
    name : str
        The experiment's name.
    spec : dict
        The spec of the compared runs (JSON), a sweep's first grid point.
    records : list of dict
        The compared runs' summary records (``fflab.pipeline.paper_analyses.run_record``):
        run_id, model, dataset, seed, accuracy, ensemble_sizes_method1, fraction_positive_weights.
    losses : dict
        run_id -> the run's loss_history (one series per layer for FF).
    ensembles : dict
        run_id -> its Method 1 ensembles at ``comparison.common_quantile``.
    runs_total : int
        The runs the side would have when finished.
    note : str
    """

    label: str
    experiment: str
    run_id: str | None
    name: str
    spec: dict[str, Any]
    records: list[dict[str, Any]]
    losses: dict[str, list[list[float]]] = field(default_factory=dict)
    ensembles: dict[str, RunEnsembleUnits] = field(default_factory=dict)
    runs_total: int = 0
    note: str = ""


class ComparedSide(BaseModel):
    label: str
    experiment: str = Field(description="The experiment's id (or results folder).")
    run_id: str | None = Field(description="The one run this side stands for; null: every finished run.")
    name: str
    runs: int = Field(description="Finished runs compared.")
    runs_total: int
    note: str = ""


class SpecFieldOut(BaseModel):
    field: str = Field(description="Dotted path (network.threshold).")
    values: list[Any] = Field(description="Each side's value, in order ('(absent)' where a spec lacks it).")
    differs: bool


class EstimateOut(BaseModel):
    mean: float | None
    se: float | None = Field(description="Standard error over runs; null with one run.")
    n: int = Field(description="Runs with a value.")


class CellDifference(BaseModel):
    side: int = Field(description="The side compared with the reference (side 0).")
    verdict: str = Field(description="consistent, differs, no error bar or not comparable (see verdicts).")
    difference: float | None = Field(description="This side's mean minus the reference's.")
    combined_se: float | None
    df: float | None = Field(description="Welch-Satterthwaite degrees of freedom.")
    t: float | None
    p: float | None = Field(description="Two-sided p of Welch's t.")
    ci: tuple[float, float] | None = Field(description="The difference's 95% interval.")
    note: str = ""


class TableCellComparison(BaseModel):
    table: str = Field(description="table1, table2 or table3.")
    model: str
    dataset: str
    layer: int | None = Field(description="From 1; null for Table 1.")
    estimates: list[EstimateOut] = Field(description="Each side's mean ± SE over its runs.")
    differences: list[CellDifference] = Field(description="Each later side against the reference.")


class EnsembleOverlap(BaseModel):
    side: int = Field(description="The side whose run is set against the reference's.")
    run_a: str = Field(description="The reference's run.")
    run_b: str
    layer: int
    class_index: int
    size_a: int
    size_b: int
    shared: int
    jaccard: float = Field(description="|A ∩ B| / |A ∪ B|; 1 where both ensembles are empty.")


class ExperimentComparison(Document):
    """Experiments (or runs) side by side: the reference is side 0."""

    sides: list[ComparedSide]
    spec: list[SpecFieldOut] = Field(description="Every spec field; differs: true where the sides' values differ.")
    tables: list[TableCellComparison]
    method1_quantile: float | None = Field(
        description="The Method 1 quantile of the overlaps: one every side computed (null: none in common).")
    overlaps: list[EnsembleOverlap]
    verdicts: dict[str, str] = Field(default_factory=lambda: dict(stats.DIFFERENCE_VERDICTS))
    summary: dict[str, int] = Field(description="Table cells per verdict.")
    figures: list[str] = Field(default_factory=lambda: list(FIGURES))
    notes: list[str] = Field(default_factory=list)


def common_quantile(specs: Sequence[dict[str, Any]]) -> float | None:
    """The Method 1 quantile the overlaps are read at: the reference's table
    quantile if every side computed it, else the first of the reference's quantiles
    every side computed, else None."""
    computed = [set((spec.get("analysis") or {}).get("quantiles") or []) for spec in specs]
    reference = (specs[0].get("analysis") or {}) if specs else {}
    candidates = [reference.get("table_quantile"), *(reference.get("quantiles") or [])]
    return next((q for q in candidates if q is not None and all(q in c for c in computed)), None)


def _layer_values(record: dict[str, Any], key: str, layer: int) -> float | None:
    values = record.get(key) or []
    if layer >= len(values):
        return None
    value = values[layer]
    if isinstance(value, list):  # ensemble sizes per class: the mean over the classes analysed
        present = [v for v in value if v is not None]
        return sum(present) / len(present) if present else None
    number: float | None = value
    return number


def _cells(sides: Sequence[Side]) -> list[TableCellComparison]:
    groups = [(m, d) for m in MODELS for d in DATASETS
              if any(r["model"] == m and r["dataset"] == d for side in sides for r in side.records)]
    cells = []
    for table, (_, key, layered) in TABLES.items():
        for model, dataset in groups:
            per_side = [[r for r in side.records if r["model"] == model and r["dataset"] == dataset]
                        for side in sides]
            layers = max((len(r.get(key) or []) for records in per_side for r in records), default=0) if layered \
                else 0
            for layer in (range(layers) if layered else [None]):
                samples = [[r.get(key) if layer is None else _layer_values(r, key, layer) for r in records]
                           for records in per_side]
                differences = []
                for index, sample in enumerate(samples[1:], start=1):
                    d = stats.compare_samples(samples[0], sample)
                    differences.append(CellDifference(
                        side=index, verdict=d.verdict, difference=d.difference, combined_se=d.combined_se,
                        df=None if d.df is None or math.isinf(d.df) else d.df, t=d.t, p=d.p, ci=d.ci, note=d.note))
                cells.append(TableCellComparison(
                    table=table, model=model, dataset=dataset, layer=None if layer is None else layer + 1,
                    estimates=[EstimateOut(**vars(stats.estimate(sample))) for sample in samples],
                    differences=differences))
    return cells


def _identity(record: dict[str, Any]) -> tuple[str, str, int]:
    return record["model"], record["dataset"], record["seed"]


def run_pairs(reference: Side, other: Side) -> list[tuple[str, str]]:
    """The runs whose ensembles are compared: the two single runs, or the runs of
    the same (model, data set, seed) on both sides."""
    if len(reference.records) == 1 and len(other.records) == 1:
        return [(reference.records[0]["run_id"], other.records[0]["run_id"])]
    theirs = {_identity(r): r["run_id"] for r in other.records}
    return [(r["run_id"], theirs[_identity(r)]) for r in reference.records if _identity(r) in theirs]


def compare_sides(sides: Sequence[Side], quantile: float | None = None) -> ExperimentComparison:
    """Sides 1.. against side 0 (see the module docstring).

    Parameters
    ----------
    sides : sequence of Side, 2-8
    quantile : float or None
        The Method 1 quantile of ``Side.ensembles`` (``common_quantile``); None:
        no overlaps.
    """
    if not MIN_SIDES <= len(sides) <= MAX_SIDES:
        raise ValueError(f"compare {MIN_SIDES}-{MAX_SIDES} experiments or runs; got {len(sides)}.")
    fields = stats.spec_differences([side.spec for side in sides])
    cells = _cells(sides)
    overlaps = []
    notes = []
    if quantile is None:
        notes.append("no Method 1 quantile was computed by every side: no ensemble overlaps")
    else:
        for index, side in enumerate(sides[1:], start=1):
            pairs = run_pairs(sides[0], side)
            if not pairs:
                notes.append(f"side {index} ({side.label}) has no run of the same model, data set and seed as "
                             "the reference: no ensemble overlaps")
            for run_a, run_b in pairs:
                for o in stats.ensemble_overlaps(sides[0].ensembles.get(run_a, {}), side.ensembles.get(run_b, {})):
                    overlaps.append(EnsembleOverlap(side=index, run_a=run_a, run_b=run_b, **vars(o)))
    summary: dict[str, int] = {}
    for cell in cells:
        for d in cell.differences:
            summary[d.verdict] = summary.get(d.verdict, 0) + 1
    notes += [f"{side.label}: {side.note}" for side in sides if side.note]
    return ExperimentComparison(
        sides=[ComparedSide(label=s.label, experiment=s.experiment, run_id=s.run_id, name=s.name,
                            runs=len(s.records), runs_total=s.runs_total, note=s.note) for s in sides],
        spec=[SpecFieldOut(field=f.field, values=f.values, differs=f.differs) for f in fields],
        tables=cells, method1_quantile=quantile, overlaps=overlaps, summary=summary, notes=notes)


# --------------------------------------------------------------------------- text


def number(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}"


def estimate_text(e: EstimateOut) -> str:
    if e.mean is None:
        return "-"
    return f"{number(e.mean)} ± {number(e.se, 2)} (n={e.n})" if e.se is not None else f"{number(e.mean)} (n={e.n})"


def difference_text(d: CellDifference) -> str:
    if d.difference is None:
        return "-"
    return f"{number(d.difference)} ± {number(d.combined_se, 2)}" if d.combined_se else number(d.difference)


def welch_text(d: CellDifference) -> str:
    return f"t={number(d.t, 3)} (df {number(d.df, 3)}), p={number(d.p, 2)}" if d.t is not None else ""


def cell_name(cell: TableCellComparison) -> str:
    model = MODELS[cell.model].display_name if cell.model in MODELS else cell.model
    dataset = DATASETS[cell.dataset].display_name if cell.dataset in DATASETS else cell.dataset
    return f"{model} {dataset}" + ("" if cell.layer is None else f" layer {cell.layer}")


def mean_jaccard(comparison: ExperimentComparison) -> list[tuple[int, str, str, int, float, int]]:
    """Per (side, run pair, layer): the mean Jaccard over classes and the classes counted."""
    groups: dict[tuple[int, str, str, int], list[float]] = {}
    for o in comparison.overlaps:
        groups.setdefault((o.side, o.run_a, o.run_b, o.layer), []).append(o.jaccard)
    return [(*key, sum(values) / len(values), len(values)) for key, values in groups.items()]


def to_markdown(comparison: ExperimentComparison) -> str:
    sides = comparison.sides
    lines = ["# Comparison", ""]
    for index, side in enumerate(sides):
        role = "reference" if index == 0 else f"side {index}"
        lines.append(f"- {role}: **{side.label}**, {side.runs} of {side.runs_total} runs"
                     + (f" ({side.note})" if side.note else ""))
    differing = [f for f in comparison.spec if f.differs]
    lines += ["", f"## Spec: {len(differing)} of {len(comparison.spec)} fields differ", ""]
    if differing:
        lines += ["| field | " + " | ".join(s.label for s in sides) + " |", "|---" * (len(sides) + 1) + "|"]
        lines += [f"| {f.field} | " + " | ".join(f"`{v}`" for v in f.values) + " |" for f in differing]
    lines += ["", "## Tables 1-3", "", "Each side's mean ± SE (n runs); the difference from the reference ± its "
              "combined SE, Welch's t with its degrees of freedom and p.", ""]
    for table, (title, _, _) in TABLES.items():
        cells = [c for c in comparison.tables if c.table == table]
        if not cells:
            continue
        lines += [f"**{title}**", "",
                  "| cell | " + " | ".join(s.label for s in sides) + " | "
                  + " | ".join(f"{s.label} − {sides[0].label}" for s in sides[1:]) + " |",
                  "|---" * (1 + len(sides) + len(sides) - 1) + "|"]
        for c in cells:
            diffs = [f"{difference_text(d)}; {welch_text(d) + '; ' if welch_text(d) else ''}{d.verdict}"
                     for d in c.differences]
            lines.append(f"| {cell_name(c)} | " + " | ".join(estimate_text(e) for e in c.estimates) + " | "
                         + " | ".join(diffs) + " |")
        lines.append("")
    lines += [f"## Method 1 ensembles: overlap (Jaccard) at quantile {number(comparison.method1_quantile)}", ""]
    rows = mean_jaccard(comparison)
    if rows:
        lines += ["| side | runs | layer | mean Jaccard over classes | classes |", "|---|---|---|---|---|"]
        lines += [f"| {sides[s].label} | {a} vs {b} | {layer} | {value:.3f} | {n} |"
                  for s, a, b, layer, value, n in rows]
    else:
        lines.append("No paired runs.")
    if comparison.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in comparison.notes]
    return "\n".join(lines) + "\n"


def to_csv(comparison: ExperimentComparison) -> str:
    """One line per table cell and later side: both estimates, the difference and its test."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "model", "dataset", "layer", "reference", "side", "reference_mean", "reference_se",
                     "reference_n", "side_mean", "side_se", "side_n", "difference", "combined_se", "df", "t", "p",
                     "verdict"])
    sides = comparison.sides
    for c in comparison.tables:
        ref = c.estimates[0]
        for d in c.differences:
            e = c.estimates[d.side]
            writer.writerow(["" if v is None else v for v in (
                c.table, c.model, c.dataset, c.layer, sides[0].label, sides[d.side].label, ref.mean, ref.se, ref.n,
                e.mean, e.se, e.n, d.difference, d.combined_se, d.df, d.t, d.p, d.verdict)])
    return buffer.getvalue()


# --------------------------------------------------------------------------- figures


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def figure(name: str, comparison: ExperimentComparison, sides: Sequence[Side]) -> Figure:
    """One of ``FIGURES`` of the comparison: ``loss_curves`` (the runs' losses per
    epoch overlaid, per layer for FF) or ``layer_quantities`` (each side's mean
    Method 1 ensemble size and fraction of positive weights per layer, ± SE)."""
    from fflab import comparison_figures

    if name not in FIGURES:
        raise ValueError(f"figure must be one of {', '.join(FIGURES)}; got {name!r}")
    labels = [side.label for side in sides]
    if name == "loss_curves":
        histories = []
        for side in sides:
            per_model: dict[str, list[list[list[float]]]] = {}
            for record in side.records:
                history = side.losses.get(record["run_id"])
                if history:
                    per_model.setdefault(record["model"], []).append(history)
            histories.append(per_model)
        if not any(histories):
            raise ValueError("no side has a loss history to draw")
        return comparison_figures.loss_curves_overlay(labels, histories)
    groups = list(dict.fromkeys((c.model, c.dataset) for c in comparison.tables if c.layer is not None))
    quantities: dict[str, list[list[tuple[list[float], list[float]]]]] = {}
    for table, label in (("table2", "Method 1 ensemble size (table quantile)"),
                         ("table3", "fraction of positive weights")):
        per_group = []
        for model, dataset in groups:
            cells = sorted((c for c in comparison.tables if c.table == table and c.model == model
                            and c.dataset == dataset), key=lambda c: c.layer or 0)  # per-layer cells
            per_group.append([(
                [_or_nan(c.estimates[s].mean) for c in cells],
                [_or_nan(c.estimates[s].se) for c in cells],
            ) for s in range(len(sides))])
        quantities[label] = per_group
    if not groups:
        raise ValueError("no side has a per-layer value to draw")
    group_names = [cell_name(TableCellComparison(table="", model=m, dataset=d, layer=None, estimates=[],
                                                 differences=[])) for m, d in groups]
    return comparison_figures.layer_quantities_overlay(labels, group_names, quantities)
