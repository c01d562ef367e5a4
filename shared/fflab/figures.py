"""Figure layer of fflab: one function per figure panel of the paper.

Every function takes plain numpy arrays (already computed by the analysis
layer) and returns a :class:`matplotlib.figure.Figure` built with the
object-oriented API only.  Nothing here uses pyplot, so the functions are safe
to call headless and from worker threads; write the result with
:func:`save_figure` (PNG and SVG) or :func:`save_png`.

One style for every figure
--------------------------
Every figure function of fflab (this module, ``fflab.comparison_figures``, the
run analyses' ``draw`` functions) is wrapped in :func:`styled`, which draws it
under the style sheet ``styles/fflab.mplstyle`` (package data), and the save
helpers write under it too.  The elements a reviewer looks for are added by
the helpers here, so every figure has them the same way:

* :func:`panel_letters`: bold A, B, C ... at the top left of each panel of a
  figure with more than one;
* :func:`caption`: a line under the figure with n (runs/seeds, images) and
  what the error bars are (:func:`spread_note`: "mean ± SE over n=3 seeds",
  or "one run: no error bars");
* :func:`legend`: a legend of the artists actually drawn with data;
* :func:`integer_ticks`: integer ticks where counts are plotted;
* :func:`note_if_empty`: a note saying why a panel has no data.

Conventions used throughout
---------------------------
* ``N`` images, ``n`` units, ``C`` classes.
* ``representations`` is an ``(N, n)`` array of post-activation values of one
  layer, ``labels`` an ``(N,)`` integer array with values in ``[0, C)``.
* Sets of units (ensembles, Method 1 / Method 2 results) are 1-D arrays of
  unit indices; a boolean mask of length ``n`` is accepted too.
* Model keys are those of fflab.models.MODELS, shown with their display names
  and colours (FF, BP/FF, BP in blue, red and green, as in Figure 7 of the
  paper).  Unknown keys are shown verbatim with a fallback colour.
"""

from __future__ import annotations

import math
import os
import string
import textwrap
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib.colors as mcolors
import matplotlib.style
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.collections import Collection, PathCollection
from matplotlib.colors import Colormap
from matplotlib.container import BarContainer, Container, ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, StepPatch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from fflab.data import DATASETS
from fflab.models import MODELS

__all__ = [
    "class_names",
    "model_display_name",
    "model_color",
    "square_grid",
    "STYLE_FILE",
    "FORMATS",
    "styled",
    "save_figure",
    "save_png",
    "panel_letters",
    "caption",
    "spread_note",
    "legend",
    "integer_ticks",
    "note_if_empty",
    "figure_text",
    "figure1a_activation_patterns",
    "figure1b_class_mean_activations",
    "activation_map",
    "figure2_ensemble_sizes",
    "figure3a_shared_units",
    "figure3b_shared_units_matrix",
    "figure4a_unseen_activations",
    "figure4b_mean_activity",
    "figure4c_decision_diagram",
    "figure7_negative_weight_fraction",
    "figure8a_method_comparison",
    "figure8b_method_sizes",
    "sweep_figure",
    "training_curves",
]

# --------------------------------------------------------------------------
# Names and colours
# --------------------------------------------------------------------------

_FALLBACK_COLORS = ["tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]

ENSEMBLE_COLOR = "tab:blue"  # blue dots marking ensemble units (Figures 1B, 4B)
_PAD_COLOR = "#e8eef4"  # NaN padding cells of square grids


def class_names(dataset: str) -> list[str]:
    """Class names of a data set of fflab.data.DATASETS (a copy of the list).

    Case and ``-``/``_`` are ignored (``"Fashion-MNIST"`` works).
    Raises ``ValueError`` for any other data set.
    """
    key = dataset.strip().lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist"}.get(key, key)
    return list(DATASETS.lookup(key).class_names)


def _model_key(model: str) -> str | None:
    """Registry key for a model given as key or display name, else None."""
    if model.lower() in MODELS:
        return model.lower()
    for key, entry in MODELS.items():
        if model == entry.display_name:
            return key
    return None


def model_display_name(model: str) -> str:
    """A model type's display name (``"bpff" -> "BP/FF"``); others unchanged."""
    key = _model_key(model)
    return MODELS[key].display_name if key else model


def model_color(model: str, index: int = 0) -> str:
    """A model type's fixed colour (fflab.models.MODELS: FF blue, BP/FF red, BP green).

    Unknown models get a fallback colour chosen by ``index``.
    """
    key = _model_key(model)
    return MODELS[key].colour if key else _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)]


# --------------------------------------------------------------------------
# One style, the save helpers and the caption elements
# --------------------------------------------------------------------------

STYLE_FILE = Path(__file__).with_name("styles") / "fflab.mplstyle"
FORMATS = ("png", "svg")  # what save_figure writes: a raster and a vector copy

PANEL_LETTER_GID = "panel-letter"
CAPTION_GID = "caption"
NO_DATA_GID = "no-data"

# matplotlib's style context sets the process-wide rcParams: one figure is drawn
# or saved under it at a time (re-entrant: a figure function may call another).
_STYLE_LOCK = threading.RLock()

P = ParamSpec("P")
R = TypeVar("R")


def styled(draw: Callable[P, R]) -> Callable[P, R]:
    """``draw`` run under fflab's style sheet (:data:`STYLE_FILE`).

    The one place every figure function goes through: the artists it creates
    take their sizes, spines and grid from the sheet, and the save helpers write
    under it too (dpi, SVG text as text).  Calls are serialised by a lock, since
    the style is applied to matplotlib's process-wide rcParams for the call and
    restored after it.  The wrapper is marked ``styled = True`` (the tests check
    that every figure function has it).
    """

    @wraps(draw)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with _STYLE_LOCK, matplotlib.style.context(STYLE_FILE):
            return draw(*args, **kwargs)

    run.styled = True  # type: ignore[attr-defined]
    return run


def _figure_base(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix.lower() in {".png", ".svg", ".pdf"} else p


@styled
def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 120,
                formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` once per format (PNG and SVG by default) beside each other.

    ``path`` names the file with or without its suffix (``figures/figure2`` or
    ``figures/figure2.png`` both give ``figure2.png`` and ``figure2.svg``);
    parent folders are created.  The SVG keeps its text as text and carries no
    date or random ids, so a figure drawn from the same numbers gives the same
    bytes.  The only function of the
    figure layer that writes files (with :func:`save_png`); returns the paths
    written, in ``formats`` order.
    """
    base = _figure_base(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = base.with_name(f"{base.name}.{fmt}")
        metadata: dict[str, Any] | None = {"Date": None} if fmt in ("svg", "pdf") else None
        fig.savefig(target, format=fmt, dpi=dpi, metadata=metadata)
        written.append(target)
    return written


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parent folders are created).

    Uses the figure's own canvas (Agg) under fflab's style, touches no pyplot
    state and does not close anything; returns the path written.  The pipeline
    writes PNG and SVG with :func:`save_figure`.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with _STYLE_LOCK, matplotlib.style.context(STYLE_FILE):
        fig.savefig(p, format="png", dpi=dpi)
    return p


def panel_letters(axes: Iterable[Axes]) -> list[Text]:
    """Bold A, B, C ... at the top left of each of ``axes`` (outside the frame,
    above the y axis), in the order given; nothing for fewer than two panels.
    The letters carry the gid ``"panel-letter"``."""
    panels = list(axes)
    if len(panels) < 2:
        return []
    letters: list[Text] = []
    for index, ax in enumerate(panels):
        letter = string.ascii_uppercase[index] if index < 26 else f"A{index - 25}"
        letters.append(ax.annotate(letter, xy=(0, 1), xycoords="axes fraction", xytext=(-22, 6),
                                   textcoords="offset points", ha="right", va="bottom", fontsize="large",
                                   fontweight="bold", gid=PANEL_LETTER_GID, annotation_clip=False))
    return letters


@styled
def caption(fig: Figure, *parts: str | None) -> Text | None:
    """Add ``parts`` (the empty ones skipped) to the caption line under the figure,
    joined by "; ": what n is, what the error bars are, which sweep point.

    The caption is a text at the bottom of the figure, wrapped to its width,
    gid ``"caption"``; the figure's constrained layout is given a bottom margin
    that holds it, so no legend or label covers it.  Calling again appends.
    Returns the caption, or None when there is nothing to say.
    """
    text = "; ".join(p.strip() for p in parts if p and p.strip())
    existing = next((t for t in fig.texts if t.get_gid() == CAPTION_GID), None)
    if existing is not None:
        if not text:
            return existing
        text = f"{existing.get_text().replace(chr(10), ' ')}; {text}"
    elif not text:
        return None
    wrapped = textwrap.fill(text, width=max(60, int(fig.get_figwidth() * 14)))
    if existing is None:
        existing = fig.text(0.5, 0.01, "", ha="center", va="bottom", fontsize="small", color="0.25",
                            gid=CAPTION_GID)
    existing.set_text(wrapped)
    lines = wrapped.count("\n") + 1
    height = (lines * float(existing.get_fontsize()) * 1.3 + 8) / 72 / fig.get_figheight() + 0.01
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set") and "rect" in engine.get():
        engine.set(rect=(0, height, 1, 1 - height))  # type: ignore[call-arg]  # typed without the engines' keywords
    return existing


def spread_note(n: int | Mapping[str, int], what: str = "seeds", spread: str = "SE") -> str:
    """What a figure's error bars are, with n.

    ``n`` is the number of runs (``what``: seeds, classes, ...) behind each
    mean, or that number per line (model display name -> n).  Every n of 1:
    ``"one run: no error bars"``; one n of 2 or more: ``"mean ± SE over n=3
    seeds"``; several: ``"mean ± SE over seeds (FF n=3, BP n=1: one run, no
    error bar)"``.
    """
    counts = {"": int(n)} if isinstance(n, int) else {str(k): int(v) for k, v in n.items()}
    values = set(counts.values())
    if not counts or values <= {0, 1}:
        return "one run: no error bars" if what == "seeds" else f"one {what.rstrip('s')}: no error bars"
    if len(values) == 1:
        return f"mean ± {spread} over n={values.pop()} {what}"
    parts = [f"{name} n={k}" + (": one run, no error bar" if k <= 1 and what == "seeds" else "")
             for name, k in counts.items()]
    return f"mean ± {spread} over {what} ({', '.join(parts)})"


def _has_data(artist: Any) -> bool:
    """Whether a legend handle stands for something drawn with at least one value."""
    if isinstance(artist, ErrorbarContainer):
        line = artist.lines[0]
        if line is not None:
            return _has_data(line)
        return any(_has_data(c) for c in artist.lines[2])
    if isinstance(artist, BarContainer):
        return any(np.isfinite(p.get_height()) and np.isfinite(p.get_y()) for p in artist.patches)
    if isinstance(artist, Container):
        return any(_has_data(c) for c in artist.get_children())
    if isinstance(artist, Line2D):
        x = np.asarray(artist.get_xdata(), dtype=float)
        y = np.asarray(artist.get_ydata(), dtype=float)
        return bool(x.size and y.size and np.any(np.isfinite(x) & np.isfinite(y)))
    if isinstance(artist, StepPatch):
        return bool(np.asarray(artist.get_data()[0]).size)  # StairData: (values, edges, baseline)
    if isinstance(artist, PathCollection):  # a scatter: its points are its offsets
        offsets = np.asarray(artist.get_offsets(), dtype=float).reshape(-1, 2)
        return bool(np.any(np.all(np.isfinite(offsets), axis=1)))
    if isinstance(artist, Collection):
        return bool(len(artist.get_paths()))
    return True


def legend(target: Axes | Figure, handles: Sequence[Any] | None = None, labels: Sequence[str] | None = None,
           source: Iterable[Axes] | None = None, **kwargs: Any) -> Legend | None:
    """A legend that matches what is drawn.

    Without ``handles``, the labelled artists of ``source`` (default: ``target``,
    or every axes of a figure) that were drawn with at least one value, each
    label once: an empty scatter, line or bar set gets no entry.  With
    ``handles`` (proxy artists standing for what is drawn), those.  Returns the
    legend, or None (and no legend) when nothing is left.  ``kwargs`` go to
    ``legend`` (place it with ``loc``/``bbox_to_anchor`` where it hides no data).
    """
    if handles is None:
        axes = list(source) if source is not None else (
            [target] if isinstance(target, Axes) else list(target.axes))
        found: dict[str, Any] = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                if label not in found and _has_data(handle):
                    found[label] = handle
        handles, labels = list(found.values()), list(found)
    elif labels is None:
        labels = [h.get_label() for h in handles]
    if not handles:
        return None
    return target.legend(list(handles), list(labels or []), **kwargs)


def integer_ticks(*axes: Axis) -> None:
    """Integer-only major ticks on each axis (counts: units, images, epochs, layers)."""
    for axis in axes:
        axis.set_major_locator(MaxNLocator(integer=True))


def _drawn_something(ax: Axes) -> bool:
    if ax.images:
        return True
    if any(_has_data(line) for line in ax.lines):
        return True
    if any(_has_data(c) for c in ax.collections):
        return True
    return any(not isinstance(p, Patch) or _patch_has_data(p) for p in ax.patches)


def _patch_has_data(patch: Patch) -> bool:
    if isinstance(patch, StepPatch):
        return bool(np.asarray(patch.get_data()[0]).size)  # StairData: (values, edges, baseline)
    height = getattr(patch, "get_height", None)
    return bool(height is None or np.isfinite(height()))


def note_if_empty(ax: Axes, why: str, always: bool = False) -> bool:
    """Write ``why`` in the middle of ``ax`` (gid ``"no-data"``) when nothing with a
    value was drawn in it (or ``always``); returns whether it did."""
    if not always and _drawn_something(ax):
        return False
    ax.text(0.5, 0.5, textwrap.fill(why, 30), transform=ax.transAxes, ha="center", va="center",
            color="0.3", fontsize="small", gid=NO_DATA_GID)
    return True


def figure_text(fig: Figure) -> str:
    """Every text of the figure (titles, labels, ticks, legends, notes, caption),
    one per line: what a reader of the figure sees written."""
    return "\n".join(t.get_text() for t in fig.findobj(Text) if t.get_text())


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def square_grid(values: np.ndarray) -> np.ndarray:
    """Reshape a 1-D array to the smallest square grid, row-major.

    Parameters
    ----------
    values : (n,) array_like
        One value per unit (or pixel).

    Returns
    -------
    (s, s) float ndarray
        ``s = ceil(sqrt(n))``; unit ``u`` sits at row ``u // s``, column
        ``u % s``; the ``s*s - n`` trailing cells are NaN.  ``n = 784`` gives
        28 x 28 with no padding, ``n = 5`` gives 3 x 3 with 4 NaNs.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"values: expected a 1-D array, got shape {v.shape}")
    side = _grid_side(v.size)
    grid = np.full(side * side, np.nan)
    grid[: v.size] = v
    return grid.reshape(side, side)


def _swatch(color: str, label: str) -> Patch:
    """A legend proxy: a filled square of ``color``."""
    from matplotlib.patches import Rectangle

    return Rectangle((0, 0), 1, 1, facecolor=color, edgecolor="0.6", label=label)


def _grid_side(n: int) -> int:
    return max(1, math.isqrt(n - 1) + 1) if n > 0 else 1


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _as_1d(name: str, x: Any, length: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if length is not None and a.shape[0] != length:
        raise ValueError(f"{name}: expected length {length}, got {a.shape[0]}")
    return a


def _as_2d(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {a.shape}")
    return a


def _labels(name: str, labels: Any, n_rows: int, n_classes: int) -> np.ndarray:
    lab = _as_1d(name, labels, n_rows)
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.equal(np.mod(lab, 1), 0)):
            raise ValueError(f"{name}: expected integer class labels")
        lab = lab.astype(int)
    if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(
            f"{name}: values must lie in [0, {n_classes}) to match class_names, "
            f"got range [{lab.min()}, {lab.max()}]"
        )
    return lab


def _units(name: str, units: Any, n: int) -> np.ndarray:
    """Unit indices (sorted, unique) from an index array or a boolean mask."""
    u = np.asarray(units)
    if u.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of unit indices, got shape {u.shape}")
    if u.dtype == bool:
        if u.size != n:
            raise ValueError(f"{name}: boolean mask has length {u.size}, expected {n}")
        return np.flatnonzero(u)
    if u.size == 0:
        return np.zeros(0, dtype=int)
    if not np.issubdtype(u.dtype, np.integer):
        if not np.all(np.equal(np.mod(u, 1), 0)):
            raise ValueError(f"{name}: unit indices must be integers")
        u = u.astype(int)
    if u.min() < 0 or u.max() >= n:
        raise ValueError(f"{name}: unit indices must lie in [0, {n}), got [{u.min()}, {u.max()}]")
    return np.unique(u)


def _class_names(name: str, names: Sequence[str], n_classes: int | None = None) -> list[str]:
    out = [str(c) for c in names]
    if n_classes is not None and len(out) != n_classes:
        raise ValueError(f"{name}: expected {n_classes} class names, got {len(out)}")
    return out


def _value_limits(a: np.ndarray) -> tuple[float, float]:
    """Colour limits: from min(0, data min) to data max (never degenerate)."""
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = min(0.0, float(finite.min())), float(finite.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _cmap(name: str, bad: str | None = None) -> Colormap:
    cmap = colormaps[name]
    return cmap.with_extremes(bad=bad) if bad else cmap


def _xtick_rotation(names: Sequence[str]) -> tuple[float, str]:
    long = max((len(s) for s in names), default=0) > 3
    return (40.0, "right") if long else (0.0, "center")


# --------------------------------------------------------------------------
# Figure 1
# --------------------------------------------------------------------------


@styled
def figure1a_activation_patterns(
    layer_activations: Sequence[np.ndarray],
    image: np.ndarray | None = None,
    title: str | None = "Activation patterns for one input",
    note: str | None = None,
) -> Figure:
    """Figure 1A: one input's activations in each layer, as square grids.

    Parameters
    ----------
    layer_activations : list of (n_l,) arrays
        Activations of every unit of layer ``l`` for one representative input.
        Each is drawn with :func:`square_grid` (784 -> 28 x 28; other sizes are
        padded with NaN, drawn in pale blue-grey).
    image : (784,) or (28, 28) array, optional
        The input (label encoded in its border); drawn as the first panel.
    title : str or None
        Figure title (the pipeline names model, data set and run).
    note : str or None
        Added to the caption (e.g. which run and image).

    Returns
    -------
    Figure
        One grid panel (``Greys``: darker = more active, each layer scaled to
        its own range) with a colour bar per layer, preceded by the image
        panel if given, lettered A, B, ...  ``fig.axes`` lists the panels first
        (``[image], layer1, layer2, ...``), then the colour bars.  Caption: one
        input, each layer on its own colour scale.
    """
    if len(layer_activations) == 0:
        raise ValueError("layer_activations: expected at least one layer")
    layers = [_as_1d(f"layer_activations[{i}]", a).astype(float) for i, a in enumerate(layer_activations)]
    img = None
    if image is not None:
        img = np.asarray(image, dtype=float)
        if img.ndim == 1:
            if math.isqrt(img.size) ** 2 != img.size:
                raise ValueError(f"image: a flat image must have a square size, got {img.size}")
            img = img.reshape(math.isqrt(img.size), -1)
        elif img.ndim != 2:
            raise ValueError(f"image: expected shape (784,) or (28, 28), got {img.shape}")

    n_panels = len(layers) + (img is not None)
    fig = _new_figure(3.0 * n_panels + 0.5, 3.4)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    k = 0
    if img is not None:
        ax = axes[0]
        ax.imshow(img, cmap="gray", interpolation="nearest")
        ax.set_title("Input")
        ax.set_xlabel("pixel column")
        ax.set_ylabel("pixel row")
        k = 1
    grey = _cmap("Greys", bad=_PAD_COLOR)
    for i, act in enumerate(layers):
        ax = axes[k + i]
        lo, hi = _value_limits(act)
        im = ax.imshow(square_grid(act), cmap=grey, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(f"Layer {i + 1} ({act.size} units)")
        ax.set_xlabel("grid column")
        ax.set_ylabel("grid row")
        cb = fig.colorbar(im, ax=ax, shrink=0.8)
        cb.set_label("activation")
    panel_letters(axes)
    caption(fig, "one input image, no averaging: no error bars; each layer on its own colour scale", note)
    if title:
        fig.suptitle(title)
    return fig


@styled
def figure1b_class_mean_activations(
    representations: np.ndarray,
    labels: np.ndarray,
    ensembles: Mapping[int, np.ndarray],
    class_names: Sequence[str],
    title: str | None = "Mean activation per unit, by class",
    note: str | None = None,
) -> Figure:
    """Figure 1B: per class, the mean activation of every unit.

    Parameters
    ----------
    representations : (N, n) array
        Post-activation values of one layer.
    labels : (N,) int array
        Class of each image, in ``[0, C)``.
    ensembles : dict[int, (k_c,) array]
        Ensemble unit indices of class ``c`` (missing classes: no dots).
    class_names : sequence of C str
    title : str or None
    note : str or None
        Added to the caption (which run, which ensembles).

    Returns
    -------
    Figure
        One subplot per class (rows of at most 5), in class order, lettered,
        titled with the class and its number of images n; x = unit index,
        y = mean activation (grey line), ensemble units as blue dots (legend
        when any is drawn).  Unused grid cells are removed, so
        ``len(fig.axes) == C``.
    """
    X = _as_2d("representations", representations).astype(float)
    n_img, n = X.shape
    names = _class_names("class_names", class_names)
    C = len(names)
    if C == 0:
        raise ValueError("class_names: expected at least one class")
    lab = _labels("labels", labels, n_img, C)
    ens = {}
    for c, units in ensembles.items():
        if not 0 <= int(c) < C:
            raise ValueError(f"ensembles: class key {c} outside [0, {C})")
        ens[int(c)] = _units(f"ensembles[{c}]", units, n)

    ncols = min(5, C)
    nrows = math.ceil(C / ncols)
    fig = _new_figure(2.9 * ncols, 2.3 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    x = np.arange(n)
    for c in range(C):
        ax = axes[c]
        rows = X[lab == c]
        if rows.shape[0]:
            mean = rows.mean(axis=0)
            ax.plot(x, mean, color="0.35", lw=0.8, label="mean activation")
            u = ens.get(c, np.zeros(0, dtype=int))
            if u.size:
                ax.plot(u, mean[u], "o", color=ENSEMBLE_COLOR, ms=4, label="ensemble unit")
        else:
            note_if_empty(ax, "no images of this class among the analysed ones")
        ax.set_title(f"{names[c]} (n={rows.shape[0]})", fontsize=10)
        ax.set_xlabel("unit index", fontsize=8)
        ax.set_ylabel("mean activation", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=True, labelleft=True)
        integer_ticks(ax.xaxis)
    for ax in axes[C:]:
        fig.delaxes(ax)
    panel_letters(axes[:C])
    legend(fig, source=axes[:C], loc="outside upper right", fontsize="small")
    caption(fig, "per class, the mean over its n images (panel titles); one run: no error bars", note)
    if title:
        fig.suptitle(title)
    return fig


@styled
def activation_map(
    representations: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    layer: int,
    title: str | None = None,
    note: str | None = None,
) -> Figure:
    """Figures 1C, 5, 6: activation map of one layer, images grouped by class.

    Parameters
    ----------
    representations : (N, n) array
        Post-activation values of layer ``layer``.
    labels : (N,) int array
        Class of each image, in ``[0, C)``.
    class_names : sequence of C str
    layer : int
        Layer number (1-based), used in the title.
    title : str or None
        Defaults to ``"Layer {layer} activation map"``.
    note : str or None
        Added to the caption (which run).

    Returns
    -------
    Figure
        Axes ``[map, colourbar]``.  Rows are images sorted (stably) by class,
        columns are units; colour (``Blues``, white = 0) is the activation.
        Class boundaries are drawn as horizontal lines and every non-empty
        class block carries its class name on the y axis.  Drawn with a single
        ``imshow`` (``aspect='auto'``), fast for N = 10000, n = 784.
    """
    X = _as_2d("representations", representations)
    n_img, n = X.shape
    names = _class_names("class_names", class_names)
    lab = _labels("labels", labels, n_img, len(names))
    order = np.argsort(lab, kind="stable")
    Xs = np.asarray(X[order], dtype=float)
    counts = np.bincount(lab, minlength=len(names)) if n_img else np.zeros(len(names), int)
    ends = np.cumsum(counts)
    starts = ends - counts

    fig = _new_figure(8.0, 7.0)
    ax = fig.subplots()
    lo, hi = _value_limits(Xs)
    im = ax.imshow(Xs if n_img else np.zeros((1, max(n, 1))), aspect="auto", cmap="Blues",
                   vmin=lo, vmax=hi, interpolation="auto")
    for e in ends[:-1]:
        if 0 < e < n_img:
            ax.axhline(e - 0.5, color="tab:red", lw=0.6, alpha=0.7)
    present = counts > 0
    ax.set_yticks((starts[present] + ends[present] - 1) / 2.0)
    ax.set_yticklabels([nm for nm, p in zip(names, present) if p])
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel("unit index")
    ax.set_ylabel("images, grouped by class")
    integer_ticks(ax.xaxis)
    ax.set_title(title if title is not None else f"Layer {layer} activation map")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("activation")
    if not n_img:
        note_if_empty(ax, "no analysed image", always=True)
    caption(fig, f"n={n_img} images x {n} units, each image a row; one run: no averaging", note)
    return fig


# --------------------------------------------------------------------------
# Figure 2
# --------------------------------------------------------------------------


@styled
def figure2_ensemble_sizes(
    sizes: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    zero_floor: float = 0.5,
    title: str | None = "Ensemble size per class",
    note: str | None = None,
) -> Figure:
    """Figure 2: ensemble sizes per class and model, log y axis.

    Parameters
    ----------
    sizes : dict[str, (S, C) array]
        ``sizes[model][s, c]`` is the ensemble size of class ``c`` in seed
        ``s``; nan where the class had no analysed image (missing, not 0); a
        ``(C,)`` array is read as one seed.  Models keep dict order.
    class_names : sequence of C str
    zero_floor : float
        Zeros on the log axis: the y axis starts at ``zero_floor`` (0.5,
        below the smallest non-zero size 1) and every bar rises from it, so a
        mean of 0 (or anything below the floor) is a zero-height bar, labelled
        "0" / its value just above the floor.  Error-bar lower ends are
        clipped at the floor too.  (Clipping, not symlog.)
    title : str or None
    note : str or None
        Added to the caption (which runs).

    Returns
    -------
    Figure
        One axes: grouped bars per class, one bar per model (mean over the
        seeds where the class has a size, error bar = standard error over
        them, ddof=1, when there are 2 or more); a class with no size in any
        seed has no bar and is marked "n/a".  The legend sits right of the
        axes (it hides no bar); the caption gives n per model and what the
        error bars are ("one run: no error bars" with one seed).
    """
    if not sizes:
        raise ValueError("sizes: expected at least one model")
    if zero_floor <= 0:
        raise ValueError("zero_floor: must be > 0 on a log axis")
    names = _class_names("class_names", class_names)
    C = len(names)
    data = {}
    for model, arr in sizes.items():
        a = np.asarray(arr, dtype=float)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != C:
            raise ValueError(f"sizes[{model!r}]: expected shape (S, {C}), got {np.asarray(arr).shape}")
        if a.shape[0] == 0:
            raise ValueError(f"sizes[{model!r}]: no seeds")
        if np.any(a[np.isfinite(a)] < 0) or np.any(np.isinf(a)):
            raise ValueError(f"sizes[{model!r}]: sizes must be finite and >= 0 (nan = missing)")
        data[model] = a

    n_models = len(data)
    seeds = {model_display_name(model): a.shape[0] for model, a in data.items()}
    width = 0.8 / n_models
    x = np.arange(C)
    fig = _new_figure(max(6.0, 0.9 * C + 2.0), 4.5)
    ax = fig.subplots()
    ax.set_yscale("log")
    top = zero_floor
    for i, (model, a) in enumerate(data.items()):
        present = np.isfinite(a)
        count = present.sum(axis=0)
        filled = np.where(present, a, 0.0)
        mean = np.where(count > 0, filled.sum(axis=0) / np.maximum(count, 1), np.nan)
        deviation = np.where(present, a - mean, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            se = np.where(count > 1, np.sqrt((deviation**2).sum(axis=0) / (count - 1) / count), 0.0)
        shown = np.where(count > 0, np.maximum(np.nan_to_num(mean), zero_floor), zero_floor)
        pos = x + (i - (n_models - 1) / 2) * width
        yerr = None
        if np.any(count > 1):
            lower = shown - np.maximum(np.nan_to_num(mean) - se, zero_floor)
            yerr = np.vstack([np.clip(lower, 0, None), se])
            top = max(top, float(np.max(shown + se)))
        top = max(top, float(shown.max()))
        ax.bar(pos, shown - zero_floor, width=width, bottom=zero_floor, yerr=yerr, capsize=2,
               color=model_color(model, i), label=model_display_name(model), error_kw={"lw": 0.8})
        for p, m, n in zip(pos, mean, count):
            if n == 0:
                ax.text(p, zero_floor * 1.05, "n/a", ha="center", va="bottom", fontsize=7)
            elif m <= zero_floor:
                ax.text(p, zero_floor * 1.05, f"{m:.2g}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(zero_floor, top * 1.6)
    rot, ha = _xtick_rotation(names)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=rot, ha=ha)
    ax.set_xlabel("class")
    ax.set_ylabel("ensemble size (units, log)")
    legend(ax, title="model", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption(fig, spread_note(seeds), f"a mean below {zero_floor:g} is written above the axis floor "
            "(0 cannot be drawn on a log axis); n/a: no analysed image of the class", note)
    if title:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------
# Figure 3
# --------------------------------------------------------------------------


@styled
def figure3a_shared_units(
    units_a: np.ndarray,
    units_b: np.ndarray,
    n_units: int,
    class_a: str,
    class_b: str,
    title: str | None = None,
    note: str | None = None,
) -> Figure:
    """Figure 3A: active units of two classes on the square unit grid.

    Parameters
    ----------
    units_a, units_b : (k_a,), (k_b,) int arrays
        Ensemble unit indices of the two classes (or boolean masks).
    n_units : int
        Units in the layer; laid out as in :func:`square_grid`.
    class_a, class_b : str
        Class names (panel titles).
    title : str or None
        Figure title; defaults to the two classes and the shared count.
    note : str or None
        Added to the caption (which run, layer and quantile).

    Returns
    -------
    Figure
        Axes ``[class_a grid, class_b grid]`` (A, B): active units blue,
        inactive light grey, grid padding pale blue-grey; units in both
        ensembles are circled in red (legend when any is).
    """
    if int(n_units) <= 0:
        raise ValueError(f"n_units: must be positive, got {n_units}")
    n = int(n_units)
    ua = _units("units_a", units_a, n)
    ub = _units("units_b", units_b, n)
    shared = np.intersect1d(ua, ub)
    side = _grid_side(n)
    cmap = mcolors.ListedColormap(["#f2f2f2", ENSEMBLE_COLOR]).with_extremes(bad=_PAD_COLOR)

    fig = _new_figure(8.5, 4.6)
    axes = fig.subplots(1, 2)
    for ax, units, name in ((axes[0], ua, class_a), (axes[1], ub, class_b)):
        mask = np.zeros(n)
        mask[units] = 1.0
        ax.imshow(square_grid(mask), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        if shared.size:
            ax.scatter(shared % side, shared // side, s=160, facecolors="none",
                       edgecolors="red", linewidths=1.5, label="shared")
        ax.set_title(f"{name} ({units.size} active)")
        ax.set_xlabel("grid column")
        ax.set_ylabel("grid row")
        integer_ticks(ax.xaxis, ax.yaxis)
    panel_letters(axes)
    legend(fig, handles=[
        _swatch(ENSEMBLE_COLOR, "ensemble unit"), _swatch("#f2f2f2", "other unit"),
        *([Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor="red", linestyle="none",
                  markersize=10, label="in both ensembles")] if shared.size else [])],
        loc="outside right upper")
    caption(fig, f"{n} units on a {side} x {side} grid (unit u at row u // {side}, column u % {side})", note)
    fig.suptitle(title if title is not None else
                 f"Active units: {class_a} vs {class_b} ({shared.size} shared, circled)")
    return fig


@styled
def figure3b_shared_units_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    title: str | None = "Units shared between ensembles",
    note: str | None = None,
) -> Figure:
    """Figure 3B: number of units shared by the ensembles of each class pair.

    Parameters
    ----------
    matrix : (C, C) int array
        ``matrix[i, j]`` = ``|E_i ∩ E_j|`` (diagonal: ensemble sizes).
    class_names : sequence of C str
    title : str or None
    note : str or None
        Added to the caption (which run, layer and quantile).

    Returns
    -------
    Figure
        Axes ``[heatmap, colourbar]``; counts written in each cell (white on
        dark cells), class names on both axes, x labels rotated, integer
        ticks on the colour bar.
    """
    M = _as_2d("matrix", matrix)
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"matrix: expected a square (C, C) array, got shape {M.shape}")
    names = _class_names("class_names", class_names, M.shape[0])
    C = M.shape[0]
    fig = _new_figure(max(5.0, 0.55 * C + 2.5), max(4.2, 0.5 * C + 1.8))
    ax = fig.subplots()
    Mf = M.astype(float)
    lo, hi = _value_limits(Mf)
    im = ax.imshow(Mf, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
    cmap, norm = im.get_cmap(), im.norm
    for i in range(C):
        for j in range(C):
            v = M[i, j]
            r, g, b, _ = cmap(norm(float(v)))  # type: ignore[arg-type]  # typed for arrays; takes a scalar
            light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
            txt = f"{v:g}" if np.issubdtype(M.dtype, np.floating) else str(v)
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="black" if light else "white")
    ax.set_xticks(np.arange(C))
    ax.set_yticks(np.arange(C))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    ax.set_xlabel("class")
    ax.set_ylabel("class")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("shared units")
    integer_ticks(cb.ax.yaxis)
    caption(fig, "cell (i, j): units in the ensembles of both class i and class j; diagonal: ensemble size; "
            "one run: no error bars", note)
    if title:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------
# Figure 4
# --------------------------------------------------------------------------


@styled
def figure4a_unseen_activations(
    representations_of_unseen: np.ndarray,
    class_name: str,
    title: str | None = None,
    note: str | None = None,
) -> Figure:
    """Figure 4A: activations evoked by images of a class unseen in training.

    Parameters
    ----------
    representations_of_unseen : (M, n) array
        Post-activation values of one layer for the M unseen-class images.
    class_name : str
    title : str or None
        Defaults to ``"Unseen class: {class_name}"``.
    note : str or None
        Added to the caption (which run and layer).

    Returns
    -------
    Figure
        Axes ``[heatmap, colourbar]``: images (rows) x units (columns),
        ``Blues`` colour scale; the caption gives the number of images.
    """
    X = _as_2d("representations_of_unseen", representations_of_unseen).astype(float)
    fig = _new_figure(7.0, 4.8)
    ax = fig.subplots()
    lo, hi = _value_limits(X)
    im = ax.imshow(X if X.size else np.zeros((1, 1)), aspect="auto", cmap="Blues", vmin=lo, vmax=hi,
                   interpolation="auto")
    ax.set_xlabel("unit index")
    ax.set_ylabel(f"image ({class_name})")
    integer_ticks(ax.xaxis, ax.yaxis)
    ax.set_title(title if title is not None else f"Unseen class: {class_name}")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("activation")
    if not X.size:
        note_if_empty(ax, "no image of the unseen class", always=True)
    caption(fig, f"n={X.shape[0]} images of the class never seen in training x {X.shape[1]} units; "
            "one run: no averaging", note)
    return fig


@styled
def figure4b_mean_activity(
    mean_activity: np.ndarray,
    ensemble_units: np.ndarray,
    class_name: str,
    title: str | None = None,
    note: str | None = None,
) -> Figure:
    """Figure 4B: mean activity <x> of every unit, ensemble units as blue dots.

    Parameters
    ----------
    mean_activity : (n,) array
    ensemble_units : (k,) int array (or boolean mask of length n)
    class_name : str
    title : str or None
        Defaults to ``"{class_name}: mean activity"``.
    note : str or None
        Added to the caption (n images, which run and layer).

    Returns
    -------
    Figure
        One axes: grey line over unit index, blue dots on ensemble units; the
        legend lists the dots only when there are any, outside the axes.
    """
    m = _as_1d("mean_activity", mean_activity).astype(float)
    u = _units("ensemble_units", ensemble_units, m.size)
    fig = _new_figure(7.0, 3.8)
    ax = fig.subplots()
    ax.plot(np.arange(m.size), m, color="0.4", lw=0.9, label="mean activity")
    ax.plot(u, m[u], "o", color=ENSEMBLE_COLOR, ms=6, label=f"ensemble ({u.size} units)")
    ax.set_xlabel("unit index")
    ax.set_ylabel("mean activation ⟨x⟩")
    integer_ticks(ax.xaxis)
    ax.set_title(title if title is not None else f"{class_name}: mean activity")
    legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption(fig, None if u.size else "no ensemble found", note)
    return fig


@styled
def figure4c_decision_diagram(
    rho: np.ndarray,
    n_higher: np.ndarray,
    ensemble_units: np.ndarray,
    rho_cut: float | None,
    nh_cut: float | None,
    log_scale: bool = True,
    title: str | None = "Decision diagram (Method 2)",
    note: str | None = None,
) -> Figure:
    """Figure 4C: Method 2 decision diagram (rho, n_h).

    Parameters
    ----------
    rho : (n,) array
        Density of each unit's mean activity (neighbours within epsilon,
        divided by 2*epsilon).
    n_higher : (n,) array
        Number of units with a higher mean activity (0 for the top unit).
    ensemble_units : (k,) int array (or boolean mask of length n)
        Units selected by Method 2 (red); the others are grey.
    rho_cut, nh_cut : float or None
        Thresholds, drawn as dashed lines when given.
    log_scale : bool
        True (default): x (rho) on a log axis when every rho > 0, else
        symlog; y (n_h) on a symlog axis with linear range [0, 1], because
        n_h = 0 for the most active unit (the y axis starts just below 0).
        False: both linear.
    title : str or None
    note : str or None
        Added to the caption (which run, class and layer).

    Returns
    -------
    Figure
        One axes; the legend (what is drawn: the two kinds of unit that are
        present and the cut lines given) sits right of it.
    """
    r = _as_1d("rho", rho).astype(float)
    nh = _as_1d("n_higher", n_higher, r.size).astype(float)
    u = _units("ensemble_units", ensemble_units, r.size)
    is_ens = np.zeros(r.size, dtype=bool)
    is_ens[u] = True

    fig = _new_figure(7.0, 4.6)
    ax = fig.subplots()
    ax.scatter(r[~is_ens], nh[~is_ens], s=14, color="0.6", alpha=0.7, label="other units")
    ax.scatter(r[is_ens], nh[is_ens], s=30, color="red", label=f"ensemble ({u.size})", zorder=3)
    if rho_cut is not None:
        ax.axvline(float(rho_cut), color="k", ls="--", lw=1, label=f"ρ cut = {float(rho_cut):.3g}")
    if nh_cut is not None:
        ax.axhline(float(nh_cut), color="0.2", ls="--", lw=1, label=f"$n_h$ cut = {float(nh_cut):.3g}")
    if log_scale:
        finite = r[np.isfinite(r)]
        if finite.size and np.all(finite > 0):
            ax.set_xscale("log")
        else:
            pos = finite[finite > 0]
            ax.set_xscale("symlog", linthresh=float(pos.min()) if pos.size else 1.0)
        ax.set_yscale("symlog", linthresh=1.0)
        finite_nh = nh[np.isfinite(nh)]
        if finite_nh.size and finite_nh.min() >= 0:
            ax.set_ylim(bottom=-0.3)  # n_h >= 0: no empty negative half
    ax.set_xlabel("density ρ")
    ax.set_ylabel("$n_h$ (units with higher ⟨x⟩)")
    if title:
        ax.set_title(title)
    legend(ax, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption(fig, f"one point per unit (n={r.size})" + ("; symlog axes: 0 is drawn" if log_scale else ""), note)
    return fig


# --------------------------------------------------------------------------
# Figure 7
# --------------------------------------------------------------------------


@styled
def figure7_negative_weight_fraction(
    fractions: Mapping[str, np.ndarray],
    layer: int,
    bins: int = 20,
    title: str | None = None,
    note: str | None = None,
) -> Figure:
    """Figure 7: distribution of the per-unit fraction of negative weights.

    Parameters
    ----------
    fractions : dict[str, (n,) array]
        For each model, the fraction in [0, 1] of each unit's incoming
        weights that are negative (NaNs are ignored).
    layer : int
        Layer number (1-based), used in the title.
    bins : int
        Equal-width bins over [0, 1] (a fraction of exactly 1 falls in the
        last bin).
    title : str or None
        Defaults to ``"Layer {layer}: negative incoming weights"``.
    note : str or None
        Added to the caption (which run).

    Returns
    -------
    Figure
        One axes; one step line (unit counts per bin, integer ticks) per
        model in its fixed colour (FF blue, BP/FF red, BP green); the legend
        (above the axes) gives each model's units and how many have only
        negative incoming weights (fraction 1; the paper: FF 775 of 784).
    """
    if not fractions:
        raise ValueError("fractions: expected at least one model")
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    fig = _new_figure(6.5, 4.2)
    ax = fig.subplots()
    for i, (model, arr) in enumerate(fractions.items()):
        f = _as_1d(f"fractions[{model!r}]", arr).astype(float)
        f = f[np.isfinite(f)]
        if f.size and (f.min() < 0 or f.max() > 1):
            raise ValueError(f"fractions[{model!r}]: values must lie in [0, 1]")
        counts, _ = np.histogram(f, bins=edges)
        ax.stairs(counts, edges, color=model_color(model, i), lw=1.8,
                  label=f"{model_display_name(model)} ({f.size} units, {int(np.sum(f == 1.0))} all negative)")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of negative incoming weights")
    ax.set_ylabel("number of units")
    integer_ticks(ax.yaxis)
    ax.set_title(title if title is not None else f"Layer {layer}: negative incoming weights")
    legend(ax, title="model", loc="lower center", bbox_to_anchor=(0.5, 1.08), ncols=1)
    caption(fig, f"{int(bins)} equal bins over [0, 1]; one run per model: counts, no error bars", note)
    return fig


# --------------------------------------------------------------------------
# Figure 8
# --------------------------------------------------------------------------


@styled
def figure8a_method_comparison(
    mean_activity: np.ndarray,
    method1_units: np.ndarray,
    method2_units: np.ndarray,
    class_name: str,
    title: str | None = None,
    note: str | None = None,
) -> Figure:
    """Figure 8A: ensembles of one class found by Method 1 and Method 2.

    Parameters
    ----------
    mean_activity : (n,) array
        Mean activation <x> of each unit over the class's images.
    method1_units, method2_units : int arrays (or boolean masks of length n)
    class_name : str
    title : str or None
        Defaults to ``"{class_name}: Method 1 vs Method 2"``.
    note : str or None
        Added to the caption (n images, which run, layer and quantile).

    Returns
    -------
    Figure
        One axes: light-blue <x> curve, Method 1 units as red stars, Method 2
        units as hollow blue circles (so a unit found by both shows a star
        inside a circle); a method that finds no unit has no legend entry and
        is named in the caption.
    """
    m = _as_1d("mean_activity", mean_activity).astype(float)
    u1 = _units("method1_units", method1_units, m.size)
    u2 = _units("method2_units", method2_units, m.size)
    fig = _new_figure(7.0, 3.8)
    ax = fig.subplots()
    ax.plot(np.arange(m.size), m, color="lightskyblue", lw=1.2, label="⟨x⟩")
    ax.scatter(u1, m[u1], marker="*", s=130, color="red", zorder=3, label=f"Method 1 ({u1.size})")
    ax.scatter(u2, m[u2], marker="o", s=160, facecolors="none", edgecolors="blue",
               linewidths=1.5, zorder=4, label=f"Method 2 ({u2.size})")
    ax.set_xlabel("unit index")
    ax.set_ylabel("mean activation ⟨x⟩")
    integer_ticks(ax.xaxis)
    ax.set_title(title if title is not None else f"{class_name}: Method 1 vs Method 2")
    legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    empty = [name for name, units in (("Method 1", u1), ("Method 2", u2)) if not units.size]
    caption(fig, f"{' and '.join(empty)} found no ensemble" if empty else None, note)
    return fig


@styled
def figure8b_method_sizes(
    sizes_method1: np.ndarray,
    sizes_method2: np.ndarray,
    slope: float,
    intercept: float,
    both_found: tuple[float, float] | None = None,
    other_rules: Mapping[str, tuple[float, float]] | None = None,
    title: str | None = "Method 1 vs Method 2 sizes",
    note: str | None = None,
) -> Figure:
    """Figure 8B: ensemble sizes from Method 2 (x) vs Method 1 (y).

    Parameters
    ----------
    sizes_method1, sizes_method2 : (k,) arrays
        Paired ensemble sizes (one per model/data set/class/layer combination).
    slope, intercept : float
        Linear regression of Method 1 size on Method 2 size
        (``fflab.analysis.method_size_regression``), over every point.
    both_found : (slope, intercept) or None
        The same fit over the points where both methods find an ensemble
        (``fflab.analysis.method_size_fits``), drawn dotted.
    other_rules : dict[str, (slope, intercept)] or None
        The fit over every point with Method 2's sizes under other cut rules
        (``fflab.analysis.METHOD2_CUTS``; their points are not drawn), thin
        dash-dotted lines labelled by rule.
    title : str or None
    note : str or None
        Added to the caption (how many runs the points come from, quantile).

    Returns
    -------
    Figure
        One axes, linear scales with equal limits on x and y and integer
        ticks: scatter, fitted line (red dashed; slope and intercept in the
        legend), bisector y = x (thick grey).  The legend sits below the axes,
        where it hides no point; the caption gives n (points).
    """
    s1 = _as_1d("sizes_method1", sizes_method1).astype(float)
    s2 = _as_1d("sizes_method2", sizes_method2, s1.size).astype(float)
    both = np.concatenate([s1, s2])
    both = both[np.isfinite(both)]
    lo = min(0.0, float(both.min())) if both.size else 0.0
    hi = float(both.max()) if both.size else 1.0
    if hi <= lo:
        hi = lo + 1.0
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    xs = np.array([lo, hi])

    fig = _new_figure(5.6, 7.0)
    ax = fig.subplots()
    ax.plot(xs, xs, color="0.6", lw=4, alpha=0.7, label="bisector", zorder=1)
    ax.plot(xs, slope * xs + intercept, "--", color="red", lw=1.5,
            label=f"fit, all points: slope={slope:.2f}, intercept={intercept:.2f}", zorder=2)
    if both_found is not None:
        ax.plot(xs, both_found[0] * xs + both_found[1], ":", color="black", lw=1.5, zorder=2,
                label=f"fit, both found: slope={both_found[0]:.2f}, intercept={both_found[1]:.2f}")
    for rule, (rule_slope, rule_intercept) in (other_rules or {}).items():
        ax.plot(xs, rule_slope * xs + rule_intercept, "-.", lw=1.0, zorder=2,
                label=f"fit, Method 2 {rule}: slope={rule_slope:.2f}, intercept={rule_intercept:.2f}")
    ax.scatter(s2, s1, s=18, color="tab:blue", alpha=0.8, zorder=3, label=f"ensembles ({s1.size})")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("ensemble size, Method 2 (units)")
    ax.set_ylabel("ensemble size, Method 1 (units)")
    integer_ticks(ax.xaxis, ax.yaxis)
    if title:
        ax.set_title(title)
    legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8)
    caption(fig, f"n={s1.size} ensembles (one point each: model, data set, class, layer); "
            "fits by least squares, no error bars", note)
    return fig


# --------------------------------------------------------------------------
# The comparison with the paper
# --------------------------------------------------------------------------

COMPARISON_PANELS = {
    "accuracy": "accuracy",
    "ensemble_size": "ensemble size (units, symlog)",
    "fraction_positive_weights": "fraction of positive weights",
    "mean_shared_units": "units shared by a pair of classes",
    "unseen_activity": "ensemble activity (unseen class)",
}
VERDICT_COLORS = {"consistent": "tab:green", "differs": "tab:red", "descriptive": "tab:blue",
                  "did not learn": "tab:orange", "not comparable": "0.5"}


@styled
def paper_comparison_figure(
    labels: Sequence[str],
    quantities: Sequence[str],
    paper: Sequence[tuple[float, float | None]],
    ours: Sequence[tuple[float, float | None]],
    verdicts: Sequence[str],
    title: str | None = None,
    runs: Sequence[int] | None = None,
) -> Figure:
    """The paper's cells and this experiment's, side by side with error bars.

    Parameters
    ----------
    labels, quantities, verdicts : sequences of k str
        Cell id, quantity (a key of ``COMPARISON_PANELS``; others are not
        drawn) and verdict of each cell.
    paper, ours : sequences of k (mean, se or None)
    title : str or None
    runs : sequence of k int, optional
        This experiment's runs behind each cell (n in the caption).

    Returns
    -------
    Figure
        One panel per quantity present (lettered A, B, ...): per cell, the
        paper's mean ± SE (grey square) and this experiment's (circle coloured
        by verdict: green consistent, red differs, blue descriptive: no
        published error, orange did not learn, grey not comparable), with a
        legend, right of the panels, of the markers and verdicts drawn (a
        verdict of a cell no panel shows has no entry).  Ensemble sizes are on
        a symlog axis, linear below 1, so a size of 0 is drawn at 0.
    """
    k = len(labels)
    if not (len(quantities) == len(paper) == len(ours) == len(verdicts) == k):
        raise ValueError("labels, quantities, paper, ours and verdicts must have the same length")
    if runs is not None and len(runs) != k:
        raise ValueError("runs: expected one number per cell")
    panels = [q for q in COMPARISON_PANELS if q in set(quantities)]
    fig = _new_figure(11.0, 2.6 + 2.4 * max(len(panels), 1))
    if not panels:
        ax = fig.subplots()
        note_if_empty(ax, "no comparable cell: this experiment has no number the paper gives", always=True)
        ax.set_axis_off()
        if title:
            fig.suptitle(title)
        return fig
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, quantity in zip(axes, panels):
        index = [i for i in range(k) if quantities[i] == quantity]
        x = np.arange(len(index))
        for offset, values, kind in ((-0.15, paper, "paper"), (0.15, ours, "this experiment")):
            means = np.array([values[i][0] for i in index], dtype=float)
            errors = np.array([np.nan if values[i][1] is None else values[i][1] for i in index], dtype=float)
            colors = ["0.35" if kind == "paper" else VERDICT_COLORS.get(verdicts[i], "0.5") for i in index]
            ax.errorbar(x + offset, means, yerr=np.nan_to_num(errors), fmt="none", ecolor="0.3",
                        elinewidth=1, capsize=2)
            ax.scatter(x + offset, means, c=colors, marker="s" if kind == "paper" else "o", s=22,
                       zorder=3, label=kind)
        if quantity == "ensemble_size":
            ax.set_yscale("symlog", linthresh=1.0)
            ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        ax.set_ylabel(COMPARISON_PANELS[quantity], fontsize=8)
        ax.set_xlim(-0.6, len(index) - 0.4)
        ax.set_xticks(x)
        ax.set_xticklabels([labels[i].split("/", 1)[-1] for i in index], rotation=60, ha="right", fontsize=6)
        ax.grid(axis="y", alpha=0.3)
    shown = {verdicts[i] for i in range(k) if quantities[i] in COMPARISON_PANELS}
    drawn = [v for v in VERDICT_COLORS if v in shown]
    drawn += sorted(v for v in shown if v not in VERDICT_COLORS)
    handles = [Line2D([], [], marker="s", color="0.35", linestyle="none", label="paper (± its SE)")]
    handles += [Line2D([], [], marker="o", color=VERDICT_COLORS.get(v, "0.5"), linestyle="none",
                       label=f"this experiment: {v}") for v in drawn]
    legend(fig, handles=handles, fontsize=7, loc="outside right upper")
    panel_letters(axes)
    n_note = None
    if runs is not None:
        counts = sorted({int(runs[i]) for i in range(k) if quantities[i] in COMPARISON_PANELS})
        n_note = (f"n={counts[0]} runs per cell" if len(counts) == 1 else
                  f"n={counts[0]} to {counts[-1]} runs per cell (tables/paper_comparison)")
    caption(fig, "error bars: the paper's SE, and this experiment's SE over its runs; no bar: no SE "
            "(one run, or none published)", n_note)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------

_SWEEP_LINESTYLES = ["-", "--", ":", "-."]
_SWEEP_MARKERS = ["o", "s", "^", "D"]


def _sweep_positions(values: Sequence[Any]) -> tuple[np.ndarray, bool, bool]:
    """x positions of swept values: the numbers themselves (log scale when all are
    positive and span a factor of 10 or more), else 0..V-1 with the values as labels."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numeric:
        return np.arange(len(values), dtype=float), False, True
    x = np.array(values, dtype=float)
    log = bool((x > 0).all() and x.max() / x.min() >= 10)
    return x, log, False


@styled
def sweep_figure(
    field: str,
    values: Sequence[Any],
    lines: Sequence[tuple[str, str, Mapping[str, tuple[np.ndarray, np.ndarray]]]],
    quantile: float | None = None,
    title: str | None = None,
    note: str | None = None,
) -> Figure:
    """The key numbers of a sweep against the swept setting, with error bars.

    Parameters
    ----------
    field : str
        The swept setting (x axis), e.g. ``"network.threshold"``.
    values : sequence of V values
        Its values (numbers: at their value, on a log axis when positive and
        spanning a factor of 10 or more; others: evenly spaced, labelled).
    lines : sequence of (label, model, numbers)
        One line per (model, data set, value of a second swept setting): its
        legend label, model (colour) and ``numbers``: ``"accuracy"`` -> (mean,
        se) arrays of shape (V,); ``"ensemble_size"`` and
        ``"fraction_positive_weights"`` -> (mean, se) arrays of shape (L, V),
        one row per layer. nan: no value (a gap; no bar for an se of nan).
        Lines of one model differ in line style and marker.
    quantile : float or None
        The Method 1 quantile of the ensemble sizes, for the panel titles.
    title : str or None
        Figure title (the pipeline names the data set and the swept setting).
    note : str or None
        Added to the caption (the grid points and their values).

    Returns
    -------
    Figure
        Top row: accuracy, then the ensemble size of each layer (from 0);
        bottom row: the legend, then the fraction of positive weights of each
        layer; the data panels lettered A, B, ...  Every swept value is a
        labelled tick; a panel with no value for any line says so.  The
        legend (its title: what the error bars are) lists the lines drawn.
    """
    if not lines:
        raise ValueError("lines: expected at least one line")
    x, log, categorical = _sweep_positions(values)
    layers = max(np.atleast_2d(numbers["ensemble_size"][0]).shape[0] for _, _, numbers in lines)
    fig = _new_figure(2.6 * (layers + 1) + 0.6, 5.6)
    axes = fig.subplots(2, layers + 1, squeeze=False)
    at = "" if quantile is None else f" (q {quantile:g})"
    panels: list[tuple[Axes, str, int | None, str]] = [(axes[0, 0], "accuracy", None, "test accuracy")]
    panels += [(axes[0, layer + 1], "ensemble_size", layer, f"layer {layer + 1} ensemble size{at}")
               for layer in range(layers)]
    panels += [(axes[1, layer + 1], "fraction_positive_weights", layer, f"layer {layer + 1} positive weights")
               for layer in range(layers)]
    styles: dict[str, int] = {}
    for index, (label, model, numbers) in enumerate(lines):
        style = styles[model] = styles.get(model, -1) + 1
        for ax, quantity, layer, _ in panels:
            mean, se = (np.asarray(a, dtype=float) for a in numbers[quantity])
            if layer is not None:
                if layer >= np.atleast_2d(mean).shape[0]:
                    continue
                mean, se = np.atleast_2d(mean)[layer], np.atleast_2d(se)[layer]
            if mean.shape != (len(values),) or se.shape != mean.shape:
                raise ValueError(f"lines[{index}] {quantity}: expected shape ({len(values)},), got {mean.shape}")
            if not np.isfinite(mean).any():
                continue
            ax.errorbar(x, mean, yerr=np.where(np.isfinite(se), se, 0.0), color=model_color(model, index),
                         linestyle=_SWEEP_LINESTYLES[style % len(_SWEEP_LINESTYLES)],
                         marker=_SWEEP_MARKERS[style % len(_SWEEP_MARKERS)], markersize=4, capsize=3,
                         label=label)
    for ax, quantity, _, panel_title in panels:
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel(field, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if log:
            ax.set_xscale("log")
        if categorical:
            ax.set_xticks(x)
            ax.set_xticklabels([str(v) for v in values], rotation=30, ha="right")
        elif len(values) <= 10:
            ax.set_xticks(x)
            ax.set_xticklabels([f"{v:g}" for v in values])
            ax.minorticks_off()
        if quantity == "ensemble_size":
            ax.set_ylim(bottom=0)
        else:
            ax.set_ylim(-0.02, 1.02)
    for ax, _quantity, layer, _ in panels:
        note_if_empty(ax, f"no value: no line has layer {layer + 1}" if layer is not None
                      else "no value at any swept value")
    axes[1, 0].set_axis_off()
    legend(axes[1, 0], source=[ax for ax, *_ in panels], loc="center", fontsize=7,
           title="mean ± SE over seeds\n(n=1: one run, no bar)", title_fontsize=7)
    panel_letters(ax for ax, *_ in panels)
    caption(fig, f"x: {field}, one tick per swept value", note)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------
# Training curves (not in the paper)
# --------------------------------------------------------------------------


@styled
def training_curves(
    histories: Mapping[str, Sequence[Sequence[Sequence[float]]]],
    title: str | None = "Training loss per epoch",
    note: str | None = None,
) -> Figure:
    """Loss per epoch of every run, one panel per model.

    Parameters
    ----------
    histories : mapping model -> runs -> series -> losses
        Per model (a key of fflab.models.MODELS), one entry per run (seed); each is
        the run's ``loss_history`` of metrics.json: one series per layer for FF
        (layers are trained one after the other), a single series otherwise.
    title : str or None

    Returns
    -------
    Figure
        One axes per model; epochs on x (from 1), loss on y; one line per run and
        series, coloured by layer (the model's colour for a single series);
        panels lettered when there are several, integer epoch ticks, the
        caption says each line is one run (no averaging, no error bars).
    note : str or None
        Added to the caption (data set, sweep point).
    """
    if not histories:
        raise ValueError("histories: expected at least one model")
    for model, runs in histories.items():
        if not runs or not any(len(series) for run in runs for series in run):
            raise ValueError(f"histories[{model!r}]: expected at least one run with a loss")
    fig = _new_figure(4.2 * len(histories), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(histories), squeeze=False)[0])
    for index, (ax, (model, runs)) in enumerate(zip(axes, histories.items())):
        n_series = max(len(run) for run in runs)
        for run_number, run in enumerate(runs):
            for layer, series in enumerate(run):
                losses = _as_1d(f"histories[{model!r}][{run_number}][{layer}]", series).astype(float)
                color = model_color(model, index) if n_series == 1 else colormaps["viridis"](
                    layer / max(1, n_series - 1))
                label = None
                if run_number == 0:
                    label = "network" if n_series == 1 else f"layer {layer + 1}"
                ax.plot(np.arange(1, losses.size + 1), losses, color=color, lw=1.2, alpha=0.85, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        integer_ticks(ax.xaxis)
        ax.set_title(f"{model_display_name(model)} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
        legend(ax, fontsize="small")
    panel_letters(axes)
    runs_per_model = {len(runs) for runs in histories.values()}
    n = (f"n={runs_per_model.pop()} runs per model" if len(runs_per_model) == 1
         else "n runs per model in the panel titles")
    caption(fig, f"each line one run ({n}) and layer: no averaging, no error bars", note)
    if title:
        fig.suptitle(title)
    return fig
