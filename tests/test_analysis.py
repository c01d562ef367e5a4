import csv
import io
import json
import math

import numpy as np
import pytest

from fflab.analysis import (
    Table,
    accuracy_table,
    class_ensembles,
    class_sparseness,
    ensemble_size_table,
    ensemble_sizes,
    fraction_negative_incoming,
    fraction_positive_weights,
    linear_fit,
    mean_and_standard_error,
    method1_ensemble,
    method1_threshold,
    method2_decision_diagram,
    method2_ensemble,
    method_size_regression,
    shared_units_matrix,
    sparseness_index,
    unseen_class_activity,
    weight_sign_table,
)

HAND_X = np.array(
    [
        [0.0, 0.9, 0.1, 0.5, 0.2],
        [0.1, 0.8, 0.2, 0.6, 0.1],
        [0.0, 1.0, 0.1, 0.7, 0.9],
        [0.2, 0.7, 0.0, 0.4, 0.0],
    ]
)


# Method 1


def test_method1_hand_computed_threshold_and_units():
    # 20 sorted values: 4x0.0, 4x0.1, 3x0.2, 0.4, 0.5, 0.6, 0.7, 0.7, 0.8, 0.9, 0.9, 1.0.
    # q=0.75 -> position 14.25 between two 0.7s; medians 0.05, 0.85, 0.1, 0.55, 0.15.
    result = method1_ensemble(HAND_X, quantile=0.75)
    assert result.threshold == pytest.approx(0.7)
    assert result.medians == pytest.approx([0.05, 0.85, 0.1, 0.55, 0.15])
    assert result.units.tolist() == [1]
    assert result.units.dtype == np.int64

    # q=0.5 -> position 9.5 between two 0.2s.
    result = method1_ensemble(HAND_X, quantile=0.5)
    assert result.threshold == pytest.approx(0.2)
    assert result.units.tolist() == [1, 3]


def test_method1_saturated_units_count_with_greater_or_equal():
    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 0.5, size=(10, 6)).astype(np.float32)
    X[:, [0, 2, 5]] = np.float32(1.0)
    result = method1_ensemble(X, quantile=0.95)
    assert result.threshold == 1.0
    assert not np.any(result.medians > result.threshold)  # a strict '>' would find nothing
    assert result.units.tolist() == [0, 2, 5]


def test_method1_empty_class_gives_empty_ensemble():
    result = method1_ensemble(np.empty((0, 4)))
    assert result.units.size == 0
    assert math.isnan(result.threshold)
    assert result.medians.shape == (4,)


@pytest.mark.parametrize("quantile", [0, 1, 1.5, -0.1, "0.9"])
def test_method1_rejects_quantile_outside_open_unit_interval(quantile):
    with pytest.raises(ValueError, match="quantile"):
        method1_ensemble(HAND_X, quantile=quantile)


def test_method1_rejects_non_matrix_and_nan():
    with pytest.raises(ValueError, match="X must be a 2-D"):
        method1_ensemble(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        method1_ensemble(np.array([[0.1, np.nan]]))


# A bulk of small values (0.02-0.04) under one strong unit: 16 of 20 values are bulk.
BULK_X = np.array(
    [
        [0.02, 0.03, 0.02, 0.04, 0.9],
        [0.02, 0.03, 0.04, 0.04, 0.9],
        [0.02, 0.03, 0.02, 0.04, 0.9],
        [0.02, 0.03, 0.04, 0.04, 0.9],
    ]
)


def test_method1_histogram_threshold_reads_the_quantile_off_the_bins():
    # np.quantile at 0.75: position 14.25 of the sorted values, inside the bulk (0.04),
    # so unit 3 (median 0.04) is active with unit 4.
    assert method1_threshold(BULK_X, 0.75) == pytest.approx(0.04)
    assert method1_ensemble(BULK_X, 0.75).units.tolist() == [3, 4]
    # 10 bins from 0.02 to 0.9 (width 0.088): the bulk fills bin 0 (16 of 20 = 0.8 >= 0.75),
    # so the threshold is its upper edge, 0.108, above the whole bulk.
    result = method1_ensemble(BULK_X, 0.75, threshold="histogram", bins=10)
    assert result.threshold == pytest.approx(0.108)
    assert result.units.tolist() == [4]
    # 0.85 is reached only at the last bin: its upper edge is the largest value.
    assert method1_threshold(BULK_X, 0.85, "histogram", 10) == pytest.approx(0.9)
    # One bin: the largest value, whatever the quantile; many bins approach np.quantile from above.
    assert method1_threshold(BULK_X, 0.1, "histogram", 1) == pytest.approx(0.9)
    fine = method1_threshold(HAND_X, 0.5, "histogram", 10_000)
    assert 0.2 <= fine <= 0.2 + 1e-4
    # 19 of 20 values reach 0.95 exactly, without a rounding error moving the bin.
    nineteen = np.array([[0.05] * 19 + [0.95]])
    assert method1_threshold(nineteen, 0.95, "histogram", 10) == pytest.approx(0.14)
    # Through class_ensembles, as the pipeline calls it.
    ensembles = class_ensembles(np.vstack([BULK_X, BULK_X]), np.array([0] * 4 + [1] * 4), "method1",
                                quantile=0.75, threshold="histogram", bins=10)
    assert {c: e.tolist() for c, e in ensembles.items()} == {0: [4], 1: [4]}


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": "percentile"}, "method1_threshold must be one of quantile, histogram"),
    ({"threshold": "histogram", "bins": 0}, "bins must be an integer >= 1"),
    ({"threshold": "histogram", "bins": 2.5}, "bins must be an integer >= 1"),
    ({"threshold": "histogram", "bins": True}, "bins must be an integer >= 1"),
])
def test_method1_threshold_rejects_unknown_rules_and_bad_bins(kwargs, match):
    with pytest.raises(ValueError, match=match):
        method1_threshold(HAND_X, 0.9, **kwargs)
    with pytest.raises(ValueError, match=match):
        method1_ensemble(HAND_X, 0.9, **kwargs)
    with pytest.raises(ValueError, match=match):  # also for a class with no image
        method1_ensemble(np.empty((0, 4)), 0.9, **kwargs)


# Method 2


def test_decision_diagram_hand_computed_with_ties_and_bound_correction():
    mean = np.array([0.1, 0.2, 0.45, 0.45, 0.9])
    rho, n_higher = method2_decision_diagram(mean, epsilon=0.2)
    # 0.1 and 0.2: 2 units in the window / 0.4; 0.45 (twice): 2 / 0.4;
    # 0.9: alone, window cut by the bound: 1 / (0.2 + 0.1).
    assert rho == pytest.approx([5.0, 5.0, 5.0, 5.0, 1 / 0.3])
    assert n_higher.tolist() == [4, 3, 1, 1, 0]
    assert n_higher.dtype == np.int64

    rho_plain, _ = method2_decision_diagram(mean, epsilon=0.2, upper_bound=None)
    assert rho_plain[-1] == pytest.approx(2.5)


def test_decision_diagram_unit_at_the_bound_divides_by_epsilon():
    rho, n_higher = method2_decision_diagram([1.0, 0.0], epsilon=0.2)
    assert rho == pytest.approx([5.0, 2.5])
    assert n_higher.tolist() == [0, 1]


def test_decision_diagram_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        method2_decision_diagram([0.1, 0.2], epsilon=0)
    with pytest.raises(ValueError, match="upper_bound"):
        method2_decision_diagram([0.1, 0.2], upper_bound=float("inf"))
    with pytest.raises(ValueError, match="mean_activity"):
        method2_decision_diagram([[0.1, 0.2]])


def test_method2_automatic_cut_three_prominent_units_above_a_bulk():
    means = np.linspace(0.0, 0.05, 203)
    prominent = [17, 42, 150]
    means[prominent] = [0.95, 0.9, 0.85]
    X = np.tile(means, (2, 1))
    result = method2_ensemble(X)
    assert result.units.tolist() == prominent
    # Bulk: 200 units in every window -> 200 / 0.4 = 500 = median density.
    assert result.rho_cut == pytest.approx(math.sqrt(2.5 * 500))
    assert result.nh_cut == 3
    assert result.rho[prominent] == pytest.approx([3 / 0.25, 3 / 0.3, 3 / 0.35])
    assert result.mean_activity == pytest.approx(means)


def test_method2_automatic_cut_one_prominent_unit_as_in_figure_4():
    rng = np.random.default_rng(1)
    X = rng.uniform(0.0, 0.1, size=(50, 784))
    X[:, 300] = rng.uniform(0.3, 0.38, size=50)
    result = method2_ensemble(X)
    assert result.units.tolist() == [300]
    assert result.nh_cut == 1


def test_method2_given_cuts_and_no_dense_unit():
    X = np.array([[0.1, 0.2, 0.45, 0.45, 0.9]])
    assert method2_ensemble(X, rho_cut=5.0, nh_cut=2).units.tolist() == [4]
    assert method2_ensemble(X, rho_cut=5.5, nh_cut=2).units.tolist() == [2, 3, 4]
    result = method2_ensemble(X, rho_cut=1e9)
    assert result.nh_cut == 5
    assert result.units.tolist() == [0, 1, 2, 3, 4]


def test_method2_empty_class_and_bad_cuts():
    result = method2_ensemble(np.empty((0, 3)))
    assert result.units.size == 0
    assert np.all(np.isnan(result.mean_activity))
    with pytest.raises(ValueError, match="rho_cut"):
        method2_ensemble(HAND_X, rho_cut=-1.0)
    with pytest.raises(ValueError, match="nh_cut"):
        method2_ensemble(HAND_X, nh_cut=1.5)


# Ensembles per class


def _three_class_toy():
    active = {0: [0, 1], 1: [1, 2], 2: [4]}
    rows, labels = [], []
    for c, units in active.items():
        for _ in range(4):
            row = np.full(6, 0.1)
            row[units] = 0.9
            rows.append(row)
            labels.append(c)
    return np.array(rows), np.array(labels)


def test_class_ensembles_and_shared_units_on_three_classes():
    representations, labels = _three_class_toy()
    ensembles = class_ensembles(representations, labels, method="method1", quantile=0.9)
    assert list(ensembles) == [0, 1, 2]
    assert {c: u.tolist() for c, u in ensembles.items()} == {0: [0, 1], 1: [1, 2], 2: [4]}
    assert ensemble_sizes(ensembles).tolist() == [2, 2, 1]
    assert ensemble_sizes(ensembles, classes=[2, 0]).tolist() == [1, 2]
    shared = shared_units_matrix(ensembles, [0, 1, 2])
    assert shared.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert shared_units_matrix(ensembles, [2, 1]).tolist() == [[1, 0], [0, 2]]


def test_class_ensembles_method2_matches_direct_call_and_missing_class_is_empty():
    means = np.linspace(0.0, 0.05, 203)
    means[[5, 6, 7]] = [0.95, 0.9, 0.85]
    representations = np.tile(means, (3, 1))
    labels = np.array([4, 4, 4])
    ensembles = class_ensembles(representations, labels, method="method2", classes=[4, 9], epsilon=0.2)
    assert ensembles[4].tolist() == method2_ensemble(representations).units.tolist() == [5, 6, 7]
    assert ensembles[9].size == 0


def test_class_ensembles_rejects_unknown_method_and_params():
    representations, labels = _three_class_toy()
    with pytest.raises(ValueError, match="method must be one of 'method1', 'method2'"):
        class_ensembles(representations, labels, method="method3")
    with pytest.raises(ValueError, match="epsilon"):
        class_ensembles(representations, labels, method="method1", epsilon=0.2)
    with pytest.raises(ValueError, match="labels"):
        class_ensembles(representations, labels[:-1])


def test_shared_units_matrix_rejects_missing_class():
    with pytest.raises(ValueError, match="classes"):
        shared_units_matrix({0: np.array([1])}, [0, 1])


def test_unseen_class_activity_on_known_means():
    representations = np.array(
        [
            [0.4, 0.9, 0.9, 0.9],  # class 0, ensemble {0}
            [0.6, 0.9, 0.9, 0.9],
            [0.9, 0.2, 0.3, 0.9],  # class 1, ensemble {1, 2}
            [0.9, 0.4, 0.1, 0.9],
            [0.9, 0.9, 0.9, 0.30],  # class 2 (unseen), ensemble {3}
            [0.9, 0.9, 0.9, 0.35],
            [0.9, 0.9, 0.9, 0.37],
        ]
    )
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    ensembles = {0: np.array([0]), 1: np.array([1, 2]), 2: np.array([3])}
    result = unseen_class_activity(representations, labels, 2, ensembles)
    assert result.unseen_units.tolist() == [3]
    assert result.unseen_mean_activity == pytest.approx(0.34)
    # Pooled over the 2 + 4 (image, unit) pairs: (0.4 + 0.6 + 0.2 + 0.3 + 0.4 + 0.1) / 6.
    assert result.seen_mean_activity == pytest.approx(2.0 / 6)
    assert result.seen_classes == (0, 1)


def test_unseen_class_activity_empty_ensemble_and_missing_class():
    representations = np.ones((2, 3))
    labels = np.array([0, 1])
    result = unseen_class_activity(representations, labels, 1, {0: np.array([0]), 1: np.array([])})
    assert math.isnan(result.unseen_mean_activity)
    assert result.seen_mean_activity == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unseen_class"):
        unseen_class_activity(representations, labels, 5, {0: np.array([0])})


# Sparseness


def test_sparseness_uniform_one_hot_and_intermediate():
    assert sparseness_index(np.full(10, 0.3)) == pytest.approx(0.0, abs=1e-12)
    assert sparseness_index(np.eye(5)[2]) == pytest.approx(1.0)
    # [1, 1, 0, 0]: (1 - 0.25 / 0.5) / (1 - 1/4) = 2/3.
    rows = sparseness_index(np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert rows[0] == pytest.approx(2 / 3)
    assert math.isnan(rows[1])


def test_sparseness_rejects_negative_and_single_unit():
    with pytest.raises(ValueError, match="non-negative"):
        sparseness_index([0.5, -0.1])
    with pytest.raises(ValueError, match="at least 2 units"):
        sparseness_index([0.5])


def test_class_sparseness_of_mean_vectors():
    representations = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.2, 0.2]])
    labels = np.array([3, 3, 7])
    result = class_sparseness(representations, labels, classes=[3, 7, 8])
    assert result[3] == pytest.approx(1.0)
    assert result[7] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(result[8])


# Weights


def test_weight_sign_fractions():
    weight = np.array([[1.0, -2.0, 0.0], [-1.0, -1.0, 3.0]])
    assert fraction_positive_weights(weight) == pytest.approx(2 / 6)
    assert fraction_negative_incoming(weight) == pytest.approx([1 / 3, 2 / 3])


def test_weight_functions_reject_non_matrix():
    with pytest.raises(ValueError, match="weight"):
        fraction_positive_weights(np.ones(3))
    with pytest.raises(ValueError, match="weight"):
        fraction_negative_incoming(np.ones((0, 3)))


# Method comparison


def test_method_size_regression_recovers_line_with_method1_as_y():
    sizes_method2 = [1, 2, 3, 4]
    sizes_method1 = [3, 5, 7, 9]
    fit = method_size_regression(sizes_method1, sizes_method2)
    assert fit.slope == pytest.approx(2.0)
    assert fit.intercept == pytest.approx(1.0)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.n_points == 4


def test_linear_fit_r2_of_noisy_points():
    fit = linear_fit([0, 1, 2], [0, 2, 1])
    # slope 0.5, intercept 0.5, residuals -0.5, 1, -0.5 -> 1 - 1.5 / 2.
    assert (fit.slope, fit.intercept, fit.r2) == pytest.approx((0.5, 0.5, 0.25))


def test_method_size_regression_rejects_degenerate_input():
    with pytest.raises(ValueError, match="at least 2 points"):
        method_size_regression([3], [1])
    with pytest.raises(ValueError, match="sizes_method2.*zero variance"):
        method_size_regression([1, 2, 3], [2, 2, 2])
    with pytest.raises(ValueError, match="same length"):
        method_size_regression([1, 2, 3], [1, 2])


# Aggregation and tables


def test_mean_and_standard_error_by_hand():
    mean, sem = mean_and_standard_error([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert sem == pytest.approx(math.sqrt(5 / 3) / 2)
    means, sems = mean_and_standard_error(np.array([[1.0, 10.0], [3.0, 10.0]]), axis=0)
    assert means == pytest.approx([2.0, 10.0])
    assert sems == pytest.approx([1.0, 0.0])
    single_mean, single_sem = mean_and_standard_error([0.7])
    assert single_mean == pytest.approx(0.7)
    assert math.isnan(single_sem)
    with pytest.raises(ValueError, match="values"):
        mean_and_standard_error([])


def _records():
    return [
        {
            "model": "bp", "dataset": "mnist", "seed": 0, "accuracy": 0.80,
            "ensemble_sizes_method1": [[300, 280], [130, 140]],
            "fraction_positive_weights": [0.44, 0.32],
        },
        {
            "model": "ff", "dataset": "mnist", "seed": 0, "accuracy": 0.92,
            "ensemble_sizes_method1": [[2, 4], [6, 6]],
            "fraction_positive_weights": [0.62, 0.002],
        },
        {
            "model": "ff", "dataset": "mnist", "seed": 1, "accuracy": 0.94,
            "ensemble_sizes_method1": [[2, 2], [4, 4]],
            "fraction_positive_weights": [0.64, 0.004],
        },
        {
            "model": "ff", "dataset": "fashion_mnist", "seed": 0, "accuracy": 0.78,
            "ensemble_sizes_method1": [[2, 3], [18, 18]],
            "fraction_positive_weights": [0.44, 0.012],
        },
    ]


def test_accuracy_table_cells_order_and_renderings():
    table = accuracy_table(_records())
    assert table.name == "table1"
    assert [row[0] for row in table.rows] == ["FF", "BP"]
    assert table.columns == [
        "Model", "MNIST mean", "MNIST se", "MNIST runs",
        "FASHIONMNIST mean", "FASHIONMNIST se", "FASHIONMNIST runs",
    ]
    ff, bp = table.rows
    assert ff[1] == pytest.approx(0.93)
    assert ff[2] == pytest.approx(0.01)
    assert ff[3] == 2
    assert bp[1:4] == [pytest.approx(0.8), None, 1]
    assert bp[4:7] == [None, None, 0]

    markdown = table.to_markdown()
    assert "| Model | MNIST | MNIST runs | FASHIONMNIST | FASHIONMNIST runs |" in markdown
    assert "| FF | 0.93 ± 1.0e-02 | 2 | 0.78 ± n/a | 1 |" in markdown
    assert "| BP | 0.80 ± n/a | 1 | - | 0 |" in markdown

    parsed = list(csv.reader(io.StringIO(table.to_csv())))
    assert parsed[0] == table.columns
    assert float(parsed[1][1]) == pytest.approx(0.93)
    assert float(parsed[1][2]) == pytest.approx(0.01)
    assert parsed[2][2] == ""

    as_dict = json.loads(json.dumps(table.to_dict()))
    assert as_dict["rows"][1][2] is None


def test_ensemble_size_table_mean_over_classes_then_seeds():
    table = ensemble_size_table(_records(), quantile=0.95)
    assert "threshold of 0.95" in table.title
    assert [row[0] for row in table.rows] == ["FF", "BP"]
    column = table.columns.index("MNIST Layer 1 mean")
    ff = table.rows[0]
    # Seed 0: mean(2, 4) = 3; seed 1: mean(2, 2) = 2 -> 2.5 ± 0.5.
    assert ff[column] == pytest.approx(2.5)
    assert ff[column + 1] == pytest.approx(0.5)
    layer2 = table.columns.index("MNIST Layer 2 mean")
    assert ff[layer2:layer2 + 2] == [pytest.approx(5.0), pytest.approx(1.0)]
    markdown = table.to_markdown()
    assert ("| Model | MNIST Layer 1 | MNIST Layer 2 | MNIST runs | MNIST classes "
            "| FASHIONMNIST Layer 1 |") in markdown
    assert "| FF | 2.5 ± 0.50 | 5.0 ± 1.00 | 2 | 4 | 2.5 ± n/a | 18.0 ± n/a | 1 | 2 |" in markdown
    assert "| BP | 290.0 ± n/a | 135.0 ± n/a | 1 | 2 | - | - | 0 | 0 |" in markdown


def test_weight_sign_table_cell_and_csv():
    table = weight_sign_table(_records())
    assert table.name == "table3"
    column = table.columns.index("MNIST Layer 2 mean")
    assert table.rows[0][column] == pytest.approx(0.003)
    assert table.rows[0][column + 1] == pytest.approx(0.001)
    assert "| FF | 0.63 ± 0.01 | 0.003 ± 0.001 | 2 |" in table.to_markdown()
    header = table.to_csv().splitlines()[0]
    assert header.startswith("Model,MNIST Layer 1 mean,MNIST Layer 1 se,MNIST Layer 2 mean")


def test_table_builders_reject_bad_records():
    with pytest.raises(ValueError, match="model"):
        accuracy_table([{"model": "cnn", "dataset": "mnist", "seed": 0, "accuracy": 0.9}])
    with pytest.raises(ValueError, match="more than once"):
        accuracy_table([{"model": "ff", "dataset": "mnist", "seed": 0, "accuracy": 0.9}] * 2)
    with pytest.raises(ValueError, match="accuracy"):
        accuracy_table([{"model": "ff", "dataset": "mnist", "seed": 0}])
    with pytest.raises(ValueError, match="ensemble_sizes_method1"):
        ensemble_size_table(
            [{"model": "ff", "dataset": "mnist", "seed": 0, "ensemble_sizes_method1": [[]]}]
        )


def test_table_markdown_keeps_unpaired_columns():
    table = Table(name="t", title="T", columns=["a", "b mean", "b se"], rows=[["x", 1.25, 0.5]])
    assert table.to_markdown(include_title=False) == "| a | b |\n|---|---|\n| x | 1.25 ± 0.50 |\n"


# ------------------------------------------------------------------ defects with known answers


def test_method1_never_counts_units_at_the_floor_of_the_layer():
    # ReLU-like layer: 97% of the values are exactly 0, so the 0.95 quantile is 0.
    X = np.zeros((10, 100))
    X[:, 7] = 0.9  # one unit always on
    X[:5, 8] = 0.5  # one unit on for half of the images: median 0.25
    X[0, 20:30] = 0.1  # noise on one image
    result = method1_ensemble(X, 0.95)
    assert result.threshold == 0.0
    assert result.units.tolist() == [7, 8]  # not the 98 units whose median is 0
    # sigmoid outputs that underflow to exactly 0.0: same rule, floor 0
    assert method1_ensemble(np.where(X > 0, X, 0.0).astype(np.float32), 0.95).units.tolist() == [7, 8]
    # a layer whose floor is not 0 (shifted): still never the floor
    assert method1_ensemble(X + 0.25, 0.95).units.tolist() == [7, 8]
    # every value equal: no unit stands out
    assert method1_ensemble(np.full((4, 6), 0.3), 0.9).units.size == 0


def test_method1_keeps_saturated_units_at_the_top():
    X = np.full((6, 50), 0.02, dtype=np.float32)
    X[:, [3, 4, 5]] = 1.0  # saturated sigmoid units: the 0.95 quantile is 1.0 itself
    result = method1_ensemble(X, 0.95)
    assert result.threshold == 1.0
    assert result.units.tolist() == [3, 4, 5]


def test_ensemble_size_table_counts_a_class_without_images_as_missing_not_zero():
    records = [
        {"model": "bp", "dataset": "mnist", "seed": 0,
         "ensemble_sizes_method1": [[300, None, 280], [130, None, 140]]},
        {"model": "bp", "dataset": "mnist", "seed": 1,  # a collapsed run: no class analysed
         "ensemble_sizes_method1": [[None, None, None], [None, None, None]]},
        {"model": "bp", "dataset": "mnist", "seed": 2,
         "ensemble_sizes_method1": [[100, 100, 100], [50, 50, 50]]},
    ]
    table = ensemble_size_table(records)
    row = table.rows[0]
    column = table.columns.index("MNIST Layer 1 mean")
    # seed 0: mean(300, 280) = 290 (not mean(300, 0, 280)); seed 1 left out; seed 2: 100
    assert row[column] == pytest.approx(195.0)
    assert row[column + 1] == pytest.approx(95.0)
    assert row[table.columns.index("MNIST runs")] == 2
    assert row[table.columns.index("MNIST classes")] == 5


def test_method2_upper_bound_follows_the_activation():
    from fflab.models.components import ACTIVATIONS

    assert {name: a.upper_bound for name, a in ACTIVATIONS.items()} == {"sigmoid": 1.0, "relu": None}
    # ReLU activities above 1: with a bound of 1 the density of the top unit would be
    # divided by a window cut at 1 (floored at epsilon); without a bound it is not.
    mean = np.array([0.1, 0.1, 0.12, 0.11, 1.9, 2.0])
    rho_bounded, _ = method2_decision_diagram(mean, 0.2, 1.0)
    rho_free, _ = method2_decision_diagram(mean, 0.2, None)
    assert rho_free[5] == pytest.approx(2 / 0.4)
    assert rho_bounded[5] == pytest.approx(2 / 0.2)


def test_method_size_fits_per_model_and_where_both_methods_find_an_ensemble():
    from fflab.analysis import method_size_fits

    # FF: Method 1 = Method 2 + 1 exactly; BP: saturated, Method 2 finds nothing (x = 0)
    m2 = np.array([1, 2, 3, 4, 0, 0, 0])
    m1 = np.array([2, 3, 4, 5, 300, 280, 310])
    groups = np.array(["ff"] * 4 + ["bp"] * 3, dtype=object)
    fits = method_size_fits(m1, m2, groups)
    assert fits.both_found.slope == pytest.approx(1.0)
    assert fits.both_found.intercept == pytest.approx(1.0)
    assert fits.both_found.n_points == 4
    assert fits.left_out == 3
    assert fits.per_group["ff"].slope == pytest.approx(1.0)
    assert fits.per_group["bp"] is None  # x constant: undefined
    assert fits.all_points.slope < 0  # the pooled line is pulled by the BP points


def test_hoyer_and_treves_rolls_sparseness_known_values():
    from fflab.analysis import hoyer_sparseness

    assert hoyer_sparseness(np.array([0.0, 0.0, 1.0, 0.0])) == pytest.approx(1.0)
    assert hoyer_sparseness(np.ones(9)) == pytest.approx(0.0)
    # two equal active units of n = 4: (2 - 2/sqrt(2)) / (2 - 1)
    assert hoyer_sparseness(np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2 - math.sqrt(2))
    assert math.isnan(hoyer_sparseness(np.zeros(3)))
    X = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    per_class = class_sparseness(X, np.array([0, 0, 1]), measure="hoyer")
    assert per_class[0] == pytest.approx(1.0) and per_class[1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="measure must be one of"):
        class_sparseness(X, np.array([0, 0, 1]), measure="gini")


def test_mean_shared_units_over_pairs_of_classes():
    from fflab.analysis import mean_shared_units

    ensembles = {0: [1, 2, 3], 1: [3, 4], 2: [5]}
    matrix = shared_units_matrix(ensembles, [0, 1, 2])
    assert mean_shared_units(matrix) == pytest.approx((1 + 0 + 0) / 3)
    with pytest.raises(ValueError, match="square"):
        mean_shared_units(np.ones((1, 1)))


def test_sparseness_shared_units_and_unseen_tables():
    from fflab.analysis import shared_units_table, sparseness_table, unseen_activity_table

    records = [
        {"model": "ff", "dataset": "mnist", "seed": s, "sparseness_treves_rolls": [0.9 + s / 100, None],
         "sparseness_hoyer": [0.8, 0.7], "mean_shared_units": [1.0 + s, 2.0]}
        for s in range(2)
    ]
    table = sparseness_table(records, "treves_rolls")
    row = table.rows[0]
    assert row[table.columns.index("MNIST Layer 1 mean")] == pytest.approx(0.905)
    assert row[table.columns.index("MNIST Layer 2 mean")] is None  # missing in every run
    assert sparseness_table(records, "hoyer").rows[0][1] == pytest.approx(0.8)
    shared = shared_units_table(records, 0.9)
    assert shared.rows[0][1:3] == [pytest.approx(1.5), pytest.approx(0.5)]
    unseen = unseen_activity_table([
        {"model": "ff", "dataset": "fashion_mnist", "seed": s,
         "unseen_activity": [{"unseen": 0.3 + s / 10, "seen": 0.4}]} for s in range(2)
    ])
    assert [row[0] for row in unseen.rows] == ["unseen class", "seen classes"]
    assert unseen.rows[0][1:3] == [pytest.approx(0.35), pytest.approx(0.05)]
    assert unseen.rows[1][1] == pytest.approx(0.4)


def test_the_printed_resolution_is_read_from_the_published_literal():
    from fflab import paper

    assert [paper.printed_resolution(text) for text in ("0.93", "39.0", "287.7", "3", "0.0073", "1.5e-3")] == [
        pytest.approx(value) for value in (0.01, 0.1, 0.1, 1, 0.0001, 0.0001)]
    cells = {cell["id"]: cell for cell in paper.published_cells()}
    assert cells["table1/ff/mnist"]["resolution"] == pytest.approx(0.01)
    assert cells["table2/bp/fashion_mnist/layer3"]["resolution"] == pytest.approx(0.1)  # printed 39.0
    assert cells["table2/ff/mnist/layer1"]["resolution"] == pytest.approx(0.01)  # 2.69, the text's digits
    assert cells["table3/ff/mnist/layer2"]["resolution"] == pytest.approx(0.001)  # 0.002


def test_published_values_hold_every_table_cell_with_standard_errors():
    from fflab import paper

    cells = {cell["id"]: cell for cell in paper.published_cells()}
    assert len([c for c in cells if c.startswith("table1/")]) == 6
    assert len([c for c in cells if c.startswith("table2/")]) == 18
    assert len([c for c in cells if c.startswith("table3/")]) == 18
    assert cells["table1/bp/mnist"]["mean"] == 0.77 and cells["table1/bp/mnist"]["se"] == 0.076
    assert cells["table2/bp/mnist/layer1"]["mean"] == 287.7 and cells["table2/bp/mnist/layer1"]["se"] == 7.82
    assert cells["table3/ff/mnist/layer2"]["mean"] == 0.002 and cells["table3/ff/mnist/layer2"]["se"] is None
    assert cells["text/shared_units/ff/fashion_mnist/layer1"]["mean"] == 1.73
    assert cells["figure8b/slope"]["mean"] == 0.98


def test_protocol_differences_name_every_departure_from_the_paper():
    from fflab import paper
    from fflab.spec import build_spec

    assert paper.protocol_differences(build_spec("paper")) == []
    quick = {d.field: (d.paper, d.experiment) for d in paper.protocol_differences(build_spec("quick"))}
    assert quick["ff.epochs"] == (1000, 3)
    assert quick["ff.batch_size"] == (None, 250)
    assert quick["ff.layer_learning_rate_factors"] == (None, [0.6, 1.0])
    assert "data.train_subset" not in quick  # both train on all 60000 images
    assert quick["seeds (runs per configuration)"] == (15, 3)
    assert "name" not in quick and "device" not in quick
    # a BP-only experiment: FF's settings and the unseen class are not its protocol
    bp_only = build_spec("paper", {"models": ["bp"], "unseen_class": None, "ff": {"epochs": 3}})
    assert paper.protocol_differences(bp_only) == []
    fields = {d.field for d in paper.protocol_differences(build_spec("paper", {"bp": {"epochs": 3}}))}
    assert fields == {"bp.epochs"}


def test_dominance_counts_the_winning_units():
    """Hand-built: unit 2 wins images 0-2, unit 0 image 3, unit 4 nothing; ties go to the lowest unit."""
    from fflab.analysis.dominance import winner_counts

    X = np.array([
        [0.1, 0.2, 0.9, 0.0, 0.3],
        [0.0, 0.0, 0.5, 0.1, 0.4],
        [0.3, 0.3, 0.6, 0.6, 0.0],  # a tie between units 2 and 3
        [0.8, 0.1, 0.2, 0.0, 0.7],
    ])
    assert winner_counts(X).tolist() == [1, 0, 3, 0, 0]
    assert winner_counts(np.zeros((0, 3))).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="2-D"):
        winner_counts(np.zeros(3))


# ------------------------------------------------------------------ review of the science, 2026-12


def _one_hot_class(n_units=20):
    """9 one-hot images on units 0 (6 images), 1, 2 and 3: each image is as sparse as
    can be, but the class's mean spreads over 4 units (6:1:1:1)."""
    X = np.zeros((9, n_units))
    X[np.arange(9), [0] * 6 + [1, 2, 3]] = 1.0
    return X


def test_sparseness_is_per_image_and_the_class_mean_is_its_own_measure():
    from fflab.analysis import SPARSENESS_MEASURES, mean_sparseness

    X, labels = _one_hot_class(), np.zeros(9, dtype=int)
    assert class_sparseness(X, labels, measure="hoyer")[0] == pytest.approx(1.0)
    assert class_sparseness(X, labels, measure="treves_rolls")[0] == pytest.approx(1.0)
    share = np.array([6, 1, 1, 1]) / 9  # the class mean, on 4 of 20 units
    hoyer_of_mean = (math.sqrt(20) - share.sum() / math.sqrt(share @ share)) / (math.sqrt(20) - 1)
    assert hoyer_of_mean == pytest.approx(0.873, abs=5e-4)
    assert class_sparseness(X, labels, measure="hoyer_of_class_mean")[0] == pytest.approx(hoyer_of_mean)
    treves_rolls_of_mean = (1 - (1 / 20) ** 2 / ((share @ share) / 20)) / (1 - 1 / 20)
    assert class_sparseness(X, labels, measure="treves_rolls_of_class_mean")[0] == pytest.approx(treves_rolls_of_mean)
    # an image with no active unit has no sparseness: left out, as the authors' nanmean
    assert mean_sparseness(np.vstack([X, np.zeros(20)]), "hoyer") == pytest.approx(1.0)
    # over a layer: the mean over its images (9 one-hot, 3 uniform), not over classes
    assert mean_sparseness(np.vstack([X, np.ones((3, 20))]), "hoyer") == pytest.approx(9 / 12)
    assert list(SPARSENESS_MEASURES) == ["treves_rolls", "hoyer", "treves_rolls_of_class_mean", "hoyer_of_class_mean"]
    with pytest.raises(ValueError, match="measure must be one of"):
        mean_sparseness(X, "gini")
    from fflab.analysis import sparseness_table

    records = [{"model": "ff", "dataset": "mnist", "seed": 0, "sparseness_hoyer_of_class_mean": [0.873]}]
    table = sparseness_table(records, "hoyer_of_class_mean")
    assert table.name == "sparseness_hoyer_of_class_mean" and table.rows[0][1] == pytest.approx(0.873)
    assert "mean activity vector" in table.title


def _saturated_layer(k=40, n=784, m=30, seed=0, top=(1.0, 1.0)):
    """A BP-like class: k units at the top (exactly 1.0 by default), the rest in [0, 0.1]."""
    rng = np.random.default_rng(seed)
    X = (rng.random((m, n)) * 0.1).astype(np.float32)
    block = np.sort(rng.choice(n, k, replace=False))
    X[:, block] = rng.uniform(*top, size=(m, k)).astype(np.float32) if top[0] < top[1] else top[0]
    return X, block


def test_method2_top_cluster_finds_a_saturated_block_the_isolated_rule_misses():
    from fflab.analysis import METHOD2_CUTS, method2_top_cluster

    assert list(METHOD2_CUTS) == ["isolated", "top_cluster"]
    X, block = _saturated_layer()
    isolated = method2_ensemble(X)  # the default rule
    assert isolated.units.size == 0 and isolated.nh_cut == 0  # the dense block stops the walk at once
    found = method2_ensemble(X, cut="top_cluster")
    assert found.units.tolist() == block.tolist() and found.top_cluster.tolist() == block.tolist()
    assert method1_ensemble(X, 0.99).units.tolist() == block.tolist()  # Method 1 sees them too
    # near saturation (0.97-1.0 on each image): the same cluster
    X, block = _saturated_layer(k=25, seed=1, top=(0.97, 1.0))
    assert method2_ensemble(X, cut="top_cluster").units.tolist() == block.tolist()
    assert method2_ensemble(X).units.size == 0
    # a lone unit between the block and the bulk: the walk goes on below the block
    X, block = _saturated_layer(k=40, seed=2)
    lone = int(np.setdiff1d(np.arange(784), block)[0])
    X[:, lone] = 0.6
    assert method2_ensemble(X, cut="top_cluster").units.tolist() == sorted([*block.tolist(), lone])
    assert method2_ensemble(X).units.size == 0
    assert method2_top_cluster(X.mean(axis=0)).tolist() == block.tolist()


def test_method2_top_cluster_leaves_the_isolated_answer_where_there_is_no_cluster():
    # FF-like: three prominent units above a bulk (the top group), as the isolated rule finds them
    means = np.linspace(0.0, 0.05, 203)
    means[[17, 42, 150]] = [0.95, 0.9, 0.85]
    X = np.tile(means, (2, 1))
    assert method2_ensemble(X, cut="top_cluster").units.tolist() == method2_ensemble(X).units.tolist() == [17, 42, 150]
    # activity spread evenly: no gap wider than epsilon, no cluster, no ensemble under either rule
    X = np.tile(np.linspace(0.0, 1.0, 784), (3, 1))
    assert method2_ensemble(X).units.size == 0 and method2_ensemble(X, cut="top_cluster").units.size == 0
    # a block holding the median unit is the bulk, not an ensemble: 6 of 10 units at 1.0
    X = np.tile(np.array([1.0] * 6 + [0.0] * 4), (3, 1))
    assert method2_ensemble(X, cut="top_cluster").units.size == 0
    # cuts given by hand: the rule does not matter
    X, _ = _saturated_layer()
    assert method2_ensemble(X, rho_cut=5.0, nh_cut=3, cut="top_cluster").units.tolist() == \
        method2_ensemble(X, rho_cut=5.0, nh_cut=3).units.tolist()


def test_method2_cut_rule_is_an_option_and_unknown_rules_raise():
    from typing import get_args

    from pydantic import ValidationError

    from fflab.analysis import METHOD2_CUTS
    from fflab.spec import AnalysisSpec

    with pytest.raises(ValueError, match="method2_cut must be one of isolated, top_cluster"):
        method2_ensemble(HAND_X, cut="by_eye")
    X, block = _saturated_layer(m=4)
    representations, labels = np.vstack([X, X]), np.array([3] * 4 + [5] * 4)
    ensembles = class_ensembles(representations, labels, method="method2", cut="top_cluster")
    assert ensembles[3].tolist() == ensembles[5].tolist() == block.tolist()
    assert AnalysisSpec().method2_cut == "isolated"
    assert set(get_args(AnalysisSpec.model_fields["method2_cut"].annotation)) == set(METHOD2_CUTS)
    assert AnalysisSpec(method2_cut="top_cluster").method2_options()["cut"] == "top_cluster"
    with pytest.raises(ValidationError, match="method2_cut"):
        AnalysisSpec(method2_cut="by_eye")


def test_figure7_counts_on_a_hand_built_weight_matrix():
    from fflab.analysis import all_negative_incoming, fraction_units_negative_share_near, negative_share_near

    weight = np.array([
        [-1.0, -2.0, -0.5, -3.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0],  # all negative
        [-1.0, -2.0, -0.5, -3.0, -1.0, -1.0, -1.0, -1.0, -1.0, 0.0],  # a zero is not negative: 0.9
        [-1.0] * 7 + [1.0] * 3,  # 0.7: on the window's lower edge
        [-1.0] * 8 + [1.0] * 2,  # 0.8: on its upper edge
        [-1.0] * 6 + [1.0] * 4,  # 0.6
        [1.0] * 10,  # 0.0
        [-1.0] * 10,  # all negative
        [-1.0] * 9 + [2.0],  # 0.9
    ])
    assert all_negative_incoming(weight).tolist() == [0, 6]
    assert negative_share_near(weight).tolist() == [2, 3]  # within 0.05 of 0.75, edges included
    assert fraction_units_negative_share_near(weight) == pytest.approx(2 / 8)
    assert negative_share_near(weight, share=0.9, tolerance=0.0).tolist() == [1, 7]
    assert negative_share_near(weight.T[:4].T, share=1.0, tolerance=0.0).tolist() == [0, 1, 2, 3, 4, 6, 7]
    with pytest.raises(ValueError, match="share"):
        negative_share_near(weight, share=1.5)
    with pytest.raises(ValueError, match="tolerance"):
        negative_share_near(weight, tolerance=-0.1)
    with pytest.raises(ValueError, match="weight"):
        all_negative_incoming(np.ones(3))


def _write_unseen_class_run(run_dir, key):
    """An FF run on Fashion-MNIST trained without class 0, 20 units, 2 layers, 20 test
    images per class. Layer 1: every seen image one-hot on unit 2c or 2c + 1 (half and
    half), every unseen image on unit 0 at 0.34 (one active unit); layer 2: every image
    has units 0-7 saturated at 1.0 above a bulk at 0-0.05 (as BP). Weights: layer 1
    all positive; layer 2 15 units all negative, 4 at 15/20 negative, 1 at 16/20."""
    import torch

    from fflab.results import RunMetrics, Timings, write_document

    labels = np.repeat(np.arange(10), 20)
    layer1 = np.zeros((200, 20), dtype=np.float32)
    for row, c in enumerate(labels):
        if c == 0:
            layer1[row, 0] = 0.34
        else:
            layer1[row, 2 * c + row % 2 - (2 if c == 9 else 0)] = 1.0
    layer2 = (np.random.default_rng(0).random((200, 20)) * 0.05).astype(np.float32)
    layer2[:, :8] = 1.0
    correct = labels != 0
    run_dir.mkdir(parents=True)
    np.savez(run_dir / "representations.npz", labels=labels, predictions=np.where(correct, labels, 1),
             correct=correct, layer1=layer1, layer2=layer2)
    second = -np.ones((20, 20), dtype=np.float32)
    second[15:19, 15:] = 1.0  # 15 of 20 negative
    second[19, 16:] = 1.0  # 16 of 20 negative
    torch.save({"layers.0.weight": torch.ones(20, 784), "layers.1.weight": torch.from_numpy(second)},
               run_dir / "weights.pt")
    write_document(RunMetrics(
        run_id=key.run_id, model=key.model, dataset=key.dataset, seed=key.seed, unseen_class=key.unseen_class,
        accuracy=0.9, per_class_accuracy=[0.0] + [1.0] * 9, n_train=100, n_test=200, loss_history=[[1.0], [1.0]],
        device="cpu", timings=Timings(train_seconds=0.0, evaluate_seconds=0.0),
    ), run_dir / "metrics.json")


@pytest.mark.parametrize("rule", ["isolated", "top_cluster"])
def test_run_record_of_an_unseen_class_run(tmp_path, rule):
    from fflab.pipeline import documents
    from fflab.spec import RunKey, build_spec

    spec = build_spec("quick", {"models": ["ff"], "datasets": ["fashion_mnist"], "seeds": [0], "unseen_class": 0,
                                "network": {"width": 20, "layers": 2}, "analysis": {"method2_cut": rule}})
    key = RunKey("ff", "fashion_mnist", 0, 0)
    _write_unseen_class_run(tmp_path / key.run_id, key)
    record = documents.analyse_run(spec, key, tmp_path / key.run_id,
                                   names=["ensembles", "shared_units", "weight_stats"])
    saturated = 8 if rule == "top_cluster" else 0
    # section 4.4: the unseen class's Method 2 ensemble is one unit in layer 1
    assert record["unseen_ensemble_size_method2"] == [1, saturated]
    assert record["unseen_activity"][0]["unseen"] == pytest.approx(0.34)
    assert record["ensemble_sizes_method2"] == [[1] + [2] * 9, [saturated] * 10]
    assert record["ensemble_sizes_method2_by_cut_rule"] == {"isolated": [[1] + [2] * 9, [0] * 10],
                                                            "top_cluster": [[1] + [2] * 9, [8] * 10]}
    # every layer-1 image is one-hot: 1 per image; the class means are not
    two_units = (math.sqrt(20) - math.sqrt(2)) / (math.sqrt(20) - 1)
    assert record["sparseness_hoyer"][0] == pytest.approx(1.0)
    assert record["sparseness_treves_rolls"][0] == pytest.approx(1.0)
    assert record["sparseness_hoyer_of_class_mean"][0] == pytest.approx((1 + 9 * two_units) / 10)
    two_units_treves_rolls = (1 - 2 / 20) / (1 - 1 / 20)
    assert record["sparseness_treves_rolls_of_class_mean"][0] == pytest.approx((1 + 9 * two_units_treves_rolls) / 10)
    # Figure 7's counts, per layer
    assert record["units_all_negative_incoming"] == [0, 15]
    assert record["fraction_units_all_negative_incoming"] == [0.0, pytest.approx(0.75)]
    assert record["fraction_units_three_quarters_negative_incoming"] == [0.0, pytest.approx(5 / 20)]


def test_a_schema_1_0_ensembles_document_still_reads():
    from fflab.results import LayerSparseness

    old = LayerSparseness.model_validate({"layer": 1, "per_class": [0.5], "hoyer_per_class": [0.4]})
    assert old.treves_rolls_of_class_mean == [0.5] and old.hoyer_of_class_mean == [0.4]
    assert old.hoyer is None and old.hoyer_by_class == []


def _ensembles_document(model, method1, by_rule):
    from fflab.results import RunEnsembles
    from fflab.spec import AnalysisSpec

    return RunEnsembles(
        run_id=f"{model}-mnist-seed0", model=model, dataset="mnist", seed=0, analysis=AnalysisSpec(), n_units=784,
        ensembles=[{"layer": 1, "class_index": c, "class_name": str(c), "method": "method1", "quantile": 0.99,
                    "n_images": 10, "units": list(range(size)), "size": size} for c, size in enumerate(method1)],
        sparseness=[{"layer": 1, "treves_rolls_of_class_mean": [None] * len(method1)}],
        method2_sizes_by_cut_rule={rule: [sizes] for rule, sizes in by_rule.items()},
    )


def test_figure8b_fits_under_each_method2_cut_rule():
    """FF: Method 1 = Method 2 + 1 under both rules; BP's saturated layers: the isolated rule
    finds nothing (x = 0) where Method 1 finds ~300, the top-cluster rule finds them."""
    from fflab.pipeline.paper_analyses import cut_rule_fits

    runs = [
        ("ff", _ensembles_document("ff", [2, 3, 4, 5], {"isolated": [1, 2, 3, 4], "top_cluster": [1, 2, 3, 4]})),
        ("bp", _ensembles_document("bp", [300, 280, 310, 290],
                                   {"isolated": [0, 0, 0, 0], "top_cluster": [299, 279, 309, 289]})),
    ]
    fits = cut_rule_fits(runs, 0.99)
    assert list(fits) == ["isolated", "top_cluster"]
    isolated, top = fits["isolated"], fits["top_cluster"]
    assert isolated.n_points == top.n_points == 8
    assert isolated.slope < 0  # pulled by the BP points at x = 0
    assert isolated.both_found.slope == pytest.approx(1.0) and isolated.left_out == 4
    assert isolated.per_model["bp"] is None  # x constant
    assert (top.slope, top.intercept, top.r2) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    assert top.left_out == 0 and top.per_model["bp"].slope == pytest.approx(1.0)
    # no Method 1 ensemble at another quantile: no point, no fit
    empty = cut_rule_fits(runs, 0.95)
    assert [(fit.n_points, fit.slope, fit.both_found, fit.per_model) for fit in empty.values()] == [(0, None, None, {})] * 2
