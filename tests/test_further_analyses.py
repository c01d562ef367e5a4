"""The analyses beyond the paper, on hand-built inputs whose answers are known:
separable data a linear probe must separate, goodness scores with a right and
a wrong layer, a planted ensemble a lesion must hit hardest, label-gated units
whose selectivity is set by construction, manifolds of known dimension for
TwoNN and two planted sub-ensembles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fflab.analysis.dynamics import default_snapshot_epochs, ensemble_trajectory, jaccard
from fflab.analysis.intrinsic_dimension import two_nn
from fflab.analysis.layer_accuracy import goodness_accuracy, linear_probe
from fflab.analysis.lesions import accuracy_drop, control_unit_sets, mean_and_se
from fflab.analysis.selectivity import label_selectivity
from fflab.analysis.subensembles import jaccard_distances, sub_ensembles
from fflab.models.bp import BPClassifier
from fflab.models.common import GoodnessNetwork, label_goodness, predict_from_goodness
from fflab.models.probing import lesioned_predictions, neutral_representations, representations_with_label
from fflab.pipeline.run_analyses.common import per_class_rows
from fflab.spec import NetworkSpec

WIDTH = 40  # four planted units per class


# ------------------------------------------------------------------ layer accuracy


def test_goodness_accuracy_per_layer_and_cumulative():
    labels = np.array([0, 1, 2, 0])
    scores = np.zeros((4, 3, 2))
    scores[np.arange(4), labels, 0] = 1.0  # layer 1 right everywhere
    scores[np.arange(4), (labels + 1) % 3, 1] = 0.5  # layer 2 wrong everywhere, but weaker
    result = goodness_accuracy(scores, labels, "sum")
    assert result.per_layer.tolist() == [1.0, 0.0]
    assert result.cumulative.tolist() == [1.0, 1.0]  # 1.0 beats 0.5 in the sum
    assert result.per_layer_per_class[1].tolist() == [0.0, 0.0, 0.0]
    scores[np.arange(4), (labels + 1) % 3, 1] = 2.0  # now layer 2 outweighs layer 1
    assert goodness_accuracy(scores, labels, "sum").cumulative.tolist() == [1.0, 0.0]
    # softmax_sum: per-layer softmaxes weigh both layers alike, so a tie goes to the lower label.
    assert goodness_accuracy(scores, labels, "softmax_sum").cumulative[0] == 1.0
    with pytest.raises(ValueError, match="rule must be one of"):
        goodness_accuracy(scores, labels, "max")


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 10, (3, 20))
    train_y, test_y = np.repeat(np.arange(3), 50), np.repeat(np.arange(3), 20)
    train_x = centers[train_y] + rng.normal(0, 1, (150, 20))
    test_x = centers[test_y] + rng.normal(0, 1, (60, 20))
    result = linear_probe(train_x, train_y, test_x, test_y, n_classes=4)
    assert result.train_accuracy == 1.0 and result.test_accuracy == 1.0
    assert result.test_per_class[:3].tolist() == [1.0, 1.0, 1.0] and np.isnan(result.test_per_class[3])
    assert result.converged
    # Labels unrelated to the features: the probe cannot do much better than chance.
    shuffled = linear_probe(train_x, rng.permutation(train_y), test_x, rng.permutation(test_y))
    assert shuffled.test_accuracy < 0.7


# ------------------------------------------------------------------ dynamics


def test_ensemble_trajectory_against_the_final_ensembles():
    labels = np.repeat([0, 1], 10)
    final = np.full((20, 8), 0.05)
    final[:10, 0:2] = 0.9  # class 0: units 0, 1
    final[10:, 4:6] = 0.9  # class 1: units 4, 5
    early = np.full((20, 8), 0.05)
    early[:10, 1:3] = 0.9  # class 0 at an early snapshot: units 1, 2 -> overlap 1/3
    early[10:, 4:6] = 0.9
    trajectory = ensemble_trajectory([early, final], final, labels, 0.75, [0, 1, 2])
    assert trajectory.sizes.tolist() == [[2, 2, 0], [2, 2, 0]]
    assert trajectory.jaccard[0].tolist() == pytest.approx([1 / 3, 1.0, 1.0])
    assert trajectory.jaccard[1].tolist() == [1.0, 1.0, 1.0]
    assert jaccard(np.array([1, 2]), np.array([2, 3])) == pytest.approx(1 / 3)
    assert default_snapshot_epochs(20) == [1, 2, 4, 9, 20]
    assert default_snapshot_epochs(1) == [1]


# ------------------------------------------------------------------ planted networks


def planted_images(per_class: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c lights pixels 20 + 10c .. 29 + 10c (past the label pixels)."""
    labels = torch.arange(10).repeat_interleave(per_class)
    images = torch.zeros(labels.numel(), 784)
    for c in range(10):
        images[labels == c, 20 + 10 * c : 30 + 10 * c] = 1.0
    return images, labels


def planted_bp() -> BPClassifier:
    """Units 4c..4c+3 copy class c's pixels; the head reads class c from them."""
    net = BPClassifier(NetworkSpec(layers=1, width=WIDTH))
    with torch.no_grad():
        net.layers[0].weight.zero_()
        net.layers[0].bias.fill_(-5.0)
        net.head.weight.zero_()
        net.head.bias.zero_()
        for c in range(10):
            net.layers[0].weight[4 * c : 4 * c + 4, 20 + 10 * c : 30 + 10 * c] = 1.0
            net.head.weight[c, 4 * c : 4 * c + 4] = 10.0
    return net


def planted_goodness_network() -> GoodnessNetwork:
    """Units 4c..4c+3 fire (0.95) only for class c's image with label c; with a
    wrong label they stay low (0.12); for other images they are silent."""
    net = GoodnessNetwork(NetworkSpec(layers=1, width=WIDTH))
    with torch.no_grad():
        net.layers[0].weight.zero_()
        net.layers[0].bias.fill_(-12.0)
        for c in range(10):
            net.layers[0].weight[4 * c : 4 * c + 4, 20 + 10 * c : 30 + 10 * c] = 1.0
            net.layers[0].weight[4 * c : 4 * c + 4, c] = 5.0
    return net


@pytest.mark.parametrize("make_net", [planted_bp, planted_goodness_network])
def test_a_lesion_of_the_planted_ensemble_hits_its_class_hardest(make_net):
    net, (images, labels) = make_net(), planted_images()
    target, ensemble = 3, np.arange(12, 16)
    intact = lesioned_predictions(net, images, 1, [[]])[0]
    assert torch.equal(intact, labels)
    activity = torch.sigmoid(net.layers[0](images[labels == target])).mean(0).detach().numpy()
    random_sets, most_active = control_unit_sets(ensemble, activity, 5, np.random.default_rng(0))
    for units in random_sets + [most_active]:
        assert units.size == 4 and not set(units) & set(ensemble)
    lesioned = lesioned_predictions(net, images, 1, [ensemble, most_active, *random_sets])
    drops = [accuracy_drop(intact.numpy(), p.numpy(), labels.numpy(), target) for p in lesioned]
    assert drops[0].target == 1.0 and drops[0].others == 0.0  # the class is gone, nothing else
    for control in drops[1:]:
        assert control.target == 0.0  # no control touches the class
    mean, se = mean_and_se([d.target for d in drops[2:]])
    assert mean == 0.0 and se == 0.0


def test_lesioned_predictions_without_lesion_are_the_networks():
    torch.manual_seed(0)
    net = GoodnessNetwork(NetworkSpec(layers=3, width=16))
    images = torch.randn(30, 784)
    expected = predict_from_goodness(label_goodness(net, images), "softmax_sum")
    for layer in (1, 2, 3):
        assert torch.equal(lesioned_predictions(net, images, layer, [[]], "softmax_sum")[0], expected)
    with pytest.raises(ValueError, match="layer must be in 1..3"):
        lesioned_predictions(net, images, 4, [[]])


def test_selectivity_of_label_gated_units():
    net, (images, labels) = planted_goodness_network(), planted_images()
    by_label = np.stack([representations_with_label(net, images, k)[0].numpy() for k in range(10)])
    ensembles = {c: np.arange(4 * c, 4 * c + 4) for c in range(10)}
    result = label_selectivity(by_label, labels.numpy(), ensembles, list(range(10)))
    expected_true, expected_wrong = torch.sigmoid(torch.tensor(3.0)).item(), torch.sigmoid(torch.tensor(-2.0)).item()
    assert result.true_label == pytest.approx([expected_true] * 10, rel=1e-5)
    assert result.wrong_labels == pytest.approx([expected_wrong] * 10, rel=1e-5)
    assert result.index == pytest.approx([(expected_true - expected_wrong) / (expected_true + expected_wrong)] * 10,
                                         rel=1e-5)
    # A neutral label (a tenth of the label value on every label pixel): z = 10 + 0.5 - 12.
    neutral = neutral_representations(net, images)[0]
    assert neutral[labels == 3][:, 12:16].numpy() == pytest.approx(torch.sigmoid(torch.tensor(-1.5)).item(), rel=1e-5)


def test_selectivity_by_hand():
    by_label = np.zeros((3, 4, 5))
    labels = np.array([0, 0, 1, 1])
    by_label[0][:2, 0] = 1.0  # class 0's unit 0 with its label
    by_label[1][:2, 0] = 0.2  # and with wrong label 1
    result = label_selectivity(by_label, labels, {0: np.array([0]), 1: np.array([])}, [0, 1])
    assert result.activity[0].tolist() == [1.0, 0.2, 0.0]
    assert result.wrong_labels[0] == pytest.approx(0.1)
    assert result.index[0] == pytest.approx(0.9 / 1.1)
    assert np.isnan(result.activity[1]).all()  # an empty ensemble has no activity


# ------------------------------------------------------------------ intrinsic dimension


@pytest.mark.parametrize("dimension", [2, 5])
def test_two_nn_finds_the_dimension_of_a_flat_manifold(dimension):
    rng = np.random.default_rng(dimension)
    coordinates = rng.random((1500, dimension))
    basis, _ = np.linalg.qr(rng.normal(size=(100, dimension)))  # orthonormal columns in 100-d
    result = two_nn(coordinates @ basis.T)
    assert result.dimension == pytest.approx(dimension, rel=0.15)
    assert result.n_points == 1350 and result.n_duplicates == 0


def test_two_nn_on_a_circle_and_with_duplicates():
    angle = np.random.default_rng(1).random(800) * 2 * np.pi
    circle = np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], axis=1)
    assert two_nn(circle).dimension == pytest.approx(1.0, rel=0.15)
    doubled = two_nn(np.concatenate([circle, circle[:10]]))
    assert doubled.n_duplicates == 10  # rows dropped: one copy of each is kept
    assert doubled.dimension == pytest.approx(two_nn(circle).dimension)
    assert np.isnan(two_nn(np.zeros((2, 3))).dimension)
    with pytest.raises(ValueError, match="discard"):
        two_nn(circle, discard=1.0)


@pytest.mark.parametrize("duplicated", [0.0, 0.1, 0.2, 0.4])
def test_two_nn_drops_duplicate_rows_of_a_plane_in_784_dimensions(duplicated):
    """A 2-D plane in 784-D (float32, as representations) with a share of its 1000 rows
    exact copies of others. The neighbour search puts two identical 784-D rows at about
    1e-7, not 0: without dropping them first the estimate was 0.19 at 20%. Tolerance:
    +-0.2 (10%); over seeds 0-4 the estimates lie in 1.87-2.09."""
    rng = np.random.default_rng(7)
    copies = int(round(duplicated * 1000))
    basis, _ = np.linalg.qr(rng.normal(size=(784, 2)))
    plane = rng.random((1000 - copies, 2)) @ basis.T
    points = np.concatenate([plane, plane[rng.choice(len(plane), copies, replace=False)]]).astype(np.float32)
    result = two_nn(rng.permutation(points))
    assert result.n_duplicates == copies
    assert result.dimension == pytest.approx(2.0, abs=0.2)
    assert result.n_points == int(np.floor((1000 - copies) * 0.9))


# ------------------------------------------------------------------ sub-ensembles


def test_two_planted_sub_ensembles_are_found():
    rng = np.random.default_rng(0)
    X = rng.random((90, 60)) * 0.1
    X[:60, 0:8] = 0.9  # 60 images use units 0-7
    X[60:, 30:38] = 0.9  # 30 use units 30-37
    result = sub_ensembles(X, quantile=0.9)
    assert result.threshold == pytest.approx(0.9)
    assert result.image_counts == [60, 30]
    assert result.assignment[:60].tolist() == [0] * 60 and result.assignment[60:].tolist() == [1] * 30
    assert result.units[0].tolist() == list(range(8)) and result.units[1].tolist() == list(range(30, 38))
    assert result.silhouette == pytest.approx(1.0)


def test_one_ensemble_is_one_group():
    rng = np.random.default_rng(1)
    X = rng.random((50, 40)) * 0.1
    X[:, 5:10] = 0.9
    result = sub_ensembles(X, quantile=0.85)
    assert result.image_counts == [50] and result.silhouette is None
    assert result.units[0].tolist() == [5, 6, 7, 8, 9]


def test_jaccard_distances():
    active = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=bool)
    distance = jaccard_distances(active)
    assert distance[0, 1] == pytest.approx(2 / 3)
    assert distance[2, 3] == 0.0 and distance[0, 2] == 1.0


def test_per_class_rows_is_stratified_and_seeded():
    labels = np.repeat(np.arange(3), [5, 20, 2])
    rows = per_class_rows(labels, 4, seed=0)
    assert np.bincount(labels[rows]).tolist() == [4, 4, 2]
    assert np.array_equal(rows, per_class_rows(labels, 4, seed=0))


# ------------------------------------------------------------------ figures and the run pipeline


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_figures_are_real_pngs(tmp_path):
    from fflab.figures import save_png
    from fflab.pipeline.run_analyses import dynamics, intrinsic_dimension, layer_accuracy, lesions, selectivity

    names = [str(c) for c in range(10)]
    rng = np.random.default_rng(0)
    curves = {1: {q: (np.array([1, 2, 5]), rng.random(3)) for q, _ in dynamics.DYNAMICS_QUANTITIES}}
    drops = {kind: {1: list(rng.random(10)), 2: list(rng.random(10))} for kind in ("ensemble", "random", "most_active")}
    figures = {
        "accuracy": layer_accuracy.draw({"ff": {"goodness": rng.random((3, 3)), "probe": rng.random((3, 3))},
                                              "bp": {"probe": rng.random((1, 3))}}),
        "dynamics": dynamics.draw({"ff": curves, "bp": curves}, "mnist, seed 0"),
        "lesions": lesions.draw({"ff": drops, "bp": drops}),
        "selectivity": selectivity.draw({"ff": {1: rng.random((10, 10)), 2: np.full((10, 10), np.nan)},
                                              "bpff": {1: rng.random((10, 10))}}, names),
        "dimension": intrinsic_dimension.draw({"ff": (rng.random(30) * 20, rng.random(30) * 10,
                                                           np.repeat([1, 2, 3], 10))}),
    }
    for name, fig in figures.items():
        assert is_png(save_png(fig, tmp_path / f"{name}.png")), name
    with pytest.raises(ValueError, match="readout must be one of"):
        layer_accuracy.draw({"ff": {"logits": rng.random((1, 3))}})


@pytest.mark.slow
def test_a_trained_run_gets_every_document_and_the_experiment_every_figure(tmp_path, data_root):
    from click.testing import CliRunner

    from fflab.cli import main
    from fflab.pipeline import documents as registry
    from fflab.pipeline import experiment, folders, snapshots, train
    from fflab.results import RunMetrics, read_document
    from fflab.spec import build_spec

    spec = build_spec("quick", {
        "models": ["ff", "bp"], "datasets": ["mnist"], "seeds": [0], "unseen_class": None,
        "data": {"train_subset": 300, "test_subset": 200}, "network": {"width": 32, "layers": 2},
        "ff": {"epochs": 3, "batch_size": 50}, "bp": {"epochs": 3, "batch_size": 50}, "snapshots": [1, 3, 50],
    })
    results = experiment.run_experiment(spec, tmp_path)

    def read(run_dir, name):
        return registry.RUN_DOCUMENTS[name].model.model_validate_json((run_dir / f"{name}.json").read_text())

    for key in spec.runs():
        run_dir = folders.run_dir_of(tmp_path, key)
        documents = {name: read(run_dir, name) for name in registry.run_analyses()}
        dynamics = documents["dynamics"]
        assert dynamics.epochs == [1, 3] and dynamics.n_probe_images == 200  # epoch 50 is past training
        assert {(p.layer, p.epoch) for p in dynamics.points} == {(1, 1), (1, 3), (2, 1), (2, 3)}
        assert all(p.mean_jaccard == 1.0 for p in dynamics.points if p.epoch == 3)  # the trained network
        accuracy = documents["layer_accuracy"]
        assert len(accuracy.probes) == 2 and accuracy.probe.n_train == 300 and accuracy.seconds > 0
        if key.model == "ff":
            metrics = read_document(RunMetrics, run_dir / "metrics.json")
            assert accuracy.goodness[-1].cumulative_accuracy == pytest.approx(metrics.accuracy)
        else:
            assert accuracy.goodness == [] and not documents["selectivity"].applicable
    for name in ("layer_accuracy", "dynamics", "lesions", "selectivity", "intrinsic_dimension"):
        assert f"{name}.png" in results["figures"] and is_png(tmp_path / "figures" / f"{name}.png"), name
    # The CLI reads the same documents from the results folder.
    output = CliRunner().invoke(main, ["run-analysis", str(tmp_path), "lesions", "--layer", "2", "--model", "ff"],
                                catch_exceptions=False).output
    served = json.loads(output)["runs"]
    assert [run["run_id"] for run in served] == ["ff-mnist-seed0"]
    assert {record["layer"] for record in served[0]["lesions"]} <= {2}
    # No snapshot asked for: no capture, no file.
    quiet = spec.model_copy(update={"snapshots": [], "models": ["bp"]})
    train.train_and_evaluate(quiet, quiet.runs()[0], tmp_path / "quiet")
    assert not (tmp_path / "quiet" / snapshots.SNAPSHOT_FILE).exists()


