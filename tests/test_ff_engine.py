"""The FF engine (fflab.models.ff_engine, behind train_ff) against the
straightforward reference (benchmarks/reference.py): same seed, same initial
weights, same weights after several epochs, for every layer.

Tolerances. In float64 the engine and the reference compute the same numbers
in a different order (a shared layer-1 product plus a correction, a sparse
gradient summed per unit instead of a dense product), so they differ by
rounding only: about 1e-16 relative per operation, and after 5 Adam steps per
layer the weights agree to ~1e-13 (measured); we allow 1e-10. In float32 the
rounding is ~1e-7 relative and Adam, which divides each gradient by its own
running magnitude, can turn it into ~1e-5 differences in the weights; a rare
row whose two largest pre-activations are within rounding of each other can
also switch its winning unit. Measured: at most 3e-5 after 5 full-batch epochs
of the paper's network on 300 MNIST images; we allow 1e-4 (a wrong gradient
shows up as ~1e-2: Adam's first steps move every weight by about lr).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FFLAB_DATA_ROOT", str(ROOT / "data"))
if str(ROOT) not in sys.path:  # benchmarks/ holds the reference; it is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.reference import ReferenceFF, reference_label_goodness, reference_train_ff  # noqa: E402
from devices import on_devices  # noqa: E402
from fflab import data  # noqa: E402
from fflab.models.common import Cancelled, GoodnessNetwork, label_goodness, seed_everything  # noqa: E402
from fflab.models.ff import train_ff  # noqa: E402
from fflab.models.ff_engine import FFEngine  # noqa: E402
from fflab.spec import NetworkSpec, TrainingSpec  # noqa: E402

PAPER = NetworkSpec()  # 784-784-784, sigmoid, l_inf goodness and normalisation, threshold 0.5


@pytest.fixture(scope="module")
def mnist():
    return data.load_split("mnist", True, subset=300, seed=0)


def train_both(network, training, images, labels, negative_labels="fixed", dtype=torch.float64, seed=0,
               device="cpu"):
    """(reference net, history), (engine net, history) from the same seed, on ``device``."""
    runs = []
    for trainer in (reference_train_ff, train_ff):
        generator = seed_everything(seed)
        net = GoodnessNetwork(network).to(device=device, dtype=dtype)
        history = trainer(net, images.to(device=device, dtype=dtype), labels.to(device), training, generator,
                          negative_labels)
        runs.append((net, history))
    return runs


def assert_same_training(reference, engine, atol):
    (ref_net, ref_history), (eng_net, eng_history) = reference, engine
    for (name, expected), actual in zip(ref_net.state_dict().items(), eng_net.state_dict().values()):
        torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")
    assert len(eng_history) == len(ref_history)
    for ref_losses, eng_losses in zip(ref_history, eng_history):
        assert eng_losses == pytest.approx(ref_losses, abs=atol, rel=0)


# ----------------------------------------------------------- equivalence


@on_devices
def test_paper_network_full_batch_matches_reference_float64(mnist, device):
    training = TrainingSpec(epochs=5, learning_rate=1e-2)
    reference, engine = train_both(PAPER, training, mnist.images, mnist.labels, device=device)
    assert_same_training(reference, engine, atol=1e-10)
    # And it did train: the weights moved by many lr-sized Adam steps.
    initial = GoodnessNetwork(PAPER).layers[2].weight.to(device)
    assert (engine[0].layers[2].weight - initial).abs().max() > 1e-2


@on_devices
def test_paper_network_full_batch_matches_reference_float32(mnist, device):
    training = TrainingSpec(epochs=5, learning_rate=1e-2)
    reference, engine = train_both(PAPER, training, mnist.images, mnist.labels, dtype=torch.float32,
                                   device=device)
    assert_same_training(reference, engine, atol=1e-4)


VARIANTS = {
    # Minibatches, wrong labels redrawn every epoch, every normalisation option.
    "minibatch-per_epoch-l2-normalized-first-batch_max": (
        NetworkSpec(width=64, normalize_first_layer=True, normalization="l2", label_value="batch_max"),
        TrainingSpec(epochs=5, learning_rate=1e-2, batch_size=100),
        "per_epoch",
    ),
    "minibatch-paper": (PAPER.model_copy(update={"width": 96}), TrainingSpec(epochs=5, learning_rate=1e-2, batch_size=128), "fixed"),
    # No normalisation: the next layer's inputs are the activations themselves.
    "no-normalization-full-batch-per_epoch": (
        NetworkSpec(width=64, normalization="none"),
        TrainingSpec(epochs=4, learning_rate=1e-2),
        "per_epoch",
    ),
    "relu-l_inf-per_epoch": (
        NetworkSpec(width=64, activation="relu", threshold=2.0),
        TrainingSpec(epochs=5, learning_rate=1e-2),
        "per_epoch",
    ),
    # General path (dense gradient through autograd, shared layer-1 product).
    "l2-goodness-minibatch": (
        NetworkSpec(width=64, goodness="l2", threshold=2.0),
        TrainingSpec(epochs=5, learning_rate=1e-2, batch_size=100),
        "fixed",
    ),
    "l1-goodness-normalized-first": (
        NetworkSpec(width=64, goodness="l1", threshold=5.0, normalize_first_layer=True),
        TrainingSpec(epochs=5, learning_rate=1e-2),
        "per_epoch",
    ),
    # The authors' negative data: other images than the positive rows', so layer 1
    # gets a product per sign; both paths, full batch and minibatches.
    "subsampled-full-batch-normalized-first": (
        NetworkSpec(width=64, normalize_first_layer=True),
        TrainingSpec(epochs=5, learning_rate=1e-2),
        "subsampled",
    ),
    # The image divided by its l2 norm (the authors' code), l_inf between layers (the paper).
    "subsampled-full-batch-image-l2": (
        NetworkSpec(width=64, normalize_first_layer=True, first_layer_normalization="l2"),
        TrainingSpec(epochs=5, learning_rate=1e-2),
        "subsampled",
    ),
    "subsampled-minibatch-batch_max": (
        NetworkSpec(width=64, label_value="batch_max"),
        TrainingSpec(epochs=4, learning_rate=1e-2, batch_size=100),
        "subsampled",
    ),
    "subsampled-l2-goodness-minibatch": (
        NetworkSpec(width=64, goodness="l2", threshold=2.0),
        TrainingSpec(epochs=4, learning_rate=1e-2, batch_size=128),
        "subsampled",
    ),
    "subsampled-l1-goodness-full-batch": (
        NetworkSpec(width=64, goodness="l1", threshold=5.0),
        TrainingSpec(epochs=4, learning_rate=1e-2),
        "subsampled",
    ),
    "mean_squares-relu-no-normalization": (
        NetworkSpec(width=64, goodness="mean_squares", activation="relu", normalization="none"),
        TrainingSpec(epochs=5, learning_rate=1e-2, batch_size=150),
        "fixed",
    ),
}


@on_devices
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_match_reference_on_mnist(mnist, name, device):
    network, training, negative_labels = VARIANTS[name]
    reference, engine = train_both(network, training, mnist.images, mnist.labels, negative_labels, device=device)
    assert_same_training(reference, engine, atol=1e-10)


@pytest.mark.parametrize("negative_labels", ["per_epoch", "subsampled"])
@pytest.mark.parametrize("batch_size", [None, 64])
def test_random_tensors_with_a_missing_class_match_reference(batch_size, negative_labels):
    # Random images: every row has its own maximum, so the label pixel's value differs
    # between an image and the other image a subsampled negative row shows.
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(300, 784, generator=generator, dtype=torch.float64)
    labels = torch.randint(1, 10, (300,), generator=generator)  # class 0 left out, as in the unseen-class runs
    training = TrainingSpec(epochs=4, learning_rate=1e-2, batch_size=batch_size)
    network = NetworkSpec(width=48, layers=3)
    reference, engine = train_both(network, training, images, labels, negative_labels)
    assert_same_training(reference, engine, atol=1e-10)


def test_progress_and_cancel_follow_the_reference(mnist):
    seen = {}
    for name, trainer in (("reference", reference_train_ff), ("engine", train_ff)):
        events = []
        with pytest.raises(Cancelled):
            trainer(GoodnessNetwork(NetworkSpec(width=32)), mnist.images, mnist.labels,
                    TrainingSpec(epochs=3, learning_rate=1e-2), seed_everything(0),
                    progress=events.append, should_stop=lambda events=events: len(events) >= 4)
        seen[name] = [(e.model, e.epoch, e.epochs, e.layer, e.layers) for e in events]
    assert seen["engine"] == seen["reference"] == [
        ("ff", 1, 3, 0, 3), ("ff", 2, 3, 0, 3), ("ff", 3, 3, 0, 3), ("ff", 1, 3, 1, 3)
    ]


# ---------------------------------------------------------------- ties


def one_step_gradients(net, images, labels):
    """Layer-1 gradient of the first full-batch step: (reference, engine, engine's tied rows)."""
    training = TrainingSpec(epochs=1, learning_rate=1e-2)
    reference = ReferenceFF(copy.deepcopy(net), images, labels, training, torch.Generator().manual_seed(0))
    engine = FFEngine(copy.deepcopy(net), images, labels, training, torch.Generator().manual_seed(0))
    tied = []
    split = engine._split_ties
    engine._split_ties = lambda z, rows, *rest: tied.append(rows.numel()) or split(z, rows, *rest)
    for trainer in (reference, engine):
        trainer.begin_layer(0)
        trainer.epoch()
    return reference.net.layers[0].weight.grad, engine.net.layers[0].weight.grad, sum(tied)


def test_exact_ties_share_the_gradient_like_amax():
    """Two identical units reach a row's maximum together: autograd's amax gives
    each an equal share of the row's gradient; so must the sparse gradient.
    Inputs and weights on a coarse binary grid make every product exact, so the
    tie is exact in both implementations whatever the summation order."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(-2, 3, (200, 784), generator=generator).double() / 4
    labels = torch.arange(200) % 10
    net = GoodnessNetwork(NetworkSpec(width=16)).double()
    with torch.no_grad():
        first = net.layers[0]
        first.weight.copy_(torch.randint(-4, 5, first.weight.shape, generator=generator) / 256)
        first.weight[1] = first.weight[0]
        first.bias.zero_()
        first.bias[:2] = 1.0  # units 0 and 1 win most rows
    reference, engine, tied = one_step_gradients(net, images, labels)
    assert tied > 100
    assert reference[0].abs().max() > 1e-6
    torch.testing.assert_close(engine, reference, atol=1e-15, rtol=1e-9)
    torch.testing.assert_close(engine[0], engine[1], atol=0, rtol=0)


def test_float32_sigmoid_saturation_ties_match_amax():
    """Large pre-activations: distinct z whose float32 sigmoids are equal."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(400, 784, generator=generator) * 0.5 + torch.randn(1, 784, generator=generator)
    labels = torch.arange(400) % 10
    torch.manual_seed(0)
    net = GoodnessNetwork(NetworkSpec(width=64))
    with torch.no_grad():
        net.layers[0].weight.mul_(10.0)
    reference, engine, tied = one_step_gradients(net, images, labels)
    assert tied > 0
    torch.testing.assert_close(engine, reference, atol=1e-6 * reference.abs().max().item(), rtol=0)


# ---------------------------------------------------------- prediction


@on_devices
@pytest.mark.parametrize(
    "network",
    [PAPER, NetworkSpec(width=64, normalize_first_layer=True, normalization="l2", label_value="batch_max"),
     NetworkSpec(width=64, activation="relu", goodness="l2", normalize_first_layer=True),
     NetworkSpec(width=64, normalize_first_layer=True, first_layer_normalization="l2")],
    ids=["paper", "l2-normalized-first-batch_max", "relu-l2", "image-l2"],
)
def test_prediction_with_shared_first_layer_matches_plain(mnist, network, device):
    torch.manual_seed(0)
    net = GoodnessNetwork(network).to(device)
    train_ff(net, mnist.images[:200].to(device), mnist.labels[:200].to(device),
             TrainingSpec(epochs=2, learning_rate=1e-2), seed_everything(0))
    images = data.load_split("mnist", False, subset=300, seed=0).images
    shared = label_goodness(net, images, chunk=128)
    plain = reference_label_goodness(net, images, chunk=128)
    assert shared.shape == plain.shape == (300, 10, 3)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        label_goodness(net, images[:100], chunk=100)
    names = [e.name for e in prof.events()]
    # One layer-1 product for the ten labels (plus ten rank-one corrections), then
    # layers 2 and 3 per label: 21 products where the plain way makes 30.
    assert names.count("aten::addmm") == 1 + 10 * 2
    assert names.count("aten::addr") == 10


# ------------------------------------------------------ epoch structure


def profile_epoch(engine):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
        engine.epoch()
    return prof.events()


def big_input(event, numel):
    return any(shape and torch.Size(shape).numel() >= numel for shape in event.input_shapes if isinstance(shape, list))


def test_epoch_does_only_the_shared_products_and_no_large_allocation():
    n, d = 1000, 784
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, d, generator=generator)
    labels = torch.arange(n) % 10
    torch.manual_seed(0)
    net = GoodnessNetwork(PAPER)
    engine = FFEngine(net, images, labels, TrainingSpec(epochs=2, learning_rate=1e-2), generator)
    large = n * d * 4  # bytes of one N x 784 float32 matrix

    def products(events):
        names = ("aten::addmm", "aten::addmm_", "aten::mm", "aten::bmm", "aten::matmul")
        return [(e.name, e.input_shapes[:3]) for e in events if e.name in names]

    for index in range(3):
        engine.begin_layer(index)
        engine.epoch()  # the first epoch may set things up
        events = profile_epoch(engine)
        if index == 0:
            # One shared (N x 784) @ (784 x 784) product, two rank-10 label corrections, no dense backward.
            assert products(events) == [
                ("aten::addmm", [[d], [n, d], [d, d]]),
                ("aten::addmm", [[n, d], [n, 10], [10, d]]),
                ("aten::addmm_", [[n, d], [n, 10], [10, d]]),
            ]
        else:
            # Positive and negative inputs in one (2N x 784) product, no dense backward.
            assert products(events) == [("aten::addmm", [[d], [2 * n, d], [d, d]])]
        assert any(e.name == "aten::embedding_bag" or e.name == "aten::_embedding_bag_forward_only" for e in events)
        # Frozen inputs are not normalised again, and nothing N x 784 is allocated.
        normalising = ("aten::abs", "aten::div", "aten::amax", "aten::linalg_vector_norm")
        assert [e.name for e in events if e.name in normalising and big_input(e, n * d)] == []
        assert [(e.name, e.cpu_memory_usage) for e in events if e.cpu_memory_usage >= large] == []
        engine.end_layer()
