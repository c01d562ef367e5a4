"""A second, independent reference for FF: the authors' training loop, written plainly.

This is the loop of the authors' public code (repository
NiccoloTosato/EmergentRepresentations, ``scheduler/models.py``: ``NetFF``,
``ForwardLayer``; ``scheduler/data.py``: ``get_dataloaders``, ``label_images``,
``multilabel_batch``; ``scheduler/ModelConfig.py``: ``ExperimentConfigurator``),
re-written from a reading of it, not copied, and without importing anything
from ``fflab.models`` (only fflab's data loader, for the same images). It is
used by ``benchmarks/authors_comparison.py`` to test whether fflab's FF trains
the same thing as the authors' code, and by ``tests/test_authors_reference.py``.

What it does, point by point; "code" = the authors' code, "paper" = paper.md.

1. Data (code, ``get_dataloaders``): uint8 pixels / 255 (``ToTensor``), then
   (x - 0.1307) / 0.3081 (``Normalize``), flattened to 784. The code's training
   loader has batch 60000, i.e. the whole training set is one tensor; here the
   whole training subset is.
2. Label embedding (code, ``label_images``): copy; the first 10 pixels set to 0
   (0 in standardised units, not the background value -0.424); pixel[label] set
   to ``images.max()``, the maximum of the tensor passed, which in the code is
   the whole training set (training) or the whole test set (prediction and
   representations): 2.8215 on MNIST. Paper: the image's own maximum
   (``label_value="image_max"`` here, an option, not the default).
3. Normalisation (code, ``ForwardLayer.forward``): ``F.normalize(x, p=2)``
   (dim 1, eps 1e-12) at the input of every layer, the first (the labelled
   image) included, the label embedded BEFORE normalising. ``NetFF.__init__``
   does not pass the config's ``normalize_function`` to its layers, so every
   run of the code used l2 here, whatever its ``norm``. Paper: l_inf, between
   hidden layers.
4. Goodness (code, ``ForwardLayer.goodness_function``): the config's ``norm``
   sets it, ``torch.norm(h, dim=1, p=norm)``. The reviewer's runs used l_inf
   (``p=inf``, the max over units; with sigmoid units in (0, 1)), as does
   fflab's ``paper`` preset (``network.goodness="l_inf"``): default ``l_inf``
   here; ``l2`` is an option (the code's published configs use ``norm: 2``
   with ReLU and theta 3).
5. Threshold: the code hard-codes ``self.threshold = 3`` (the YAML's
   ``threshold`` is never read); with sigmoid and l_inf goodness in (0, 1)
   that saturates, so the reviewer set 0.5, as fflab's preset: default 0.5.
6. Positive and negative data (code, ``NetFF.train_`` with
   ``multilabel_batch``): all ten labelled copies of every image, in blocks
   label 0, 1, ..., 9 (each block in data order); positives are the copies
   whose label is the true one (so x_pos is ordered by class), negatives the
   9N others; ``torch.randperm(9N)`` once, the first N kept. x_pos[k] and
   x_neg[k] form a pair (the negative is a random other image with a random
   wrong label). Drawn once before training, never redrawn. Paper: "one of the
   other" labels, nothing about subsampling.
7. Layer (code, ``ForwardLayer``): ``nn.Linear(in, out, bias=True)`` with
   PyTorch's default initialisation (no custom init anywhere), sigmoid, dropout
   0 (the identity). All layers are built up front (``NetFF.__init__``), each
   with its own Adam (default betas and eps, no weight decay) at the config's
   lr; its ExponentialLR has gamma 1.0 (no effect) and is left out here.
8. Training (code, ``ForwardLayer.train_layer``): layers one after the other.
   For each epoch a ``DataLoader(TensorDataset(x_pos, x_neg), batch_size,
   shuffle=True)``: a new permutation of the N pairs, cut into batches of
   ``batch_size`` (the last one smaller, kept). Per batch: forward positive and
   negative separately, g = goodness, loss = mean over the 2B values of
   log(1 + exp(cat[theta - g_pos, g_neg - theta])) (written as log(1 + exp),
   not softplus, as in the code), zero_grad, backward, Adam step. Full batch =
   ``batch_size >= N`` (the code's default 60000). After the layer's epochs its
   outputs on all positive and all negative inputs (no grad) are the next
   layer's inputs.
9. Prediction (code, ``NetFF.predict``): for each label 0..9, the whole test
   set with that label embedded (value: the test set's max), through all
   layers; goodness per (image, label, layer); softmax over the 10 labels
   within each layer; summed over layers; argmax. Paper: argmax of the
   goodness summed over layers (``prediction="sum"`` here, an option).
10. Representations (code, ``extract_and_store_representations``): the test
   set with its true labels embedded, each layer's output after the sigmoid
   (before the next normalisation).

Seeding: the code seeds nothing. Here ``torch.manual_seed(seed)`` before the
layers are built (initial weights) and a ``torch.Generator`` seeded with
``seed`` for the negative draw and the shuffles; ``seed_offset`` shifts both, so
that the comparison can keep the reference's random streams independent of
fflab's (which also seeds the global RNG with ``seed`` before building the same
``nn.Linear`` layers).

Switches used to look for a cause of a difference (all default to the code):
``label_value``, ``negatives``, ``reduction``, ``prediction``, ``goodness``,
``init``, ``seed_offset``; ``draws="fflab"`` (with ``seed_offset=0``) is a
diagnostic that makes the reference consume exactly fflab's random numbers. (The order "embed the label, then normalise" is the
same in the code and in fflab, ``fflab.models.ff_engine.first_layer_parts``, so
it has no switch.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_LABELS = 10
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# ---------------------------------------------------------------------- options


@dataclass(frozen=True)
class AuthorsOptions:
    """Settings of one reference run; defaults are the reviewer's configuration of
    the authors' code (3 x 784 sigmoid, l_inf goodness, theta 0.5, batch 1024)."""

    layers: int = 3
    width: int = 784
    epochs: int = 60
    lr: float = 1e-2
    batch_size: int | None = 1024  # None or >= N: full batch
    threshold: float = 0.5
    goodness: str = "l_inf"  # "l_inf" (torch.norm p=inf) or "l2"
    # Ablation switches (defaults: the authors' code).
    label_value: str = "data_max"  # "data_max" (code) or "image_max" (paper)
    negatives: str = "subsampled"  # "subsampled" (code) or "one_per_image" (image i, a random wrong label)
    reduction: str = "mean"  # "mean" over the 2B losses (code) or "sum"
    prediction: str = "softmax_sum"  # "softmax_sum" (code) or "sum" (paper)
    init: str = "default"  # "default" nn.Linear (code)
    seed_offset: int = 0
    # Diagnostic, not independent of fflab: "fflab" draws the negatives with fflab's
    # ``draw_negatives`` (positives in data order), so that with seed_offset 0 the run
    # uses exactly fflab's random numbers (initial weights, negatives, minibatches).
    draws: str = "own"

    def __post_init__(self):
        checks = {
            "goodness": ("l_inf", "l2"),
            "label_value": ("data_max", "image_max"),
            "negatives": ("subsampled", "one_per_image"),
            "reduction": ("mean", "sum"),
            "prediction": ("softmax_sum", "sum"),
            "init": ("default",),
            "draws": ("own", "fflab"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")

    def with_(self, **changes) -> AuthorsOptions:
        return replace(self, **changes)


# ------------------------------------------------------------------------- data


def prepare_images(raw: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 784) float32: /255, standardised with MNIST's mean and std."""
    x = raw.to(torch.float32) / 255.0
    x = (x - MNIST_MEAN) / MNIST_STD
    return x.reshape(x.shape[0], -1)


def load_mnist(train: bool, subset: int | None = None, subset_seed: int = 0, root=None):
    """The MNIST split as (images (N, 784) float32, labels (N,) int64), the same images
    fflab trains on: fflab's stratified subset (``fflab.data.stratified_subset``, its
    data seed 0) of the raw torchvision files, prepared here by ``prepare_images``."""
    import torchvision

    from fflab import data as fdata

    root = root or fdata.data_root()
    ds = torchvision.datasets.MNIST(str(root), train=train, download=False)
    raw, labels = ds.data, ds.targets.to(torch.int64)
    if subset is not None and subset < labels.shape[0]:
        index = torch.from_numpy(fdata.stratified_subset(labels.numpy(), subset, subset_seed))
        raw, labels = raw[index], labels[index]
    return prepare_images(raw), labels


def label_value_of(images: torch.Tensor, mode: str) -> torch.Tensor:
    """(N,) values written into the label pixel: the max of the whole tensor (code) or
    of each image (paper)."""
    if mode == "data_max":
        return images.max().expand(images.shape[0])
    return images.max(dim=1).values


def embed(images: torch.Tensor, labels: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A copy of ``images`` (N, 784) with pixels 0..9 zeroed and pixel[label] = value."""
    out = images.clone()
    out[:, :N_LABELS] = 0.0
    out[torch.arange(out.shape[0]), labels] = value
    return out


def positive_and_negative_indices(labels: torch.Tensor, generator: torch.Generator, negatives: str = "subsampled"):
    """Which (image, label) each positive and each negative row is.

    Returns (pos_image, pos_label, neg_image, neg_label), each (N,) int64.

    ``subsampled`` (code): enumerate the 10N labelled copies block by block
    (label c = 0..9, images in data order within a block); positives are the
    copies whose label is the image's own (so ordered by class), negatives the
    other 9N in the same order, of which ``randperm(9N)[:N]`` are kept, in that
    random order. ``one_per_image``: negative row i is image i with a uniformly
    random wrong label.
    """
    n = labels.shape[0]
    block_label = torch.arange(N_LABELS).repeat_interleave(n)  # (10N,) label of each copy
    block_image = torch.arange(n).repeat(N_LABELS)  # (10N,) image of each copy
    is_pos = block_label == labels[block_image]
    pos_image, pos_label = block_image[is_pos], block_label[is_pos]
    if negatives == "subsampled":
        neg_image_all, neg_label_all = block_image[~is_pos], block_label[~is_pos]
        keep = torch.randperm(neg_image_all.shape[0], generator=generator)[:n]
        return pos_image, pos_label, neg_image_all[keep], neg_label_all[keep]
    shift = torch.randint(1, N_LABELS, (n,), generator=generator)
    return torch.arange(n), labels.clone(), torch.arange(n), (labels + shift) % N_LABELS


def build_training_pairs(images, labels, generator, options: AuthorsOptions):
    """(x_pos, x_neg): (N, 784) each, row k of both a training pair (layer 1's raw inputs)."""
    value = label_value_of(images, options.label_value)
    if options.draws == "fflab":
        from fflab.models.common import draw_negatives

        kind = "subsampled" if options.negatives == "subsampled" else "fixed"
        rows, neg_label = draw_negatives(labels, labels.unique().sort().values, generator, kind)
        pos_image, pos_label = torch.arange(labels.shape[0]), labels
        neg_image = pos_image if rows is None else rows
    else:
        pos_image, pos_label, neg_image, neg_label = positive_and_negative_indices(
            labels, generator, options.negatives)
    x_pos = embed(images[pos_image], pos_label, value[pos_image])
    x_neg = embed(images[neg_image], neg_label, value[neg_image])
    return x_pos, x_neg


# ------------------------------------------------------------------------ model


def goodness_of(h: torch.Tensor, kind: str) -> torch.Tensor:
    return torch.linalg.vector_norm(h, ord=math.inf if kind == "l_inf" else 2, dim=1)


class AuthorsLayer(nn.Module):
    """normalise (l2) -> linear -> sigmoid, as the code's ``ForwardLayer``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(F.normalize(x, p=2, dim=1)))


class AuthorsNet(nn.Module):
    def __init__(self, options: AuthorsOptions, in_features: int = 784):
        super().__init__()
        self.options = options
        widths = [in_features] + [options.width] * options.layers
        self.layers = nn.ModuleList(AuthorsLayer(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs


def ff_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, threshold: float, reduction: str = "mean") -> torch.Tensor:
    """log(1 + exp(.)) of [theta - g_pos, g_neg - theta], reduced over the 2B values."""
    values = torch.log(1 + torch.exp(torch.cat([threshold - g_pos, g_neg - threshold])))
    return values.mean() if reduction == "mean" else values.sum()


def train_layer(layer: AuthorsLayer, x_pos, x_neg, options: AuthorsOptions, generator: torch.Generator,
                optimizer: torch.optim.Optimizer | None = None, on_step=None) -> list[float]:
    """Train one layer; returns the mean loss of each epoch. ``on_step(loss)`` is
    called after each step (the tests read the first step's loss)."""
    optimizer = optimizer or torch.optim.Adam(layer.parameters(), lr=options.lr)
    n = x_pos.shape[0]
    batch = n if options.batch_size is None else min(options.batch_size, n)
    history = []
    for _ in range(options.epochs):
        order = torch.randperm(n, generator=generator)  # the DataLoader's shuffle
        total, steps = 0.0, 0
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            g_pos = goodness_of(layer(x_pos[rows]), options.goodness)
            g_neg = goodness_of(layer(x_neg[rows]), options.goodness)
            loss = ff_loss(g_pos, g_neg, options.threshold, options.reduction)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(loss.detach())
            total += loss.item()
            steps += 1
        history.append(total / steps)
    return history


@dataclass
class AuthorsRun:
    net: AuthorsNet
    history: list[list[float]] = field(default_factory=list)


def train_authors(images: torch.Tensor, labels: torch.Tensor, options: AuthorsOptions, seed: int,
                  initial_state: dict | None = None) -> AuthorsRun:
    """Build the net (initial weights from ``seed + seed_offset``, or ``initial_state``,
    a state dict of ``AuthorsNet``), draw the pairs, train layer after layer."""
    torch.manual_seed(seed + options.seed_offset)
    net = AuthorsNet(options, images.shape[1])
    if initial_state is not None:
        net.load_state_dict(initial_state)
    generator = torch.Generator().manual_seed(seed + options.seed_offset)
    x_pos, x_neg = build_training_pairs(images, labels, generator, options)
    run = AuthorsRun(net)
    for layer in net.layers:
        layer.train()
        run.history.append(train_layer(layer, x_pos, x_neg, options, generator))
        layer.requires_grad_(False)
        with torch.no_grad():
            x_pos, x_neg = layer(x_pos), layer(x_neg)
    net.eval()
    return run


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def label_goodness(net: AuthorsNet, images: torch.Tensor, chunk: int = 2500) -> torch.Tensor:
    """(N, 10, layers): goodness of every image with every label embedded (value: the
    max of the whole ``images``, as the code's ``predict`` on the whole test set)."""
    opts = net.options
    value = label_value_of(images, opts.label_value)
    out = torch.empty(images.shape[0], N_LABELS, len(net.layers))
    for start in range(0, images.shape[0], chunk):
        part, v = images[start : start + chunk], value[start : start + chunk]
        for c in range(N_LABELS):
            x = embed(part, torch.full((part.shape[0],), c, dtype=torch.int64), v)
            for i, h in enumerate(net.layer_outputs(x)):
                out[start : start + chunk, c, i] = goodness_of(h, opts.goodness)
    return out


def predict(net: AuthorsNet, images: torch.Tensor) -> torch.Tensor:
    scores = label_goodness(net, images)
    if net.options.prediction == "softmax_sum":
        scores = torch.softmax(scores, dim=1)
    return scores.sum(dim=2).argmax(dim=1)


@torch.no_grad()
def representations(net: AuthorsNet, images: torch.Tensor, labels: torch.Tensor) -> list[np.ndarray]:
    """Per layer (N, width) outputs with the true labels embedded."""
    value = label_value_of(images, net.options.label_value)
    return [h.numpy() for h in net.layer_outputs(embed(images, labels, value))]
