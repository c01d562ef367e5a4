"""The paper's figures of an experiment: one recipe per figure, in ``RECIPES``.

A recipe takes the ``FigureContext`` (the spec, the results folder, the runs'
summary records and the Method 1 vs Method 2 comparison) and returns the
figures it draws, by file name (without ``.png``); it returns nothing when the
experiment lacks what the figure needs. Which run a figure shows follows the
paper: FF on MNIST (first seed) where trained, Fashion-MNIST for Figures 3 and 4.
With a sweep, the context holds its first grid point (``point``): the spec at
that point, its records, and run keys without a point are read at it; every
figure's caption names the point and its values (``sweep_note``).

Each figure's title names what it shows (model, data set, layer, Method 1
quantile where they apply) and its caption which run it is drawn from
(``FigureContext.one_run``: "one run (seed 0): no error bars") or how many.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fflab import analysis, figures
from fflab.data import DATASETS, n_classes
from fflab.models.components import ACTIVATIONS
from fflab.pipeline.folders import analysed_rows, load_representations, run_dir_of
from fflab.results import MethodComparison, RunMetrics, RunWeightStats, read_document
from fflab.spec import AnalysisSpec, ExperimentSpec, RunKey


def comparison_quantile(settings: AnalysisSpec) -> float:
    """Figure 8 uses quantile 0.99 in the paper; the largest computed one otherwise."""
    return 0.99 if 0.99 in settings.quantiles else max(settings.quantiles)


def pick_dataset(spec: ExperimentSpec, preferred: str) -> str:
    return preferred if preferred in spec.datasets else spec.datasets[0]


@dataclass
class FigureContext:
    spec: ExperimentSpec
    experiment_dir: Path
    records: list[dict[str, Any]]
    comparison: MethodComparison | None = None
    sizes: tuple[np.ndarray, np.ndarray] | None = None  # Method 1, Method 2 sizes of Figure 8B
    point: int | None = None  # the sweep's grid point the figures show
    sweep_note: str = ""  # "sweep point 0: network.threshold=0.1" with a sweep; "partial: 1 of 2 runs"
    partial: bool = False  # some runs are missing: a figure that needs one is not drawn
    _stored: dict[str, dict[str, Any]] = field(default_factory=dict)

    def names(self, model: str, dataset: str) -> str:
        """``"FF, MNIST"``: a model and a data set as a title names them."""
        return f"{figures.model_display_name(model)}, {DATASETS[dataset].display_name}"

    def one_run(self, images: int | None = None) -> str:
        """The caption of a figure drawn from the first seed's run alone."""
        counted = "" if images is None else f", n={images} images"
        return f"one run (seed {self.seed}{counted}): no error bars" + (
            f"; {self.sweep_note}" if self.sweep_note else "")

    @property
    def seed(self) -> int:
        return self.spec.seeds[0]

    @property
    def main_model(self) -> str:
        return "ff" if "ff" in self.spec.models else self.spec.models[0]

    @property
    def main_dataset(self) -> str:
        return pick_dataset(self.spec, "mnist")

    @property
    def main_key(self) -> RunKey:
        return RunKey(self.main_model, self.main_dataset, self.seed)

    @property
    def shared_dataset(self) -> str:
        """Figures 3 and 4: Fashion-MNIST where available (paper)."""
        return pick_dataset(self.spec, "fashion_mnist")

    @cached_property
    def upper_bound(self) -> float | None:
        return ACTIVATIONS.lookup(self.spec.network.activation).upper_bound

    def run_dir(self, key: RunKey) -> Path:
        """The folder of a run (given without its grid point) at the figures' point."""
        return run_dir_of(self.experiment_dir, replace(key, point=self.point))

    def stored(self, key: RunKey) -> dict[str, np.ndarray]:
        if key.run_id not in self._stored:
            self._stored[key.run_id] = load_representations(self.run_dir(key))
        return self._stored[key.run_id]

    def layer_view(self, key: RunKey, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """The analysed images' (N, width) layer outputs and (N,) labels of a run."""
        stored = self.stored(key)
        keep = analysed_rows(stored, key.unseen_class, self.spec.analysis.correct_only)
        return stored[f"layer{layer}"][keep], stored["labels"][keep]


Recipe = Callable[[FigureContext], dict[str, Figure]]


def figure1(ctx: FigureContext) -> dict[str, Figure]:
    """Activation patterns of one image (A), class means with ensembles (B), layer-1 map (C)."""
    settings, names = ctx.spec.analysis, figures.class_names(ctx.main_dataset)
    stored = ctx.stored(ctx.main_key)
    X1, labels1 = ctx.layer_view(ctx.main_key, 1)
    first = int(np.flatnonzero(stored["correct"])[0]) if stored["correct"].any() else 0
    patterns = [stored[f"layer{layer}"][first] for layer in range(1, ctx.spec.network.layers + 1)]
    ensembles = analysis.class_ensembles(
        X1, labels1, "method1", classes=range(n_classes(ctx.main_dataset)), quantile=settings.figure_quantile,
        **settings.method1_options(),
    )
    who = ctx.names(ctx.main_model, ctx.main_dataset)
    label = int(stored["labels"][first]) if "labels" in stored else None
    image = "" if label is None else f" (class {names[label]})"
    return {
        "figure1a": figures.figure1a_activation_patterns(
            patterns, title=f"{who}: activation patterns for one input{image}, every layer",
            note=f"image {first} of the test set; {ctx.one_run()}"),
        "figure1b": figures.figure1b_class_mean_activations(
            X1, labels1, ensembles, names,
            title=f"{who}, layer 1: mean activation per unit by class, "
                  f"Method 1 ensembles (quantile {settings.figure_quantile:g})",
            note=ctx.one_run(len(labels1))),
        "figure1c": figures.activation_map(
            X1, labels1, names, layer=1, title=f"{who}, layer 1: activation map", note=ctx.one_run()),
    }


def figures5_and_6(ctx: FigureContext) -> dict[str, Figure]:
    """Figure 1C's map for layers 2 and 3."""
    names = figures.class_names(ctx.main_dataset)
    drawn = {}
    for layer, name in ((2, "figure5"), (3, "figure6")):
        if layer <= ctx.spec.network.layers:
            X, labels = ctx.layer_view(ctx.main_key, layer)
            drawn[name] = figures.activation_map(
                X, labels, names, layer=layer,
                title=f"{ctx.names(ctx.main_model, ctx.main_dataset)}, layer {layer}: activation map",
                note=ctx.one_run())
    return drawn


def figure2(ctx: FigureContext) -> dict[str, Figure]:
    """Ensemble sizes per class and model, over seeds; layer 1 (the paper's), then
    the deeper layers. A class with no analysed image is missing (nan)."""
    settings, names = ctx.spec.analysis, figures.class_names(ctx.main_dataset)
    drawn = {}
    for layer in range(1, ctx.spec.network.layers + 1):
        sizes = {
            model: np.array(
                [[np.nan if v is None else v for v in r["ensemble_sizes_method1"][layer - 1]]
                 for r in ctx.records
                 if r["model"] == model and r["dataset"] == ctx.main_dataset and r["unseen_class"] is None],
                dtype=float,
            )
            for model in ctx.spec.models
        }
        if ctx.partial:  # a model none of whose runs succeeded has no bars
            sizes = {model: values for model, values in sizes.items() if len(values)}
        drawn["figure2" if layer == 1 else f"figure2_layer{layer}"] = figures.figure2_ensemble_sizes(
            sizes, names,
            title=f"{DATASETS[ctx.main_dataset].display_name}, layer {layer}: ensemble size per class and model "
                  f"(Method 1, quantile {settings.table_quantile:g})",
            note=ctx.sweep_note or None,
        )
    return drawn


def figure3(ctx: FigureContext) -> dict[str, Figure]:
    """Units shared between classes: the most overlapping pair (A), the matrix (B)."""
    names = figures.class_names(ctx.shared_dataset)
    X, labels = ctx.layer_view(RunKey(ctx.main_model, ctx.shared_dataset, ctx.seed), 1)
    ensembles = analysis.class_ensembles(
        X, labels, "method1", classes=range(n_classes(ctx.shared_dataset)), quantile=ctx.spec.analysis.figure_quantile,
        **ctx.spec.analysis.method1_options(),
    )
    matrix = analysis.shared_units_matrix(ensembles, range(n_classes(ctx.shared_dataset)))
    off_diagonal = matrix - np.diag(np.diag(matrix))
    a, b = np.unravel_index(np.argmax(off_diagonal), matrix.shape)
    who = f"{ctx.names(ctx.main_model, ctx.shared_dataset)}, layer 1"
    quantile = f"Method 1 ensembles at quantile {ctx.spec.analysis.figure_quantile:g}"
    return {
        "figure3a": figures.figure3a_shared_units(
            ensembles[a], ensembles[b], ctx.spec.network.width, names[a], names[b],
            title=f"{who}: active units of {names[a]} and {names[b]} "
                  f"({int(matrix[a, b])} shared, circled)",
            note=f"{quantile}; the pair of classes sharing the most units; {ctx.one_run(len(labels))}"),
        "figure3b": figures.figure3b_shared_units_matrix(
            matrix, names, title=f"{who}: units shared between ensembles",
            note=f"{quantile}; {ctx.one_run(len(labels))}"),
    }


def figure4(ctx: FigureContext) -> dict[str, Figure]:
    """The unseen class, Method 2: its activations (A), mean activity (B), decision diagram (C)."""
    spec, settings = ctx.spec, ctx.spec.analysis
    without_a_class = spec.models_without_a_class()
    if spec.unseen_class is None or not without_a_class:
        return {}
    X, labels = ctx.layer_view(RunKey(without_a_class[0], ctx.shared_dataset, ctx.seed, spec.unseen_class), 1)
    unseen_rows = X[labels == spec.unseen_class]
    result = analysis.method2_ensemble(unseen_rows, upper_bound=ctx.upper_bound, **settings.method2_options())
    class_name = figures.class_names(ctx.shared_dataset)[spec.unseen_class]
    who = (f"{ctx.names(without_a_class[0], ctx.shared_dataset)} trained without {class_name}, layer 1")
    note = f"Method 2 ({settings.method2_cut} cut); {ctx.one_run(len(unseen_rows))}"
    return {
        "figure4a": figures.figure4a_unseen_activations(
            unseen_rows, class_name, title=f"{who}: activations of the unseen class", note=ctx.one_run()),
        "figure4b": figures.figure4b_mean_activity(
            result.mean_activity, result.units, class_name,
            title=f"{who}: mean activity of the unseen class", note=note),
        "figure4c": figures.figure4c_decision_diagram(
            result.rho, result.n_higher, result.units, result.rho_cut, result.nh_cut,
            title=f"{who}: Method 2 decision diagram", note=note),
    }


def figure7(ctx: FigureContext) -> dict[str, Figure]:
    """Per-unit fraction of negative incoming weights in layer 2, per model."""
    weight_layer = min(2, ctx.spec.network.layers)
    fractions = {}
    for model in ctx.spec.models:
        if ctx.partial and not (ctx.run_dir(RunKey(model, ctx.main_dataset, ctx.seed)) / "weight_stats.json").is_file():
            continue
        stats = read_document(
            RunWeightStats,
            ctx.run_dir(RunKey(model, ctx.main_dataset, ctx.seed)) / "weight_stats.json",
        )
        fractions[model] = np.array(stats.layers[weight_layer - 1].fraction_negative_incoming)
    if not fractions:
        return {}
    return {"figure7": figures.figure7_negative_weight_fraction(
        fractions, layer=weight_layer,
        title=f"{DATASETS[ctx.main_dataset].display_name}, layer {weight_layer}: "
              "fraction of negative incoming weights per unit",
        note=ctx.one_run())}


def figure8a(ctx: FigureContext) -> dict[str, Figure]:
    """Methods 1 and 2 on the first class where they disagree (else class 0), layer 1."""
    settings = ctx.spec.analysis
    X1, labels1 = ctx.layer_view(ctx.main_key, 1)
    quantile = comparison_quantile(settings)
    comparison = None
    for c in range(n_classes(ctx.main_dataset)):
        rows = X1[labels1 == c]
        m1 = analysis.method1_ensemble(rows, quantile, **settings.method1_options()).units
        m2 = analysis.method2_ensemble(rows, upper_bound=ctx.upper_bound, **settings.method2_options())
        differs = not np.array_equal(m1, m2.units)
        if comparison is None or differs:
            comparison = (c, m1, m2)
        if differs:
            break
    assert comparison is not None  # set for the first class
    chosen, m1, m2 = comparison
    names = figures.class_names(ctx.main_dataset)
    images = int(np.sum(labels1 == chosen))
    return {"figure8a": figures.figure8a_method_comparison(
        m2.mean_activity, m1, m2.units, names[chosen],
        title=f"{ctx.names(ctx.main_model, ctx.main_dataset)}, layer 1, class {names[chosen]}: "
              f"Method 1 (quantile {quantile:g}) vs Method 2",
        note=f"mean over the class's n={images} images; {ctx.one_run()}")}


def figure8b(ctx: FigureContext) -> dict[str, Figure]:
    """Method 2 against Method 1 sizes over every run, layer and class, with the fits
    (Method 2 by ``analysis.method2_cut``; the other cut rules' pooled fits as lines)."""
    comparison = ctx.comparison
    if comparison is None or comparison.slope is None or comparison.intercept is None or ctx.sizes is None:
        return {}
    both = comparison.both_found
    others = {rule: (fit.slope, fit.intercept) for rule, fit in comparison.by_cut_rule.items()
              if rule != ctx.spec.analysis.method2_cut and fit.slope is not None and fit.intercept is not None}
    return {"figure8b": figures.figure8b_method_sizes(
        ctx.sizes[0], ctx.sizes[1], comparison.slope, comparison.intercept,
        None if both is None else (both.slope, both.intercept), others,
        title=f"Method 1 (quantile {comparison_quantile(ctx.spec.analysis):g}) vs Method 2 "
              f"({ctx.spec.analysis.method2_cut} cut) ensemble sizes, every layer",
        note=f"points from the {len(ctx.records)} runs' analysed classes"
             + (f"; {ctx.sweep_note}" if ctx.sweep_note else ""),
    )}


def training_curves(ctx: FigureContext) -> dict[str, Figure]:
    """Not in the paper: the loss per epoch of every seed's run on the main data set,
    a panel per model (per layer for FF)."""
    histories = {
        model: [read_document(RunMetrics, ctx.run_dir(RunKey(model, ctx.main_dataset, seed))
                              / "metrics.json").loss_history for seed in ctx.spec.seeds
                if not ctx.partial or (ctx.run_dir(RunKey(model, ctx.main_dataset, seed)) / "metrics.json").is_file()]
        for model in ctx.spec.models
    }
    histories = {model: runs for model, runs in histories.items() if runs}
    if not histories:
        return {}
    return {"training_curves": figures.training_curves(
        histories, title=f"{DATASETS[ctx.main_dataset].display_name}: training loss per epoch",
        note=ctx.sweep_note or None)}


RECIPES: list[Recipe] = [figure1, figures5_and_6, figure2, figure3, figure4, figure7, figure8a, figure8b,
                         training_curves]


def write_paper_figures(ctx: FigureContext) -> list[str]:
    """Draw every recipe's figures into ``figures/`` as PNG and SVG; return the file names."""
    written = []
    for recipe in RECIPES:
        try:
            drawn = recipe(ctx)
        except FileNotFoundError:
            if not ctx.partial:
                raise
            continue  # partial results: the run this figure shows did not succeed
        for name, figure in drawn.items():
            written += [path.name for path in figures.save_figure(figure, ctx.experiment_dir / "figures" / name)]
    return written
