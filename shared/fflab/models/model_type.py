"""What a model type is: its registry entry (``ModelType``, in fflab.models.MODELS),
the implementation it loads on first use (``Implementation``: build, trainer,
evaluate) and the sizes its GPU memory estimate reads (``RunShape``).

This module imports no torch: the names, display names, colours, training
defaults and memory estimates of the model types are read by the command line,
the spec and the service without loading a trainer. ``ModelType.implementation``
imports the model's module (and torch) when a run is built, trained or evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from fflab.models.bp import BPClassifier
    from fflab.models.common import Evaluation, GoodnessNetwork, TrainingJob
    from fflab.models.training import Trainer
    from fflab.spec import NetworkSpec

IMAGE_PIXELS = 784  # the networks' input: one 28 x 28 image
N_CLASSES = 10


@dataclass(frozen=True)
class RunShape:
    """The sizes of a run that its memory estimate reads: training images
    ``n_train``, test images ``n_test``, hidden ``width`` and ``layers``, and the
    minibatch size (None: the full batch)."""

    n_train: int
    n_test: int
    width: int
    layers: int
    batch_size: int | None
    inputs: int = IMAGE_PIXELS  # the flattened image: 784, or 3072 for colour
    classes: int = N_CLASSES

    @property
    def rows(self) -> int:
        """Rows of one training step: N, or the batch size."""
        return self.n_train if self.batch_size is None or self.batch_size >= self.n_train else self.batch_size

    @property
    def widest(self) -> int:
        """The widest layer input: the image or a hidden layer."""
        return max(self.inputs, self.width)

    @property
    def hidden_weights(self) -> int:
        """Weights and biases of the hidden layers."""
        return self.inputs * self.width + self.width + (self.layers - 1) * (self.width * self.width + self.width)


@dataclass(frozen=True)
class MemoryUse:
    """A trainer's device memory, in float32 values: its ``weights`` (each kept 4
    times: the value, its gradient and Adam's two moments) and its ``training``
    working set at its peak, beyond the training images."""

    weights: int
    training: int


@dataclass(frozen=True)
class Implementation:
    """How a model type trains, from its module (torch).

    ``build(network_spec)`` makes an untrained network; ``trainer(job)`` makes the
    ``fflab.models.training.Trainer`` that trains it in place, one epoch at a time,
    stage by stage (the loop in fflab.models.training owns epochs, progress,
    cancellation, checkpoints and resume); ``evaluate(net, images, labels, spec)``
    gives its ``Evaluation`` on the test set (labels: the true labels, which
    goodness models embed to read their representations)."""

    build: Callable[..., GoodnessNetwork | BPClassifier]  # (network_spec, in_features=, n_classes=, channels=)
    trainer: Callable[[TrainingJob], Trainer]
    evaluate: Callable[..., Evaluation]


def load_implementation(module: str) -> Callable[[], Implementation]:
    """A loader of the ``IMPLEMENTATION`` of ``module``, imported on the first call."""

    def load() -> Implementation:
        return import_module(module).IMPLEMENTATION

    return load


@dataclass(frozen=True)
class ModelType:
    """One kind of model fflab trains: its registry entry (fflab.models.MODELS).

    ``name`` is its key in specs, run ids and documents; ``display_name`` and
    ``colour`` are how tables and figures show it. ``training_defaults`` is its
    training section in the ``paper`` preset (the spec's defaults), described by
    ``description``; ``training_presets`` overrides it per other preset.
    ``memory(shape)`` is what its trainer holds on the device for a run of that
    ``RunShape`` (fflab.gpu adds the data, the evaluation and the CUDA context).
    ``implementation()`` loads its build, trainer and evaluation
    (``Implementation``; imports torch). ``layer_by_layer``: it trains one stage
    per hidden layer, reports progress per layer and ``training.epochs`` is per
    layer (FF); otherwise one stage trains the whole network.
    ``trains_without_a_class``: the unseen-class runs of an experiment are of
    this model (FF, as in the paper). ``in_paper``: one of the paper's models,
    which an experiment trains unless its spec names others.
    """

    name: str
    display_name: str
    colour: str
    description: str
    training_defaults: dict[str, Any]
    training_presets: dict[str, dict[str, Any]]
    memory: Callable[[RunShape], MemoryUse]
    implementation: Callable[[], Implementation] = field(repr=False)
    layer_by_layer: bool = False
    trains_without_a_class: bool = False
    in_paper: bool = False

    def build(self, network: NetworkSpec, dataset: str = "mnist") -> GoodnessNetwork | BPClassifier:
        """An untrained network of this type for images of ``dataset``: its first layer
        takes the data set's flattened image (784, 3072), its label embedding and
        output follow the data set's classes (fflab.data.DATASETS)."""
        from fflab.data import DATASETS

        entry = DATASETS.lookup(dataset)
        return self.implementation().build(network, in_features=entry.inputs, n_classes=entry.n_classes,
                                           channels=entry.channels)

    def train(self, job: TrainingJob) -> list[list[float]]:
        """Train ``job.net`` in place (``fflab.models.training.train``); returns the
        loss of each epoch, one list per stage (per layer, or one)."""
        from fflab.models.training import train

        return train(self, job)

    def evaluate(self, net: nn.Module, images: Any, labels: Any, spec: Any) -> Evaluation:
        """The trained network on the test set."""
        return self.implementation().evaluate(net, images, labels, spec)
