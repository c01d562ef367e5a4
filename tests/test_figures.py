"""Tests of the figure layer (fflab.figures): synthetic arrays in, PNGs out."""

from __future__ import annotations

import struct
import threading

import numpy as np
import pytest
from matplotlib.figure import Figure

from fflab import figures as ff
from fflab.data import DATASETS

MNIST_CLASS_NAMES = list(DATASETS["mnist"].class_names)
FASHION_MNIST_CLASS_NAMES = list(DATASETS["fashion_mnist"].class_names)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def png_size(path) -> tuple[int, int]:
    """(width, height) read from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_saved(fig, tmp_path, name: str, n_axes: int) -> None:
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n_axes
    path = ff.save_png(fig, tmp_path / f"{name}.png")
    assert path.exists()
    width, height = png_size(path)
    assert width > 100 and height > 100


def check_labels(ax) -> None:
    assert ax.get_xlabel() != ""
    assert ax.get_ylabel() != ""


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def sparse_representations(rng, n_img: int, n: int, n_classes: int = 10):
    """ReLU-like sparse activity: each class drives a few units strongly."""
    labels = rng.integers(0, n_classes, size=n_img)
    X = np.clip(rng.normal(0.0, 0.05, size=(n_img, n)), 0, None)
    ensembles = {}
    for c in range(n_classes):
        units = rng.choice(n, size=3, replace=False)
        ensembles[c] = np.sort(units)
        rows = np.flatnonzero(labels == c)
        X[np.ix_(rows, units)] += rng.uniform(0.6, 1.0, size=(rows.size, units.size))
    return X, labels, ensembles


# --------------------------------------------------------------------------
# names, colours, helpers
# --------------------------------------------------------------------------


def test_class_names():
    assert ff.class_names("mnist") == [str(i) for i in range(10)]
    assert ff.class_names("fashion_mnist")[0] == "T-shirt/top"
    assert ff.class_names("fashion_mnist")[-1] == "Ankle boot"
    assert len(FASHION_MNIST_CLASS_NAMES) == 10
    assert ff.class_names("cifar10")[0] == "airplane" and len(ff.class_names("emnist_letters")) == 26
    with pytest.raises(ValueError):
        ff.class_names("imagenet")


def test_model_names_and_colours():
    assert [ff.model_display_name(m) for m in ("ff", "bpff", "bp")] == ["FF", "BP/FF", "BP"]
    assert ff.model_color("ff") == "tab:blue"
    assert ff.model_color("bpff") == "tab:red"
    assert ff.model_color("bp") == "tab:green"
    assert ff.model_display_name("other") == "other"


def test_square_grid_pads_with_nan():
    g = ff.square_grid(np.arange(5))
    assert g.shape == (3, 3)
    assert np.isnan(g).sum() == 4
    np.testing.assert_array_equal(g.ravel()[:5], np.arange(5))
    assert np.all(np.isnan(g.ravel()[5:]))


def test_square_grid_exact_squares():
    g = ff.square_grid(np.arange(784))
    assert g.shape == (28, 28)
    assert not np.isnan(g).any()
    assert g[1, 0] == 28  # row-major
    assert ff.square_grid(np.ones(1)).shape == (1, 1)
    assert ff.square_grid(np.ones(10)).shape == (4, 4)
    with pytest.raises(ValueError, match="values"):
        ff.square_grid(np.ones((2, 2)))


# --------------------------------------------------------------------------
# Figure 1
# --------------------------------------------------------------------------


def test_figure1a_with_image(rng, tmp_path):
    layers = [rng.random(784), rng.random(784), rng.random(50)]  # 50 -> 8x8 with padding
    fig = ff.figure1a_activation_patterns(layers, image=rng.random(784))
    # image + (grid + colourbar) per layer
    check_saved(fig, tmp_path, "fig1a", n_axes=1 + 2 * 3)
    for ax in fig.axes[:2]:
        check_labels(ax)
    assert fig.axes[1].images[0].get_array().shape == (28, 28)
    assert fig.axes[3].images[0].get_array().shape == (8, 8)  # panels first, colour bars last
    assert fig.axes[4].get_ylabel() == "activation"


def test_figure1a_without_image(rng, tmp_path):
    fig = ff.figure1a_activation_patterns([rng.random(100)], title=None)
    check_saved(fig, tmp_path, "fig1a_noimg", n_axes=2)
    check_labels(fig.axes[0])


def test_figure1b(rng, tmp_path):
    X, labels, ens = sparse_representations(rng, 300, 64)
    fig = ff.figure1b_class_mean_activations(X, labels, ens, MNIST_CLASS_NAMES)
    check_saved(fig, tmp_path, "fig1b", n_axes=10)
    for ax, name in zip(fig.axes, MNIST_CLASS_NAMES):
        check_labels(ax)
        assert ax.get_title() == f"{name} (n={int(np.sum(labels == int(name)))})"
    # second line of each subplot holds the ensemble dots
    dots = fig.axes[0].lines[1]
    np.testing.assert_array_equal(dots.get_xdata(), ens[0])


def test_activation_map_large(rng, tmp_path):
    X, labels, _ = sparse_representations(rng, 2000, 784)
    fig = ff.activation_map(X, labels, FASHION_MNIST_CLASS_NAMES, layer=1)
    check_saved(fig, tmp_path, "activation_map", n_axes=2)  # map + colourbar
    ax = fig.axes[0]
    check_labels(ax)
    assert [t.get_text() for t in ax.get_yticklabels()] == FASHION_MNIST_CLASS_NAMES
    # rows sorted by class
    shown = ax.images[0].get_array()
    np.testing.assert_allclose(shown, X[np.argsort(labels, kind="stable")])
    assert fig.axes[1].get_ylabel() == "activation"


def test_activation_map_missing_class(rng, tmp_path):
    X = rng.random((30, 16))
    labels = np.repeat([0, 2, 3], 10)  # class 1 has no images
    fig = ff.activation_map(X, labels, ["a", "b", "c", "d"], layer=2)
    check_saved(fig, tmp_path, "activation_map_small", n_axes=2)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "c", "d"]


# --------------------------------------------------------------------------
# Figure 2
# --------------------------------------------------------------------------


def test_figure2(rng, tmp_path):
    sizes = {
        "ff": rng.integers(1, 5, size=(15, 10)),
        "bpff": rng.integers(2, 10, size=(15, 10)),
        "bp": rng.integers(30, 80, size=(15, 10)),
    }
    fig = ff.figure2_ensemble_sizes(sizes, MNIST_CLASS_NAMES)
    check_saved(fig, tmp_path, "fig2", n_axes=1)
    ax = fig.axes[0]
    check_labels(ax)
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == MNIST_CLASS_NAMES
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["FF", "BP/FF", "BP"]
    assert len(ax.patches) == 30
    # bar tops are the means over seeds
    tops = [p.get_y() + p.get_height() for p in ax.patches[:10]]
    np.testing.assert_allclose(tops, sizes["ff"].mean(axis=0))


def test_figure2_zeros_on_log_axis(tmp_path):
    sizes = {"ff": np.array([[0, 2, 0], [0, 4, 1]]), "bp": np.array([0, 10, 20])}
    fig = ff.figure2_ensemble_sizes(sizes, ["a", "b", "c"])
    check_saved(fig, tmp_path, "fig2_zeros", n_axes=1)
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == pytest.approx(0.5)
    tops = np.array([p.get_y() + p.get_height() for p in ax.patches])
    assert np.all(np.isfinite(tops)) and np.all(tops >= 0.5)
    # an all-zero class is a zero-height bar sitting on the floor
    assert ax.patches[0].get_y() == pytest.approx(0.5)
    assert ax.patches[0].get_height() == pytest.approx(0.0)
    assert ax.patches[3].get_height() == pytest.approx(0.0)  # bp, class a (single seed)


def test_figure2_shape_mismatch():
    with pytest.raises(ValueError, match="sizes"):
        ff.figure2_ensemble_sizes({"ff": np.ones((3, 4))}, MNIST_CLASS_NAMES)


# --------------------------------------------------------------------------
# Figure 3
# --------------------------------------------------------------------------


def test_figure3a(tmp_path):
    fig = ff.figure3a_shared_units(np.array([3, 10, 40]), np.array([10, 40, 77]), 784,
                                   "T-shirt/top", "Shirt")
    check_saved(fig, tmp_path, "fig3a", n_axes=2)
    for ax in fig.axes:
        check_labels(ax)
        assert ax.images[0].get_array().shape == (28, 28)
    circles = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_array_equal(np.asarray(circles), [[10, 0], [12, 1]])  # (col, row)
    assert "T-shirt/top" in fig.axes[0].get_title()


def test_figure3a_rejects_bad_units():
    with pytest.raises(ValueError, match="units_b"):
        ff.figure3a_shared_units(np.array([1]), np.array([100]), 50, "a", "b")


def test_figure3b(rng, tmp_path):
    m = rng.integers(0, 4, size=(10, 10))
    m = m + m.T
    fig = ff.figure3b_shared_units_matrix(m, FASHION_MNIST_CLASS_NAMES)
    check_saved(fig, tmp_path, "fig3b", n_axes=2)
    ax = fig.axes[0]
    check_labels(ax)
    assert [t.get_text() for t in ax.get_xticklabels()] == FASHION_MNIST_CLASS_NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == FASHION_MNIST_CLASS_NAMES
    assert ax.get_xticklabels()[0].get_rotation() != 0
    assert len(ax.texts) == 100
    assert ax.texts[1].get_text() == str(m[0, 1])


def test_figure3b_shape_mismatch():
    with pytest.raises(ValueError, match="matrix"):
        ff.figure3b_shared_units_matrix(np.zeros((3, 4), int), ["a", "b", "c"])
    with pytest.raises(ValueError, match="class_names"):
        ff.figure3b_shared_units_matrix(np.zeros((3, 3), int), ["a", "b"])


# --------------------------------------------------------------------------
# Figure 4
# --------------------------------------------------------------------------


def test_figure4a(rng, tmp_path):
    X = np.clip(rng.normal(0, 0.05, size=(200, 100)), 0, None)
    X[:, 17] += 0.34
    fig = ff.figure4a_unseen_activations(X, "7")
    check_saved(fig, tmp_path, "fig4a", n_axes=2)
    check_labels(fig.axes[0])
    assert "7" in fig.axes[0].get_title()


def test_figure4b(rng, tmp_path):
    m = rng.random(100) * 0.05
    m[17] = 0.34
    fig = ff.figure4b_mean_activity(m, np.array([17]), "7")
    check_saved(fig, tmp_path, "fig4b", n_axes=1)
    check_labels(fig.axes[0])
    np.testing.assert_array_equal(fig.axes[0].lines[1].get_xdata(), [17])


def test_figure4b_accepts_boolean_mask(rng):
    m = rng.random(20)
    mask = np.zeros(20, bool)
    mask[[2, 5]] = True
    fig = ff.figure4b_mean_activity(m, mask, "x")
    np.testing.assert_array_equal(fig.axes[0].lines[1].get_xdata(), [2, 5])


def test_figure4c(rng, tmp_path):
    n = 100
    rho = rng.uniform(5, 50, size=n)
    nh = rng.permutation(n).astype(float)  # contains 0
    ens = np.flatnonzero(nh < 2)
    rho[ens] = 0.5
    fig = ff.figure4c_decision_diagram(rho, nh, ens, rho_cut=1.0, nh_cut=3.0)
    check_saved(fig, tmp_path, "fig4c", n_axes=1)
    ax = fig.axes[0]
    check_labels(ax)
    assert ax.get_xscale() == "log"
    assert ax.get_yscale() == "symlog"
    assert len(ax.lines) == 2  # two dashed cut lines
    fig2 = ff.figure4c_decision_diagram(rho, nh, ens, None, None, log_scale=False)
    assert len(fig2.axes[0].lines) == 0
    assert fig2.axes[0].get_xscale() == "linear"


def test_figure4c_shape_mismatch():
    with pytest.raises(ValueError, match="n_higher"):
        ff.figure4c_decision_diagram(np.ones(5), np.ones(4), np.array([0]), None, None)


# --------------------------------------------------------------------------
# Figure 7
# --------------------------------------------------------------------------


def test_figure7(rng, tmp_path):
    fractions = {
        "ff": np.concatenate([np.ones(775), rng.uniform(0.5, 1, 9)]),
        "bpff": np.clip(rng.normal(0.75, 0.05, 784), 0, 1),
        "bp": rng.uniform(0, 1, 784),
    }
    fig = ff.figure7_negative_weight_fraction(fractions, layer=2)
    check_saved(fig, tmp_path, "fig7", n_axes=1)
    ax = fig.axes[0]
    check_labels(ax)
    assert len(ax.patches) == 3  # one StepPatch per model
    colours = [p.get_edgecolor()[:3] for p in ax.patches]
    import matplotlib.colors as mcolors

    for c, name in zip(colours, ["tab:blue", "tab:red", "tab:green"]):
        np.testing.assert_allclose(c, mcolors.to_rgb(name))
    # the FF value 1.0 lands in the last bin
    assert ax.patches[0].get_data().values[-1] >= 775


def test_figure7_rejects_out_of_range():
    with pytest.raises(ValueError, match="fractions"):
        ff.figure7_negative_weight_fraction({"ff": np.array([0.2, 1.5])}, layer=2)


# --------------------------------------------------------------------------
# Figure 8
# --------------------------------------------------------------------------


def test_figure8a(rng, tmp_path):
    m = rng.random(100) * 0.1
    m[[10, 60]] = [0.9, 0.6]
    fig = ff.figure8a_method_comparison(m, np.array([10, 60]), np.array([10]), "3")
    check_saved(fig, tmp_path, "fig8a", n_axes=1)
    ax = fig.axes[0]
    check_labels(ax)
    assert len(ax.collections) == 2


def test_figure8b(rng, tmp_path):
    s1 = rng.integers(1, 100, size=60).astype(float)
    s2 = 0.98 * s1 + 9.95 + rng.normal(0, 3, size=60)
    fig = ff.figure8b_method_sizes(s1, s2, slope=0.98, intercept=9.95)
    check_saved(fig, tmp_path, "fig8b", n_axes=1)
    ax = fig.axes[0]
    check_labels(ax)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("0.98" in t and "9.95" in t for t in legend)
    assert ax.get_xlim() == ax.get_ylim()


def test_figure8b_shape_mismatch():
    with pytest.raises(ValueError, match="sizes_method2"):
        ff.figure8b_method_sizes(np.ones(5), np.ones(6), 1.0, 0.0)


# --------------------------------------------------------------------------
# input validation and thread use
# --------------------------------------------------------------------------


def test_label_and_representation_mismatch(rng):
    X = rng.random((20, 16))
    with pytest.raises(ValueError, match="labels"):
        ff.activation_map(X, np.zeros(19, int), ["a", "b"], layer=1)
    with pytest.raises(ValueError, match="labels"):
        ff.activation_map(X, np.full(20, 5), ["a", "b"], layer=1)
    with pytest.raises(ValueError, match="representations"):
        ff.activation_map(X[0], np.zeros(16, int), ["a"], layer=1)
    with pytest.raises(ValueError, match="ensembles"):
        ff.figure1b_class_mean_activations(X, np.zeros(20, int), {0: np.array([16])}, ["a"])


def test_figures_in_threads(rng, tmp_path):
    """Figures are built without pyplot, so worker threads can render them."""
    X, labels, _ = sparse_representations(rng, 200, 64)
    errors = []

    def work(i):
        try:
            fig = ff.activation_map(X, labels, MNIST_CLASS_NAMES, layer=1)
            ff.save_png(fig, tmp_path / f"thread{i}.png")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(4):
        assert png_size(tmp_path / f"thread{i}.png")[0] > 100


def test_training_curves_one_panel_per_model_one_line_per_run_and_layer(tmp_path):
    histories = {
        "ff": [[[0.9, 0.6, 0.4], [0.8, 0.5]], [[1.0, 0.7, 0.3], [0.7, 0.4]]],  # 2 seeds x 2 layers
        "bp": [[[2.3, 1.1, 0.7, 0.5]]],
    }
    fig = ff.training_curves(histories)
    check_saved(fig, tmp_path, "training_curves", n_axes=2)
    ff_axes, bp_axes = fig.axes
    assert len(ff_axes.lines) == 4 and len(bp_axes.lines) == 1
    x, y = bp_axes.lines[0].get_data()
    assert list(x) == [1, 2, 3, 4] and list(y) == [2.3, 1.1, 0.7, 0.5]
    assert list(ff_axes.lines[1].get_ydata()) == [0.8, 0.5]
    assert [t.get_text() for t in ff_axes.get_legend().get_texts()] == ["layer 1", "layer 2"]
    assert ff_axes.get_title() == "FF (2 runs)"
    with pytest.raises(ValueError, match="at least one model"):
        ff.training_curves({})
    with pytest.raises(ValueError, match="histories\\['bp'\\]"):
        ff.training_curves({"bp": [[[]]]})
