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


def dynamics_figure(curves: Mapping[int, Mapping[str, tuple[np.ndarray, np.ndarray]]], title: str = "") -> Figure:
    """One panel per quantity (ensemble size, overlap with the final ensemble,
    accuracy, fraction of positive weights) over epochs, one line per layer:
    ``curves[layer][quantity] = (epochs (S,), values (S,))``."""
    fig = Figure(figsize=(9.0, 6.4))
    axes = fig.subplots(2, 2).ravel()
    for ax, (quantity, label) in zip(axes, DYNAMICS_QUANTITIES):
        for layer, by_quantity in sorted(curves.items()):
            epochs, values = by_quantity[quantity]
            ax.plot(epochs, values, marker="o", label=f"layer {layer}")
        ax.set_xscale("log")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        if quantity in ("mean_jaccard", "accuracy", "fraction_positive"):
            ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Ensemble dynamics during training")
    fig.tight_layout()
    return fig


def lesion_figure(per_layer: Mapping[int, Mapping[str, np.ndarray]], class_names: Sequence[str],
                  title: str = "") -> Figure:
    """Accuracy drop on the lesioned class, per class, one panel per layer:
    ``per_layer[layer]`` holds (C,) arrays ``ensemble``, ``random``, ``random_se``
    and ``most_active`` (nan: not measured)."""
    layers = sorted(per_layer)
    fig = Figure(figsize=(9.0, 2.8 * max(1, len(layers))))
    axes = np.atleast_1d(fig.subplots(max(1, len(layers)), 1))
    x = np.arange(len(class_names))
    for ax, layer in zip(axes, layers):
        values = per_layer[layer]
        ax.bar(x - 0.27, values["ensemble"], 0.27, color="tab:blue", label="ensemble")
        ax.bar(x, values["random"], 0.27, yerr=values["random_se"], capsize=2, color="tab:gray",
               label="random units (mean ± SE)")
        ax.bar(x + 0.27, values["most_active"], 0.27, color="tab:orange", label="most active non-ensemble")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, class_names, fontsize=7)
        ax.set_ylabel(f"Layer {layer}\naccuracy drop")
        ax.set_ylim(-0.2, 1.02)
    axes[0].legend(fontsize=7, ncol=3)
    axes[0].set_title(title or "Silencing a class's units: accuracy lost on that class")
    fig.tight_layout()
    return fig


def selectivity_figure(per_layer: Mapping[int, np.ndarray], class_names: Sequence[str], title: str = "") -> Figure:
    """Mean activity of class c's ensemble (rows) with label k embedded (columns),
    one heat map per layer: ``per_layer[layer]`` is (C, K), nan where undefined."""
    layers = sorted(per_layer)
    fig = Figure(figsize=(4.0 * max(1, len(layers)), 4.0))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(layers))))
    for ax, layer in zip(axes, layers):
        image = ax.imshow(np.asarray(per_layer[layer], dtype=float), cmap="viridis", vmin=0)
        ax.set_title(f"Layer {layer}", fontsize=9)
        ax.set_xlabel("Embedded label")
        ax.set_ylabel("Class of image and ensemble")
        ax.set_xticks(range(len(class_names)), class_names, fontsize=6, rotation=90)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=6)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title or "Ensemble activity: true label (diagonal) vs wrong labels")
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
