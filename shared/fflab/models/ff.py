"""FF: the Forward-Forward algorithm, trained layer by layer (paper section 3.1).

Each layer learns on its own to give high goodness to positive data (the true
label embedded) and low goodness to negative data (a wrong label). When a layer
is done it is frozen, and its outputs on positive and negative data become the
next layer's inputs; no gradient ever crosses a layer.
"""

from __future__ import annotations

import torch

from fflab.models.common import (
    Cancelled,
    GoodnessNetwork,
    ProgressCallback,
    StopCheck,
    TrainingProgress,
    embed_labels,
    goodness,
    goodness_loss,
    minibatches,
    wrong_labels,
)
from fflab.spec import TrainingSpec


@torch.no_grad()
def _frozen_outputs(net: GoodnessNetwork, x: torch.Tensor, layers: int) -> torch.Tensor:
    for index in range(layers):
        x = net.layer_forward(x, index)
    return x


def train_ff(
    net: GoodnessNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    training: TrainingSpec,
    generator: torch.Generator,
    negative_labels: str = "fixed",
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> list[list[float]]:
    """Train ``net`` in place, one layer after the other.

    images: (N, 784) on the net's device; labels: (N,). Returns the loss of each
    epoch, per layer.
    """
    spec = net.spec
    classes = labels.unique().sort().values.cpu()
    positive = embed_labels(images, labels, spec.label_value)

    def draw_negative() -> torch.Tensor:
        wrong = wrong_labels(labels.cpu(), classes, generator).to(labels.device)
        return embed_labels(images, wrong, spec.label_value)

    negative = draw_negative()
    layer_positive, layer_negative = positive, negative  # outputs of the frozen layers so far
    history: list[list[float]] = []
    for index, layer in enumerate(net.layers):
        # Frozen inputs never change: normalise them once, not every epoch.
        input_positive = net.layer_input(layer_positive, index)
        input_negative = net.layer_input(layer_negative, index)
        optimizer = torch.optim.Adam(layer.parameters(), lr=training.learning_rate)
        losses: list[float] = []
        for epoch in range(training.epochs):
            if should_stop is not None and should_stop():
                raise Cancelled()
            if negative_labels == "per_epoch" and epoch > 0:
                input_negative = net.layer_input(_frozen_outputs(net, draw_negative(), index), index)
            epoch_loss = 0.0
            batches = minibatches(images.shape[0], training.batch_size, generator)
            for batch in batches:
                x_pos = input_positive if batch is None else input_positive[batch]
                x_neg = input_negative if batch is None else input_negative[batch]
                g_pos = goodness(net.activation(layer(x_pos)), spec.goodness)
                g_neg = goodness(net.activation(layer(x_neg)), spec.goodness)
                loss = goodness_loss(g_pos, g_neg, spec.threshold)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_loss += loss.item()
            losses.append(epoch_loss / len(batches))
            if progress is not None:
                progress(
                    TrainingProgress("ff", epoch + 1, training.epochs, losses[-1], index, len(net.layers))
                )
        history.append(losses)
        layer.requires_grad_(False)
        with torch.no_grad():
            layer_positive = net.activation(layer(input_positive))
            layer_negative = net.activation(layer(input_negative))
    return history
