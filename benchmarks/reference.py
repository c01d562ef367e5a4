"""The straightforward FF implementation that the engine is measured and tested against.

Written the way public FF code does it: for every layer and every epoch,
separate forward passes for positive and negative data, the layer's input
normalised again each time, goodness and loss through autograd, and a dense
backward pass. It follows ``fflab.models.ff.train_ff``'s semantics exactly
(same negative labels, same minibatches, same generator consumption), so with
the same seed and initial weights both give the same weights up to float
rounding. ``reference_label_goodness`` is the plain prediction: ten separate
forward passes, one per embedded label.

The benchmark (``benchmarks/ff_bench.py``) times it and the tests
(``tests/test_ff_engine.py``) compare the engine with it: this is the one copy.
"""

from __future__ import annotations

import torch

from fflab.models.common import (
    Cancelled,
    GoodnessNetwork,
    ProgressCallback,
    StopCheck,
    TrainingProgress,
    draw_negatives,
    embed_labels,
    embed_negatives,
    goodness,
    goodness_loss,
    label_layout,
    minibatches,
)
from fflab.spec import TrainingSpec


class ReferenceFF:
    """Layer-by-layer FF training; ``begin_layer``/``epoch``/``end_layer`` let the
    benchmark time single epochs, ``train`` runs the whole schedule."""

    def __init__(
        self,
        net: GoodnessNetwork,
        images: torch.Tensor,
        labels: torch.Tensor,
        training: TrainingSpec,
        generator: torch.Generator,
        negative_labels: str = "fixed",
    ):
        self.net, self.images, self.labels = net, images, labels
        self.training, self.generator, self.negative_labels = training, generator, negative_labels
        self.classes = labels.unique().sort().values.cpu()
        # Raw (un-normalised) inputs of the current layer: outputs of the frozen layers.
        self.layer_positive = embed_labels(images, labels, net.spec.label_value, label_layout(net))
        self.layer_negative = self._draw_negative()
        self.index = -1

    def _draw_negative(self) -> torch.Tensor:
        rows, wrong = draw_negatives(self.labels.cpu(), self.classes, self.generator, self.negative_labels)
        return embed_negatives(self.images, rows, wrong, self.net.spec.label_value, label_layout(self.net))

    def begin_layer(self, index: int) -> None:
        self.index, self.epochs_done = index, 0
        layer = self.net.layers[index]
        self.optimizer = torch.optim.Adam(layer.parameters(), lr=self.training.learning_rate_of_layer(index))

    def epoch(self) -> float:
        net, index = self.net, self.index
        layer, spec = net.layers[index], net.spec
        if self.negative_labels == "per_epoch" and self.epochs_done > 0:
            x = self._draw_negative()
            with torch.no_grad():
                for frozen in range(index):
                    x = net.layer_forward(x, frozen)
            self.layer_negative = x
        epoch_loss = 0.0
        batches = minibatches(self.images.shape[0], self.training.batch_size, self.generator)
        for batch in batches:
            x_pos = self.layer_positive if batch is None else self.layer_positive[batch]
            x_neg = self.layer_negative if batch is None else self.layer_negative[batch]
            # Normalisation recomputed every epoch, separate passes for positive and negative.
            h_pos = net.activation(layer(net.layer_input(x_pos, index)))
            h_neg = net.activation(layer(net.layer_input(x_neg, index)))
            loss = goodness_loss(goodness(h_pos, spec.goodness), goodness(h_neg, spec.goodness), spec.threshold)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            epoch_loss += loss.item()
        self.epochs_done += 1
        return epoch_loss / len(batches)

    def end_layer(self) -> None:
        net, index = self.net, self.index
        layer = net.layers[index]
        layer.requires_grad_(False)
        with torch.no_grad():
            self.layer_positive = net.layer_forward(self.layer_positive, index)
            self.layer_negative = net.layer_forward(self.layer_negative, index)

    def train(
        self, progress: ProgressCallback | None = None, should_stop: StopCheck | None = None
    ) -> list[list[float]]:
        history: list[list[float]] = []
        layers = len(self.net.layers)
        for index in range(layers):
            self.begin_layer(index)
            losses: list[float] = []
            for epoch in range(self.training.epochs):
                if should_stop is not None and should_stop():
                    raise Cancelled()
                losses.append(self.epoch())
                if progress is not None:
                    progress(TrainingProgress("ff", epoch + 1, self.training.epochs, losses[-1], index, layers))
            history.append(losses)
            self.end_layer()
        return history


def reference_train_ff(
    net: GoodnessNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    training: TrainingSpec,
    generator: torch.Generator,
    negative_labels: str = "fixed",
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> list[list[float]]:
    """Same signature and semantics as ``fflab.models.ff.train_ff``."""
    return ReferenceFF(net, images, labels, training, generator, negative_labels).train(progress, should_stop)


@torch.no_grad()
def reference_label_goodness(net: GoodnessNetwork, images: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
    """Goodness of every image with every label embedded, (N, in) -> (N, classes, layers):
    one full forward pass per label."""
    device = next(net.parameters()).device
    layout = label_layout(net)
    scores = []
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].to(device)
        per_label = [
            net.layer_goodness(
                embed_labels(batch, torch.full((batch.shape[0],), c, device=device), net.spec.label_value, layout)
            )
            for c in range(layout.n_classes)
        ]
        scores.append(torch.stack(per_label, dim=1).cpu())
    return torch.cat(scores)
