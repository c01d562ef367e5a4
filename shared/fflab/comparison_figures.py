"""Figures of a comparison of experiments or runs (``fflab.comparison``), in the
style of ``fflab.figures``: plain numbers in, a matplotlib ``Figure`` out (the
object-oriented API only, safe headless and in threads), drawn under fflab's
style (``fflab.figures.styled``) with its panel letters, captions and legends;
write them with ``fflab.figures.save_figure``. Each side has one colour (tab10, in order; the
reference first) and keeps it in every panel.

Shapes: ``S`` sides, ``R`` runs of a side, ``L`` layers, ``E`` epochs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from fflab.figures import (
    caption,
    integer_ticks,
    legend,
    model_display_name,
    note_if_empty,
    panel_letters,
    styled,
)

__all__ = ["side_color", "loss_curves_overlay", "layer_quantities_overlay"]


def side_color(index: int) -> tuple[float, float, float, float]:
    """The colour of side ``index`` (tab10), as RGBA."""
    return colormaps["tab10"](index % 10)


def _figure(n_panels: int, columns: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    columns = max(1, min(columns, n_panels))
    rows = -(-n_panels // columns)
    fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(rows, columns, squeeze=False).ravel()))
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, axes


@styled
def loss_curves_overlay(
    labels: Sequence[str],
    histories: Sequence[Mapping[str, Sequence[Sequence[Sequence[float]]]]],
    title: str | None = "Training loss per epoch",
) -> Figure:
    """The sides' loss curves overlaid: one panel per model and series (per layer
    for FF, whose layers train one after the other), one colour per side.

    Parameters
    ----------
    labels : sequence of S str
        The sides' names (legend).
    histories : sequence of S mappings model -> runs -> series -> losses
        Per side and model, each run's ``loss_history`` (metrics.json): R runs of
        one series per layer (FF) or a single series; E may differ between runs.
    title : str or None

    Returns
    -------
    Figure
        Epochs on x (from 1, integer ticks), loss on y; each run a thin line in
        its side's colour; panels lettered, one legend entry per side drawn, the
        caption gives each side's runs (no averaging, no error bars).
    """
    if len(labels) != len(histories) or not labels:
        raise ValueError(f"labels and histories: expected the same number (>= 1) of sides; got "
                         f"{len(labels)} and {len(histories)}")
    panels: list[tuple[str, int, int]] = []  # model, series, number of series
    for model in dict.fromkeys(m for side in histories for m in side):
        series = max((len(run) for side in histories for run in side.get(model, [])), default=0)
        panels += [(model, s, series) for s in range(series)]
    if not panels:
        raise ValueError("histories: expected at least one run with a loss")
    fig, axes = _figure(len(panels), 3, 3.6, 2.9)
    for ax, (model, series, count) in zip(axes, panels):
        for index, (label, side) in enumerate(zip(labels, histories)):
            for run_number, run in enumerate(side.get(model, [])):
                if series >= len(run) or not len(run[series]):
                    continue
                losses = np.asarray(run[series], dtype=float)
                if losses.ndim != 1:
                    raise ValueError(f"histories[{index}][{model!r}][{run_number}][{series}]: expected a 1-D "
                                     f"series, got shape {losses.shape}")
                ax.plot(np.arange(1, losses.size + 1), losses, color=side_color(index), lw=1.1, alpha=0.8,
                        marker="o" if losses.size == 1 else None, markersize=3,
                        label=label if run_number == 0 else None)
        name = model_display_name(model)
        ax.set_title(name if count == 1 else f"{name} layer {series + 1}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        integer_ticks(ax.xaxis)
        note_if_empty(ax, "no side has a run of this model with this series")
    legend(fig, source=axes[: len(panels)], fontsize=7, loc="outside right upper")
    panel_letters(axes[: len(panels)])
    runs = ", ".join(f"{label} n={max((len(side.get(m, [])) for m in side), default=0)}"
                     for label, side in zip(labels, histories))
    caption(fig, f"each line one run ({runs} runs per model at most): no averaging, no error bars")
    if title:
        fig.suptitle(title)
    return fig


@styled
def layer_quantities_overlay(
    labels: Sequence[str],
    groups: Sequence[str],
    quantities: Mapping[str, Sequence[Sequence[tuple[ArrayLike, ArrayLike]]]],
    title: str | None = "Per layer: mean ± SE over runs",
) -> Figure:
    """Per-layer quantities of the sides overlaid, one panel per quantity and group.

    Parameters
    ----------
    labels : sequence of S str
    groups : sequence of G str
        The panels' columns (e.g. "FF MNIST").
    quantities : mapping name -> G groups -> S sides -> (mean, se)
        Each ``mean`` and ``se`` of shape (L,) (nan: no value; an se of nan: no bar);
        a name is the panel's y label (e.g. "Method 1 ensemble size").
    title : str or None

    Returns
    -------
    Figure
        One row per quantity, one column per group (lettered); layers on x
        (from 1); a panel where no side has a value says so; the caption says
        what the error bars are.
    """
    if not labels or not groups or not quantities:
        raise ValueError("labels, groups and quantities: expected at least one each")
    fig = Figure(figsize=(3.2 * len(groups), 2.8 * len(quantities)), layout="constrained")
    axes = fig.subplots(len(quantities), len(groups), squeeze=False)
    for row, (name, per_group) in enumerate(quantities.items()):
        if len(per_group) != len(groups):
            raise ValueError(f"quantities[{name!r}]: expected {len(groups)} groups, got {len(per_group)}")
        for column, (group, per_side) in enumerate(zip(groups, per_group)):
            ax = axes[row, column]
            if len(per_side) != len(labels):
                raise ValueError(f"quantities[{name!r}][{column}]: expected {len(labels)} sides, got {len(per_side)}")
            for index, (label, (mean, se)) in enumerate(zip(labels, per_side)):
                mean, se = np.asarray(mean, dtype=float), np.asarray(se, dtype=float)
                if mean.ndim != 1 or se.shape != mean.shape:
                    raise ValueError(f"quantities[{name!r}][{column}][{index}]: mean and se must be 1-D of one "
                                     f"shape; got {mean.shape} and {se.shape}")
                if not np.isfinite(mean).any():
                    continue
                layers = np.arange(1, mean.size + 1) + (index - (len(labels) - 1) / 2) * 0.06
                ax.errorbar(layers, mean, yerr=np.where(np.isfinite(se), se, 0.0), color=side_color(index),
                            marker="o", markersize=4, capsize=3, lw=1.2, label=label)
            ax.set_title(f"{group}", fontsize=9)
            ax.set_xlabel("layer", fontsize=8)
            ax.set_ylabel(name, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            top = max((np.asarray(m, dtype=float).size for m, _ in per_side), default=1)
            ax.set_xticks(range(1, top + 1))
            note_if_empty(ax, "no side has a value")
    legend(fig, fontsize=7, loc="outside right upper")
    panel_letters(axes.ravel())
    caption(fig, "error bars: SE over each side's runs; a side with one run: no error bar")
    if title:
        fig.suptitle(title)
    return fig
