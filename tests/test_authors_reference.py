"""benchmarks/authors_reference.py, the plain re-implementation of the authors' FF
loop: known answers on hand-built inputs, that it learns, and that fflab's FF
computes the same first-layer loss and update from the same weights and data."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FFLAB_DATA_ROOT", str(ROOT / "data"))
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import authors_reference as ref  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ data


def test_prepare_images_scales_and_standardises():
    raw = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    x = ref.prepare_images(raw)
    assert x.shape == (1, 4)
    expected = [(v / 255 - 0.1307) / 0.3081 for v in (0, 255, 51, 102)]
    assert torch.allclose(x[0], torch.tensor(expected), atol=1e-6)


def test_label_embedding_known_answer():
    images = torch.arange(2 * 784, dtype=torch.float32).reshape(2, 784) / 1000.0
    images[0, 5] = 7.0  # the data's maximum sits in a label pixel: it is zeroed, but still the value
    value = ref.label_value_of(images, "data_max")
    assert torch.equal(value, torch.tensor([7.0, 7.0]))
    out = ref.embed(images, torch.tensor([3, 9]), value)
    assert torch.equal(out[0, :10], torch.tensor([0, 0, 0, 7.0, 0, 0, 0, 0, 0, 0]))
    assert torch.equal(out[1, :10], torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 7.0]))
    assert torch.equal(out[:, 10:], images[:, 10:])
    assert images[0, 5] == 7.0  # the input is not modified
    # The paper's rule: each image's own maximum.
    own = ref.label_value_of(images, "image_max")
    assert torch.equal(own, torch.tensor([7.0, images[1].max().item()]))


def test_pairs_known_answer_for_two_images():
    """Two images, labels 0 and 1: the 20 labelled copies in label blocks; the
    positives are (img 0, label 0), (img 1, label 1); the negatives are the other
    18 in block order, of which randperm(18)[:2] are kept."""
    labels = torch.tensor([0, 1])
    pos_img, pos_lab, neg_img, neg_lab = ref.positive_and_negative_indices(labels, torch.Generator().manual_seed(5))
    assert pos_img.tolist() == [0, 1] and pos_lab.tolist() == [0, 1]
    all_negatives = [(1, 0), (0, 1)] + [(i, c) for c in range(2, 10) for i in (0, 1)]
    keep = torch.randperm(18, generator=torch.Generator().manual_seed(5))[:2]
    assert list(zip(neg_img.tolist(), neg_lab.tolist())) == [all_negatives[k] for k in keep.tolist()]


def test_pairs_negatives_never_carry_the_true_label():
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 0])
    n = labels.numel()
    generator = torch.Generator().manual_seed(0)
    seen = torch.zeros(n, 10)
    for _ in range(300):
        pos_img, pos_lab, neg_img, neg_lab = ref.positive_and_negative_indices(labels, generator)
        assert neg_img.numel() == n and neg_lab.numel() == n  # exactly N negatives
        assert bool((neg_lab != labels[neg_img]).all())
        assert len(set(zip(neg_img.tolist(), neg_lab.tolist()))) == n  # N distinct copies, no repeats
        # Positives: every image once, with its own label, ordered by label.
        assert sorted(pos_img.tolist()) == list(range(n))
        assert torch.equal(pos_lab, labels[pos_img])
        assert pos_lab.tolist() == sorted(pos_lab.tolist())
        seen.index_put_((neg_img, neg_lab), torch.ones(n), accumulate=True)
    # Each wrong-label copy is kept with probability N / 9N = 1/9: 300/9 = 33 times on average.
    wrong = seen[torch.arange(10)[None, :] != labels[:, None]]
    assert wrong.min() > 10 and wrong.max() < 65
    assert seen[torch.arange(n), labels].sum() == 0
    # The other draw: image i with one random wrong label.
    _, _, neg_img, neg_lab = ref.positive_and_negative_indices(labels, generator, "one_per_image")
    assert neg_img.tolist() == list(range(n)) and bool((neg_lab != labels).all())


def test_loss_reduction_known_answer():
    g_pos, g_neg = torch.tensor([0.7, 0.2]), torch.tensor([0.1, 0.9])
    terms = [math.log(1 + math.exp(v)) for v in (0.5 - 0.7, 0.5 - 0.2, 0.1 - 0.5, 0.9 - 0.5)]
    assert ref.ff_loss(g_pos, g_neg, 0.5).item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert ref.ff_loss(g_pos, g_neg, 0.5, "sum").item() == pytest.approx(sum(terms), rel=1e-6)


def test_goodness_l_inf_is_the_max_and_layer_normalises_l2():
    h = torch.tensor([[0.1, 0.8, 0.3], [0.5, 0.2, 0.4]])
    assert torch.allclose(ref.goodness_of(h, "l_inf"), torch.tensor([0.8, 0.5]))
    layer = ref.AuthorsLayer(3, 2)
    x = torch.tensor([[3.0, 4.0, 0.0]])
    assert torch.allclose(layer(x), layer(x * 10))  # scale-free: l2-normalised input
    expected = torch.sigmoid(layer.linear(torch.tensor([[0.6, 0.8, 0.0]])))
    assert torch.allclose(layer(x), expected)


def test_prediction_is_softmax_over_labels_summed_over_layers(monkeypatch):
    # (1, 10, 2) goodness: layer 1 gives 1.0 to every label but label 1 (0.0); layer 2
    # gives 0.9 to label 1 only. Plain sum: label 0 ties with labels 2-9 at 1.0, above
    # label 1's 0.9 -> 0. Softmax per layer, summed: label 1 gets 1/(9e+1) + e^0.9/(e^0.9+9)
    # = 0.254, the others e/(9e+1) + 1/(e^0.9+9) = 0.194 -> 1.
    scores = torch.tensor([[[1.0, 0.0], [0.0, 0.9]] + [[1.0, 0.0]] * 8])
    monkeypatch.setattr(ref, "label_goodness", lambda net, images: scores)
    net = ref.AuthorsNet(ref.AuthorsOptions(layers=2, width=4), in_features=784)
    assert ref.predict(net, torch.zeros(1, 784)).tolist() == [1]
    net.options = net.options.with_(prediction="sum")
    assert ref.predict(net, torch.zeros(1, 784)).tolist() == [0]


# ------------------------------------------------------------------ learning


@pytest.fixture(scope="module")
def small_mnist():
    train = ref.load_mnist(True, 2000)
    test = ref.load_mnist(False)
    return train, (test[0][:1000], test[1][:1000])


def test_reference_learns_well_above_chance(small_mnist):
    (x, y), (xt, yt) = small_mnist
    options = ref.AuthorsOptions(layers=2, width=128, epochs=10, batch_size=100, lr=1e-2)
    run = ref.train_authors(x, y, options, seed=0)
    assert run.history[0][-1] < run.history[0][0]  # the loss falls
    accuracy = (ref.predict(run.net, xt) == yt).float().mean().item()
    # Chance is 0.1; seeds 0-3 of this setting gave 0.42, 0.50, 0.36, 0.48 (l_inf goodness
    # learns slowly at this size).
    assert accuracy > 0.25, accuracy
    reps = ref.representations(run.net, xt, yt)
    assert [r.shape for r in reps] == [(1000, 128), (1000, 128)]


# ------------------------------------------------------------------ fflab, same weights and data


@pytest.mark.parametrize("batch_size", [None, 100])
def test_fflab_gives_the_same_losses_and_weights(small_mnist, batch_size):
    """From the same initial weights and the same random draws (fflab's
    ``subsampled`` negatives, then its minibatch permutations, which the reference's
    shuffle consumes the same way), two epochs of each of two layers: fflab's
    engine and the reference give the same loss at the first step, the same mean
    loss of every epoch and the same weights after (float64)."""
    from fflab.models.common import GoodnessNetwork, draw_negatives
    from fflab.models.ff import train_ff
    from fflab.spec import NetworkSpec, TrainingSpec

    (x, y), _ = small_mnist
    x, y = x[:300].double(), y[:300]
    spec = NetworkSpec(layers=2, width=64, goodness="l_inf", normalization="l2", normalize_first_layer=True,
                       first_layer_normalization="l2", threshold=0.5, label_value="batch_max")
    torch.manual_seed(0)
    net = GoodnessNetwork(spec).double()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    history = train_ff(net, x, y, TrainingSpec(epochs=2, learning_rate=1e-2, batch_size=batch_size),
                       torch.Generator().manual_seed(1), "subsampled")

    # The reference, from the same weights, on the negatives fflab drew (same generator).
    generator = torch.Generator().manual_seed(1)
    rows, wrong = draw_negatives(y, torch.arange(10), generator, "subsampled")
    value = ref.label_value_of(x, "data_max")
    x_pos, x_neg = ref.embed(x, y, value), ref.embed(x[rows], wrong, value[rows])
    options = ref.AuthorsOptions(layers=2, width=64, epochs=2, batch_size=batch_size)
    anet = ref.AuthorsNet(options).double()
    for i, layer in enumerate(anet.layers):
        layer.linear.load_state_dict({"weight": start[f"layers.{i}.weight"], "bias": start[f"layers.{i}.bias"]})
    first_steps = []
    for i, layer in enumerate(anet.layers):
        steps = []
        epochs = ref.train_layer(layer, x_pos, x_neg, options, generator, on_step=steps.append)
        first_steps.append(float(steps[0]))
        assert epochs == pytest.approx(history[i], rel=1e-10)
        with torch.no_grad():
            x_pos, x_neg = layer(x_pos), layer(x_neg)
    if batch_size is None:  # one step per epoch: fflab's epoch loss is the first step's
        assert first_steps == pytest.approx([h[0] for h in history], rel=1e-10)
    for i, layer in enumerate(anet.layers):
        assert torch.allclose(layer.linear.weight, net.layers[i].weight, atol=1e-10)
        assert torch.allclose(layer.linear.bias, net.layers[i].bias, atol=1e-10)
