"""What a reviewer checks in a figure, checked on the Figure objects built from
small hand-made inputs: the plotted data (bar heights and error bars against the
numbers they draw), panel letters, integer ticks on counts, legends that list
exactly what is drawn and hide nothing, a zero on a log axis, n and the error
bars in the caption, notes on blank panels; and the one style and the two
formats every figure is written in."""

from __future__ import annotations

import inspect

import matplotlib
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fflab import comparison_figures, figures
from fflab.pipeline.run_analyses import dominance, dynamics, intrinsic_dimension, layer_accuracy, lesions, selectivity

NAMES = ["a", "b", "c"]


def letters(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == figures.PANEL_LETTER_GID]


def caption_of(fig: Figure) -> str:
    found = [t.get_text() for t in fig.texts if t.get_gid() == figures.CAPTION_GID]
    assert len(found) == 1, "a figure has one caption"
    return found[0].replace("\n", " ")


def legend_labels(fig: Figure, ax: Axes | None = None) -> list[str]:
    legend = ax.get_legend() if ax is not None else (fig.legends[0] if fig.legends else None)
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def is_integer_axis(axis: matplotlib.axis.Axis) -> bool:
    locator = axis.get_major_locator()
    return isinstance(locator, MaxNLocator) and locator._integer


def render(fig: Figure) -> None:
    """Lay the figure out and draw it (a bare Figure's canvas draws nothing)."""
    with matplotlib.style.context(figures.STYLE_FILE):
        fig.draw_without_rendering()


# ------------------------------------------------------------------ the style, the formats


def public_figure_functions() -> list:
    found = [getattr(figures, name) for name in figures.__all__
             if name.startswith(("figure1", "figure2", "figure3", "figure4", "figure7", "figure8", "activation_map",
                                 "sweep_figure", "training"))]
    found += [figures.paper_comparison_figure, figures.save_figure, figures.caption]
    found += [getattr(comparison_figures, name) for name in ("loss_curves_overlay", "layer_quantities_overlay")]
    found += [dominance.figure, dynamics.draw, intrinsic_dimension.draw, layer_accuracy.draw, lesions.draw,
              selectivity.draw]
    return found


def test_every_figure_function_is_drawn_under_the_one_style():
    functions = public_figure_functions()
    assert len(functions) >= 25
    for function in functions:
        assert getattr(function, "styled", False), function.__qualname__
        assert inspect.signature(function).return_annotation != inspect.Signature.empty


def test_the_style_sheet_is_package_data_and_is_applied_only_while_drawing():
    assert figures.STYLE_FILE.is_file() and figures.STYLE_FILE.suffix == ".mplstyle"
    before = matplotlib.rcParams["axes.spines.top"], matplotlib.rcParams["svg.fonttype"]
    seen = {}

    @figures.styled
    def probe() -> None:
        seen["spines"], seen["svg"] = matplotlib.rcParams["axes.spines.top"], matplotlib.rcParams["svg.fonttype"]

    probe()
    assert seen == {"spines": False, "svg": "none"}
    assert (matplotlib.rcParams["axes.spines.top"], matplotlib.rcParams["svg.fonttype"]) == before
    fig = figures.figure2_ensemble_sizes({"ff": np.array([1, 2, 3])}, NAMES)
    assert not fig.axes[0].spines["top"].get_visible()


def test_save_figure_writes_png_and_a_reproducible_svg(tmp_path):
    fig = figures.figure2_ensemble_sizes({"ff": np.array([[1, 2, 3], [2, 2, 5]])}, NAMES)
    written = figures.save_figure(fig, tmp_path / "sub" / "figure2.png")
    assert [p.name for p in written] == ["figure2.png", "figure2.svg"]
    assert written[0].read_bytes().startswith(b"\x89PNG")
    svg = written[1].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "mean ± SE over n=2 seeds" in svg  # text kept as text
    rebuilt = figures.figure2_ensemble_sizes({"ff": np.array([[1, 2, 3], [2, 2, 5]])}, NAMES)
    again = figures.save_figure(rebuilt, tmp_path / "again" / "figure2")
    assert again[1].read_bytes() == written[1].read_bytes()  # the same numbers give the same bytes


# ------------------------------------------------------------------ Figure 2: the plotted data


def test_figure2_bars_are_the_means_and_error_bars_the_standard_errors():
    ff = np.array([[2.0, 4.0, 8.0], [4.0, 6.0, 8.0], [3.0, 8.0, 11.0]])
    fig = figures.figure2_ensemble_sizes({"ff": ff, "bp": np.array([30.0, 40.0, 50.0])}, NAMES)
    ax = fig.axes[0]
    tops = np.array([p.get_y() + p.get_height() for p in ax.patches])
    np.testing.assert_allclose(tops[:3], ff.mean(axis=0))
    np.testing.assert_allclose(tops[3:], [30, 40, 50])
    se = ff.std(axis=0, ddof=1) / np.sqrt(3)
    errorbar = next(c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer))
    segments = errorbar.lines[2][0].get_segments()
    upper = np.array([segment[1][1] for segment in segments])
    np.testing.assert_allclose(upper - ff.mean(axis=0), se)
    assert legend_labels(fig, ax) == ["FF", "BP"]
    assert "FF n=3" in caption_of(fig) and "BP n=1: one run, no error bar" in caption_of(fig)


def test_figure2_with_one_seed_says_one_run_and_draws_no_error_bar():
    fig = figures.figure2_ensemble_sizes({"ff": np.array([[1, 2, 3]])}, NAMES)
    assert "one run: no error bars" in caption_of(fig)
    assert not any(isinstance(c, matplotlib.container.ErrorbarContainer) for c in fig.axes[0].containers)


def test_figure2_a_zero_on_its_log_axis_is_still_visible():
    fig = figures.figure2_ensemble_sizes({"ff": np.array([[0, 2, 5], [0, 4, 5]])}, NAMES)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    bar = ax.patches[0]
    assert bar.get_height() == 0 and bar.get_y() == pytest.approx(ax.get_ylim()[0])
    marks = [t for t in ax.texts if t.get_text() == "0"]
    assert len(marks) == 1
    x, y = marks[0].get_position()
    assert x == pytest.approx(bar.get_x() + bar.get_width() / 2)
    assert ax.get_ylim()[0] < y < ax.get_ylim()[1]  # inside the axes: drawn, not clipped away


def test_figure2_legend_sits_outside_the_axes():
    fig = figures.figure2_ensemble_sizes({"ff": np.array([50, 60, 70]), "bp": np.array([50, 60, 70])}, NAMES)
    render(fig)
    ax = fig.axes[0]
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.x0 >= ax.get_window_extent().x1 - 1


# ------------------------------------------------------------------ panel letters, integer ticks


def test_multi_panel_figures_have_bold_letters_in_order_and_single_panels_none():
    rng = np.random.default_rng(0)
    fig = figures.figure1a_activation_patterns([rng.random(16), rng.random(9)], image=rng.random(16))
    assert letters(fig) == ["A", "B", "C"]
    letter = next(t for t in fig.axes[0].texts if t.get_gid() == figures.PANEL_LETTER_GID)
    assert letter.get_fontweight() in ("bold", 700)
    fig3 = figures.figure3a_shared_units(np.array([1, 2]), np.array([2, 3]), 16, "a", "b")
    assert letters(fig3) == ["A", "B"]
    assert letters(figures.figure7_negative_weight_fraction({"ff": np.array([0.1, 1.0])}, layer=2)) == []
    fig_b = figures.figure1b_class_mean_activations(rng.random((30, 8)), np.arange(30) % 3, {}, NAMES)
    assert letters(fig_b) == ["A", "B", "C"]


def test_counts_are_plotted_on_integer_ticks():
    fig7 = figures.figure7_negative_weight_fraction({"ff": np.array([0.1, 0.2, 1.0])}, layer=2)
    assert is_integer_axis(fig7.axes[0].yaxis)
    render(fig7)
    ticks = fig7.axes[0].get_yticks()
    np.testing.assert_array_equal(ticks, np.round(ticks))
    fig8 = figures.figure8b_method_sizes(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 2.0]), 1.0, 0.0)
    assert is_integer_axis(fig8.axes[0].xaxis) and is_integer_axis(fig8.axes[0].yaxis)
    fig3b = figures.figure3b_shared_units_matrix(np.array([[3, 1], [1, 2]]), ["a", "b"])
    assert is_integer_axis(fig3b.axes[1].yaxis)  # the colour bar of counts
    curves = figures.training_curves({"ff": [[[0.9, 0.5]]]})
    assert is_integer_axis(curves.axes[0].xaxis)  # epochs


# ------------------------------------------------------------------ legends match what is drawn


def drawn_labels(ax: Axes) -> list[str]:
    """The labels of the artists that hold at least one point."""
    labels = []
    for artist in [*ax.lines, *ax.collections]:
        label = artist.get_label()
        if label.startswith("_"):
            continue
        if isinstance(artist, matplotlib.collections.PathCollection):
            if len(artist.get_offsets()) == 0:
                continue
        elif len(artist.get_xdata()) == 0:
            continue
        labels.append(label)
    return labels


def test_a_legend_has_no_entry_for_an_artist_with_nothing_drawn():
    mean = np.array([0.1, 0.9, 0.2, 0.05])
    fig = figures.figure8a_method_comparison(mean, np.array([1]), np.array([], dtype=int), "c")
    ax = fig.axes[0]
    assert legend_labels(fig, ax) == ["⟨x⟩", "Method 1 (1)"]
    assert sorted(legend_labels(fig, ax)) == sorted(drawn_labels(ax))
    assert "Method 2 found no ensemble" in caption_of(fig)
    fig4 = figures.figure4b_mean_activity(mean, np.array([], dtype=int), "c")
    assert legend_labels(fig4, fig4.axes[0]) == ["mean activity"]
    fig4c = figures.figure4c_decision_diagram(np.array([1.0, 2.0]), np.array([0.0, 1.0]), np.array([], int),
                                               None, None)
    assert legend_labels(fig4c, fig4c.axes[0]) == ["other units"]


def test_the_paper_comparison_legend_lists_the_drawn_verdicts_only_and_a_zero_stays_visible():
    fig = figures.paper_comparison_figure(
        labels=["t2/ff/size", "t2/bp/size", "x/other"], quantities=["ensemble_size", "ensemble_size", "unplotted"],
        paper=[(1.0, 0.1), (30.0, 2.0), (1.0, None)], ours=[(0.0, None), (28.0, 3.0), (2.0, None)],
        verdicts=["differs", "consistent", "not comparable"], runs=[1, 3, 3])
    assert legend_labels(fig) == ["paper (± its SE)", "this experiment: consistent", "this experiment: differs"]
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    render(fig)
    bottom, top = ax.get_ylim()
    zero = [tuple(p) for c in ax.collections for p in np.asarray(c.get_offsets()) if p[1] == 0.0]
    assert zero and bottom <= 0.0 < top
    assert "n=1 to 3 runs per cell" in caption_of(fig)


def test_figure8b_legend_sits_below_the_axes_and_hides_no_point():
    s1 = np.array([1.0, 5.0, 9.0, 9.5, 0.5])
    s2 = np.array([1.0, 4.0, 9.0, 0.5, 9.5])  # points in every corner
    fig = figures.figure8b_method_sizes(s1, s2, 1.0, 0.0, both_found=(0.9, 0.2), other_rules={"gap": (1.1, 0.0)})
    render(fig)
    ax = fig.axes[0]
    legend_box = ax.get_legend().get_window_extent()
    axes_box = ax.get_window_extent()
    assert legend_box.y1 <= axes_box.y0 + 1
    points = ax.transData.transform(np.column_stack([s2, s1]))
    assert not any(legend_box.contains(x, y) for x, y in points)
    assert "n=5 ensembles" in caption_of(fig)
    assert caption_of(fig)  # and the caption is not under the legend
    caption_box = next(t for t in fig.texts if t.get_gid() == figures.CAPTION_GID).get_window_extent()
    assert caption_box.y1 <= legend_box.y0 + 1


# ------------------------------------------------------------------ n and error bars, blank panels


def test_training_curves_say_each_line_is_one_run():
    fig = figures.training_curves({"ff": [[[0.9, 0.5]], [[1.0, 0.4]]], "bp": [[[2.0, 1.0]], [[2.1, 0.9]]]})
    assert "n=2 runs per model" in caption_of(fig) and "no error bars" in caption_of(fig)
    assert letters(fig) == ["A", "B"]


def test_sweep_figure_labels_every_value_notes_empty_panels_and_says_what_the_bars_are():
    nan = np.full((1, 2), np.nan)
    lines = [("FF (n=1 seed)", "ff", {
        "accuracy": (np.array([0.9, 0.8]), np.array([np.nan, np.nan])),
        "ensemble_size": (np.array([[3.0, 4.0], [5.0, 6.0]]), np.zeros((2, 2))),
        "fraction_positive_weights": (np.array([[0.3, 0.4], [np.nan, np.nan]]), np.zeros((2, 2)))}),
        ("BP (n=3 seeds)", "bp", {
            "accuracy": (np.array([0.95, 0.9]), np.array([0.01, 0.02])),
            "ensemble_size": (np.array([[30.0, 40.0]]), np.array([[1.0, 2.0]])),
            "fraction_positive_weights": (np.array([[0.5, 0.5]]), nan)})]
    fig = figures.sweep_figure("network.threshold", [0.1, 0.3], lines, 0.9, title="MNIST: the sweep")
    accuracy = fig.axes[0]
    assert [t.get_text() for t in accuracy.get_xticklabels()] == ["0.1", "0.3"]
    assert letters(fig) == ["A", "B", "C", "D", "E"]
    legend = fig.axes[3].get_legend()  # the bottom-left cell of the 2 x 3 grid
    assert [t.get_text() for t in legend.get_texts()] == ["FF (n=1 seed)", "BP (n=3 seeds)"]
    assert "n=1: one run, no bar" in legend.get_title().get_text()
    notes = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == figures.NO_DATA_GID]
    assert len(notes) == 1 and "layer 2" in notes[0].replace("\n", " ")
    assert fig.get_suptitle() == "MNIST: the sweep"


def test_layer_quantities_overlay_notes_a_panel_no_side_has():
    nan = np.array([np.nan, np.nan])
    fig = comparison_figures.layer_quantities_overlay(
        ["ref", "other"], ["FF MNIST", "BP MNIST"],
        {"size": [[(np.array([1.0, 2.0]), np.array([0.1, 0.2])), (np.array([1.5, 2.5]), nan)],
                  [(nan, nan), (nan, nan)]]})
    notes = [ax for ax in fig.axes if any(t.get_gid() == figures.NO_DATA_GID for t in ax.texts)]
    assert notes == [fig.axes[1]]
    assert letters(fig) == ["A", "B"]
    assert legend_labels(fig) == ["ref", "other"]
    assert "SE over each side's runs" in caption_of(fig)


def test_run_analysis_figures_state_n_and_letter_their_panels():
    fig = layer_accuracy.draw({"ff": {"probe": np.array([[0.8, 0.9], [0.82, 0.88], [0.79, 0.91]])}})
    assert "mean ± SE over n=3 seeds" in caption_of(fig)
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), [0.8033333, 0.8966667], rtol=1e-5)
    fig1 = layer_accuracy.draw({"ff": {"probe": np.array([[0.8, 0.9]])}})
    assert "one run: no error bars" in caption_of(fig1)
    drops = {"ensemble": {1: [0.9, 0.7]}, "random": {1: [0.1, 0.0]}, "most_active": {}}
    fig2 = lesions.draw({"ff": drops, "bp": drops})
    assert letters(fig2) == ["A", "B"]
    assert "n=2 lesioned classes" in caption_of(fig2)
    heights = [p.get_height() for p in fig2.axes[0].patches[:2]]
    np.testing.assert_allclose(heights, [0.8, 0.05])
    assert "most active non-ensemble" not in legend_labels(fig2)  # nothing drawn for it
    fig3 = selectivity.draw({"ff": {1: np.eye(3), 2: np.eye(3)}, "bpff": {1: np.eye(3)}}, NAMES)
    assert letters(fig3) == ["A", "B", "C"]
    assert any(t.get_gid() == figures.NO_DATA_GID for t in fig3.axes[3].texts)
