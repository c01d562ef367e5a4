"""Checkpoint and resume (issue #5): a run interrupted after a checkpoint was saved
and resumed from it, in a fresh network and generator with the same seed, ends
with exactly the weights and losses of an uninterrupted run (torch.equal, CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FFLAB_DATA_ROOT", str(ROOT / "data"))

from fflab import data  # noqa: E402
from fflab.models.bp import BPClassifier, train_bp  # noqa: E402
from fflab.models.bpff import train_bpff  # noqa: E402
from fflab.models.common import (  # noqa: E402
    Cancelled,
    Checkpoint,
    FileCheckpoint,
    GoodnessNetwork,
    TrainingProgress,
    seed_everything,
)
from fflab.models.ff import train_ff  # noqa: E402
from fflab.spec import NetworkSpec, TrainingSpec  # noqa: E402
from devices import on_devices  # noqa: E402

SEED = 3
NETWORK = NetworkSpec(width=48, layers=3, normalize_first_layer=True, threshold=0.3)
GENERAL = NetworkSpec(width=32, layers=3, activation="relu", goodness="l2", normalization="l2", threshold=1.0)


@pytest.fixture(scope="module")
def mnist():
    return data.load_split("mnist", True, subset=300, seed=0)


class Counting:
    """A FileCheckpoint that counts its saves (the test stops after the n-th)."""

    def __init__(self, path: Path):
        self.file, self.saves = FileCheckpoint(path), 0

    def load(self):
        return self.file.load()

    def save(self, state):
        self.file.save(state)
        self.saves += 1


def make_net(model: str, network: NetworkSpec):
    return BPClassifier(network) if model == "bp" else GoodnessNetwork(network)


def train(model, network, training, images, labels, negative_labels, checkpoint=None, should_stop=None,
          progress=None, every=2, device="cpu"):
    generator = seed_everything(SEED)
    net = make_net(model, network).to(device)
    images, labels = images.to(device), labels.to(device)
    if model == "ff":
        history = train_ff(net, images, labels, training, generator, negative_labels, progress, should_stop,
                           checkpoint=checkpoint)
    elif model == "bpff":
        history = train_bpff(net, images, labels, training, generator, negative_labels, progress, should_stop,
                             checkpoint=checkpoint, checkpoint_every=every)
    else:
        history = train_bp(net, images, labels, training, generator, progress, should_stop,
                           checkpoint=checkpoint, checkpoint_every=every)
    return net, history


def assert_identical(expected, actual):
    (net_a, history_a), (net_b, history_b) = expected, actual
    for (name, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert history_a == history_b


CASES = [
    ("ff", "fixed", None),
    ("ff", "fixed", 64),
    ("ff", "per_epoch", None),
    ("ff", "per_epoch", 64),
    ("ff", "subsampled", None),
    ("bpff", "fixed", 64),
    ("bpff", "per_epoch", None),
    ("bpff", "subsampled", 64),
    ("bp", "fixed", 64),
    ("bp", "fixed", None),
]


@on_devices
@pytest.mark.parametrize("stop_after", [1, 2])
@pytest.mark.parametrize(("model", "negative_labels", "batch_size"), CASES)
def test_resumed_run_equals_uninterrupted_run(mnist, tmp_path, model, negative_labels, batch_size, stop_after,
                                              device):
    """Interrupted (Cancelled) after ``stop_after`` checkpoints (FF: layers; others:
    every 2 epochs), resumed from the file: bitwise the uninterrupted result."""
    training = TrainingSpec(epochs=5, learning_rate=3e-3, batch_size=batch_size)
    args = (model, NETWORK, training, mnist.images, mnist.labels, negative_labels)
    expected = train(*args, device=device)

    checkpoint = Counting(tmp_path / "checkpoint.pt")
    with pytest.raises(Cancelled):
        train(*args, checkpoint=checkpoint, should_stop=lambda: checkpoint.saves >= stop_after, device=device)
    assert checkpoint.saves == stop_after
    state = FileCheckpoint(tmp_path / "checkpoint.pt").load()
    assert state["trainer"] == model
    if model == "ff":
        assert state["layers_done"] == stop_after and len(state["history"]) == stop_after
    else:
        assert state["epoch"] == 2 * stop_after

    events: list[TrainingProgress] = []
    resumed = train(*args, checkpoint=Counting(tmp_path / "checkpoint.pt"), progress=events.append, device=device)
    assert_identical(expected, resumed)
    # Progress resumes where the checkpoint left off: finished work is not replayed.
    if model == "ff":
        assert {e.layer for e in events} == set(range(stop_after, NETWORK.layers))
        assert all(e.layers == NETWORK.layers and e.epochs == training.epochs for e in events)
    else:
        assert [e.epoch for e in events] == list(range(2 * stop_after + 1, training.epochs + 1))


def test_checkpoint_saves_and_no_checkpoint_after_the_last_epoch(mnist, tmp_path):
    """BP saves every K epochs but not after the last one; FF after every layer."""
    training = TrainingSpec(epochs=4, learning_rate=3e-3, batch_size=100)
    bp = Counting(tmp_path / "bp.pt")
    train("bp", NETWORK, training, mnist.images, mnist.labels, "fixed", checkpoint=bp, every=2)
    assert bp.saves == 1 and bp.load()["epoch"] == 2
    ff = Counting(tmp_path / "ff.pt")
    train("ff", NETWORK, TrainingSpec(epochs=1, learning_rate=3e-3, batch_size=100), mnist.images, mnist.labels, "fixed", checkpoint=ff)
    assert ff.saves == NETWORK.layers and ff.load()["layers_done"] == NETWORK.layers


def test_a_finished_ff_checkpoint_resumes_without_training(mnist, tmp_path):
    """All layers checkpointed (killed during evaluation): nothing is trained again."""
    training = TrainingSpec(epochs=2, learning_rate=3e-3, batch_size=100)
    args = ("ff", NETWORK, training, mnist.images, mnist.labels, "per_epoch")
    expected = train(*args, checkpoint=FileCheckpoint(tmp_path / "c.pt"))
    events: list[TrainingProgress] = []
    resumed = train(*args, checkpoint=FileCheckpoint(tmp_path / "c.pt"), progress=events.append)
    assert events == []
    assert_identical(expected, resumed)


def test_another_trainers_checkpoint_is_ignored(mnist, tmp_path):
    training = TrainingSpec(epochs=3, learning_rate=3e-3, batch_size=100)
    path = tmp_path / "c.pt"
    train("bp", NETWORK, training, mnist.images, mnist.labels, "fixed", checkpoint=FileCheckpoint(path), every=1)
    expected = train("bpff", NETWORK, training, mnist.images, mnist.labels, "fixed")
    assert_identical(expected, train("bpff", NETWORK, training, mnist.images, mnist.labels, "fixed",
                                     checkpoint=FileCheckpoint(path), every=5))


def test_file_checkpoint_is_replaced_atomically(tmp_path):
    checkpoint = FileCheckpoint(tmp_path / "sub" / "c.pt")
    assert isinstance(checkpoint, Checkpoint)
    assert checkpoint.load() is None
    checkpoint.save({"trainer": "bp", "x": torch.arange(3)})
    checkpoint.save({"trainer": "bp", "x": torch.arange(4)})
    assert torch.equal(checkpoint.load()["x"], torch.arange(4))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["c.pt"]  # no partial file left


@pytest.mark.parametrize("negative_labels", ["fixed", "per_epoch", "subsampled"])
def test_resumed_ff_general_path_equals_uninterrupted_run(mnist, tmp_path, negative_labels):
    """The engine's general (autograd) path: l2 goodness, relu."""
    training = TrainingSpec(epochs=3, learning_rate=3e-3, batch_size=100)
    args = ("ff", GENERAL, training, mnist.images, mnist.labels, negative_labels)
    expected = train(*args)
    checkpoint = Counting(tmp_path / "c.pt")
    with pytest.raises(Cancelled):
        train(*args, checkpoint=checkpoint, should_stop=lambda: checkpoint.saves >= 2)
    assert_identical(expected, train(*args, checkpoint=FileCheckpoint(tmp_path / "c.pt")))


def test_worker_checkpoint_is_kept_in_artifact_storage(tmp_path):
    """worker.run_support.StoredCheckpoint: every save lands in storage under the run's key;
    a new delivery (another folder, another machine) fetches it and says it resumed;
    storage failures never fail training."""
    from fflab.spec import RunKey
    from fflab.storage import LocalStorage, StorageError
    from worker.run_support import ProgressWriter, StoredCheckpoint, checkpoint_key

    storage = LocalStorage(tmp_path / "artifacts")
    key = RunKey("ff", "mnist", 0)
    first = StoredCheckpoint(storage, "e1", key, tmp_path / "one" / "checkpoint.pt")
    assert not first.fetch() and first.load() is None
    first.save({"trainer": "ff", "layers_done": 1})
    assert checkpoint_key("e1", key.run_id) == f"experiments/e1/runs/{key.run_id}/checkpoint.pt"
    assert storage.exists(checkpoint_key("e1", key.run_id))

    progress = ProgressWriter("sqlite://", 1, 1.0)
    second = StoredCheckpoint(storage, "e1", key, tmp_path / "two" / "checkpoint.pt", progress)
    assert second.fetch()
    assert second.load() == {"trainer": "ff", "layers_done": 1}
    assert progress.resumed_from == "layer 2 (1 layers done)"

    class Broken(LocalStorage):
        def put_file(self, key, source):
            raise StorageError("down")

        def exists(self, key):
            raise StorageError("down")

    broken = StoredCheckpoint(Broken(tmp_path / "artifacts"), "e1", key, tmp_path / "three" / "checkpoint.pt")
    assert not broken.fetch()
    broken.save({"trainer": "bp", "epoch": 2})  # kept locally, not raised
    assert broken.load() == {"trainer": "bp", "epoch": 2}
    storage.delete(checkpoint_key("e1", key.run_id))
    assert not storage.exists(checkpoint_key("e1", key.run_id))
