"""What the model types share: the ``TrainingJob`` a trainer trains from, the
``Evaluation`` it gives, label embedding, normalisation, goodness, the
goodness network of FF and BP/FF, prediction by goodness, progress reporting and
checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from fflab.data import N_CLASSES
from fflab.models.components import (
    ACTIVATIONS,
    GOODNESS,
    LABEL_CHANNELS,
    LABEL_VALUES,
    NEGATIVE_LABEL_DRAWS,
    NORMALIZATIONS,
    PREDICTION_RULES,
)

if TYPE_CHECKING:
    from fflab.spec import ExperimentSpec, NetworkSpec, TrainingSpec

LABEL_PIXELS = N_CLASSES  # MNIST's: the first row's first 10 pixels carry the label


@dataclass(frozen=True)
class LabelLayout:
    """Where the one-hot label sits in a flattened image: ``n_classes`` pixels from each
    of ``offsets``. A grey image has one block, the first row's first ``n_classes``
    pixels (offset 0); a colour image (C x H x W, flattened channel after channel) has
    one at the start of each channel that carries it: every channel (the authors'
    code, scheduler/data.py ``label_images(rgb=True)``) or the first only.

    Every block of an image holds the same value, so layer 1's product with the label
    pixels is ``value * sum over blocks of W[:, offset + label]`` (``label_weights``)."""

    n_classes: int = N_CLASSES
    offsets: tuple[int, ...] = (0,)

    @classmethod
    def of(cls, in_features: int, n_classes: int, channels: int = 1, label_channels: str = "every") -> LabelLayout:
        LABEL_CHANNELS.lookup(label_channels)
        if in_features % channels or in_features // channels < n_classes:
            raise ValueError(f"{n_classes} label pixels do not fit in a channel of {in_features // channels} pixels")
        per_channel = in_features // channels
        carrying = channels if label_channels == "every" else 1
        return cls(n_classes, tuple(c * per_channel for c in range(carrying)))

    def zero(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the label pixels of (N, in) ``x`` in place; returns it."""
        for offset in self.offsets:
            x[:, offset : offset + self.n_classes] = 0.0
        return x

    def put(self, x: torch.Tensor, labels: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor:
        """Write ``value`` at each row's label in every block of ``x`` (in place); returns it."""
        rows = torch.arange(x.shape[0], device=x.device)
        for offset in self.offsets:
            x[rows, offset + labels] = value
        return x

    def label_weights(self, weight: torch.Tensor) -> torch.Tensor:
        """(n_classes, out): layer 1's weight on each label, summed over the blocks
        (weight: (out, in), as ``nn.Linear.weight``; differentiable)."""
        total = weight[:, self.offsets[0] : self.offsets[0] + self.n_classes]
        for offset in self.offsets[1:]:
            total = total + weight[:, offset : offset + self.n_classes]
        return total.t()


MNIST_LABELS = LabelLayout()


def label_layout(net: nn.Module) -> LabelLayout:
    """A network's label layout (MNIST's for a network without one)."""
    return getattr(net, "label_layout", MNIST_LABELS)


@dataclass(frozen=True)
class TrainingProgress:
    """Reported once per epoch. ``layer`` is None for end-to-end training."""

    model: str
    epoch: int
    epochs: int
    loss: float
    layer: int | None = None
    layers: int | None = None


ProgressCallback = Callable[[TrainingProgress], None]
StopCheck = Callable[[], bool]


class Cancelled(Exception):
    """Training was asked to stop (checked between epochs)."""


# ----------------------------------------------------------------- checkpoints


@runtime_checkable
class Checkpoint(Protocol):
    """Where a trainer keeps the state it needs to resume a run.

    ``load`` returns the last saved state (None when there is none); ``save``
    replaces it. A state is a dict of tensors, numbers, strings and lists that
    ``torch.save`` writes and ``torch.load(weights_only=True)`` reads back.
    """

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class FileCheckpoint:
    """A checkpoint in one file, replaced atomically (a temporary file, then
    ``os.replace``): a process killed while saving leaves the previous one."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        torch.save(state, partial)
        os.replace(partial, self.path)


def check_checkpoint_every(checkpoint: Checkpoint | None, checkpoint_every: int | None) -> None:
    """Trainers that resume within a stage need to know how often to save when given a checkpoint."""
    if checkpoint is not None and (checkpoint_every is None or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive number of epochs with a checkpoint; got {checkpoint_every!r}")


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the module's state on the CPU (what a checkpoint stores)."""
    return {name: t.detach().to("cpu", copy=True) for name, t in module.state_dict().items()}


def resume_state(checkpoint: Checkpoint | None, kind: str) -> dict[str, Any] | None:
    """The checkpoint's state if it was saved by trainer ``kind``; None otherwise
    (no checkpoint, nothing saved yet, or another trainer's: start over)."""
    if checkpoint is None:
        return None
    state = checkpoint.load()
    if state is None or state.get("trainer") != kind:
        return None
    return state


def describe_resume_point(state: dict[str, Any]) -> str:
    """Where a run resumes from a checkpoint state (fflab.models.training), in words (for logs)."""
    stages, epochs = state.get("stages_done", 0), state.get("epochs_done", 0)
    if state.get("layer_by_layer") and epochs == 0:
        return f"layer {stages + 1} ({stages} layers done)"
    if state.get("layer_by_layer"):
        return f"layer {stages + 1}, epoch {epochs + 1} ({stages} layers and {epochs} epochs done)"
    return f"epoch {epochs + 1} ({epochs} epochs done)"


# ----------------------------------------------------------------- model types


@dataclass
class TrainingJob:
    """What a model type's trainer gets (fflab.models.training): the network to train in place, the
    training images (N, 784) and labels (N,) on its device, the model's training
    section of the spec, the data generator, how wrong labels are drawn and from
    which classes (goodness models), the run's progress, stop check and
    checkpoint (saved every ``checkpoint_every`` epochs by trainers that resume
    within a stage, after every stage by the others), and whether CUDA matrix
    products may use TF32 (the FF engine)."""

    net: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    training: TrainingSpec
    generator: torch.Generator
    negative_labels: str = "fixed"
    negative_classes: torch.Tensor | None = None
    progress: ProgressCallback | None = None
    should_stop: StopCheck | None = None
    checkpoint: Checkpoint | None = None
    checkpoint_every: int | None = None
    tf32: bool = False


@dataclass(frozen=True)
class Evaluation:
    """A trained network on the test images: (N,) predictions, the per-layer
    (N, width) representations the analyses read, and any other (N, ...) arrays
    to store beside them (``label_goodness`` for goodness models)."""

    predictions: torch.Tensor
    layers: list[torch.Tensor]
    arrays: dict[str, torch.Tensor]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weight init) and return a generator for data draws."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def embed_labels(images: torch.Tensor, labels: torch.Tensor, label_value: str,
                 layout: LabelLayout = MNIST_LABELS) -> torch.Tensor:
    """Write one-hot labels into the label pixels (``layout``: by default the first 10).

    images: (N, in) standardised; labels: (N,) ints. The label pixel gets the
    image's maximum (``image_max``, paper) or the batch's (``batch_max``, code);
    the other label pixels get 0. A colour image's label blocks all get the same.
    """
    embedded = images.clone()
    peak = LABEL_VALUES.lookup(label_value)(images)
    return layout.put(layout.zero(embedded), labels, peak)


def check_negative_labels(negative_labels: str) -> str:
    NEGATIVE_LABEL_DRAWS.lookup(negative_labels)
    return negative_labels


def wrong_labels(labels: torch.Tensor, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label from ``classes`` other than the true one, per image.

    labels: (N,) ints, each in ``classes``; classes: (k,) sorted ints. With a
    class left out of training, drawing from all ten labels trains its label
    pixel as a negative-only label (the authors' code); drawing from the
    training classes only leaves that pixel's weights untrained.
    """
    n_classes = classes.numel()
    position = torch.searchsorted(classes, labels)
    shift = torch.randint(1, n_classes, labels.shape, generator=generator)
    return classes[(position + shift) % n_classes]


def draw_negatives(
    labels: torch.Tensor, classes: torch.Tensor, generator: torch.Generator, negative_labels: str
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The negative data of one draw: which image each negative row shows, and its wrong label.

    labels: (N,) ints on the CPU, each in ``classes`` (k,) sorted. Returns ``(rows,
    wrong)``: ``rows`` (N,) indices into the images, or None where negative row i
    is image i (``fixed``, ``per_epoch``: ``wrong_labels``); ``wrong`` (N,). With
    ``subsampled`` (the authors' code), N of the N * (k - 1) wrong-label copies are
    kept, uniformly without replacement, in random order: an image appears about
    Binomial(k - 1, 1 / (k - 1)) times, so with ten classes about (8/9)^9 = 35% of
    the images not at all.
    """
    check_negative_labels(negative_labels)
    if negative_labels != "subsampled":
        return None, wrong_labels(labels, classes, generator)
    n, others = labels.numel(), classes.numel() - 1
    kept = torch.randperm(n * others, generator=generator)[:n]
    rows = kept // others
    position = torch.searchsorted(classes, labels[rows])
    return rows, classes[(position + kept % others + 1) % classes.numel()]


def embed_negatives(
    images: torch.Tensor, rows: torch.Tensor | None, wrong: torch.Tensor, label_value: str,
    layout: LabelLayout = MNIST_LABELS,
) -> torch.Tensor:
    """Layer 1's negative inputs (N, in), on the images' device, of a draw
    ``(rows, wrong)`` of ``draw_negatives``."""
    shown = images if rows is None else images[rows.to(images.device)]
    return embed_labels(shown, wrong.to(images.device), label_value, layout)


def negative_classes_of(labels: torch.Tensor, negative_classes: torch.Tensor | None) -> torch.Tensor:
    """The sorted CPU tensor of classes wrong labels are drawn from: ``negative_classes``
    if given (it must hold every class of ``labels``), else the classes in ``labels``."""
    present = labels.unique().sort().values.cpu()
    if negative_classes is None:
        return present
    classes = torch.as_tensor(negative_classes).unique().sort().values.cpu()
    if not bool(torch.isin(present, classes).all()):
        raise ValueError(
            f"negative_classes {classes.tolist()} must hold every training class {present.tolist()}"
        )
    return classes


def normalize(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Scale each row to unit l_inf or l2 norm (``none``: unchanged). x: (N, d)."""
    norm = NORMALIZATIONS.lookup(kind)(x)
    return x if norm is None else x / (norm + 1e-8)


def goodness(h: torch.Tensor, kind: str) -> torch.Tensor:
    """Goodness of each row of a layer's output. h: (N, n) -> (N,)."""
    return GOODNESS.lookup(kind)(h)


def goodness_loss(positive: torch.Tensor, negative: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean over the concatenated batch of softplus(theta - g+) and softplus(g- - theta)."""
    return torch.cat([F.softplus(threshold - positive), F.softplus(negative - threshold)]).mean()


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return ACTIVATIONS.lookup(name).fn


class GoodnessNetwork(nn.Module):
    """The FF architecture: [normalise] -> linear -> activation, per hidden layer."""

    def __init__(self, spec: NetworkSpec, in_features: int = 784, n_classes: int = N_CLASSES, channels: int = 1):
        super().__init__()
        self.spec = spec
        # The data set decides the input size and the label pixels (fflab.data.DataSet).
        self.label_layout = LabelLayout.of(in_features, n_classes, channels, spec.label_channels)
        widths = [in_features] + [spec.width] * spec.layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activation = activation_fn(spec.activation)

    def linear(self, index: int) -> nn.Linear:
        """Hidden layer ``index`` (from 0): its Linear (a ModuleList's items read as Module)."""
        return cast(nn.Linear, self.layers[index])

    def layer_input(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return normalize(x, self.spec.layer_normalization(index))

    def layer_forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return self.activation(self.layers[index](self.layer_input(x, index)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's output (after the activation, before the next normalisation)."""
        outputs = []
        for index in range(len(self.layers)):
            x = self.layer_forward(x, index)
            outputs.append(x)
        return outputs

    def layer_goodness(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in) embedded images -> (N, layers) goodness."""
        return torch.stack([goodness(h, self.spec.goodness) for h in self.forward(x)], dim=1)


@torch.no_grad()
def label_goodness(net: GoodnessNetwork, images: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
    """Goodness of every image with every label embedded: (N, in) -> (N, classes, layers).

    The embedded copies of an image differ only in the label pixels, and
    layer 1's input normalisation (if any) does not depend on which label pixel
    is set, so layer 1's product is shared by the labels:
    z_c = (base @ W^T + b) + value * W_labels[c] (``LabelLayout.label_weights``), with ``base`` the layer input with
    the label pixels zeroed and ``value`` the label pixel's value.
    """
    device = next(net.parameters()).device
    spec = net.spec
    first = net.layers[0]
    layout = label_layout(net)
    scores = []
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].to(device)
        n = batch.shape[0]
        # Layer 1's input with label 0 embedded, split as base + value * e_label.
        x = net.layer_input(embed_labels(batch, torch.zeros(n, dtype=torch.long, device=device),
                                         spec.label_value, layout), 0)
        value = x[:, layout.offsets[0]].clone()
        layout.zero(x)  # x is new: embed_labels copies
        shared = F.linear(x, first.weight, first.bias)
        w_labels = layout.label_weights(first.weight)
        per_label = []
        for c in range(layout.n_classes):  # one label at a time: the chunk's activations stay in cache
            h = net.activation(torch.addr(shared, value, w_labels[c]))
            per_layer = [goodness(h, spec.goodness)]
            for index in range(1, len(net.layers)):
                h = net.layer_forward(h, index)
                per_layer.append(goodness(h, spec.goodness))
            per_label.append(torch.stack(per_layer, dim=1))
        scores.append(torch.stack(per_label, dim=1).cpu())
    return torch.cat(scores)


def predict_from_goodness(scores: torch.Tensor, rule: str) -> torch.Tensor:
    """(N, 10, layers) goodness -> (N,) predicted labels.

    ``sum``: argmax of the goodness summed over layers. ``softmax_sum``: softmax
    over labels within each layer, summed over layers, then argmax.
    """
    return PREDICTION_RULES.lookup(rule)(scores).argmax(dim=1)


@torch.no_grad()
def goodness_representations(
    net: GoodnessNetwork, images: torch.Tensor, labels: torch.Tensor, chunk: int = 2000
) -> list[torch.Tensor]:
    """Per layer (N, width) outputs with the true label embedded."""
    device = next(net.parameters()).device
    per_chunk = []
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].to(device)
        batch_labels = labels[start : start + chunk].to(device)
        per_chunk.append([h.cpu() for h in net(embed_labels(batch, batch_labels, net.spec.label_value,
                                                            label_layout(net)))])
    return [torch.cat(layer) for layer in zip(*per_chunk)]


def minibatches(n: int, batch_size: int | None, generator: torch.Generator) -> list[torch.Tensor | None]:
    """Index batches for one epoch; ``[None]`` means the full batch, in order."""
    if batch_size is None or batch_size >= n:
        return [None]
    return list(torch.randperm(n, generator=generator).split(batch_size))


def evaluate_goodness_network(net: GoodnessNetwork, images: torch.Tensor, labels: torch.Tensor,
                              spec: ExperimentSpec) -> Evaluation:
    """FF and BP/FF on the test set: prediction by goodness (``spec.prediction``),
    representations with the true label embedded, and every label's goodness."""
    scores = label_goodness(net, images)
    return Evaluation(
        predictions=predict_from_goodness(scores, spec.prediction),
        layers=goodness_representations(net, images, labels),
        arrays={"label_goodness": scores},
    )
