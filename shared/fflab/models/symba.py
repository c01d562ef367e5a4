"""SymBa: Forward-Forward with a symmetric loss on the goodness gap (Lee and
Song, 2023, "SymBa: A Symmetric Balanced Learning Approach for the FF
Algorithm").

The network, label embedding, goodness and prediction are FF's; only the loss
differs. FF pushes positive goodness above the threshold and negative goodness
below it, each term on its own; SymBa trains each layer on the gap between the
two, ``softplus(-alpha (g+ - g-))``, which balances the gradients of positive
and negative data and needs no threshold. Layers are trained one after the
other, on the frozen outputs of the layers below, as in FF. A run has no
checkpoint: a delivery that is interrupted trains again from the start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fflab.models.common import (
    Cancelled,
    GoodnessNetwork,
    ModelType,
    ProgressCallback,
    StopCheck,
    TrainingJob,
    TrainingProgress,
    check_negative_labels,
    draw_negatives,
    embed_labels,
    embed_negatives,
    evaluate_goodness_network,
    goodness,
    minibatches,
    negative_classes_of,
)

if TYPE_CHECKING:
    from fflab.spec import TrainingSpec

ALPHA = 4.0  # the scale of the goodness gap in the loss (the SymBa paper's)


def symba_loss(positive: torch.Tensor, negative: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """Mean of softplus(-alpha (g+ - g-)) over pairs of positive and negative goodness, (B,) each."""
    return F.softplus(-alpha * (positive - negative)).mean()


def train_symba(
    net: GoodnessNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    training: TrainingSpec,
    generator: torch.Generator,
    negative_labels: str = "fixed",
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    negative_classes: torch.Tensor | None = None,
) -> list[list[float]]:
    """Train ``net`` in place, layer by layer; returns the loss of each epoch, per layer.

    images: (N, 784) on the net's device; labels: (N,). Each layer gets its own Adam
    with ``training.learning_rate_of_layer(index)`` for ``training.epochs`` epochs of
    ``minibatches(N, training.batch_size, generator)``; wrong labels are drawn from
    ``negative_classes`` by ``draw_negatives`` once (``fixed``, ``subsampled``) or at every
    epoch (``per_epoch``).
    """
    check_negative_labels(negative_labels)
    spec = net.spec
    classes = negative_classes_of(labels, negative_classes)
    positive_images = embed_labels(images, labels, spec.label_value)

    def negative_images() -> torch.Tensor:
        rows, wrong = draw_negatives(labels.cpu(), classes, generator, negative_labels)
        return embed_negatives(images, rows, wrong, spec.label_value)

    @torch.no_grad()
    def below(x: torch.Tensor, index: int) -> torch.Tensor:
        for lower in range(index):
            x = net.layer_forward(x, lower)
        return x

    negative = negative_images()
    history = []
    for index, layer in enumerate(net.layers):
        optimizer = torch.optim.Adam(layer.parameters(), lr=training.learning_rate_of_layer(index))
        x_pos, x_neg = below(positive_images, index), below(negative, index)
        losses: list[float] = []
        for epoch in range(training.epochs):
            if should_stop is not None and should_stop():
                raise Cancelled()
            if negative_labels == "per_epoch" and epoch > 0:
                negative = negative_images()
                x_neg = below(negative, index)
            batches = minibatches(images.shape[0], training.batch_size, generator)
            total = 0.0
            for batch in batches:
                h_pos = net.layer_forward(x_pos if batch is None else x_pos[batch], index)
                h_neg = net.layer_forward(x_neg if batch is None else x_neg[batch], index)
                loss = symba_loss(goodness(h_pos, spec.goodness), goodness(h_neg, spec.goodness))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
            losses.append(total / len(batches))
            if progress is not None:
                progress(TrainingProgress("symba", epoch + 1, training.epochs, losses[-1], index, len(net.layers)))
        layer.requires_grad_(False)
        history.append(losses)
    return history


def train(job: TrainingJob) -> list[list[float]]:
    return train_symba(job.net, job.images, job.labels, job.training, job.generator, job.negative_labels,
                       job.progress, job.should_stop, job.negative_classes)


MODEL = ModelType(
    name="symba",
    display_name="SymBa",
    colour="tab:purple",
    description="SymBa: FF's network trained layer by layer on the symmetric loss "
    "softplus(-4 (g+ - g-)) (Lee and Song 2023); FF's schedule.",
    training_defaults={"epochs": 1000, "learning_rate": 1e-2, "batch_size": None},
    training_presets={"quick": {"epochs": 3, "learning_rate": 3e-3, "batch_size": 250}},
    build=GoodnessNetwork,
    train=train,
    evaluate=evaluate_goodness_network,
    layer_by_layer=True,
)
