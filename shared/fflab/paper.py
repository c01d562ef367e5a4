"""The comparison of an experiment with the paper, cell by cell.

The published values (Tables 1-3 and every number the paper quotes about its
own experiments, with their standard errors) are package data in
``reference/paper_values.json``. ``paper_comparison`` sets an experiment's
run records against them with ``fflab.analysis.compare_estimates`` and lists
every setting where the experiment departs from the paper's protocol, so that
a quick run is never read as a reproduction. A sweep is compared at its first
grid point (``ExperimentSpec.paper_point``), and the comparison's name says so.
"""

from __future__ import annotations

import csv
import io
import json
import math
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from fflab import analysis
from fflab.data import PAPER_DATASETS
from fflab.models import MODELS
from fflab.results import CellComparison, PaperComparison, ProtocolDifference
from fflab.spec import ExperimentSpec, build_spec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Settings the paper does not give: always listed with the experiment's value.
OPEN_CHOICES = {
    "network.threshold": "the goodness threshold theta; the paper gives none",
    "network.normalize_first_layer": "the image normalised before layer 1 (authors' code; the paper is silent) or not",
    "network.first_layer_normalization": "which norm the image is divided by (null: the norm between layers; "
                                         "the authors' code: l2)",
    "network.normalization": "which norm between layers (the authors' NetFF uses l2 whatever its config)",
    "network.label_value": "the label pixel's value: the image's maximum (paper) or the batch's (code)",
    "negative_labels": "one wrong label per image drawn once or every epoch, or a subsample of all "
                       "wrong-label copies (code)",
    "prediction": "goodness summed over layers (paper) or per-layer softmax then summed (code)",
    "unseen_class_negatives": "where the unseen-class runs draw wrong labels from",
    "analysis.method1_threshold": "how Method 1 reads its quantile: np.quantile, or off a histogram of X (the "
                                  "paper: 'compute the histogram of values in X, set a quantile')",
    "analysis.histogram_bins": "the bins of that histogram; the paper gives none",
    "analysis.method2_cut": "how Method 2 cuts its decision diagram where no cut is given: fflab's isolated-cluster "
                            "rule, or one that also takes a saturated cluster at the top (the paper cut by eye)",
}
# Fields that say which runs there are, not how they are run.
NOT_PROTOCOL = {"name", "device", "seeds", "models", "datasets", "unseen_class", "unseen_class_datasets",
                "snapshots"}


def printed_resolution(literal: str) -> float:
    """The unit of the last digit of a number as printed: ``"0.93"`` -> 0.01,
    ``"39.0"`` -> 0.1, ``"287.7"`` -> 0.1, ``"3"`` -> 1."""
    mantissa, _, exponent = literal.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


@lru_cache(maxsize=1)
def published_cells() -> tuple[dict[str, Any], ...]:
    """Every published cell (see reference/paper_values.json), each with the
    ``resolution`` its mean is printed to, read from the file's literal: the file
    writes every mean with the digits the paper prints. A value the paper gives as
    approximate ("about 100", "about 3/8": ``approximate`` true) has no resolution."""
    text = resources.files("fflab").joinpath("reference/paper_values.json").read_text()
    printed = {cell["id"]: str(cell["mean"]) for cell in json.loads(text, parse_float=str)["cells"]}
    return tuple({**cell, "resolution": None if cell.get("approximate") else printed_resolution(printed[cell["id"]])}
                 for cell in json.loads(text)["cells"])


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def protocol_differences(spec: ExperimentSpec, source: str = "") -> list[ProtocolDifference]:
    """Every setting where ``spec`` differs from the ``paper`` preset (the training
    settings of the models it trains only), and the number of seeds where it
    differs from the paper's 15. Which models, data sets and unseen-class runs it
    has are not protocol: cells it has no run for are "not comparable"."""
    paper = build_spec("paper")
    ours_flat, paper_flat = _flatten(spec.model_dump(mode="json")), _flatten(paper.model_dump(mode="json"))

    def applies(field: str) -> bool:
        section = field.split(".")[0]
        if section in NOT_PROTOCOL:
            return False
        return section not in MODELS or section in spec.models  # a model's training section

    differences = [
        ProtocolDifference(field=field, paper=paper_flat.get(field), experiment=value, source=source)
        for field, value in ours_flat.items()
        if applies(field) and paper_flat.get(field) != value
    ]
    if len(spec.seeds) != len(paper.seeds):
        differences.append(ProtocolDifference(
            field="seeds (runs per configuration)", paper=len(paper.seeds),
            experiment=len(spec.seeds), source=source))
    return differences


def _estimate(values: list[float]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    mean, se = analysis.mean_and_standard_error(values)
    return mean, (None if math.isnan(se) else se), len(values)


def _mean_size(sizes: list[int | None]) -> float | None:
    present = [s for s in sizes if s is not None]
    return float(np.mean(present)) if present else None


def learned(record: dict[str, Any]) -> bool:
    """Whether a run's test accuracy is above chance beyond noise
    (``fflab.analysis.above_chance`` on its balanced accuracy, the mean of its
    per-class accuracies, where the record has them)."""
    per_class = [a for a in record.get("per_class_accuracy") or [] if a is not None]
    accuracy = float(np.mean(per_class)) if per_class else record["accuracy"]
    n_classes = len(record.get("per_class_accuracy") or []) or 10
    above: bool = analysis.above_chance(accuracy, int(record.get("n_test") or DEFAULT_TEST_IMAGES), max(n_classes, 2))
    return above


# Test images of MNIST and Fashion-MNIST: a record without n_test (older results) is taken to have these.
DEFAULT_TEST_IMAGES = 10000
# Published quantities read per layer from a run record: quantity -> the record's key.
LAYER_QUANTITIES = {
    "fraction_positive_weights": "fraction_positive_weights",
    "units_all_negative_incoming": "units_all_negative_incoming",
    "fraction_units_three_quarters_negative_incoming": "fraction_units_three_quarters_negative_incoming",
    "unseen_ensemble_size": "unseen_ensemble_size_method2",
}
# Quantities of the runs trained without a class (the unseen class, Section 4.4).
UNSEEN_QUANTITIES = {"unseen_activity", "unseen_ensemble_size"}
# Quantities that describe what a network learned: not judged on runs at chance level.
JUDGED_ON_LEARNED_RUNS = {"ensemble_size", "mean_shared_units", "unseen_activity", *LAYER_QUANTITIES}


def _our_estimate(
    cell: dict[str, Any], spec: ExperimentSpec, records: list[dict[str, Any]], method_comparison: dict[str, Any] | None
) -> tuple[float | None, float | None, int, str]:
    """This experiment's (mean, se, n, note) for a published cell; n is -1 where
    every run behind it is at chance level."""
    quantity: str = cell["quantity"]
    layer: Any = cell.get("layer")  # an int (from 1) for the per-layer quantities
    if quantity.startswith("method_fit"):
        if not method_comparison or method_comparison.get("slope") is None:
            return None, None, 0, "no Method 1 vs Method 2 fit"
        if (method_comparison["quantile"], method_comparison["epsilon"]) != (cell["quantile"], cell["epsilon"]):
            return None, None, 0, f"the fit uses quantile {method_comparison['quantile']}, epsilon " \
                f"{method_comparison['epsilon']}; the paper's {cell['quantile']}, {cell['epsilon']}"
        key = "slope" if quantity == "method_fit_slope" else "intercept"
        both = method_comparison.get("both_found") or {}
        note = (f"pooled fit over {method_comparison['n_points']} ensembles; where both methods find "
                f"one ({both.get('n_points', 0)}): {both[key]:.2f}" if both else "pooled fit")
        by_rule = method_comparison.get("by_cut_rule") or {}
        rules = [f"{rule}: {fit[key]:.2f}" for rule, fit in by_rule.items() if fit.get(key) is not None]
        if rules:
            note += "; by Method 2's cut rule, " + ", ".join(rules)
        return method_comparison[key], None, 1, note
    unseen = quantity in UNSEEN_QUANTITIES
    group = [
        r for r in records
        if r["dataset"] == cell["dataset"] and r["model"] == cell["model"]
        and ((r["unseen_class"] == 0) if unseen else (r["unseen_class"] is None))
    ]
    note = ""
    if quantity in JUDGED_ON_LEARNED_RUNS:
        chance = [r for r in group if not learned(r)]
        if chance and len(chance) == len(group):
            return None, None, -1, f"every run ({len(group)}) is at chance level: did not learn"
        if chance:
            group = [r for r in group if learned(r)]
            note = f"{len(chance)} run(s) at chance level left out: {', '.join(r['run_id'] for r in chance)}"
    if quantity == "accuracy":
        values = [r["accuracy"] for r in group]
    elif quantity == "ensemble_size":
        if spec.analysis.table_quantile != cell["quantile"]:
            return None, None, 0, f"table quantile {spec.analysis.table_quantile}, the paper's {cell['quantile']}"
        values = [_mean_size(r["ensemble_sizes_method1"][layer - 1]) for r in group
                  if len(r["ensemble_sizes_method1"]) >= layer]
    elif quantity in LAYER_QUANTITIES:
        key = LAYER_QUANTITIES[quantity]
        values = [r[key][layer - 1] for r in group if len(r.get(key) or []) >= layer]
        if unseen and not group:
            note = "no run trained without class 0 on this data set"
    elif quantity == "mean_shared_units":
        if spec.analysis.figure_quantile != cell["quantile"]:
            return None, None, 0, f"figure quantile {spec.analysis.figure_quantile}, the paper's {cell['quantile']}"
        values = [r.get("mean_shared_units", [None] * layer)[layer - 1] for r in group
                  if len(r.get("mean_shared_units", [])) >= layer]
        note = "; ".join(part for part in (note, "mean over every pair of classes",
                                           _pair_note(group, layer, cell.get("similar_classes", []))) if part)
    elif unseen:
        values = [r["unseen_activity"][layer - 1][cell["which"]] for r in group
                  if len(r.get("unseen_activity", [])) >= layer]
        if not group:
            note = "no run trained without class 0 on this data set"
    else:
        raise ValueError(f"unknown published quantity {quantity!r}")
    mean, se, n = _estimate(values)
    return mean, se, n, note


def _pair_note(records: list[dict[str, Any]], layer: int, similar: list[int]) -> str:
    """The per-pair counts behind a shared-units cell, in words: the range over
    pairs, and the mean over the pairs of ``similar`` classes (over runs)."""
    pairs = [pair for r in records for layer_pairs in (r.get("shared_units_pairs") or [])[layer - 1:layer]
             for pair in layer_pairs]
    if not pairs:
        return ""
    counts = [count for _, _, count in pairs]
    note = f"per pair of classes {min(counts)}-{max(counts)}"
    within = [count for a, b, count in pairs if a in similar and b in similar]
    if within:
        note += f"; mean over the pairs of classes {', '.join(map(str, similar))}: {np.mean(within):.2f}"
    return note


def compare_cell(cell: dict[str, Any], mean: float | None, se: float | None, n: int, note: str = "") -> CellComparison:
    """One published cell (an entry of ``published_cells()``) against an estimate
    (mean, SE, runs; ``n == -1``: every run at chance level)."""
    if n == -1:
        verdict = analysis.Verdict("did not learn")
        n = 0
    else:
        verdict = analysis.compare_estimates(cell["mean"], cell["se"], cell["n"], mean, se, n,
                                             paper_resolution=cell["resolution"])
    notes = "; ".join(part for part in (note, verdict.note, cell.get("note", "")) if part)
    return CellComparison(
        id=cell["id"], source=cell["source"], quantity=cell["quantity"], model=cell["model"],
        dataset=cell["dataset"], layer=cell["layer"], paper_mean=cell["mean"], paper_se=cell["se"],
        paper_n=cell["n"], paper_resolution=cell["resolution"], mean=mean, se=se, n=n,
        difference=verdict.difference, combined_se=verdict.combined_se,
        df=None if verdict.df is None or math.isinf(verdict.df) else verdict.df, t=verdict.t, p=verdict.p,
        ci_low=None if verdict.ci is None else verdict.ci[0], ci_high=None if verdict.ci is None else verdict.ci[1],
        relative_gap=verdict.relative_gap, within_rounding=verdict.within_rounding, verdict=verdict.verdict,
        note=notes,
    )


def sweep_note(spec: ExperimentSpec) -> str:
    """`` (sweep point 0: network.threshold=0.1)`` for a sweep, else ``""``."""
    point = spec.paper_point()
    if point is None:
        return ""
    values = ", ".join(f"{field}={json.dumps(value)}" for field, value in spec.points()[point].values.items())
    return f" (sweep point {point}: {values})"


def paper_comparison(
    spec: ExperimentSpec,
    records: list[dict[str, Any]],
    method_comparison: dict[str, Any] | None,
    experiment: str,
    protocol: list[ProtocolDifference] | None = None,
) -> PaperComparison:
    """Every published cell against this experiment's estimate.

    Parameters
    ----------
    spec : the experiment's spec (its analysis settings decide what is comparable)
    records : the run records (``results.json``'s ``runs``)
    method_comparison : ``results.json``'s ``method_comparison`` (or None)
    experiment : a name for the experiment (folder or id)
    protocol : the differences from the paper's protocol; default: from ``spec``

    With a sweep, the records of its first grid point are compared, with that
    point's settings (records carry ``point``). The paper has numbers for MNIST and
    Fashion-MNIST only (``fflab.data.PAPER_DATASETS``): runs on other data sets are
    never compared with them (their cells stay "not comparable"), and
    ``method_comparison`` must be the fit over runs on those two.
    """
    records = [r for r in records if r["dataset"] in PAPER_DATASETS]
    if spec.sweep:
        point = spec.paper_point()
        records = [r for r in records if r.get("point") == point]
        experiment += sweep_note(spec)
        spec = spec.at(point)
    cells = [compare_cell(cell, *_our_estimate(cell, spec, records, method_comparison))
             for cell in published_cells()]
    protocol = protocol_differences(spec) if protocol is None else protocol
    flat = _flatten(spec.model_dump(mode="json"))
    counts = {v: sum(c.verdict == v for c in cells) for v in analysis.VERDICTS}
    return PaperComparison(
        experiment=experiment,
        reproduction=not protocol,
        protocol=protocol,
        open_choices={field: flat[field] for field in OPEN_CHOICES},
        cells=cells,
        summary=counts,
    )


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def to_markdown(comparison: PaperComparison) -> str:
    """The comparison as a markdown report: what it is, protocol, then every cell."""
    lines = [f"# Comparison with the paper: {comparison.experiment}", ""]
    summary = comparison.summary
    if comparison.reproduction:
        lines.append("This experiment follows the paper's protocol (the `paper` preset).")
    else:
        lines.append(
            f"**Not a reproduction**: this experiment departs from the paper's protocol in "
            f"{len(comparison.protocol)} settings (below), so a difference may come from them."
        )
    lines += [
        "",
        "Cells: " + ", ".join(f"{summary.get(verdict, 0)} {verdict}" for verdict in analysis.VERDICTS) + ".",
        "",
        "A cell with a published error is tested: Student's t of the difference, the run-to-run variance "
        "pooled over the paper's runs and this experiment's, the paper's rounding as a further component "
        "(Welch-Satterthwaite degrees of freedom); it differs when p < 0.05. A cell the paper prints "
        "without an error is descriptive: the gap, relative, and whether this experiment's mean lies "
        "inside the interval the printed digits stand for. " + " ".join(
            f"*{verdict}*: {meaning}." for verdict, meaning in analysis.VERDICTS.items()),
        "",
        "## Protocol: where this experiment differs from the paper",
        "",
    ]
    if comparison.protocol:
        lines += ["| setting | paper | this experiment | source |", "|---|---|---|---|"]
        lines += [f"| {d.field} | {json.dumps(d.paper)} | {json.dumps(d.experiment)} | {d.source or '-'} |"
                  for d in comparison.protocol]
    else:
        lines.append("None.")
    lines += ["", "## Choices the paper leaves open, as set here", "",
              "| setting | value | what it is |", "|---|---|---|"]
    lines += [f"| {field} | {json.dumps(value)} | {OPEN_CHOICES[field]} |"
              for field, value in comparison.open_choices.items()]
    lines += ["", "## Cells", "",
              "| cell | source | paper (n) | this experiment (n) | difference [95% CI] | t (df), p | verdict | note |",
              "|---|---|---|---|---|---|---|---|"]
    for c in comparison.cells:
        lines.append(f"| {c.id} | {c.source} | {_paper_value(c)} | {_our_value(c)} | {_difference(c)} | "
                     f"{_test(c)} | {c.verdict} | {c.note} |")
    return "\n".join(lines) + "\n"


def _paper_value(c: CellComparison) -> str:
    runs = "n not stated" if c.paper_n is None else f"n {c.paper_n}"
    return _number(c.paper_mean) + ("" if c.paper_se is None else f" ± {_number(c.paper_se, 2)}") + f" ({runs})"


def _our_value(c: CellComparison) -> str:
    if c.mean is None:
        return "-"
    return _number(c.mean) + ("" if c.se is None else f" ± {_number(c.se, 2)}") + f" (n {c.n})"


def _difference(c: CellComparison) -> str:
    if c.difference is None:
        return "-"
    text = f"{c.difference:+.3g}"
    if c.ci_low is not None:
        text += f" [{c.ci_low:+.3g}, {c.ci_high:+.3g}]"
    if c.relative_gap is not None:
        text += f" ({c.relative_gap:+.0%})"
    if c.within_rounding is not None and c.verdict == "descriptive":
        text += ", inside the printed rounding" if c.within_rounding else ", outside the printed rounding"
    return text


def _test(c: CellComparison) -> str:
    if c.t is None:
        return "-"
    df = "inf" if c.df is None else f"{c.df:.1f}"
    return f"{c.t:+.2f} ({df}), p {c.p:.2g}"


CSV_COLUMNS = ("id", "source", "quantity", "model", "dataset", "layer", "paper_mean", "paper_se",
               "paper_n", "paper_resolution", "mean", "se", "n", "difference", "combined_se", "df", "t", "p",
               "ci_low", "ci_high", "relative_gap", "within_rounding", "verdict", "note")


def to_csv(comparison: PaperComparison) -> str:
    """One line per cell (``CSV_COLUMNS``); missing values are empty fields."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for cell in comparison.cells:
        row = cell.model_dump()
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def comparison_figure(comparison: PaperComparison) -> Figure:
    """Figure ``paper_comparison`` (.png, .svg): each comparable cell, the paper's and this experiment's."""
    from fflab import figures

    cells = [c for c in comparison.cells if c.mean is not None]
    return figures.paper_comparison_figure(
        labels=[c.id for c in cells],
        quantities=[c.quantity for c in cells],
        paper=[(c.paper_mean, c.paper_se) for c in cells],
        ours=[(c.mean, c.se) for c in cells if c.mean is not None],  # every one of them
        verdicts=[c.verdict for c in cells],
        title=comparison.experiment + ("" if comparison.reproduction else " (not the paper's protocol)"),
        runs=[c.n for c in cells],
    )
