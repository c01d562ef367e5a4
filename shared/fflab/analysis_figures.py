"""Figures of the analyses beyond the paper, in the style of ``fflab.figures``:
plain numpy arrays in, a matplotlib ``Figure`` out (object-oriented API only,
safe headless and in threads); write them with ``fflab.figures.save_png``.

Shapes: ``R`` runs (seeds), ``L`` layers, ``C`` classes, ``K`` labels, ``S``
snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from fflab.figures import model_color, model_display_name

__all__ = [
    "dynamics_figure",
    "intrinsic_dimension_figure",
    "layer_accuracy_figure",
    "lesion_figure",
    "selectivity_figure",
]

READOUT_STYLES = {"goodness": "-", "cumulative": "--", "probe": ":"}


def _mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, L) with nan for missing -> mean and standard error per column (0 with one run)."""
    values = np.asarray(values, dtype=float)
    counts = np.sum(np.isfinite(values), axis=0)
    mean = np.nanmean(values, axis=0) if values.size else np.zeros(values.shape[1:])
    std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1])
    se = np.where(counts > 1, std / np.sqrt(np.maximum(counts, 1)), 0.0)
    return mean, np.nan_to_num(se)


def layer_accuracy_figure(series: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Accuracy per layer: ``series[model][readout]`` is (R, L), readout one of
    ``goodness`` (the layer alone), ``cumulative`` (layers up to it) and
    ``probe`` (linear probe); mean ± SE over runs."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for index, (model, readouts) in enumerate(series.items()):
        for readout, values in readouts.items():
            if readout not in READOUT_STYLES:
                raise ValueError(f"readout must be one of {', '.join(READOUT_STYLES)}; got {readout!r}")
            mean, se = _mean_se(values)
            layers = np.arange(1, mean.size + 1)
            ax.errorbar(layers, mean, yerr=se, color=model_color(model, index), linestyle=READOUT_STYLES[readout],
                        marker="o", capsize=3, label=f"{model_display_name(model)} {readout}")
    ax.set_xlabel("Layer")
    ax.set_ylabel("Test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Accuracy per layer (mean ± SE over seeds)")
    ax.legend(fontsize=7, ncol=2)
    return fig


DYNAMICS_QUANTITIES = (
    ("mean_size", "Mean ensemble size"),
    ("mean_jaccard", "Jaccard with final"),
    ("accuracy", "Probe-set accuracy"),
    ("fraction_positive", "Fraction of weights > 0"),
)


def dynamics_figure(per_model: Mapping[str, Mapping[int, Mapping[str, tuple[np.ndarray, np.ndarray]]]],
                    subtitle: str = "") -> Figure:
    """One row per model, one column per quantity (ensemble size, overlap with
    the final ensemble, accuracy, fraction of positive weights) over epochs, one
    line per layer: ``per_model[model][layer][quantity] = (epochs (S,), values (S,))``."""
    models = list(per_model)
    fig = Figure(figsize=(12.0, 2.8 * max(1, len(models))))
    axes = np.atleast_2d(fig.subplots(max(1, len(models)), len(DYNAMICS_QUANTITIES)))
    for row, model in enumerate(models):
        for ax, (quantity, label) in zip(axes[row], DYNAMICS_QUANTITIES):
            for layer, by_quantity in sorted(per_model[model].items()):
                epochs, values = by_quantity[quantity]
                ax.plot(epochs, values, marker="o", label=f"layer {layer}")
            ax.set_xscale("log")
            ax.set_xlabel("Epoch")
            ax.set_ylabel(label, fontsize=8)
            if quantity in ("mean_jaccard", "accuracy", "fraction_positive"):
                ax.set_ylim(0, 1.02)
        axes[row][0].set_title(model_display_name(model), loc="left", fontsize=10)
        axes[row][0].legend(fontsize=7)
    fig.suptitle("Ensemble dynamics during training" + (f" ({subtitle})" if subtitle else ""))
    fig.tight_layout()
    return fig


LESION_KINDS = (("ensemble", "ensemble", "tab:blue"), ("random", "random units", "tab:gray"),
                ("most_active", "most active non-ensemble", "tab:orange"))


def lesion_figure(per_model: Mapping[str, Mapping[str, Mapping[int, Sequence[float]]]]) -> Figure:
    """Accuracy lost on the lesioned class, per layer, mean ± SE over classes
    (and runs): ``per_model[model][kind][layer]`` lists the drops, kind one of
    ``ensemble``, ``random`` (each already a mean over draws), ``most_active``."""
    models = list(per_model)
    fig = Figure(figsize=(4.2 * max(1, len(models)), 3.8))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(models)), sharey=True))
    for ax, model in zip(axes, models):
        layers = sorted(per_model[model]["ensemble"])
        x = np.arange(len(layers))
        for offset, (kind, label, colour) in zip((-0.27, 0.0, 0.27), LESION_KINDS):
            drops = [np.asarray(per_model[model].get(kind, {}).get(layer, []), dtype=float) for layer in layers]
            mean = np.array([d.mean() if d.size else np.nan for d in drops])
            se = np.array([d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else 0.0 for d in drops])
            ax.bar(x + offset, mean, 0.27, yerr=se, capsize=3, color=colour, label=label)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, [f"layer {layer}" for layer in layers])
        ax.set_title(model_display_name(model), fontsize=10)
        ax.set_ylim(-0.2, 1.02)
    axes[0].set_ylabel("Accuracy drop on the lesioned class")
    axes[0].legend(fontsize=7)
    fig.suptitle("Silencing a class's ensemble vs as many other units (mean ± SE over classes)")
    fig.tight_layout()
    return fig


def selectivity_figure(per_model: Mapping[str, Mapping[int, np.ndarray]], class_names: Sequence[str]) -> Figure:
    """Mean activity of class c's ensemble (rows) with label k embedded (columns):
    one row of heat maps per model, one per layer; ``per_model[model][layer]`` is
    (C, K), nan where undefined."""
    models = list(per_model)
    n_layers = max((len(layers) for layers in per_model.values()), default=1)
    fig = Figure(figsize=(3.6 * n_layers, 3.4 * max(1, len(models))))
    axes = np.atleast_2d(fig.subplots(max(1, len(models)), n_layers))
    for row, model in enumerate(models):
        for ax in axes[row]:
            ax.set_axis_off()
        for ax, layer in zip(axes[row], sorted(per_model[model])):
            ax.set_axis_on()
            image = ax.imshow(np.asarray(per_model[model][layer], dtype=float), cmap="viridis", vmin=0)
            ax.set_title(f"{model_display_name(model)}, layer {layer}", fontsize=9)
            ax.set_xlabel("Embedded label", fontsize=8)
            ax.set_ylabel("Class (images, ensemble)", fontsize=8)
            ax.set_xticks(range(len(class_names)), class_names, fontsize=6, rotation=90)
            ax.set_yticks(range(len(class_names)), class_names, fontsize=6)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("Ensemble activity: true label (diagonal) vs wrong labels")
    fig.tight_layout()
    return fig


def intrinsic_dimension_figure(points: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Figure:
    """TwoNN dimension against ensemble size per (run, layer, class):
    ``points[model] = (sizes (P,), dimensions (P,), layers (P,))``; markers by layer."""
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for index, (model, (sizes, dimensions, layers)) in enumerate(points.items()):
        sizes, dimensions, layers = (np.asarray(a, dtype=float) for a in (sizes, dimensions, layers))
        for layer in np.unique(layers[np.isfinite(layers)]).astype(int):
            rows = (layers == layer) & np.isfinite(sizes) & np.isfinite(dimensions)
            ax.scatter(sizes[rows], dimensions[rows], s=14, alpha=0.7, color=model_color(model, index),
                       marker=markers[(layer - 1) % len(markers)],
                       label=f"{model_display_name(model)} layer {layer}")
    ax.set_xlabel("Ensemble size (Method 1, units)")
    ax.set_ylabel("Intrinsic dimension (TwoNN)")
    ax.set_title("Intrinsic dimension vs ensemble size, per layer and class")
    ax.legend(fontsize=6, ncol=3)
    return fig
