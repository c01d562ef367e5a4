"""Checkpoint, resume and preemption of every model type (fflab.models.training):
a run interrupted after a checkpoint was saved and resumed from it, in a fresh
network and generator with the same seed, ends with exactly the weights and
losses of an uninterrupted run (torch.equal). The checks run on every entry of
fflab.models.MODELS, so a new model type fails them until its trainer saves and
restores all it needs; tests/toy_model.py shows one, complete and incomplete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FFLAB_DATA_ROOT", str(ROOT / "data"))

from dataclasses import replace  # noqa: E402

from devices import on_devices  # noqa: E402
from fflab import data  # noqa: E402
from fflab.models import MODELS  # noqa: E402
from fflab.models.common import (  # noqa: E402
    Cancelled,
    Checkpoint,
    FileCheckpoint,
    TrainingJob,
    TrainingProgress,
    seed_everything,
)
from fflab.models.model_type import ModelType  # noqa: E402
from fflab.queueing import Preempted  # noqa: E402
from fflab.spec import NetworkSpec, TrainingSpec  # noqa: E402
from toy_model import TOY, ToyTrainer  # noqa: E402

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


class Preempting(Counting):
    """Raises Preempted once the n-th state is saved, as the worker's preemption
    check does after a stored checkpoint (worker.run_support.StoredCheckpoint)."""

    def __init__(self, path: Path, after: int):
        super().__init__(path)
        self.after = after

    def save(self, state):
        super().save(state)
        if self.saves == self.after:
            raise Preempted(f"preempted at checkpoint {self.saves}")


def model_type(model: str | ModelType) -> ModelType:
    return model if isinstance(model, ModelType) else MODELS[model]


def train(model, network, training, images, labels, negative_labels, checkpoint=None, should_stop=None,
          progress=None, every=2, device="cpu"):
    """Train ``model`` (a name in MODELS, or a ModelType) from seed SEED with the one training loop."""
    model = model_type(model)
    generator = seed_everything(SEED)
    net = model.build(network).to(device)
    job = TrainingJob(net=net, images=images.to(device), labels=labels.to(device), training=training,
                      generator=generator, negative_labels=negative_labels, progress=progress,
                      should_stop=should_stop, checkpoint=checkpoint, checkpoint_every=every)
    return net, model.train(job)


def assert_identical(expected, actual):
    (net_a, history_a), (net_b, history_b) = expected, actual
    for (name, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert history_a == history_b


# ------------------------------------------------------------------ the contract of a model type
# Each check takes a model type and raises AssertionError where it breaks the
# contract; the tests below run every check on every entry of MODELS, and on the
# toy model type of tests/toy_model.py, complete and incomplete.

TRAINING = TrainingSpec(epochs=4, learning_rate=3e-3, batch_size=40)
SMALL = 120  # images of the contract's runs


def saved_states(model: ModelType, args: tuple, path: Path, device: str) -> tuple[tuple, list[dict]]:
    """An uninterrupted run with a checkpoint: its result and where it saved states."""
    states = []

    class Recording(Counting):
        def save(self, state):
            super().save(state)
            states.append({key: state[key] for key in ("stages_done", "epochs_done")})

    return train(*args, checkpoint=Recording(path), device=device), states


def check_resumes_bit_identically(model: ModelType, images, labels, tmp_path: Path, negative_labels="per_epoch",
                                  training=TRAINING, network=NETWORK, device="cpu", stops=3) -> None:
    """A run with a checkpoint saves some and trains as one without; cancelled
    after each of its first ``stops`` saves that leave training to do, and resumed
    from the file in a fresh network and generator: bitwise the uninterrupted
    result, and progress resumes where the checkpoint left off."""
    args = (model, network, training, images, labels, negative_labels)
    expected = train(*args, device=device)
    with_checkpoint, states = saved_states(model, args, tmp_path / f"{model.name}-all.pt", device)
    assert_identical(expected, with_checkpoint)
    total = sum(len(losses) for losses in expected[1])
    points = [n for n, state in enumerate(states, start=1)
              if state["stages_done"] * training.epochs + state["epochs_done"] < total][:stops]
    assert points, f"{model.name} saved no checkpoint it could resume from"
    for stop_after in points:
        path = tmp_path / f"{model.name}-{stop_after}.pt"
        checkpoint = Counting(path)
        with pytest.raises(Cancelled):
            train(*args, checkpoint=checkpoint, should_stop=lambda: checkpoint.saves >= stop_after, device=device)
        assert checkpoint.saves == stop_after
        state = FileCheckpoint(path).load()
        assert state["trainer"] == model.name and state["layer_by_layer"] == model.layer_by_layer
        done = state["stages_done"] * training.epochs + state["epochs_done"]
        assert sum(len(losses) for losses in state["history"]) == done > 0

        events: list[TrainingProgress] = []
        resumed = train(*args, checkpoint=Counting(path), progress=events.append, device=device)
        assert_identical(expected, resumed)
        assert len(events) == total - done, "finished epochs are not trained again"
        assert all(e.model == model.name and e.epochs == training.epochs for e in events)
        if model.layer_by_layer:
            assert events[0].layer == state["stages_done"] and all(e.layers == network.layers for e in events)
        else:
            assert all(e.layer is None for e in events)


def check_preempts_at_a_checkpoint(model: ModelType, images, labels, tmp_path: Path) -> None:
    """A checkpoint whose save raises Preempted (the worker's preemption check) stops
    the run there; the next delivery resumes from it and ends bit-identical."""
    args = (model, NETWORK, TRAINING, images, labels, "fixed")
    expected = train(*args)
    path = tmp_path / f"{model.name}-preempted.pt"
    with pytest.raises(Preempted):
        train(*args, checkpoint=Preempting(path, after=1))
    assert FileCheckpoint(path).load()["trainer"] == model.name
    assert_identical(expected, train(*args, checkpoint=Counting(path)))


def check_ignores_other_checkpoints(model: ModelType, images, labels, tmp_path: Path) -> None:
    """Another model type's checkpoint, or one of an older layout, is not resumed from."""
    args = (model, NETWORK, TRAINING, images, labels, "fixed")
    expected = train(*args)
    path = tmp_path / f"{model.name}-other.pt"
    for state in ({"trainer": "another", "stages_done": 1, "epochs_done": 0},
                  {"trainer": model.name, "layers_done": 1, "epoch": 2}):
        FileCheckpoint(path).save(state)
        assert_identical(expected, train(*args, checkpoint=FileCheckpoint(path)))


CONTRACT = [check_resumes_bit_identically, check_preempts_at_a_checkpoint, check_ignores_other_checkpoints]


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_type_keeps_the_checkpoint_contract(mnist, tmp_path, model, check):
    check(MODELS[model], mnist.images[:SMALL], mnist.labels[:SMALL], tmp_path)


CASES = [(model, "fixed" if model == "bp" else "subsampled", None) for model in MODELS] + [("ff", "per_epoch", None)]


@on_devices
@pytest.mark.parametrize(("model", "negative_labels", "batch_size"), CASES)
def test_resumed_run_equals_uninterrupted_run(mnist, tmp_path, model, negative_labels, batch_size, device):
    """Full batches and the other negative-label draws, on each device (the contract
    above: minibatches, ``per_epoch``)."""
    training = TrainingSpec(epochs=5, learning_rate=3e-3, batch_size=batch_size)
    check_resumes_bit_identically(MODELS[model], mnist.images, mnist.labels, tmp_path, negative_labels, training,
                                  device=device)


def test_a_toy_model_type_is_checked_like_the_others(mnist, tmp_path):
    """The contract's checks pass for the complete toy model type (tests/toy_model.py)
    and fail for it made incomplete: a trainer whose state forgets Adam's, and one
    that draws from the generator when a stage begins, which a resume between
    stages does not replay."""
    images, labels = mnist.images[:SMALL], mnist.labels[:SMALL]
    for check in CONTRACT:
        check(TOY, images, labels, tmp_path)

    class Forgetful(ToyTrainer):
        def state(self):
            return {}

        def resume(self, state, stages_done, epochs_done):
            for index in range(stages_done):
                self.index = index
                self.end_stage()
            if epochs_done:
                self.begin_stage(stages_done)

    class Drawing(ToyTrainer):
        def begin_stage(self, index):
            super().begin_stage(index)
            torch.randperm(10, generator=self.generator)  # not restored by a resume between stages

    for trainer in (Forgetful, Drawing):
        implementation = replace(TOY.implementation(), trainer=trainer)
        incomplete = replace(TOY, implementation=lambda implementation=implementation: implementation)
        with pytest.raises(AssertionError):
            check_resumes_bit_identically(incomplete, images, labels, tmp_path)


def test_checkpoint_saves_and_no_checkpoint_after_the_last_epoch(mnist, tmp_path):
    """BP saves every K epochs but not after the last one; FF and SymBa after every layer."""
    training = TrainingSpec(epochs=4, learning_rate=3e-3, batch_size=100)
    bp = Counting(tmp_path / "bp.pt")
    train("bp", NETWORK, training, mnist.images, mnist.labels, "fixed", checkpoint=bp, every=2)
    assert bp.saves == 1 and bp.load()["epochs_done"] == 2
    for model in ("ff", "symba"):
        layers = Counting(tmp_path / f"{model}.pt")
        train(model, NETWORK, TrainingSpec(epochs=1, learning_rate=3e-3, batch_size=100), mnist.images, mnist.labels,
              "fixed", checkpoint=layers)
        assert layers.saves == NETWORK.layers and layers.load()["stages_done"] == NETWORK.layers


@pytest.mark.parametrize("model", [name for name, model in MODELS.items() if model.layer_by_layer])
def test_a_finished_layer_by_layer_checkpoint_resumes_without_training(mnist, tmp_path, model):
    """All layers checkpointed (killed during evaluation): nothing is trained again."""
    training = TrainingSpec(epochs=2, learning_rate=3e-3, batch_size=100)
    args = (model, NETWORK, training, mnist.images, mnist.labels, "per_epoch")
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
    first.save({"trainer": "ff", "layer_by_layer": True, "stages_done": 1, "epochs_done": 0})
    assert checkpoint_key("e1", key.run_id) == f"experiments/e1/runs/{key.run_id}/checkpoint.pt"
    assert storage.exists(checkpoint_key("e1", key.run_id))

    progress = ProgressWriter("sqlite://", 1, 1.0)
    second = StoredCheckpoint(storage, "e1", key, tmp_path / "two" / "checkpoint.pt", progress)
    assert second.fetch()
    assert second.load() == {"trainer": "ff", "layer_by_layer": True, "stages_done": 1, "epochs_done": 0}
    assert progress.resumed_from == "layer 2 (1 layers done)"

    class Broken(LocalStorage):
        def put_file(self, key, source):
            raise StorageError("down")

        def exists(self, key):
            raise StorageError("down")

    broken = StoredCheckpoint(Broken(tmp_path / "artifacts"), "e1", key, tmp_path / "three" / "checkpoint.pt")
    assert not broken.fetch()
    broken.save({"trainer": "bp", "stages_done": 0, "epochs_done": 2})  # kept locally, not raised
    assert broken.load() == {"trainer": "bp", "stages_done": 0, "epochs_done": 2}
    storage.delete(checkpoint_key("e1", key.run_id))
    assert not storage.exists(checkpoint_key("e1", key.run_id))
